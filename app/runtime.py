"""The one interface the deploy job and reconcile run apps through, whatever runs them.

`RUNTIME=docker` runs each app+phase on one Docker engine, in two slots behind Caddy;
`RUNTIME=swarm` runs it as a Swarm service (issue 13). Both implement `Runtime`; the deploy
job (workers/deploy.py) calls it in the order of Kamal's boot and never knows which one runs:

    observed = runtime.observe(target, serving_deployment)
    started = runtime.start(spec, observed)                # new instances, no requests yet
    health = runtime.wait_healthy(spec, started)           # our health gate, every new instance
    if not health.ok: runtime.discard(started)             # the old ones serve on; fail
    url = runtime.take_over(spec, started)                 # every new request goes to the new ones
    (drain) runtime.retire(observed.serving + observed.others, stop_timeout)

This module holds only values and the protocol: no engine, no router, no database. The
method docstrings are the contract a runtime implements.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from app.health import HealthResult
from app.pipeline import DEFAULT_STOP_TIMEOUT

#: Labels on every app instance a runtime creates (the instance label is the adapter's).
LABEL_APP = "release-pipeline.app"
LABEL_PHASE = "release-pipeline.phase"
LABEL_VERSION = "release-pipeline.version"
LABEL_SHA = "release-pipeline.sha"
LABEL_DEPLOYMENT = "release-pipeline.deployment"


class RuntimeKind(StrEnum):
    """The RUNTIME setting."""

    DOCKER = "docker"
    SWARM = "swarm"


@dataclass(frozen=True)
class PhaseRef:
    """Which app+phase: the database id (the docker runtime keys its slot ports by it) and names."""

    app_id: int
    app: str
    phase: str


@dataclass(frozen=True)
class Limits:
    """Per-instance sizing from the profile: memory like "512m", cpus in cores; None: unlimited."""

    memory: str | None = None
    cpus: float | None = None


@dataclass(frozen=True)
class HealthGate:
    """Our health check: GET `path` must answer 2xx/3xx within `timeout` seconds."""

    path: str = "/"
    timeout: float = 30.0


@dataclass(frozen=True)
class PhaseSpec:
    """What one deployment wants running on its phase (the desired state)."""

    target: PhaseRef
    deployment_id: int
    version: str
    sha: str
    #: The image id as built on this installation's engine; a runtime that runs it elsewhere
    #: (swarm) pushes it to its registry itself.
    image: str
    #: The port the app listens on inside its container (also given to it as $PORT).
    port: int
    env: dict[str, str] = field(default_factory=dict, hash=False)
    replicas: int = 1
    limits: Limits = Limits()
    health: HealthGate = HealthGate()
    #: Seconds between SIGTERM and SIGKILL when an instance of this deployment is stopped.
    stop_timeout: int = DEFAULT_STOP_TIMEOUT
    #: The backing services' network the instances join (app.services), if any.
    network: str | None = None

    @property
    def labels(self) -> dict[str, str]:
        """What every instance of this deployment is labelled with (besides the installation)."""
        return {LABEL_APP: self.target.app, LABEL_PHASE: self.target.phase, LABEL_VERSION: self.version,
                LABEL_SHA: self.sha, LABEL_DEPLOYMENT: str(self.deployment_id)}


@dataclass(frozen=True)
class Instance:
    """One running (or dead) copy of an app version: a container, or a Swarm task."""

    id: str
    name: str
    app: str
    phase: str
    #: The deployment that started it (from its labels); None for an unlabelled leftover.
    deployment_id: int | None
    version: str | None
    running: bool
    #: "host:port" the router dials to reach it; None when it publishes nothing (stopped).
    address: str | None
    #: The Swarm node it runs on; None on the docker runtime.
    node: str | None = None
    #: The engine's own word for its state ("running", "restarting", "exited", …), if it has one.
    state: str | None = None

    @property
    def port(self) -> int | None:
        return int(self.address.rpartition(":")[2]) if self.address else None


@dataclass(frozen=True)
class Observed:
    """What runs for one app+phase now, as the runtime sees it."""

    target: PhaseRef
    #: The instances the phase URL sends requests to now (of the serving deployment).
    serving: tuple[Instance, ...] = ()
    #: Every other instance of the phase: old versions, leftovers of a killed deploy.
    others: tuple[Instance, ...] = ()

    @property
    def version(self) -> str | None:
        return self.serving[0].version if self.serving else None


@dataclass(frozen=True)
class Started:
    """The new deployment's instances, started but not yet sent any request."""

    instances: tuple[Instance, ...]
    #: Names of leftovers (dead, or in the new instances' way) removed before starting.
    removed: tuple[str, ...] = ()
    #: Instances of `Observed.others` that still serve nothing and should be retired with the
    #: serving ones after the switch.
    to_retire: tuple[Instance, ...] = ()
    #: Where they run, in the deployment log's words ("slot port 20001").
    where: str = ""
    #: The runtime already stopped the old instances while starting these, each once its
    #: replacement was healthy (Swarm's start-first update): nothing is left to retire.
    retired_old: bool = False


