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
(a drained or lost one) keeps its slot, so the deployment's record stays true.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import select

from app.actions import current
from app.adapters.docker import Engine
from app.adapters.router import CaddyRouter
from app.adapters.swarm import (HEALTH_INTERVAL, HEALTH_RETRIES, AppService, Followed, Rollout, Swarm, Task,
                                app_service_spec, monitor_seconds, service_name, upstreams)
from app.db import Database
from app.docker_runtime import container_spec
from app.exceptions import DeployFailed
from app.health import HealthResult
from app.models import App
from app.runtime import LABEL_DEPLOYMENT, Instance, Observed, PhaseRef, PhaseSpec, Retired, RuntimeKind, Started

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
                      memory=spec.limits.memory, cpus=spec.limits.cpus, stop_timeout=spec.stop_timeout)


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
        #: What each deployment's update went through (start → wait_healthy/discard), per process.
        self._followed: dict[int, tuple[Followed, bool]] = {}

    def _name(self, target: PhaseRef) -> str:
        return service_name(self.swarm.instance, target.app, target.phase)

    def check(self, spec: PhaseSpec) -> None:
        if spec.network:
            raise DeployFailed("backing services (services: in .release-pipeline.yml) are not supported with "
                               "RUNTIME=swarm yet; run this app with RUNTIME=docker")

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
            self.swarm.remove(name)
            self.router.remove(instance.app, instance.phase)
            return
        if _deployment_of(service.get("Spec")) == serving_id:
            return  # an old task Swarm is replacing anyway
        if _deployment_of(service.get("PreviousSpec")) == serving_id:
            self.swarm.apply(service["PreviousSpec"])  # a rolling update back; reconcile also re-routes

    def restore_route(self, target: PhaseRef, serving: Sequence[Instance]) -> bool:
        """The router onto the serving deployment's running tasks, wherever Swarm runs them now
        (reconcile calls it: after a drain or a lost node, tasks come back on other nodes)."""
        deployment = next((i.deployment_id for i in serving), None)
        name = self._name(target)
        endpoints = upstreams([t for t in self._tasks(name) if t.deployment == str(deployment)],
                              self.swarm.ready_nodes())
        if not endpoints:
            return False
        return self.router.ensure_upstreams(target.app, target.phase, endpoints)
