"""Apps as Docker Swarm services, on a manager engine, touching only our own services.

Deciding is separate from doing: `app_service_spec` and `backing_service_spec` are pure and
return the Engine API's ServiceSpec (tested by equality); `upstreams` and `rollout_state`
read what the manager reports; `Swarm` is the thin executor, the only place that talks to
the manager, and translates its errors into DeployFailed.

What Swarm does for us: replicas spread over the nodes, the health check (a HEALTHCHECK on the
app's health path, probed from inside each task), the rolling update (start-first: a new task
must be healthy before an old one stops) and its automatic rollback when a new task fails
within the monitor window, and moving tasks off a drained or lost node. What it cannot do
here: the ingress routing mesh needs IPVS, which this kind of kernel lacks, so every task
publishes its port in host mode on its own node (no fixed port: a fixed one would leave a
third replica on two nodes pending) and the router's upstreams are every running task's
node address and port.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum

import docker
import requests
from docker.errors import APIError, DockerException, NotFound
from docker.utils import parse_bytes

from app.adapters.docker import LABEL_INSTANCE, Engine, ServiceContainer, ServiceState, _unsafe, timestamped_lines
from app.exceptions import DeployFailed, EngineUnavailable
from app.runtime import LABEL_APP, LABEL_DEPLOYMENT, LABEL_PHASE, LABEL_SHA, LABEL_VERSION

#: The node's own busybox-static, mounted read-only into every task: the health probe runs
#: inside the task, and an app image need not ship an HTTP client.
PROBE_SOURCE = "/bin/busybox"
PROBE_TARGET = "/.release-pipeline/busybox"
SECOND = 10**9
HEALTH_INTERVAL = 1
HEALTH_RETRIES = 3
#: Task states after which a task never runs again.
ENDED = ("complete", "shutdown", "failed", "rejected", "orphaned", "remove")


def service_name(instance: str, app: str, phase: str) -> str:
    return f"{instance}-{app}-{phase}"


def image_repository(registry: str, instance: str, app: str) -> str:
    return f"{registry}/{instance}-{app}"


def health_probe(port: int, path: str) -> list[str]:
    """The task's health command: GET the health path from inside the task (2xx/3xx), at most 3 s."""
    return ["CMD", PROBE_TARGET, "timeout", "3", PROBE_TARGET, "wget", "-q", "-O", "/dev/null",
            f"http://127.0.0.1:{port}{path}"]


@dataclass(frozen=True)
class AppService:
    """One app+phase as a service: what a deployment asks Swarm to run."""

    app: str
    phase: str
    version: str
    sha: str
    deployment_id: int
    image: str  # a registry reference every node can pull
    env: dict[str, str] = field(hash=False)
    port: int
    health_path: str
    health_timeout: float
    replicas: int = 1
    memory: str | None = None
    cpus: float | None = None
    stop_timeout: int = 10
    networks: tuple[str, ...] = ()


def monitor_seconds(health_timeout: float) -> float:
    """Longer than a task can take to turn unhealthy: the start period, then the retries. Swarm
    calls an update complete only this long after its last task turned healthy."""
    return health_timeout + HEALTH_RETRIES * HEALTH_INTERVAL + 5


def resources(memory: str | None, cpus: float | None) -> dict:
    limits: dict = {}
    if memory:
        limits["MemoryBytes"] = parse_bytes(memory)
    if cpus:
        limits["NanoCPUs"] = round(cpus * SECOND)
    return {"Limits": limits} if limits else {}


