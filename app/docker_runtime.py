"""RUNTIME=docker: each app+phase on one Docker engine, in two slots behind the router.

Every app+phase owns two fixed loopback ports, its slots (app.slots). A deployment's first
container publishes on the slot the serving one does not use; its other replicas (profile
`replicas` > 1) on ports the engine picks. The router lists the serving slot first (one
replica) or spreads requests over every serving replica (several), so switching is one route
change (app.adapters.router). Deciding — which slot, what is in the way, what to retire, what
the route lists — is done by the pure functions here; `DockerRuntime` only carries it out.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from app.adapters.docker import ContainerEvent, ContainerInfo, ContainerSpec, Engine
from app.adapters.router import Router, Slots
from app.db import Database
from app.exceptions import DeployFailed
from app.health import HealthResult, wait_healthy
from app.runtime import (
    LABEL_APP,
    LABEL_DEPLOYMENT,
    LABEL_PHASE,
    LABEL_VERSION,
    Instance,
    Observed,
    PhaseRef,
    PhaseSpec,
    Retired,
    RuntimeKind,
    Started,
)
from app.slots import find_slots, phase_slots

log = logging.getLogger(__name__)

#: Seconds a container that will never serve (a leftover, a failed new one) gets to stop.
QUICK_STOP = 2
#: Seconds before watching the engine's containers again after it went away.
WATCH_RETRY = 2.0


# -- deciding ----------------------------------------------------------------------------------


def instance_of(info: ContainerInfo) -> Instance:
    """The runtime's view of one of our app containers."""
    deployment = info.labels.get(LABEL_DEPLOYMENT, "")
    return Instance(
        id=info.id, name=info.name, app=info.labels.get(LABEL_APP, ""), phase=info.labels.get(LABEL_PHASE, ""),
        deployment_id=int(deployment) if deployment.isdigit() else None,
        version=info.labels.get(LABEL_VERSION), running=info.status == "running",
        address=f"127.0.0.1:{info.host_port}" if info.host_port else None, state=info.status)


def split_serving(instances: Sequence[Instance], serving_deployment: int | None,
                  slots: Slots) -> tuple[tuple[Instance, ...], tuple[Instance, ...]]:
    """(serving, others): the running instances of the serving deployment, the one on a slot
    first; when none runs (its record is stale), those of the running container on the slot
    the router prefers (A, then B), else of any running one."""
    running = [i for i in instances if i.running]
    chosen = serving_deployment if any(i.deployment_id == serving_deployment for i in running) else None
    if chosen is None and running:
        on_slots = sorted((i for i in running if i.port in slots.ports), key=lambda i: i.port != slots.a)
        first = on_slots[0] if on_slots else running[0]
        serving = [first] + [i for i in running if i is not first and i.deployment_id is not None
                             and i.deployment_id == first.deployment_id]
    else:
        serving = [i for i in running if i.deployment_id == chosen]
    serving.sort(key=lambda i: i.port not in slots.ports)
    return tuple(serving), tuple(i for i in instances if i not in serving)


@dataclass(frozen=True)
class Placement:
    """Where a deployment's new containers go and what has to make way."""

    #: The free slot: the first replica publishes there, the others on ports the engine picks.
    port: int
    #: Leftovers to remove before starting: dead ones, and any on the free slot.
    remove: tuple[Instance, ...]
    #: Old running ones that serve nothing but stay until the switch, then are retired.
    retire: tuple[Instance, ...]


def place(observed: Observed, slots: Slots) -> Placement:
    serving_port = next((i.port for i in observed.serving if i.port in slots.ports), None)
    port = slots.other(serving_port)
    return Placement(
        port=port,
        remove=tuple(i for i in observed.others if not i.running or i.port == port),
        retire=tuple(i for i in observed.others if i.running and i.port != port))


def container_spec(spec: PhaseSpec, replica: int = 0, host_port: int | None = None) -> ContainerSpec:
    return ContainerSpec(app=spec.target.app, phase=spec.target.phase, version=spec.version, sha=spec.sha,
                         deployment_id=spec.deployment_id, image=spec.image, env=dict(spec.env), port=spec.port,
                         memory=spec.limits.memory, cpus=spec.limits.cpus, network=spec.network,
                         host_port=host_port, replica=replica)


def container_specs(spec: PhaseSpec, port: int) -> list[ContainerSpec]:
    """One container per replica, the first on the free slot `port`."""
    return [container_spec(spec, replica, port if replica == 0 else None) for replica in range(spec.replicas)]


