"""Backing services per app and phase: each phase's own database, cache, … (README, Backing services; issue 9).

A repository declares `services:` in `.release-pipeline.yml` (see `app.pipeline.Service`).
This module decides; the runtime's `services` host carries it out (`ServiceHost`): on
`RUNTIME=docker` the Docker engine, with the objects below; on `RUNTIME=swarm` Swarm services
(app.swarm_runtime.SwarmServices): the same names, an attachable overlay network, each service
with data pinned to the node its volume lives on (chosen once, recorded in `ServiceInstance.node`).
For every app+phase this module keeps, on the Docker engine:

- one bridge network `<instance>-<app>-<phase>`; the app container joins it and reaches each
  service by its name (network alias), nothing is published on the host;
- per service a named data volume `<instance>-<app>.<phase>.<service>.data` (when `data:` is set),
  a container `<instance>-<app>.<phase>.<service>` (restart policy unless-stopped, sized by the
  phase profile), and a password generated once and stored, sealed, as the phase's own secret
  `<SERVICE>_PASSWORD` (`models.Profile.secrets`); it is never logged nor returned by the API.

Nothing is shared between phases: Stage gets its own network, volumes, containers, password.

Lifecycle. `provision()` runs inside the deploy job, under the phase's deploy lock, *before* the
new app container starts, so a service that cannot start fails the deployment while the phase
keeps serving. An instance whose definition is unchanged is reused untouched (deploys,
promotions, rollbacks never recreate it). A changed definition is recorded as pending
(`ServiceInstance.pending_hash`, shown in the portal) and applied on the next deploy that sees
the same definition again (not on rollbacks/restores), keeping the data volume; if the new
definition does not become healthy, the previous one is started again and the deploy fails.
Only `remove()` (an explicit, confirmed portal/API action) deletes containers, data and network.

The definition hash covers what the container is made of (image/build, dockerfile, command,
port, environment, data, healthcheck) — not `exports` or `health_timeout`, which apply at once.
A `build:` service is built once per definition hash (shared by the app's phases): a change
of files under its directory alone is not noticed; change the definition to rebuild it.
An `image:` service must already be on the engine: this module never pulls.

How the deploy job calls it (before the runtime starts the new version, in `deploy`)::

    from app import services

    provisioned = services.provision(
        ctx, app_name=app_name, app_id=app_id, phase=phase, repo_config=repo_config,
        checkout_archive=archive_of_commit,   # Callable[[str], bytes]: tar of that directory at
                                              # the deployed commit; called only to build a
                                              # `build:` service (may clone lazily), else unused
        say=self.say,                         # deployment log; never receives a password
        snapshot=snapshot,                    # the profile snapshot: memory/cpus for services
        apply_pending=deployment.trigger not in ("rollback", "restore"),
    )
    spec = ContainerSpec(..., env={**container_env(snapshot, ctx.box), **provisioned.env},
                         network=provisioned.network)

Before resolving the deployment's profile snapshot, call
`services.ensure_passwords(ctx, app_id=app_id, phase=phase, repo_config=repo_config, say=self.say)`
so the snapshot holds the phase's own `<SERVICE>_PASSWORD` secrets (otherwise a phase's first
snapshot inherits the previous phase's password, and the board shows the profile as edited).
`provisioned.env` (exports rendered with {host}/{port}/{password}, plus each `<SERVICE>_PASSWORD`)
must still be merged *last*. `provisioned.network` is None when the app has no services at all.
Errors are `ReleasePipelineError`s (ConfigError, BuildFailed, DeployFailed) with a clear reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import delete, select

from app.adapters.docker import ServiceState, parse_size
from app.crypto import mask
from app.exceptions import ConfigError, DeployFailed, EngineUnavailable, ReleasePipelineError
from app.models import App, AuditEntry, Profile, ServiceInstance, ServiceStatus, utcnow
from app.pipeline import REPO_FILE, RepoConfig, Service

log = logging.getLogger(__name__)

ACTOR = "release-pipeline"
#: Without any health check, a service counts as ready once it has kept running this long.
SETTLE_SECONDS = 1.0
POLL_SECONDS = 0.25
#: Fields that do not change the container: changing them never recreates a service.
NOT_IN_DEFINITION = {"exports", "health_timeout"}


@dataclass(frozen=True)
class Provisioned:
    """What the app container needs: the network to join and the variables to add."""

    network: str | None
    env: dict[str, str] = field(default_factory=dict, repr=False)  # holds passwords: never printed


class ServiceUnhealthy(DeployFailed):
    """A backing service did not start or did not pass its health check in time."""


class ServiceHost(Protocol):
    """What provisioning asks of where services run: `app.adapters.docker.Engine` (one engine)
    or `app.swarm_runtime.SwarmServices`. A "container id" is whatever the host names a running
    service by; its methods' docstrings (the Engine's) are the contract."""

    instance: str
    LABEL_SERVICE: str
    LABEL_SERVICE_PHASE: str
    LABEL_SERVICE_DEFINITION: str

    def ensure_network(self, name: str, *, app: str, phase: str) -> str: ...
    def ensure_volume(self, name: str, *, app: str, phase: str, service: str) -> str: ...
    def volume_node(self, known: str | None) -> str | None: ...
    def inspect_local_image(self, reference: str) -> tuple[str, dict[str, str]] | None: ...
    def built_for(self, labels: dict[str, str], app: str) -> bool: ...
    def find_service_image(self, app: str, service: str, definition: str) -> str | None: ...
    def build_service_image(self, *, app: str, service: str, definition: str, context_tar: bytes,
                            dockerfile: str = "Dockerfile", on_line: Callable[[str], None]) -> str: ...
    def remove_service_image(self, image_id: str) -> bool: ...
    def run_service_container(self, *, app: str, phase: str, service: str, definition: str, image: str,
                              network: str, env: dict[str, str], command: list[str] | None = None,
                              volume: str | None = None, data_path: str | None = None, memory: str | None = None,
                              cpus: float | None = None, healthcheck: list[str] | str | None = None,
                              node: str | None = None) -> str: ...
    def service_containers(self, app: str, phase: str | None = None) -> list: ...
    def service_state(self, container_id: str) -> ServiceState | None: ...
    def exec_check(self, container_id: str, command: list[str] | str, timeout: float = 5.0) -> int | None: ...
    def keep_running(self, container_id: str) -> None: ...
    def start_service_container(self, container_id: str) -> None: ...
    def update_service_resources(self, container_id: str, memory: str | None, cpus: float | None) -> None: ...
    def remove_service_container(self, container_id: str, timeout: int = 10) -> None: ...
    def service_logs(self, container_id: str, tail: int = 20) -> list[str]: ...
    def output(self, container_id: str, *, tail: int = 100, since: float | None = None) -> list[tuple[float, str]]: ...
    def volume_sizes(self) -> dict[str, int | None]: ...
    def remove_services(self, app: str, phase: str) -> list[str]: ...


# --- names ------------------------------------------------------------------------------------


def network_name(instance: str, app: str, phase: str) -> str:
    return f"{instance}-{app}-{phase}"


def volume_name(instance: str, app: str, phase: str, service: str) -> str:
    return f"{instance}-{app}.{phase}.{service}.data"


def secret_name(service: str) -> str:
    """The phase secret holding a service's password: `db` → DB_PASSWORD, `my-cache` → MY_CACHE_PASSWORD."""
    return f"{service.upper().replace('-', '_')}_PASSWORD"