def app_service_spec(instance: str, svc: AppService) -> dict:
    """The ServiceSpec for `svc`; the same spec with another image is a rolling update."""
    labels = {LABEL_INSTANCE: instance, LABEL_APP: svc.app, LABEL_PHASE: svc.phase, LABEL_VERSION: svc.version,
              LABEL_SHA: svc.sha, LABEL_DEPLOYMENT: str(svc.deployment_id)}
    update = {"Parallelism": 1, "Order": "start-first", "FailureAction": "rollback",
              "Monitor": round(monitor_seconds(svc.health_timeout) * SECOND), "MaxFailureRatio": 0.0}
    return {
        "Name": service_name(instance, svc.app, svc.phase),
        "Labels": labels,
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": svc.image,
                "Labels": labels,
                "Env": [f"{k}={v}" for k, v in sorted({**svc.env, "PORT": str(svc.port), "APP_PHASE": svc.phase,
                                                       "APP_VERSION": svc.version,
                                                       # Swarm fills in the node each task runs on.
                                                       "APP_NODE": "{{.Node.Hostname}}"}.items())],
                "Init": True,
                "StopGracePeriod": svc.stop_timeout * SECOND,
                "Healthcheck": {"Test": health_probe(svc.port, svc.health_path),
                                "Interval": HEALTH_INTERVAL * SECOND, "Timeout": 4 * SECOND,
                                "Retries": HEALTH_RETRIES, "StartPeriod": round(svc.health_timeout * SECOND)},
                "Mounts": [{"Type": "bind", "Source": PROBE_SOURCE, "Target": PROBE_TARGET, "ReadOnly": True}],
            },
            "Resources": resources(svc.memory, svc.cpus),
            "RestartPolicy": {"Condition": "any", "Delay": SECOND, "MaxAttempts": 0},
            "Networks": [{"Target": network} for network in svc.networks],
        },
        "Mode": {"Replicated": {"Replicas": svc.replicas}},
        "UpdateConfig": update,
        # Swarm's own rollback (a failing update) goes back the same careful way.
        "RollbackConfig": {**update, "FailureAction": "pause"},
        "EndpointSpec": {"Mode": "dnsrr", "Ports": [{"Protocol": "tcp", "TargetPort": svc.port,
                                                    "PublishMode": "host"}]},
    }


@dataclass(frozen=True)
class BackingService:
    """One backing service of an app+phase (app.services decides what it is made of)."""

    app: str
    phase: str
    name: str
    definition: str  # its definition hash (app.services.definition_hash)
    image: str  # a registry reference every node can pull
    #: Hostname of the node it is pinned to, where its volume lives; None: anywhere (no data).
    node: str | None
    env: dict[str, str] = field(hash=False)
    volume: str | None = None
    data: str | None = None  # where the volume is mounted in the task
    network: str | None = None
    command: tuple[str, ...] | None = None
    healthcheck: tuple[str, ...] | str | None = None
    memory: str | None = None
    cpus: float | None = None


def backing_labels(instance: str, app: str, phase: str | None = None, service: str | None = None,
                   definition: str | None = None) -> dict[str, str]:
    """The same labels a backing service's container has on docker (never LABEL_APP/LABEL_PHASE:
    nothing that handles an app's instances may take a database for one)."""
    labels = {LABEL_INSTANCE: instance, Engine.LABEL_SERVICE_APP: app, Engine.LABEL_SERVICE_PHASE: phase,
              Engine.LABEL_SERVICE: service, Engine.LABEL_SERVICE_DEFINITION: definition}
    return {key: value for key, value in labels.items() if value is not None}


def backing_service_name(instance: str, app: str, phase: str, name: str) -> str:
    return f"{service_name(instance, app, phase)}-{name}"


def _health_test(check: tuple[str, ...] | list[str] | str) -> list[str]:
    return ["CMD-SHELL", check] if isinstance(check, str) else ["CMD", *check]


def backing_service_spec(instance: str, backing: BackingService) -> dict:
    """One replica, pinned to one node when it has data, so its named volume (local to that
    node) stays its own; on the phase's overlay network under its own name. Swarm runs its
    health check and calls the task running only once it passes."""
    labels = backing_labels(instance, backing.app, backing.phase, backing.name, backing.definition)
    mounts = ([{"Type": "volume", "Source": backing.volume, "Target": backing.data,
                "VolumeOptions": {"Labels": labels}}] if backing.volume and backing.data else [])
    container = {"Image": backing.image, "Labels": labels, "Hostname": backing.name,
                 "Env": [f"{k}={v}" for k, v in sorted(backing.env.items())], "Init": True, "Mounts": mounts}
    if backing.command:
        container["Args"] = list(backing.command)
    if backing.healthcheck:
        container["Healthcheck"] = {"Test": _health_test(backing.healthcheck), "Interval": HEALTH_INTERVAL * SECOND,
                                    "Timeout": 5 * SECOND, "Retries": HEALTH_RETRIES}
    return {
        "Name": backing_service_name(instance, backing.app, backing.phase, backing.name),
        "Labels": labels,
        "TaskTemplate": {
            "ContainerSpec": container,
            "Resources": resources(backing.memory, backing.cpus),
            "Placement": {"Constraints": [f"node.hostname=={backing.node}"]} if backing.node else {},
            "RestartPolicy": {"Condition": "any", "Delay": SECOND, "MaxAttempts": 0},
            "Networks": [{"Target": backing.network, "Aliases": [backing.name]}] if backing.network else [],
        },
        "Mode": {"Replicated": {"Replicas": 1}},
        # Stop the old task before the new one starts: two must never share the data.
        "UpdateConfig": {"Parallelism": 1, "Order": "stop-first", "FailureAction": "pause"},
        "EndpointSpec": {"Mode": "dnsrr"},
    }