def describe_place(port: int, replicas: int) -> str:
    """Where the new version runs, in the deployment log's words."""
    if replicas == 1:
        return f"slot port {port}"
    return f"slot port {port} and {replicas - 1} more port{'s' if replicas > 2 else ''}"


def route_ports(serving: Sequence[Instance], slots: Slots) -> tuple[int, tuple[int, ...]] | None:
    """(slot port, other replicas' ports in order) for the router to send requests to
    `serving`, the one on a slot first; None when none publishes on a slot (then the route
    cannot be restored, only a redeploy helps). In order, so that the same replicas always
    make the same route: an unchanged route is never written again."""
    ports = [i.port for i in serving if i.port is not None]
    if not ports or ports[0] not in slots.ports:
        return None
    return ports[0], tuple(sorted(ports[1:]))


def combine_health(results: Sequence[HealthResult], replicas: int) -> HealthResult:
    """One gate for all `replicas`, checked in turn until one fails (`results`): that failure,
    else a pass naming how many passed."""
    for index, result in enumerate(results):
        if not result.ok:
            prefix = f"replica {index + 1} of {replicas}: " if replicas > 1 else ""
            return HealthResult(False, result.attempts, result.responses, prefix + result.reason)
    last = results[-1]
    reason = last.reason if replicas == 1 else f"{replicas} replicas {last.reason}"
    return HealthResult(True, sum(r.attempts for r in results), last.responses, reason)


# -- doing -------------------------------------------------------------------------------------


class WatchedContainers:
    """Our app containers as the engine last said, kept current from its event stream by a
    thread of their own: the portal's pages read health from here instead of asking the engine
    for every container each time (600 containers: ~60 ms of dockerd per page under load).

    `instances` is None until the first list and while the stream is down: the caller then
    asks the engine itself. Each event re-reads its one container; the stream is opened before
    the list, so nothing between the two is missed."""

    def __init__(self, engine: Engine, retry: float = WATCH_RETRY):
        self.engine, self.retry = engine, retry
        self._lock = threading.Lock()
        self._by_id: dict[str, ContainerInfo] | None = None
        self._stopping = threading.Event()
        self._changes = None
        self._thread = threading.Thread(target=self._run, name="watch-containers", daemon=True)

    def start(self) -> WatchedContainers:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._changes is not None:
            self._changes.close()
        self._thread.join(timeout=10)

    def instances(self, app: str | None = None) -> list[Instance] | None:
        with self._lock:
            found = None if self._by_id is None else list(self._by_id.values())
        if found is None:
            return None
        return [instance_of(c) for c in found if app is None or c.labels.get(LABEL_APP) == app]

    def _after(self, event: ContainerEvent) -> ContainerInfo | None:
        """The container as `event` left it: read again (for its port), in the state the event
        names; the engine's list can still show the state before, or not show it yet."""
        if event.state is None:
            return None
        info = self.engine.app_container(event.id) or event.info
        return info if not event.state else replace(info, status=event.state)

    def _run(self) -> None:
        problem = None
        while not self._stopping.is_set():
            try:
                self._changes = self.engine.app_container_changes()
                listed = {c.id: c for c in self.engine.list_containers()}
                with self._lock:
                    self._by_id = listed
                if problem:
                    log.info("watching the engine's containers again")
                problem = None
                for event in self._changes:
                    info = self._after(event)
                    with self._lock:
                        if info is None:
                            self._by_id.pop(event.id, None)
                        else:
                            self._by_id[event.id] = info
            except Exception as exc:  # noqa: BLE001 - any engine trouble: pages ask the engine meanwhile
                if str(exc) != problem:
                    log.warning("cannot watch the engine's containers (%s); pages list them until it answers", exc)
                problem = str(exc)
            with self._lock:
                self._by_id = None
            self._stopping.wait(self.retry)


