"""RUNTIME=swarm: each app+phase a Swarm service, its tasks behind the router (issue 13).

The deploy job calls the same steps as on `docker` (app.runtime), but Swarm does the rolling
update itself: `start` pushes the image to the registry and updates the service, and Swarm
starts each new task beside an old one (start-first), stops the old one once the new one
passes its health check, and rolls the whole service back by itself when a new task fails
within the monitor window. While it does, the router follows: its upstreams are every running
task's node address and published port, so no request goes to a task that is not healthy or
is gone. A rollback of ours (`/rollback`, the portal) is a deployment like any other: an
earlier image and profile from our history, never Swarm's one-step rollback.

Instance ids are `<service>.<slot>.<deployment>`: a task that Swarm moves to another node
(a drained or lost one) keeps its slot, so the deployment's record stays true; `follow` (the
scheduler's thread, workers/follow.py) moves the route after them within seconds. Backing
services run as Swarm services too (`SwarmServices`, what app.services provisions through).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

from sqlalchemy import select

from app.actions import current
from app.adapters.docker import Engine, ServiceContainer, ServiceState
from app.adapters.router import CaddyRouter
from app.adapters.swarm import (HEALTH_INTERVAL, HEALTH_RETRIES, AppService, BackingService, Followed, Rollout,
                                Swarm, Task, app_service_spec, backing_container, backing_service_spec,
                                backing_state, monitor_seconds, pick_node, placed_on, resources, restore_spec,
                                served_routes, service_name, wipe_spec)
from app.db import Database
from app.docker_runtime import container_spec
from app.exceptions import DeployFailed
from app.health import HealthResult
from app.models import App
from app.runtime import LABEL_DEPLOYMENT, Instance, Observed, PhaseRef, PhaseSpec, Retired, RuntimeKind, Started

log = logging.getLogger(__name__)

#: Seconds beyond the health checks' own time a rolling update may take per task (pull, start).
SLACK_PER_TASK = 30


def instance_of(service: str, app: str, phase: str, task: Task) -> Instance:
    return Instance(id=f"{service}.{task.slot}.{task.deployment}", name=f"{service}.{task.slot}", app=app,
                    phase=phase, deployment_id=int(task.deployment) if (task.deployment or "").isdigit() else None,
                    version=task.version, running=task.state == "running", address=task.endpoint, node=task.node)


def app_service(spec: PhaseSpec, image: str) -> AppService:
    return AppService(app=spec.target.app, phase=spec.target.phase, version=spec.version, sha=spec.sha,
                      deployment_id=spec.deployment_id, image=image, env=dict(spec.env), port=spec.port,
                      health_path=spec.health.path, health_timeout=spec.health.timeout, replicas=spec.replicas,
                      memory=spec.limits.memory, cpus=spec.limits.cpus, stop_timeout=spec.stop_timeout,
                      networks=(spec.network,) if spec.network else ())


def update_timeout(spec: PhaseSpec) -> float:
    """How long a whole rolling update may take: each task in turn (parallelism 1) gets its
    health check's start period and retries plus some slack, and a rollback as long again."""
    per_task = spec.health.timeout + HEALTH_RETRIES * HEALTH_INTERVAL + SLACK_PER_TASK
    return 2 * spec.replicas * per_task


def health_of(followed: Followed, spec: PhaseSpec, nodes: set[str]) -> HealthResult:
    """The deploy job's health verdict from how Swarm's update ended."""
    if followed.state == Rollout.DONE:
        where = ", ".join(sorted(nodes))
        return HealthResult(True, spec.replicas, [], f"healthy: {spec.replicas} task(s) on {where} passed their "
                                                     f"health check on {spec.health.path}, and none failed in "
                                                     f"Swarm's monitor window ({monitor_seconds(spec.health.timeout):g} s)")
    if followed.state == Rollout.ROLLED_BACK:
        reason = (f"a new task failed its health check on {spec.health.path} (or exited) within the monitor "
                  "window; Swarm rolled the service back to the previous version, which serves on")
    else:
        reason = (f"the rolling update did not finish within {update_timeout(spec):g} s "
                  "(tasks not healthy, or nowhere to run them)")
    return HealthResult(False, len(followed.seen), followed.seen[-5:], reason)


def _deployment_of(spec: dict | None) -> str | None:
    return ((spec or {}).get("Labels") or {}).get(LABEL_DEPLOYMENT)