def definition_hash(service: Service) -> str:
    runtime = service.model_dump(mode="json", exclude=NOT_IN_DEFINITION)
    return hashlib.sha256(json.dumps(runtime, sort_keys=True).encode()).hexdigest()


def render(template: str, *, host: str, port: int, password: str) -> str:
    """Replace the literal placeholders {host}, {port} and {password}; other braces stay as they are."""
    return template.replace("{host}", host).replace("{port}", str(port)).replace("{password}", password)


# --- provisioning -----------------------------------------------------------------------------


def provision(
    ctx,
    *,
    app_name: str,
    app_id: int,
    phase: str,
    repo_config: RepoConfig,
    checkout_archive: Callable[[str], bytes] | None,
    say: Callable[[str], None],
    snapshot: dict[str, Any] | None = None,
    apply_pending: bool = True,
) -> Provisioned:
    """Make sure the phase's declared services run healthy; return what the app container needs.

    See the module docstring for the call the deploy job makes. Idempotent: calling it again
    with the same definitions touches nothing and returns the same network and variables.
    """
    try:
        return _provision(ctx, app_name, app_id, phase, repo_config, checkout_archive, say, snapshot or {},
                          apply_pending)
    except EngineUnavailable as exc:
        # Engine trouble (unreachable, API error) is a failed deployment with a reason, not a crash.
        raise DeployFailed(f"backing services of {phase}: the Docker engine failed ({exc})") from None