class DockerRuntime:
    """`app.runtime.Runtime` on one engine and the router."""

    kind = RuntimeKind.DOCKER

    def __init__(self, engine: Engine, router: Router, db: Database, slot_range: tuple[int, int], *,
                 spreads: bool):
        self.engine, self.router, self.db, self.slot_range = engine, router, db, slot_range
        self.services = engine
        #: Whether the router can spread a phase's requests over several ports (Caddy can;
        #: ROUTER=direct gives a phase one port).
        self.spreads = spreads

    def slots(self, target: PhaseRef) -> Slots:
        with self.db.session() as session:
            return phase_slots(session, target.app_id, target.phase, self.slot_range)

    def check(self, spec: PhaseSpec) -> None:
        if spec.replicas > 1 and not self.spreads:
            raise DeployFailed(f"replicas: {spec.replicas} needs ROUTER=caddy: without a proxy the phase URL is "
                               "one container's port (or set replicas: 1)")

    def observe(self, target: PhaseRef, serving_deployment: int | None) -> Observed:
        instances = [instance_of(c) for c in self.engine.list_containers(app=target.app, phase=target.phase)]
        serving, others = split_serving(instances, serving_deployment, self.slots(target))
        return Observed(target=target, serving=serving, others=others)

    def start(self, spec: PhaseSpec, observed: Observed) -> Started:
        placement = place(observed, self.slots(spec.target))
        for leftover in placement.remove:
            self.engine.stop_and_remove(leftover.id, timeout=QUICK_STOP)
        started: list[Instance] = []
        try:
            for container_spec in container_specs(spec, placement.port):
                container = self.engine.run_container(container_spec)
                started.append(Instance(
                    id=container.id, name=container.name, app=spec.target.app, phase=spec.target.phase,
                    deployment_id=spec.deployment_id, version=spec.version, running=True,
                    address=f"127.0.0.1:{container.host_port}"))
        except BaseException:
            self.discard(Started(instances=tuple(started)))
            raise
        return Started(instances=tuple(started), removed=tuple(i.name for i in placement.remove),
                       to_retire=placement.retire, where=describe_place(placement.port, spec.replicas))

    def wait_healthy(self, spec: PhaseSpec, started: Started,
                     progress: Callable[[str], None] | None = None) -> HealthResult:
        results = []
        for instance in started.instances:
            result = wait_healthy(f"http://{instance.address}{spec.health.path}", timeout=spec.health.timeout,
                                  is_alive=lambda i=instance: not self.engine.has_crashed(i.id), progress=progress)
            results.append(result)
            if not result.ok:
                break
        return combine_health(results, len(started.instances))

    def discard(self, started: Started) -> list[str]:
        several = len(started.instances) > 1
        lines: list[str] = []
        for instance in started.instances:
            lines += [f"[{instance.name}] {line}" if several else line
                      for line in self.engine.container_logs(instance.id, tail=50)]
            self.engine.stop_and_remove(instance.id, timeout=QUICK_STOP)
        return lines

    def take_over(self, spec: PhaseSpec, started: Started) -> str:
        slots = self.slots(spec.target)
        serving, also = route_ports(started.instances, slots)
        self.router.ensure_route(spec.target.app, spec.target.phase, slots, serving=serving, also=also)
        return self.router.url_for(spec.target.app, spec.target.phase, serving)

    def retire(self, instances: Sequence[Instance], stop_timeout: int) -> list[Retired]:
        retired = []
        for instance in instances:
            stopped = self.engine.stop_and_remove(instance.id, timeout=stop_timeout)
            if stopped is not None:
                retired.append(Retired(name=instance.name, killed=stopped.killed, seconds=stopped.seconds))
        return retired

    def run_once(self, spec: PhaseSpec, argv: list[str], *, timeout: float,
                 on_line: Callable[[str], None]) -> int | None:
        return self.engine.run_release(container_spec(spec), argv, timeout=timeout, on_line=on_line)

    def instances(self, app: str | None = None) -> list[Instance]:
        return [instance_of(c) for c in self.engine.list_containers(app=app)]

    def remove(self, instance: Instance) -> None:
        self.engine.stop_and_remove(instance.id, timeout=QUICK_STOP)

    def output_source(self, target: PhaseRef, deployment_id: int, container_id: str | None) -> tuple[str | None, bool]:
        container = next((c for c in self.engine.list_containers(app=target.app, phase=target.phase)
                          if c.id == container_id or c.labels.get(LABEL_DEPLOYMENT) == str(deployment_id)), None)
        return (container.id, container.status == "running") if container is not None else (None, False)

    def restore_route(self, target: PhaseRef, serving: Sequence[Instance]) -> bool:
        with self.db.session() as session:
            slots = find_slots(session, target.app_id, target.phase)
        ports = route_ports(serving, slots) if slots is not None else None
        if ports is None:
            return False
        return self.router.ensure_route(target.app, target.phase, slots, serving=ports[0], also=ports[1])