def wipe_spec(service: dict) -> dict | None:
    """A one-off job on the backing service's node that empties its volume (what removing
    its data means on a swarm: the manager cannot delete another node's volume), run with the
    node's busybox; None when the service has no volume."""
    template = service["TaskTemplate"]
    container = template["ContainerSpec"]
    volumes = [m for m in container.get("Mounts") or [] if m.get("Type") == "volume"]
    if not volumes:
        return None
    data = volumes[0]["Target"]
    return {
        "Name": f"{service['Name']}-wipe",
        "Labels": service["Labels"],
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": container["Image"], "Labels": service["Labels"], "Init": True,
                "Command": [PROBE_TARGET, "find", data, "-mindepth", "1", "-maxdepth", "1", "-exec", PROBE_TARGET,
                            "rm", "-rf", "{}", "+"],
                "Mounts": [*volumes, {"Type": "bind", "Source": PROBE_SOURCE, "Target": PROBE_TARGET,
                                      "ReadOnly": True}],
            },
            "Placement": template.get("Placement") or {},
            "RestartPolicy": {"Condition": "none"},
        },
        "Mode": {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}},
    }


def pick_node(ready: set[str], placed: list[str]) -> str:
    """Where a new backing service with data goes: the ready node with the fewest of ours
    (then by name). Chosen once: the volume then lives there."""
    if not ready:
        raise DeployFailed("no Swarm node is ready to run a backing service")
    return min(sorted(ready), key=placed.count)


def placed_on(service: dict) -> str | None:
    """The node a backing service is pinned to, from its placement constraint."""
    for constraint in ((service.get("Spec") or service).get("TaskTemplate", {}).get("Placement") or {}).get(
            "Constraints") or []:
        if constraint.startswith("node.hostname=="):
            return constraint.removeprefix("node.hostname==")
    return None


def backing_state(service: dict, tasks: list[Task]) -> ServiceState:
    """A backing service as app.services reads a container: the state of its current task
    ("running" only once Swarm's health check passed, and only a task started with the
    service's limits: right after a resize the old one still runs until Swarm replaces it),
    restarts as the tasks that failed."""
    spec = service["Spec"]
    container = spec["TaskTemplate"]["ContainerSpec"]
    memory, nano_cpus = _limits(spec["TaskTemplate"].get("Resources"))
    current = next((t for t in tasks if t.desired == "running"), None)
    failed = [t for t in tasks if t.state in ("failed", "rejected")]
    status = ("running" if current is not None and current.state == "running"
              and current.limits == (memory, nano_cpus) else "starting")
    return ServiceState(status=status, exit_code=failed[0].exit_code if failed else None,
                        memory=memory, cpus=nano_cpus / SECOND if nano_cpus else None,
                        restarts=len(failed), health=None, image_id=container.get("Image"),
                        labels=dict(spec.get("Labels") or {}), has_image_healthcheck=False)


def backing_container(service: dict, tasks: list[Task]) -> ServiceContainer:
    """A backing service as app.services lists a container; its id is the service's name."""
    state = backing_state(service, tasks)
    return ServiceContainer(id=service["Spec"]["Name"], name=service["Spec"]["Name"], labels=state.labels,
                            state=state.status, health=None, image_id=state.image_id)


# -- reading what the manager reports (pure) -------------------------------------------------------


@dataclass(frozen=True)
class Task:
    id: str
    node: str  # hostname
    address: str  # the node's address
    state: str
    desired: str
    deployment: str | None
    published_port: int | None
    error: str
    message: str
    exit_code: int | None
    container_id: str = ""
    slot: int = 0
    version: str | None = None
    #: The app and phase of an app service's task (None for a backing service's).
    app: str | None = None
    phase: str | None = None
    #: The task's own limits (MemoryBytes, NanoCPUs), as the spec it was started from said.
    limits: tuple[int | None, int | None] = (None, None)

    @property
    def endpoint(self) -> str | None:
        return f"{self.address}:{self.published_port}" if self.published_port else None