class SwarmRuntime:
    """`app.runtime.Runtime` on a Swarm manager, its registry and the router."""

    kind = RuntimeKind.SWARM

    def __init__(self, swarm: Swarm, engine: Engine, router: CaddyRouter, db: Database):
        self.swarm, self.engine, self.router, self.db = swarm, engine, router, db
        self.services = SwarmServices(swarm, engine)
        #: What each deployment's update went through (start → wait_healthy/discard), per process.
        self._followed: dict[int, tuple[Followed, bool]] = {}

    def _name(self, target: PhaseRef) -> str:
        return service_name(self.swarm.instance, target.app, target.phase)

    def check(self, spec: PhaseSpec) -> None:
        """Nothing is refused: replicas spread over the nodes, backing services pinned to theirs."""

    def observe(self, target: PhaseRef, serving_deployment: int | None) -> Observed:
        name = self._name(target)
        alive = [instance_of(name, target.app, target.phase, t) for t in self._tasks(name) if t.desired == "running"]
        serving = tuple(i for i in alive if i.deployment_id == serving_deployment and i.running)
        return Observed(target=target, serving=serving, others=tuple(i for i in alive if i not in serving))

    def _tasks(self, name: str) -> list[Task]:
        return self.swarm.tasks(name) if self.swarm.service(name) is not None else []

    def start(self, spec: PhaseSpec, observed: Observed) -> Started:
        """Push, update the service, and follow Swarm's rolling update to its end (the router
        following the healthy tasks); `wait_healthy` then gives the verdict."""
        self.check(spec)
        image = self.swarm.push(spec.image, spec.target.app, spec.image.removeprefix("sha256:")[:12])
        service = app_service_spec(self.swarm.instance, app_service(spec, image))
        created = self.swarm.apply(service)
        followed = self.swarm.follow(service, spec.deployment_id, timeout=update_timeout(spec),
                                     on_endpoints=lambda endpoints: self.router.ensure_upstreams(
                                         spec.target.app, spec.target.phase, endpoints))
        self._followed[spec.deployment_id] = (followed, created)
        name = service["Name"]
        ours = [t for t in self.swarm.tasks(name) if t.deployment == str(spec.deployment_id)]
        instances = tuple(instance_of(name, spec.target.app, spec.target.phase, t) for t in ours
                          if followed.state != Rollout.DONE or (t.state == "running" and t.desired == "running"))
        if not instances:
            raise DeployFailed(f"Swarm started no task of service {name} ({followed.state.value})")
        nodes = sorted({i.node for i in instances if i.node})
        return Started(instances=instances, where=f"{spec.replicas} Swarm task(s) of {name} on {', '.join(nodes)}",
                       retired_old=True)

    def wait_healthy(self, spec: PhaseSpec, started: Started,
                     progress: Callable[[str], None] | None = None) -> HealthResult:
        followed, _ = self._followed[spec.deployment_id]
        return health_of(followed, spec, {i.node for i in started.instances if i.node})

    def discard(self, started: Started) -> list[str]:
        """Swarm already rolled the service back (the old tasks serve on); a service this
        deployment created has nothing to go back to and is removed."""
        first = started.instances[0]
        followed, created = self._followed.get(first.deployment_id or 0, (Followed(Rollout.STUCK), False))
        name = self._name(PhaseRef(0, first.app, first.phase))
        evidence = self.swarm.evidence(name, followed)
        if created:
            self.swarm.remove(name)
            self.router.remove(first.app, first.phase)
        return [*evidence["tasks"], *evidence["logs"]]

    def take_over(self, spec: PhaseSpec, started: Started) -> str:
        endpoints = [i.address for i in started.instances if i.running and i.address]
        self.router.ensure_upstreams(spec.target.app, spec.target.phase, endpoints)
        return self.router.url_for(spec.target.app, spec.target.phase)

    def retire(self, instances: Sequence[Instance], stop_timeout: int) -> list[Retired]:
        """Nothing left to do (`Started.retired_old`): Swarm stopped each old task (SIGTERM,
        SIGKILL after the stop grace period) once its replacement passed its health check."""
        return []

    def run_once(self, spec: PhaseSpec, argv: list[str], *, timeout: float,
                 on_line: Callable[[str], None]) -> int | None:
        """The release command in a one-off container on the manager's engine, where the image was built."""
        return self.engine.run_release(container_spec(spec), argv, timeout=timeout, on_line=on_line)

    def instances(self, app: str | None = None) -> list[Instance]:
        found = []
        for service in self.swarm.services(**({"release-pipeline.app": app} if app else {})):
            labels = service["Spec"].get("Labels") or {}
            if "release-pipeline.service" in labels:
                continue  # a backing service, not an app
            name, app_name, phase = service["Spec"]["Name"], labels.get("release-pipeline.app", ""), \
                labels.get("release-pipeline.phase", "")
            found += [instance_of(name, app_name, phase, t) for t in self.swarm.tasks(name) if t.desired == "running"]
        return found

    def remove(self, instance: Instance) -> None:
        """Reconcile found a task no deployment expects: one of a deployment that did not finish
        (its worker died while Swarm updated the service), or of a phase nothing serves any
        more. Swarm keeps a service's tasks running, so the service is put back to the spec of
        the deployment our history says serves (the one before, as we applied it), or removed
        when nothing serves the phase."""
        name = self._name(PhaseRef(0, instance.app, instance.phase))
        service = self.swarm.service(name)
        if service is None:
            return
        with self.db.session() as session:
            app = session.scalar(select(App).where(App.name == instance.app))
            serving = current(session, app.id, instance.phase) if app is not None and app.active else None
            serving_id = str(serving.id) if serving is not None else None
        if serving_id is None:
            self.router.remove(instance.app, instance.phase)
            self.swarm.scale_down(name)  # its tasks gone first: the phase's network can then go too
            self.swarm.remove(name)
            return
        if _deployment_of(service.get("Spec")) == serving_id:
            return  # an old task Swarm is replacing anyway
        if _deployment_of(service.get("PreviousSpec")) == serving_id:
            self.swarm.apply(restore_spec(service["PreviousSpec"]))  # a rolling update back; reconcile re-routes

    def output_source(self, target: PhaseRef, deployment_id: int, container_id: str | None) -> tuple[str | None, bool]:
        name = self._name(target)
        if self.swarm.service(name) is None:
            return None, False
        return name, any(t.state == "running" and t.deployment == str(deployment_id) for t in self._tasks(name))

    def restore_route(self, target: PhaseRef, serving: Sequence[Instance]) -> bool:
        """The router onto the phase's running tasks, wherever Swarm runs them now (reconcile
        calls it: after a drain or a lost node, tasks come back on other nodes)."""
        if not any(i.deployment_id is not None for i in serving):
            return False
        key = (target.app, target.phase)
        return bool(self._route(served_routes(self._tasks(self._name(target)), self.swarm.ready_nodes(), [key])))

    def follow(self, phases: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """Point each (app, phase)'s URL at its tasks where they run now (a drained or lost
        node's tasks moved). Three calls to the manager, one read of the router plus a write
        per phase that changed; the (app, phase)s whose route changed."""
        tasks, ready_nodes = self.swarm.app_tasks()
        return self._route(served_routes(tasks, ready_nodes, phases))

    def _route(self, routes: dict[tuple[str, str], list[str]]) -> list[tuple[str, str]]:
        """Write each route; the phases whose route changed. A phase with no task running keeps
        its route (Caddy skips what it cannot reach; a later follow finds the new tasks)."""
        return self.router.follow_upstreams({key: endpoints for key, endpoints in routes.items() if endpoints})

class SwarmServices:
    """Backing services on the swarm: what `app.services` asks of a host (the docker runtime's
    is its `Engine`), carried out as Swarm services. app.services decides everything (reuse,
    replace, pending changes, passwords, health deadlines); this only executes. A service's
    "container id" is its Swarm service name. Images are built on the manager's engine, as on
    docker, and pushed to the registry before a service runs them.

    What differs from one engine: a service with data is pinned to one node (`volume_node`,
    chosen once and recorded), where Swarm creates its volume; its health check is Swarm's
    (a task is "running" only once it passed); it restarts by its restart policy; and its data
    is removed by a job on its node that empties the volume (the manager cannot delete
    another node's volume: the empty volume stays there)."""

    LABEL_SERVICE = Engine.LABEL_SERVICE
    LABEL_SERVICE_APP = Engine.LABEL_SERVICE_APP
    LABEL_SERVICE_PHASE = Engine.LABEL_SERVICE_PHASE
    LABEL_SERVICE_DEFINITION = Engine.LABEL_SERVICE_DEFINITION

    def __init__(self, swarm: Swarm, engine: Engine):
        self.swarm, self.engine = swarm, engine
        self.instance = swarm.instance

    # images: built and kept on the manager's engine, as on docker

    def inspect_local_image(self, reference: str) -> tuple[str, dict[str, str]] | None:
        return self.engine.inspect_local_image(reference)

    def built_for(self, labels: dict[str, str], app: str) -> bool:
        return self.engine.built_for(labels, app)

    def find_service_image(self, app: str, service: str, definition: str) -> str | None:
        return self.engine.find_service_image(app, service, definition)

    def build_service_image(self, **kwargs) -> str:
        return self.engine.build_service_image(**kwargs)

    def remove_service_image(self, image_id: str) -> bool:
        return self.engine.remove_service_image(image_id)

    # the phase's network and volumes

    def ensure_network(self, name: str, *, app: str, phase: str) -> str:
        """The phase's attachable overlay network: its services, its app service (every node)
        and the release command's container on the manager join it."""
        return self.swarm.ensure_network(name, self.engine.service_labels(app, phase))

    def ensure_volume(self, name: str, *, app: str, phase: str, service: str) -> str:
        """The volume's name: Swarm creates it, labelled, on the node the service is pinned to."""
        self.engine.service_labels(app, phase, service)  # refuses unsafe names, as on docker
        return name

    def volume_node(self, known: str | None) -> str:
        """The node a service's data lives on: the recorded one, else a ready node with the
        fewest of our backing services."""
        if known:
            return known
        placed = [placed_on(s) for s in self.swarm.services() if self.LABEL_SERVICE in (s["Spec"].get("Labels") or {})]
        return pick_node(self.swarm.ready_nodes(), [node for node in placed if node])

    # services

    def run_service_container(self, *, app: str, phase: str, service: str, definition: str, image: str,
                              network: str, env: dict[str, str], command: list[str] | None = None,
                              volume: str | None = None, data_path: str | None = None, memory: str | None = None,
                              cpus: float | None = None, healthcheck: list[str] | str | None = None,
                              node: str | None = None) -> str:
        self.engine.service_labels(app, phase, service)  # refuses unsafe names, as on docker
        reference = self.swarm.push(image, app, definition[:12])
        spec = backing_service_spec(self.instance, BackingService(
            app=app, phase=phase, name=service, definition=definition, image=reference, node=node, env=env,
            volume=volume, data=data_path, network=network, command=tuple(command) if command else None,
            healthcheck=tuple(healthcheck) if isinstance(healthcheck, list) else healthcheck, memory=memory,
            cpus=cpus))
        self.swarm.apply(spec)
        return spec["Name"]

    def _backing(self, app: str, phase: str | None = None) -> list[dict]:
        return self.swarm.services(**self.engine.service_labels(app, phase))

    def service_containers(self, app: str, phase: str | None = None) -> list[ServiceContainer]:
        return [backing_container(s, self.swarm.tasks(s["Spec"]["Name"])) for s in self._backing(app, phase)]

    def service_state(self, container_id: str) -> ServiceState | None:
        found = self.swarm.service(container_id)
        if found is None or self.LABEL_SERVICE not in (found["Spec"].get("Labels") or {}):
            return None
        return backing_state(found, self.swarm.tasks(container_id))

    def exec_check(self, container_id: str, command: list[str] | str, timeout: float = 5.0) -> int | None:
        """Swarm runs the service's health check itself (in its spec): 0 once the task is
        running, which Swarm allows only after the check passed; None while it is not."""
        state = self.service_state(container_id)
        return 0 if state is not None and state.status == "running" else None

    def keep_running(self, container_id: str) -> None:
        """Nothing to do: a Swarm service restarts its task by its restart policy from the start."""

    def start_service_container(self, container_id: str) -> None:
        """Nothing to do: Swarm starts a stopped task again by itself (never reported "exited")."""

    def update_service_resources(self, container_id: str, memory: str | None, cpus: float | None) -> None:
        """New limits: a new task on the same node with the same volume (Swarm cannot resize in place)."""
        found = self.swarm.service(container_id)
        if found is None:
            return
        spec = found["Spec"]
        spec["TaskTemplate"]["Resources"] = resources(memory, cpus)
        self.swarm.apply(spec)

    def remove_service_container(self, container_id: str, timeout: int = 10) -> None:
        """Stop its task (the stop grace period), then remove the service; its volume stays on its node."""
        self.swarm.scale_down(container_id)
        self.swarm.remove(container_id)

    def service_logs(self, container_id: str, tail: int = 20) -> list[str]:
        """What its tasks went through (where Swarm placed them, why they failed), then their output."""
        story = [f"task on {t.node or '?'}: {t.state}" + (f" ({t.error or t.message})" if t.error or t.message else "")
                 for t in self.swarm.tasks(container_id)[:3]]
        return [*story, *self.swarm.logs(container_id, tail)]

    def output(self, container_id: str, *, tail: int = 100, since: float | None = None) -> list[tuple[float, str]]:
        return self.swarm.output(container_id, tail=tail, since=since)

    def volume_sizes(self) -> dict[str, int | None]:
        """Unknown: the volumes are on the nodes, whose engines the manager does not ask."""
        return {}

    def remove_services(self, app: str, phase: str) -> list[str]:
        """Remove the phase's services, empty their volumes (a job on each one's node, once the
        service stopped), and the network unless the phase's app service still uses it."""
        names = []
        for service in self._backing(app, phase):
            spec = service["Spec"]
            names.append(spec["Labels"][self.LABEL_SERVICE])
            self.remove_service_container(spec["Name"])
            wipe = wipe_spec(spec)
            if wipe is not None:
                task = self.swarm.run_job(wipe)
                if task is None or task.state != "complete":
                    raise DeployFailed(f"the data of {spec['Name']} was not removed: the job on "
                                       f"{placed_on(spec) or 'its node'} ended {task.state if task else 'never'}")
        for network in self.swarm.networks(**self.engine.service_labels(app, phase)):
            if not self.swarm.remove_network(network):
                log.info("kept network %s: the %s app service of %s still uses it", network, phase, app)
        return names