def _provision(ctx, app_name: str, app_id: int, phase: str, repo_config: RepoConfig,
               checkout_archive: Callable[[str], bytes] | None, say: Callable[[str], None],
               snapshot: dict[str, Any], apply_pending: bool) -> Provisioned:
    declared = repo_config.services
    with ctx.db.session() as session:
        known = {row.name: row for row in session.scalars(select(ServiceInstance).where(
            ServiceInstance.app_id == app_id, ServiceInstance.phase == phase)).all()}
    if not declared and not known:
        return Provisioned(network=None, env={})
    _check_exports(declared)
    host: ServiceHost = ctx.runtime.services
    network = host.ensure_network(network_name(host.instance, app_name, phase), app=app_name, phase=phase)
    for name in sorted(set(known) - set(declared)):
        say(f"service {name} is no longer declared in {REPO_FILE}: it keeps running with its data "
            f"(remove the {phase} services in the portal to delete them)")
    provisioner = _Provisioner(ctx, app_name, app_id, phase, network, checkout_archive, say, snapshot)
    env: dict[str, str] = {}
    for name, service in declared.items():
        env.update(provisioner.ensure(name, service, known.get(name), apply_pending=apply_pending))
    return Provisioned(network=network, env=env)


def ensure_passwords(ctx, *, app_id: int, phase: str, repo_config: RepoConfig,
                     say: Callable[[str], None] | None = None) -> list[str]:
    """Generate (once) and store each declared service's `<NAME>_PASSWORD` phase secret.

    Cheap (database only). Call it before resolving the profile snapshot of a deployment, so the
    snapshot already holds the phase's own passwords (not a previous phase's inherited ones);
    `provision` does it too. Returns the secret names.
    """
    provisioner = _Provisioner(ctx, "", app_id, phase, "", None, say if say is not None else (lambda line: None), {})
    names = []
    for name in repo_config.services:
        provisioner.password(name, None)
        names.append(secret_name(name))
    return names


def _check_exports(declared: dict[str, Service]) -> None:
    exported: dict[str, str] = {}
    for name, service in declared.items():
        for variable in [secret_name(name), *service.exports]:
            other = exported.get(variable)
            if other is not None and other != name:
                raise ConfigError(f"{REPO_FILE}: services/{name}/exports: {variable} is also given to the app "
                                  f"by services/{other}")
            exported[variable] = name