@dataclass(frozen=True)
class Retired:
    """How one old instance stopped: `killed` when it ignored SIGTERM for the whole stop timeout."""

    name: str
    killed: bool
    seconds: float = 0.0


@runtime_checkable
class Runtime(Protocol):
    """Runs app versions for the deploy job and reconcile. Every method raises only
    `DeployFailed` (the engine refused or the spec cannot run: the message is for the deployment
    log), `RouterError` (the router refused or is unreachable) or `EngineUnavailable` (the engine
    cannot be reached); never an engine library's own exceptions."""

    kind: RuntimeKind
    #: Where the backing services run (`app.services.ServiceHost`): the engine on `docker`,
    #: Swarm services on `swarm`; app.services decides, this carries it out.
    services: Any

    def check(self, spec: PhaseSpec) -> None:
        """Refuse, before anything starts, a spec this runtime cannot run as asked (DeployFailed)."""

    def observe(self, target: PhaseRef, serving_deployment: int | None) -> Observed:
        """What runs for `target`; `serving_deployment` is the deployment our history says
        serves it (None: nothing yet), used to tell serving instances from the rest."""

    def start(self, spec: PhaseSpec, observed: Observed) -> Started:
        """Start `spec.replicas` new instances beside the serving ones, receiving no requests
        yet. Leftovers in the way are removed first. On failure nothing new is left running."""

    def wait_healthy(self, spec: PhaseSpec, started: Started,
                     progress: Callable[[str], None] | None = None) -> HealthResult:
        """Our health gate: ok only once every started instance answered `spec.health.path`
        with 2xx/3xx within `spec.health.timeout` (each); ends at the first that fails or exits.
        `progress` is told where a wait stands every few seconds (app.health.wait_healthy)."""

    def discard(self, started: Started) -> list[str]:
        """A failed start: remove the new instances (the old ones serve on, the route is not
        touched) and return their last output lines, the evidence for the deployment log."""

    def take_over(self, spec: PhaseSpec, started: Started) -> str:
        """Send every new request of the phase URL to the started instances (all of them);
        returns the phase URL. Once it returns, the old instances get no new requests."""

    def retire(self, instances: Sequence[Instance], stop_timeout: int) -> list[Retired]:
        """Stop and remove old instances (SIGTERM, SIGKILL after `stop_timeout` s), once the
        deploy job let them drain; instances already gone are skipped."""

    def run_once(self, spec: PhaseSpec, argv: list[str], *, timeout: float,
                 on_line: Callable[[str], None]) -> int | None:
        """The release command: `argv` once in a new instance of `spec.image` with its env and
        network, output streamed to `on_line`; its exit code, None after `timeout` s (killed)."""

    def instances(self, app: str | None = None) -> list[Instance]:
        """Every app instance this installation runs (of one app), any phase, any state."""

    def remove(self, instance: Instance) -> None:
        """Remove an instance nobody expects (reconcile); gone already is fine."""

    def restore_route(self, target: PhaseRef, serving: Sequence[Instance]) -> bool:
        """Make the router send `target`'s requests to `serving` (after a router restart, or a
        worker killed between its switch and its record); True if anything changed."""

    def output_source(self, target: PhaseRef, deployment_id: int, container_id: str | None) -> tuple[str | None, bool]:
        """What `services.output` reads the output of the deployment serving `target` by (its
        container; its Swarm service, every task on every node), or None when nothing of it is
        left; and whether it runs. `container_id` is what the deployment recorded."""