def read_tasks(tasks: list[dict], nodes: list[dict]) -> list[Task]:
    """The manager's task and node records, as Tasks (newest first)."""
    by_id = {n["ID"]: n for n in nodes}
    out = []
    for task in sorted(tasks, key=lambda t: t.get("CreatedAt", ""), reverse=True):
        node = by_id.get(task.get("NodeID") or "", {})
        status = task.get("Status") or {}
        ports = (status.get("PortStatus") or {}).get("Ports") or []
        labels = (((task.get("Spec") or {}).get("ContainerSpec") or {}).get("Labels")) or {}
        out.append(Task(
            id=task["ID"], node=(node.get("Description") or {}).get("Hostname", ""),
            address=(node.get("Status") or {}).get("Addr", ""), state=status.get("State", ""),
            desired=task.get("DesiredState", ""), deployment=labels.get(LABEL_DEPLOYMENT),
            published_port=next((p.get("PublishedPort") for p in ports if p.get("PublishedPort")), None),
            error=status.get("Err") or "", message=status.get("Message") or "", exit_code=(status.get("ContainerStatus") or {}).get("ExitCode"),
            container_id=(status.get("ContainerStatus") or {}).get("ContainerID") or "",
            slot=task.get("Slot") or 0, version=labels.get(LABEL_VERSION), app=labels.get(LABEL_APP),
            phase=labels.get(LABEL_PHASE), limits=_limits((task.get("Spec") or {}).get("Resources"))))
    return out


def _limits(resources: dict | None) -> tuple[int | None, int | None]:
    limits = (resources or {}).get("Limits") or {}
    return limits.get("MemoryBytes") or None, limits.get("NanoCPUs") or None


def ready(nodes: list[dict]) -> set[str]:
    """The nodes that run tasks: up, and not drained or paused."""
    return {n["Description"]["Hostname"] for n in nodes
            if n["Status"]["State"] == "ready" and n["Spec"].get("Availability") == "active"}


def upstreams(tasks: list[Task], ready_nodes: set[str]) -> list[str]:
    """Where the phase URL sends requests: every running (so healthy) task meant to keep
    running, on a node the manager sees ready, sorted so an unchanged set is an unchanged route."""
    return sorted({t.endpoint for t in tasks if t.state == "running" and t.desired == "running"
                   and t.node in ready_nodes and t.endpoint})


def served_routes(tasks: list[Task], ready_nodes: set[str],
                  phases: Iterable[tuple[str, str]]) -> dict[tuple[str, str], list[str]]:
    """For each (app, phase), the upstreams of its service's tasks running now, whichever
    deployment they are of (empty: none runs anywhere yet, leave the route as it is). Not only
    the serving deployment's: when Swarm runs another spec by itself (it finished an update
    whose worker died, or rolled back within an update's monitor window), those healthy tasks
    are all that can answer until reconcile puts the serving deployment back."""
    return {key: upstreams([t for t in tasks if (t.app, t.phase) == key], ready_nodes) for key in phases}


def restore_spec(previous: dict) -> dict:
    """The service's previous spec (reconcile putting back what our history says serves), with
    failures during that update ignored: Swarm's own rollback would return to the spec being
    replaced, the deployment that did not finish (a drained node within the monitor window
    was enough to bring it back)."""
    return {**previous, "UpdateConfig": {**(previous.get("UpdateConfig") or {}), "FailureAction": "continue"}}


class Rollout(str, Enum):
    """Where a rolling update stands."""

    UPDATING = "updating"
    DONE = "done"
    ROLLED_BACK = "rolled back"
    STUCK = "stuck"


def rollout_state(service: dict, tasks: list[Task], deployment_id: int, replicas: int) -> Rollout:
    """From the manager's service record and tasks: done when every running task is this
    deployment's and there are `replicas` of them; rolled back once Swarm put the previous
    spec back and finished; stuck when Swarm paused (its rollback failed too)."""
    spec_deployment = ((service.get("Spec") or {}).get("Labels") or {}).get(LABEL_DEPLOYMENT)
    state = (service.get("UpdateStatus") or {}).get("State", "")
    if state in ("paused", "rollback_paused"):
        return Rollout.STUCK
    if spec_deployment != str(deployment_id):
        return Rollout.ROLLED_BACK if state == "rollback_completed" else Rollout.UPDATING
    if state in ("updating", "rollback_started"):
        return Rollout.UPDATING
    running = [t for t in tasks if t.state == "running" and t.desired == "running"]
    if len(running) == replicas and all(t.deployment == str(deployment_id) for t in running):
        return Rollout.DONE
    return Rollout.UPDATING