class _Provisioner:
    def __init__(self, ctx, app_name: str, app_id: int, phase: str, network: str,
                 checkout_archive: Callable[[str], bytes] | None, say: Callable[[str], None],
                 snapshot: dict[str, Any]):
        self.ctx = ctx
        self.app_name, self.app_id, self.phase, self.network = app_name, app_id, phase, network
        self.checkout_archive = checkout_archive
        self.snapshot = snapshot
        self.hidden: list[str] = []
        self._say = say

    @property
    def host(self) -> ServiceHost:
        """Where the services run (the runtime's host), looked up only when one is touched."""
        return self.ctx.runtime.services

    def say(self, text: str) -> None:
        self._say(mask(text, self.hidden))

    # One service ------------------------------------------------------------------------------

    def ensure(self, name: str, wanted: Service, row: ServiceInstance | None, *, apply_pending: bool) -> dict:
        password = self.password(name, row)
        self.hidden.append(password)
        wanted_hash = definition_hash(wanted)
        running = _stored_service(row)
        target, target_hash, previous = wanted, wanted_hash, None
        pending: str | None = None
        if row is not None and running is not None and row.definition_hash != wanted_hash:
            if apply_pending and row.pending_hash == wanted_hash:
                self.say(f"service {name}: applying its changed definition ({row.definition_hash[:12]} → "
                         f"{wanted_hash[:12]}); its data volume is kept")
                previous = running
            else:
                target, target_hash, pending = running, row.definition_hash, wanted_hash
                if row.pending_hash != wanted_hash:
                    self.say(f"service {name}: the repository changed its definition; the running instance "
                             f"is kept and the change ({wanted_hash[:12]}) is applied on the next deploy to "
                             f"{self.phase}{'' if apply_pending else ' (not on a rollback)'}")
        elif row is not None and row.pending_hash and row.definition_hash == wanted_hash:
            self.say(f"service {name}: the pending definition change was withdrawn; nothing to apply")
        volume = (self.host.ensure_volume(volume_name(self.host.instance, self.app_name, self.phase, name),
                                          app=self.app_name, phase=self.phase, service=name)
                  if target.data else None)
        # Where its data lives, once and for good (a swarm's node; None on one engine).
        node = self.host.volume_node(row.node if row is not None else None) if volume else None
        try:
            image_id = self.image(name, target, target_hash)
            container_id = self.container(name, target, target_hash, image_id, volume, password, row, node)
        except ReleasePipelineError as exc:
            self.record(name, row, status=ServiceStatus.FAILED, pending=pending if pending else
                        (wanted_hash if previous is not None else None))
            if previous is not None:
                self.restore(name, previous, row, volume, password, node, pending=wanted_hash)
            raise type(exc)(mask(str(exc), self.hidden)) from None
        self.record(name, row, status=ServiceStatus.HEALTHY, pending=pending, definition=target, definition_hash=target_hash,
                    exports=wanted.exports, image_id=image_id, container_id=container_id, volume=volume, node=node)
        if previous is not None and row is not None and row.image_id and row.image_id != image_id:
            self.host.remove_service_image(row.image_id)  # kept when another phase still uses it
        exported = {secret_name(name): password}
        for variable, template in wanted.exports.items():
            exported[variable] = render(template, host=name, port=target.port, password=password)
        return exported

    def password(self, name: str, row: ServiceInstance | None) -> str:
        """The phase's own `<NAME>_PASSWORD` secret, generated and sealed the first time."""
        key = secret_name(name)
        with self.ctx.db.session() as session:
            profile = session.scalar(select(Profile).where(Profile.app_id == self.app_id, Profile.phase == self.phase))
            stored = (profile.secrets or {}).get(key) if profile is not None else None
            if stored:
                return self.ctx.box.open(stored)
            password = secrets.token_urlsafe(24)
            if profile is None:
                profile = Profile(app_id=self.app_id, phase=self.phase, env={}, secrets={}, updated_by=ACTOR)
                session.add(profile)
            profile.secrets = {**(profile.secrets or {}), key: self.ctx.box.seal(password)}
            session.add(AuditEntry(actor=ACTOR, app_id=self.app_id, phase=self.phase, action="services.password",
                                   detail={"service": name, "secret": key}))
        if row is not None and row.volume:
            self.say(f"service {name}: the {self.phase} secret {key} was missing, so a new password was "
                     "generated; a service that keeps its password with its data may refuse it")
        else:
            self.say(f"service {name}: generated its password, stored as the {self.phase} secret {key}")
        return password

    def image(self, name: str, service: Service, definition: str) -> str:
        if service.image is not None:
            found = self.host.inspect_local_image(service.image)
            if found is None:
                raise DeployFailed(
                    f"service {name}: image {service.image} is not on the Docker engine, and service images "
                    f"are never pulled by the pipeline; pull it on the engine first (docker pull "
                    f"{service.image}) or declare build: instead")
            image_id, labels = found
            # An image id or name could be another app's (or installation's) image, with its files.
            if service.image not in self.ctx.config.images.allow and not self.host.built_for(labels, self.app_name):
                raise DeployFailed(
                    f"service {name}: image {service.image[:100]} was not built by this installation for "
                    f"{self.app_name} and is not in images.allow of pipeline.yml")
            return image_id
        image_id = self.host.find_service_image(self.app_name, name, definition)
        if image_id is not None:
            return image_id
        if self.checkout_archive is None:
            raise DeployFailed(f"service {name}: its image must be built from {service.build}, "
                               "but no checkout of the repository was supplied")
        self.say(f"service {name}: building {service.build}/{service.dockerfile} (definition {definition[:12]})")
        context = self.checkout_archive(service.build)
        return self.host.build_service_image(
            app=self.app_name, service=name, definition=definition, context_tar=context,
            dockerfile=service.dockerfile, on_line=lambda line: self.say(f"service {name}: {line}"))

    def container(self, name: str, service: Service, definition: str, image_id: str, volume: str | None,
                  password: str, row: ServiceInstance | None, node: str | None) -> str:
        host = self.host
        found = [c for c in host.service_containers(self.app_name, self.phase)
                 if c.labels.get(host.LABEL_SERVICE) == name]
        current = next((c for c in found if c.labels.get(host.LABEL_SERVICE_DEFINITION) == definition), None)
        memory, cpus = self.snapshot.get("memory"), self.snapshot.get("cpus")
        if current is not None:
            for stale in found:
                if stale is not current:
                    host.remove_service_container(stale.id)
            state = host.service_state(current.id)  # None: gone meanwhile, wait_healthy says so
            restarts = state.restarts if state is not None else 0
            if state is not None and state.status in ("created", "exited"):
                self.say(f"service {name}: starting its stopped container again")
                host.start_service_container(current.id)
                restarts = None
            if state is not None:
                self.resize(name, current.id, state, memory, cpus)
            self.wait_healthy(name, service, current.id, restarts_before=restarts)
            host.keep_running(current.id)
            self.say(f"service {name}: reusing its running instance (healthy, definition {definition[:12]})")
            return current.id
        for stale in found:
            self.say(f"service {name}: replacing its container (the data volume is kept)")
            host.remove_service_container(stale.id)
        env = {key: render(value, host=name, port=service.port, password=password)
               for key, value in service.environment.items()}
        self.say(f"service {name}: starting {service.image or service.build} on {self.network}"
                 + (f" with volume {volume}" if volume else "") + (f" on node {node}" if node else ""))
        container_id = host.run_service_container(
            app=self.app_name, phase=self.phase, service=name, definition=definition, image=image_id,
            network=self.network, env=env, command=service.command, volume=volume, data_path=service.data,
            memory=memory, cpus=cpus, healthcheck=service.healthcheck, node=node)
        try:
            started = time.monotonic()
            self.wait_healthy(name, service, container_id, restarts_before=0)
        except ServiceUnhealthy:
            host.remove_service_container(container_id, timeout=2)
            raise
        host.keep_running(container_id)
        self.say(f"service {name}: healthy after {time.monotonic() - started:.1f}s")
        return container_id

    def resize(self, name: str, container_id: str, state: ServiceState, memory: str | None,
               cpus: float | None) -> None:
        wanted_memory = parse_size(memory) if memory else None
        changed = (wanted_memory is not None and state.memory != wanted_memory) or (
            cpus is not None and abs((state.cpus or 0) - float(cpus)) > 1e-6)
        if not changed:
            return
        try:
            self.host.update_service_resources(container_id, memory, cpus)
            self.say(f"service {name}: resized to the {self.phase} profile ({memory or '—'}, {cpus or '—'} CPU)")
        except ReleasePipelineError as exc:
            self.say(f"service {name}: kept its sizing ({exc})")

    def wait_healthy(self, name: str, service: Service, container_id: str, *, restarts_before: int | None) -> None:
        host = self.host
        started = time.monotonic()
        deadline = started + service.health_timeout
        last = "no health check has answered yet"
        while True:
            state = host.service_state(container_id)
            if state is None:
                raise ServiceUnhealthy(f"service {name}: its container disappeared while starting")
            if restarts_before is None:
                restarts_before = state.restarts
            crashed = state.status in ("exited", "dead") or state.restarts > restarts_before
            if crashed:
                self.fail(name, container_id, f"service {name} exited with code {state.exit_code} while "
                                              f"starting")
            if state.status == "running":
                if service.healthcheck:
                    remaining = max(0.5, deadline - time.monotonic())
                    code = host.exec_check(container_id, service.healthcheck, timeout=min(5.0, remaining))
                    if code == 0:
                        return
                    last = ("its health check did not finish in time" if code is None
                            else f"its health check exited with {code}")
                elif state.has_image_healthcheck:
                    if state.health == "healthy":
                        return
                    last = f"the image's health check says {state.health or 'nothing yet'}"
                elif time.monotonic() - started >= SETTLE_SECONDS:
                    return
            if time.monotonic() >= deadline:
                self.fail(name, container_id, f"service {name} did not become healthy within "
                                              f"{service.health_timeout:g}s ({last})")
            time.sleep(POLL_SECONDS)

    def fail(self, name: str, container_id: str, reason: str) -> None:
        for line in self.host.service_logs(container_id, tail=20):
            self.say(f"service {name}: {line}")
        raise ServiceUnhealthy(reason)

    def restore(self, name: str, previous: Service, row: ServiceInstance, volume: str | None, password: str,
                node: str | None, *, pending: str) -> None:
        """Applying a changed definition failed: run the previous one again (best effort)."""
        self.say(f"service {name}: starting its previous definition ({row.definition_hash[:12]}) again")
        try:
            image_id = self.image(name, previous, row.definition_hash)
            container_id = self.container(name, previous, row.definition_hash, image_id, volume, password, row, node)
        except ReleasePipelineError as exc:
            self.say(f"service {name}: the previous definition did not start either: {exc}")
            return
        # Still pending: the next deploy tries the new definition again (and fails until it is fixed).
        self.record(name, row, status=ServiceStatus.HEALTHY, pending=pending, image_id=image_id, container_id=container_id)

    def record(self, name: str, row: ServiceInstance | None, *, status: ServiceStatus, pending: str | None,
               definition: Service | None = None, definition_hash: str | None = None,
               exports: dict[str, str] | None = None, image_id: str | None = None,
               container_id: str | None = None, volume: str | None = None, node: str | None = None) -> None:
        with self.ctx.db.session() as session:
            found = session.scalar(select(ServiceInstance).where(
                ServiceInstance.app_id == self.app_id, ServiceInstance.phase == self.phase,
                ServiceInstance.name == name))
            if found is None:
                if definition is None:
                    return  # failed before it ever ran: nothing to remember
                found = ServiceInstance(app_id=self.app_id, phase=self.phase, name=name)
                session.add(found)
            found.network = self.network
            found.status = status.value
            found.pending_hash = pending
            if definition is not None:
                found.definition = {**definition.model_dump(mode="json"), "exports": dict(exports or {})}
                found.definition_hash = definition_hash
                found.volume = volume
                found.node = node
            if image_id is not None:
                found.image_id = image_id
            if container_id is not None:
                found.container_id = container_id
            found.updated_at = utcnow()