@dataclass
class Followed:
    """How a rollout ended, and what its tasks went through on the way (the evidence)."""

    state: Rollout
    seen: list[str] = field(default_factory=list)
    _last: dict[str, tuple] = field(default_factory=dict)

    def note(self, tasks: list[Task]) -> list[Task]:
        """Record the changes; the tasks that just ended without ever passing their health check."""
        unhealthy = []
        for task in tasks:
            now = (task.state, task.error, task.message)
            before = self._last.get(task.id)
            if before == now:
                continue
            self._last[task.id] = now
            detail = "; ".join(part for part in (task.message, task.error) if part and part != task.state)
            self.seen.append(f"task {task.id[:12]} on {task.node or '?'}: {task.state}"
                             + (f" ({detail})" if detail else ""))
            if task.state in ENDED and before is not None and before[0] == "starting":
                # Swarm stops a task whose health check fails: it never reached running.
                self.seen.append(f"task {task.id[:12]} on {task.node or '?'}: unhealthy: stopped before it "
                                 "passed its health check")
                unhealthy.append(task)
        return unhealthy


# -- the executor ---------------------------------------------------------------------------------


def _spec_kwargs(spec: dict) -> dict:
    return {"name": spec["Name"], "labels": spec["Labels"], "task_template": spec["TaskTemplate"],
            "mode": spec["Mode"], "update_config": spec.get("UpdateConfig"),
            "rollback_config": spec.get("RollbackConfig"), "endpoint_spec": spec.get("EndpointSpec")}