def _stored_service(row: ServiceInstance | None) -> Service | None:
    """The definition an instance runs with, as recorded (None when there is none usable)."""
    if row is None or not row.definition:
        return None
    try:
        return Service.model_validate(row.definition)
    except ValueError:
        return None


# --- removal (explicit only) -------------------------------------------------------------------


def remove(ctx, app_name: str, app_id: int, phase: str) -> list[str]:
    """Delete the phase's service containers, data volumes and network; returns the service names.

    Irreversible: only for the explicit, confirmed portal/API action (never during a deploy).
    The network stays while the phase's app container is attached (it keeps serving, without
    its services); the next deploy creates fresh services, with new data, on it. On a swarm the
    data is emptied by a job on its node, where the (empty) volume stays.
    """
    with ctx.db.session() as session:
        names = set(session.scalars(select(ServiceInstance.name).where(
            ServiceInstance.app_id == app_id, ServiceInstance.phase == phase)).all())
    names.update(ctx.runtime.services.remove_services(app_name, phase))
    with ctx.db.session() as session:
        session.execute(delete(ServiceInstance).where(
            ServiceInstance.app_id == app_id, ServiceInstance.phase == phase))
    removed = sorted(n for n in names if n)
    log.info("removed the %s services of %s: %s", phase, app_name, ", ".join(removed) or "none")
    return removed