def _translated(what: str, exc: Exception) -> Exception:
    """The manager refused (DeployFailed, for the deployment log), or cannot be reached or
    failed (EngineUnavailable: connection refused, API 5xx)."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, APIError) and status is not None and status < 500:
        return DeployFailed(f"{what}: {_explain(exc)}")
    return EngineUnavailable(f"{what}: the Swarm manager failed or is unreachable: {_explain(exc)}")


def _explain(exc: Exception) -> str:
    text = str(getattr(exc, "explanation", None) or exc)
    return next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)[:300]


class Swarm:
    """This installation's services on a Swarm manager (`base_url` None: DOCKER_HOST)."""

    def __init__(self, base_url: str | None, instance: str, registry: str):
        self.base_url, self.instance, self.registry = base_url, instance, registry
        self._client: docker.DockerClient | None = None

    @property
    def api(self) -> docker.APIClient:
        if self._client is None:
            self._client = docker.DockerClient(base_url=self.base_url) if self.base_url else docker.from_env()
        return self._client.api

    def _call(self, what: str, call: Callable, *args, **kwargs):
        try:
            return call(*args, **kwargs)
        except (DockerException, requests.RequestException) as exc:
            raise _translated(what, exc) from None

    def is_manager(self) -> bool:
        """Whether the engine is a Swarm manager (the one thing RUNTIME=swarm needs of it)."""
        try:
            info = self.api.info()
        except (DockerException, requests.RequestException):
            return False
        return bool((info.get("Swarm") or {}).get("ControlAvailable"))

    def registry_answers(self) -> bool:
        """Whether the registry speaks the registry API (over plain HTTP, as the nodes pull)."""
        try:
            return requests.get(f"http://{self.registry}/v2/", timeout=3).status_code in (200, 401)
        except requests.RequestException:
            return False

    # images

    def push(self, image_id: str, app: str, tag: str, on_line: Callable[[str], None] = lambda line: None) -> str:
        """Tag the local image into the registry and push it; the digest reference every node pulls."""
        problem = _unsafe(app=app, tree=tag)
        if problem:
            raise DeployFailed(f"image refused: {problem}")
        repository = image_repository(self.registry, self.instance, app)
        self._call("cannot tag the image", self.api.tag, image_id, repository, tag)
        digest = None
        try:
            for entry in self.api.push(repository, tag=tag, stream=True, decode=True):
                if "error" in entry:
                    raise DeployFailed(f"cannot push to {self.registry}: {str(entry['error'])[:300]}")
                digest = (entry.get("aux") or {}).get("Digest") or digest
                if entry.get("status") and "id" not in entry:
                    on_line(str(entry["status"]))
        except (DockerException, requests.RequestException) as exc:
            raise _translated(f"cannot push to {self.registry}", exc) from None
        if digest is None:
            raise DeployFailed(f"the registry {self.registry} did not confirm the push of {repository}:{tag}")
        return f"{repository}:{tag}@{digest}"

    # services

    def service(self, name: str) -> dict | None:
        try:
            found = self.api.inspect_service(name)
        except NotFound:
            return None
        except (DockerException, requests.RequestException) as exc:
            raise _translated(f"cannot read service {name}", exc) from None
        if (found.get("Spec", {}).get("Labels") or {}).get(LABEL_INSTANCE) != self.instance:
            raise DeployFailed(f"service {name} exists but is not one of installation {self.instance}'s")
        return found

    def apply(self, spec: dict) -> bool:
        """Create the service, or update it to `spec` (a rolling update); True if it is new."""
        current = self.service(spec["Name"])
        if current is None:
            self._call(f"cannot create service {spec['Name']}", self.api.create_service, **_spec_kwargs(spec))
            return True
        self._call(f"cannot update service {spec['Name']}", self.api.update_service, current["ID"],
                   current["Version"]["Index"], **_spec_kwargs(spec))
        return False

    def remove(self, name: str) -> None:
        if self.service(name) is not None:
            try:
                self.api.remove_service(name)
            except NotFound:
                pass
            except (DockerException, requests.RequestException) as exc:
                raise _translated(f"cannot remove service {name}", exc) from None

    def scale_down(self, name: str, timeout: float = 60) -> None:
        """Stop every task of a service (0 replicas) and wait until none may still run, so its
        containers are gone before anything else uses its volume or network; the service stays
        (a removed service's tasks vanish from the manager before their containers stop)."""
        current = self.service(name)
        if current is None:
            return
        spec = current["Spec"]
        if spec.get("Mode", {}).get("Replicated", {}).get("Replicas") != 0:
            spec["Mode"] = {"Replicated": {"Replicas": 0}}
            self._call(f"cannot stop service {name}", self.api.update_service, current["ID"],
                       current["Version"]["Index"], **_spec_kwargs(spec))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not [t for t in self.tasks(name) if t.state in ("preparing", "ready", "starting", "running")]:
                return
            time.sleep(0.2)

    def run_job(self, spec: dict, timeout: float = 120) -> Task | None:
        """Run a one-off job service to its end and remove it; its last task (None: none ran)."""
        self.remove(spec["Name"])
        self._call(f"cannot create job {spec['Name']}", self.api.create_service, **_spec_kwargs(spec))
        deadline, last = time.monotonic() + timeout, None
        try:
            while time.monotonic() < deadline:
                tasks = self.tasks(spec["Name"])
                last = tasks[0] if tasks else None
                if last is not None and last.state in ENDED:
                    return last
                time.sleep(0.2)
            return last
        finally:
            self.remove(spec["Name"])

    # networks

    def ensure_network(self, name: str, labels: dict[str, str]) -> str:
        """An attachable overlay network of ours (services and one-off containers join it)."""
        for network in self._call("cannot list networks", self.api.networks, names=[name]):
            if network["Name"] == name:
                if (network.get("Labels") or {}).get(LABEL_INSTANCE) != self.instance:
                    raise DeployFailed(f"network {name} exists but is not one of installation {self.instance}'s")
                return name
        self._call(f"cannot create network {name}", self.api.create_network, name, driver="overlay",
                   attachable=True, labels=labels)
        return name

    def networks(self, **labels: str) -> list[str]:
        filters = {"label": [f"{LABEL_INSTANCE}={self.instance}", *(f"{k}={v}" for k, v in labels.items())]}
        return sorted(n["Name"] for n in self._call("cannot list networks", self.api.networks, filters=filters))

    def remove_network(self, name: str) -> bool:
        """Remove one of our networks; False when a service or container still uses it."""
        try:
            self.api.remove_network(name)
        except NotFound:
            return True
        except APIError as exc:
            if exc.response is not None and exc.response.status_code in (403, 409):  # still in use
                return False
            raise _translated(f"cannot remove network {name}", exc) from None
        except (DockerException, requests.RequestException) as exc:
            raise _translated(f"cannot remove network {name}", exc) from None
        return True

    def services(self, **labels: str) -> list[dict]:
        filters = {"label": [f"{LABEL_INSTANCE}={self.instance}", *(f"{k}={v}" for k, v in labels.items())]}
        return self._call("cannot list services", self.api.services, filters=filters)

    def tasks(self, name: str) -> list[Task]:
        tasks = self._call(f"cannot list the tasks of {name}", self.api.tasks, filters={"service": name})
        return read_tasks(tasks, self._call("cannot list the nodes", self.api.nodes))

    def ready_nodes(self) -> set[str]:
        return ready(self._call("cannot list the nodes", self.api.nodes))

    def app_tasks(self) -> tuple[list[Task], set[str]]:
        """Every task of this installation's app services meant to run, and the ready nodes:
        three calls to the manager, whatever the number of phases (the router's follow)."""
        names = [s["Spec"]["Name"] for s in self.services()
                 if Engine.LABEL_SERVICE_APP not in (s["Spec"].get("Labels") or {})]
        nodes = self._call("cannot list the nodes", self.api.nodes)
        if not names:
            return [], ready(nodes)
        tasks = self._call("cannot list tasks", self.api.tasks, filters={"service": names, "desired-state": "running"})
        return read_tasks(tasks, nodes), ready(nodes)

    def endpoints(self, name: str) -> list[str]:
        return upstreams(self.tasks(name), self.ready_nodes())

    def follow(self, spec: dict, deployment_id: int, *, timeout: float,
               on_endpoints: Callable[[list[str]], None], pause: float = 0.2) -> Followed:
        """Watch the update of `spec` until it is done, rolled back or stuck, handing the
        current endpoints to `on_endpoints` whenever they change (the router follows), and
        noting every state this deployment's tasks went through (a task's failure is soon
        overwritten: Swarm shuts it down and the record says "complete")."""
        name, replicas = spec["Name"], spec["Mode"]["Replicated"]["Replicas"]
        deadline, last = time.monotonic() + timeout, None
        followed = Followed(Rollout.UPDATING)
        while True:
            tasks = self.tasks(name)
            for task in followed.note([t for t in tasks if t.deployment == str(deployment_id)]):
                followed.seen += self._health_log(task)
            now = upstreams(tasks, self.ready_nodes())
            if now != last and now:
                on_endpoints(now)
                last = now
            followed.state = rollout_state(self.service(name) or {}, tasks, deployment_id, replicas)
            if followed.state != Rollout.UPDATING:
                return followed
            if time.monotonic() >= deadline:
                followed.state = Rollout.STUCK
                return followed
            time.sleep(pause)

    def _health_log(self, task: Task) -> list[str]:
        """The health check's last answers, when the task ran on the engine we talk to (the
        manager); other nodes' engines keep theirs to themselves."""
        if not task.container_id:
            return []
        try:
            health = (self.api.inspect_container(task.container_id).get("State") or {}).get("Health") or {}
        except (DockerException, requests.RequestException):
            return []
        return [f"health check (exit {entry.get('ExitCode')}): {(entry.get('Output') or '').strip()[:200]}"
                for entry in (health.get("Log") or [])[-3:]]

    def logs(self, name: str, tail: int = 50) -> list[str]:
        """The last lines of the service's tasks (every node's), or none when it is gone."""
        try:
            chunks = self.api.service_logs(name, stdout=True, stderr=True, tail=tail, follow=False)
            text = b"".join(chunks).decode("utf-8", errors="replace")
        except (DockerException, requests.RequestException):
            return []
        return text.splitlines()[-tail:]

    def output(self, name: str, *, tail: int = 100, since: float | None = None) -> list[tuple[float, str]]:
        """What the service's tasks wrote, on every node (the manager collects it), as the
        Engine's `output` gives a container's: the last `tail` lines, oldest first, (unix time,
        text), only those after `since`; [] when the service is gone."""
        try:
            raw = b"".join(self.api.service_logs(name, stdout=True, stderr=True, timestamps=True, tail=tail,
                                                 since=since, follow=False))
        except NotFound:
            return []
        except (DockerException, requests.RequestException) as exc:
            raise EngineUnavailable(f"the Swarm manager cannot be asked: {exc}") from None
        return sorted(timestamped_lines(raw, since))[-tail:]

    def evidence(self, name: str, followed: Followed) -> dict:
        """Why this deployment's tasks failed, as the manager reported it, and their output."""
        return {"tasks": followed.seen[-20:], "logs": self.logs(name)}