# --- display -----------------------------------------------------------------------------------


def describe(ctx, app_id: int, phase: str) -> list[dict[str, Any]]:
    """The phase's services for the portal and API (never a password or a rendered export)."""
    return describe_app(ctx, app_id, [phase]).get(phase, [])


def describe_app(ctx, app_id: int, phases: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every phase's services of an app, with one engine listing and one disk-usage report."""
    with ctx.db.session() as session:
        query = select(ServiceInstance).where(ServiceInstance.app_id == app_id)
        if phases is not None:
            query = query.where(ServiceInstance.phase.in_(phases))
        rows = session.scalars(query.order_by(ServiceInstance.phase, ServiceInstance.name)).all()
        app = session.get(App, app_id) if rows else None
    if not rows or app is None:
        return {}
    host: ServiceHost = ctx.runtime.services
    try:
        containers = {(c.labels.get(host.LABEL_SERVICE_PHASE), c.labels.get(host.LABEL_SERVICE)): c
                      for c in host.service_containers(app.name)}
    except Exception as exc:  # the engine being unreachable only makes health unknown
        log.warning("cannot list service containers: %s", exc)
        containers = None
    sizes: dict[str, int | None] | None
    try:
        sizes = host.volume_sizes() if any(row.volume for row in rows) else {}
    except Exception as exc:
        log.warning("cannot read volume sizes: %s", exc)
        sizes = None
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        definition = row.definition or {}
        size = (sizes or {}).get(row.volume) if row.volume else None
        out.setdefault(row.phase, []).append({
            "name": row.name,
            "status": row.status,
            "health": _health(containers, row),
            "image": definition.get("image") or f"build: {definition.get('build')}",
            "image_id": (row.image_id or "")[:19] or None,
            "port": definition.get("port"),
            "definition": row.definition_hash[:12],
            "pending_definition": row.pending_hash[:12] if row.pending_hash else None,
            "volume": row.volume,
            "data_path": definition.get("data"),
            "volume_size": size,
            "volume_size_label": _human(size) if size is not None else ("—" if not row.volume else "unknown"),
            "network": row.network,
            "node": row.node,
            "exports": sorted({secret_name(row.name), *(definition.get("exports") or {})}),
            "password_secret": secret_name(row.name),
            "updated_at": row.updated_at.isoformat() if row.updated_at else None,
        })
    return out


def _health(containers: dict | None, row: ServiceInstance) -> str:
    """healthy | starting | unhealthy | running | restarting | exited | missing | unknown"""
    if containers is None:
        return "unknown"
    container = containers.get((row.phase, row.name))
    if container is None:
        return "missing"
    if container.state == "running":
        if container.health == "starting" and row.status == ServiceStatus.HEALTHY:
            return "healthy"  # passed the pipeline's check; the engine's first check is still to come
        return container.health or "running"
    return container.state or "unknown"


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"
