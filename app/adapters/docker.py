"""Build images and run app containers on one Docker engine, touching only our own objects.

Everything created here carries `release-pipeline.instance=<instance>`, and everything listed
or removed is filtered by it, so two installations (or test runs) can share an engine.
The client is created on first use: RQ forks a work horse per job, and a client opened
before the fork would share its connection pool across processes. Engine trouble the methods
do not handle themselves leaves them as `EngineUnavailable`, so no caller sees docker's or
requests' exceptions.
"""

from __future__ import annotations

import io
import logging
import os
import posixpath
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cache, wraps

import docker
import requests
from docker.errors import APIError, DockerException, NotFound
from docker.utils.build import PatternMatcher

from app.exceptions import BuildFailed, DeployFailed, EngineUnavailable, InvalidVersion
from app.runtime import LABEL_APP, LABEL_DEPLOYMENT, LABEL_PHASE, LABEL_SHA, LABEL_VERSION  # noqa: F401 (re-exported)
from app.pipeline import ENV_NAME
from app.versions import validate_version

log = logging.getLogger(__name__)

LABEL_INSTANCE = "release-pipeline.instance"
LABEL_TREE = "release-pipeline.tree"
#: On one-off release-command containers, instead of LABEL_APP: they are never app containers.
LABEL_RELEASE_OF = "release-pipeline.release-of"

_INSTANCE = re.compile(r"^[a-z0-9][a-z0-9-]{0,20}$")
# App and phase names end up in container names, image tags and labels: slugs only.
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_HEX = re.compile(r"[0-9a-fA-F]{7,64}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,255}")


def _unsafe(*, app: str, phase: str | None = None, version: str | None = None, sha: str | None = None,
            tree: str | None = None, env: dict | None = None) -> str | None:
    """Why these values may not reach Docker (names, tags, labels, environment), or None."""
    for what, value, pattern in (("app", app, _NAME), ("phase", phase, _NAME), ("sha", sha, _HEX),
                                 ("tree", tree, _HEX)):
        if value is not None and (not isinstance(value, str) or not pattern.fullmatch(value)):
            return f"{what} {str(value)[:80]!r} is not safe to use in Docker names and labels"
    if version is not None:
        try:
            validate_version(version)
        except (InvalidVersion, TypeError):
            return f"version {str(version)[:80]!r} is not a safe version label"
    for name, value in (env or {}).items():
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            return f"environment variable name {str(name)[:80]!r} is not valid"
        if "\x00" in str(value):
            return f"environment variable {name} contains a NUL character"
    return None


@dataclass(frozen=True)
class ContainerSpec:
    """What to run for one deployment of an app to a phase."""

    app: str
    phase: str
    version: str
    sha: str
    deployment_id: int
    image: str
    env: dict[str, str]
    port: int
    memory: str | None = None
    cpus: float | None = None
    network: str | None = None
    command: list[str] | None = None
    #: The fixed 127.0.0.1 port to publish on (the phase's free slot); None: any free port.
    host_port: int | None = None
    #: Which of the deployment's replicas (0 for the first): part of the container's name.
    replica: int = 0


@dataclass(frozen=True)
class RunningContainer:
    id: str
    name: str
    host_port: int


@dataclass(frozen=True)
class Stopped:
    """How a container stopped: `killed` when it still ran `timeout` s after SIGTERM (SIGKILL)."""

    killed: bool
    seconds: float


@dataclass(frozen=True)
class ServiceContainer:
    """One backing-service container as the engine lists it."""

    id: str
    name: str
    labels: dict[str, str] = field(hash=False)
    #: "running", "exited", … (the engine's State).
    state: str | None
    #: "healthy", "unhealthy", "starting", or None without a health check.
    health: str | None
    image_id: str | None


@dataclass(frozen=True)
class ServiceState:
    """One backing-service container as the engine inspects it."""

    status: str | None
    exit_code: int | None
    #: Bytes, or None: unlimited.
    memory: int | None
    cpus: float | None
    restarts: int
    health: str | None
    image_id: str | None
    labels: dict[str, str] = field(hash=False)
    #: Whether the image itself declares a HEALTHCHECK.
    has_image_healthcheck: bool


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    labels: dict[str, str] = field(hash=False)
    status: str
    host_port: int | None


def _environment(spec: ContainerSpec) -> dict[str, str]:
    return {**spec.env, "PORT": str(spec.port), "APP_PHASE": spec.phase, "APP_VERSION": spec.version}


def _sizing(spec: ContainerSpec) -> dict:
    return {"mem_limit": spec.memory, "nano_cpus": round(spec.cpus * 1e9) if spec.cpus else None}


def app_container_args(instance: str, spec: ContainerSpec) -> dict:
    """The engine's create arguments for an app container of `spec`: decided here, so they
    can be checked as a value, and passed as they are by `Engine.run_container`."""
    name = f"{instance}-{spec.app}-{spec.phase}-{spec.deployment_id}"
    if spec.replica:  # a dot never occurs in a slug: no other app's or phase's name
        name += f".{spec.replica + 1}"
    labels = {LABEL_INSTANCE: instance, LABEL_APP: spec.app, LABEL_PHASE: spec.phase, LABEL_VERSION: spec.version,
              LABEL_SHA: spec.sha, LABEL_DEPLOYMENT: str(spec.deployment_id)}
    return {"image": spec.image, "command": spec.command, "name": name, "labels": labels,
            "environment": _environment(spec), **_sizing(spec), "restart_policy": {"Name": "unless-stopped"},
            "ports": {f"{spec.port}/tcp": ("127.0.0.1", spec.host_port)}, "network": spec.network}


def release_container_args(instance: str, spec: ContainerSpec, argv: list[str]) -> dict:
    """The create arguments for the one-off container running the release command `argv`:
    no restart policy, nothing published, not labelled as an app container."""
    labels = {LABEL_INSTANCE: instance, LABEL_RELEASE_OF: spec.app, LABEL_PHASE: spec.phase,
              LABEL_DEPLOYMENT: str(spec.deployment_id)}
    return {"image": spec.image, "entrypoint": argv[:1], "command": argv[1:],
            "name": f"{instance}-{spec.app}-{spec.phase}-{spec.deployment_id}-release", "labels": labels,
            "environment": _environment(spec), **_sizing(spec), "network": spec.network}


#: The container events that change what `list_containers` says of one, with the state each
#: leaves it in (None: gone; "": unchanged). The engine sends an event before its list shows
#: the new state, so the event's word wins. Not exec_*: a HEALTHCHECK makes those every interval.
STATE_EVENTS = {"create": "created", "start": "running", "restart": "running", "unpause": "running",
                "die": "exited", "pause": "paused", "rename": "", "destroy": None}


def _container_info(summary: dict) -> ContainerInfo:
    return ContainerInfo(
        id=summary["Id"],
        name=summary["Names"][0].lstrip("/"),
        labels=summary.get("Labels") or {},
        status=summary["State"],
        host_port=next((p["PublicPort"] for p in summary.get("Ports", []) if p.get("PublicPort")), None),
    )


@dataclass(frozen=True)
class ContainerEvent:
    """A change to one of our app containers: the state it left it in (None: gone), and what
    the event itself carries of it (its name, its labels)."""

    id: str
    state: str | None
    info: ContainerInfo


class ContainerChanges:
    """An open event stream: iterating yields a ContainerEvent for each change, in the engine's
    order, until the stream ends (`close()`, or the engine went away: EngineUnavailable)."""

    def __init__(self, stream):
        self._stream = stream

    def __iter__(self) -> Iterator[ContainerEvent]:
        try:
            for event in self._stream:
                action, actor = event.get("Action"), event.get("Actor") or {}
                if not actor.get("ID") or action not in STATE_EVENTS:
                    continue
                attributes = actor.get("Attributes") or {}
                labels = {k: v for k, v in attributes.items() if k.startswith("release-pipeline.")}
                state = STATE_EVENTS[action]
                yield ContainerEvent(actor["ID"], state, ContainerInfo(
                    id=actor["ID"], name=attributes.get("name", ""), labels=labels, status=state or "", host_port=None))
        except (DockerException, requests.RequestException) as exc:
            raise EngineUnavailable(f"{type(exc).__name__}: {_first_line(str(exc))[:300]}") from None

    def close(self) -> None:
        with suppress(Exception):  # already closed, or the engine went first
            self._stream.close()


def parse_size(text: str) -> int:
    """Bytes in a size like "512m" or "1g", as the engine reads memory limits."""
    return docker.utils.parse_bytes(text)


def _translated(method):
    """Engine trouble a method does not handle itself becomes EngineUnavailable, with the
    engine's own words (a DockerException or a failed request to the engine's socket)."""

    @wraps(method)
    def call(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except APIError as exc:
            raise EngineUnavailable(f"{type(exc).__name__}: {_first_line(_explanation(exc))[:300]}") from None
        except (DockerException, requests.RequestException) as exc:
            raise EngineUnavailable(f"{type(exc).__name__}: {_first_line(str(exc))[:300]}") from None

    return call


def _translate_errors(cls):
    """Wrap every public method of `cls` in `_translated`."""
    for name, value in list(vars(cls).items()):
        if callable(value) and not name.startswith("_"):
            setattr(cls, name, _translated(value))
    return cls


@_translate_errors
class Engine:
    """This installation's view of a Docker engine (`base_url` None: DOCKER_HOST or the socket)."""

    def __init__(self, base_url: str | None = None, instance: str = "rp", pull: str = "never",
                 client: docker.DockerClient | None = None, builder: str = "classic"):
        if not _INSTANCE.fullmatch(instance):
            raise ValueError(f"instance {instance!r} must match {_INSTANCE.pattern}")
        if pull not in ("never", "missing"):
            raise ValueError(f"pull {pull!r} must be never or missing")
        if builder not in ("auto", "classic", "buildkit"):
            raise ValueError(f"builder {builder!r} must be auto, classic or buildkit")
        self.base_url = base_url
        self.instance = instance
        #: BUILD_PULL: the engine pulls a missing FROM image by itself unless we refuse first.
        self.pull = pull
        #: BUILDER: `classic` (the engine's API, through the SDK), `buildkit` (the docker CLI), or
        #: `auto` (BuildKit where a docker CLI here has it). Tests that build pick theirs.
        self.builder = builder
        #: None: connected on first use. A test may hand in its own client.
        self._client: docker.DockerClient | None = client

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = (
                docker.DockerClient(base_url=self.base_url) if self.base_url else docker.from_env()
            )
        return self._client

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except (DockerException, requests.RequestException):
            return False

    # Images

    def find_image(self, app: str, tree: str) -> str | None:
        """The id of an image already built for this app and tree, if any."""
        images = self.client.api.images(filters=self._filters(**{LABEL_APP: app, LABEL_TREE: tree}))
        return images[0]["Id"] if images else None

    def build_image(
        self,
        *,
        app: str,
        tree: str,
        sha: str,
        context_tar: bytes,
        dockerfile: str = "Dockerfile",
        on_line: Callable[[str], None],
    ) -> str:
        """Build `context_tar`, streaming each output line to `on_line`; returns the image id."""
        problem = _unsafe(app=app, tree=tree, sha=sha)
        if problem:
            raise BuildFailed(problem)
        tag = f"{self.instance}-{app}:{tree[:12]}"
        labels = self._labels(**{LABEL_APP: app, LABEL_TREE: tree, LABEL_SHA: sha})
        return self._build(context_tar, dockerfile, tag, labels, on_line)

    def builder_in_use(self) -> str:
        """`buildkit` or `classic`, as BUILDER says; BUILDER=buildkit without a docker CLI that
        has BuildKit is refused (the worker asks at start)."""
        if self.builder == "classic":
            return "classic"
        if buildkit_cli() is not None:
            return "buildkit"
        if self.builder == "auto":
            return "classic"
        raise BuildFailed("BUILDER=buildkit, but no docker CLI here builds with BuildKit (a docker CLI before "
                          "23.0, such as Debian's docker.io, or one with the buildx plugin); install one or "
                          "set BUILDER=classic")

    def _build(self, context_tar: bytes, dockerfile: str, tag: str, labels: dict[str, str],
               on_line: Callable[[str], None]) -> str:
        """Build with the configured builder, streaming each output line to `on_line`; the image id."""
        self._check_base_images(context_tar, dockerfile)
        context_tar = _without_ignored(context_tar, dockerfile)
        if self.builder_in_use() == "buildkit":
            return self._build_with_buildkit(context_tar, dockerfile, tag, labels, on_line)
        labelled = _with_label_line(context_tar, dockerfile, labels)
        try:
            stream = self.client.api.build(
                fileobj=io.BytesIO(labelled or context_tar),
                custom_context=True,
                dockerfile=dockerfile,
                tag=tag,
                labels=None if labelled else labels,
                decode=True,
                rm=True,
                forcerm=True,
            )
            for entry in stream:
                if "error" in entry:
                    raise BuildFailed(_first_line(str(entry["error"])) or "docker build failed")
                for line in _output_lines(entry):
                    on_line(line)
            return self.client.api.inspect_image(tag)["Id"]
        except APIError as exc:
            raise BuildFailed(_first_line(_explanation(exc))) from None

    def _build_with_buildkit(self, context_tar: bytes, dockerfile: str, tag: str, labels: dict[str, str],
                             on_line: Callable[[str], None]) -> str:
        """`docker build` with BuildKit (the SDK cannot drive it): the context tar on stdin, its
        plain progress output streamed line by line, the image id from --iidfile."""
        cli = buildkit_cli()
        env = {**os.environ, "DOCKER_BUILDKIT": "1", **({"DOCKER_HOST": self.base_url} if self.base_url else {})}
        with tempfile.TemporaryDirectory(prefix="rp-build-") as scratch:
            iidfile = os.path.join(scratch, "iid")
            process = subprocess.Popen(buildkit_argv(cli, dockerfile=dockerfile, tag=tag, labels=labels,
                                                     iidfile=iidfile),
                                       stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                       env=env)
            feeder = threading.Thread(target=_feed, args=(process.stdin, _plain_tar(context_tar)), daemon=True)
            feeder.start()
            last = ""
            for raw in process.stderr:
                line = raw.decode("utf-8", "replace").rstrip()
                if line.strip() and not _STEP_DIGEST.fullmatch(line):
                    on_line(line)
                    last = line
            code = process.wait()
            feeder.join()
            if code != 0:
                said = last.strip().removeprefix("ERROR: ").removeprefix("error: ")[:500]
                if not self.ping():  # the engine went away: not the app's build that failed
                    raise EngineUnavailable(f"docker build: {said or f'exited with {code}'}")
                raise BuildFailed(said or f"docker build exited with {code}")
            with open(iidfile) as handle:
                return handle.read().strip()

    def _check_base_images(self, context_tar: bytes, dockerfile: str) -> None:
        """With BUILD_PULL=never, every FROM image must already be on the engine: the classic
        builder would otherwise fetch it from a registry (Docker Hub by default)."""
        if self.pull != "never":
            return
        text = _dockerfile_text(context_tar, dockerfile)
        if text is None:
            return  # no such Dockerfile: the engine's own error says so
        for reference in base_images(text):
            if "$" in reference:
                raise BuildFailed(f"FROM {reference[:100]}: a base image named by a build argument cannot be "
                                  "checked, and BUILD_PULL=never; name the image or set BUILD_PULL=missing")
            if self.local_image(reference) is None:
                raise BuildFailed(f"base image {reference[:100]} is not on the Docker engine and BUILD_PULL=never: "
                                  "load it there (docker load, docker build) or set BUILD_PULL=missing")

    def prune_images(self, app: str, keep_ids: set[str], keep_last: int) -> list[str]:
        """Remove this app's images except `keep_ids`, the newest `keep_last` and any in use."""
        images = self.client.images.list(filters=self._filters(**{LABEL_APP: app}))
        images.sort(key=lambda image: _created_key(image.attrs["Created"]), reverse=True)
        in_use = {c["ImageID"] for c in self.client.api.containers(all=True)}
        removed = []
        for image in images[keep_last:]:
            if image.id in keep_ids or image.id in in_use:
                continue
            try:
                self.client.images.remove(image.id)
            except NotFound:
                continue
            except APIError as exc:
                if exc.status_code == 409:  # came into use, or tagged elsewhere: keep it
                    continue
                raise
            removed.append(image.id)
        return removed

    # Containers

    def run_container(self, spec: ContainerSpec) -> RunningContainer:
        """Create and start the container for `spec`, published on 127.0.0.1 at `spec.host_port`
        (a random free port when None)."""
        problem = _unsafe(app=spec.app, phase=spec.phase, version=spec.version, sha=spec.sha, env=spec.env)
        if problem:
            raise DeployFailed(f"container refused: {problem}")
        if spec.host_port is not None and (
                not isinstance(spec.host_port, int) or isinstance(spec.host_port, bool)
                or not 0 < spec.host_port < 65536):
            raise DeployFailed(f"container refused: host port {spec.host_port!r} is not a TCP port")
        args = app_container_args(self.instance, spec)
        name = args["name"]
        try:
            # create + start rather than run(): run() pulls a missing image, we never pull.
            container = self.client.containers.create(**args)
        except APIError as exc:
            raise DeployFailed(f"cannot create container {name}: {_explanation(exc)}") from None
        try:
            container.start()
            container.reload()
            bindings = container.ports.get(f"{spec.port}/tcp") or []
            if bindings:
                return RunningContainer(id=container.id, name=name, host_port=int(bindings[0]["HostPort"]))
            if spec.host_port:  # exited (or restarting) already: the health gate finds out why
                return RunningContainer(id=container.id, name=name, host_port=spec.host_port)
            raise DeployFailed(f"container {name} has no published port ({container.status})")
        except (APIError, DeployFailed) as exc:
            container.remove(force=True, v=True)
            if isinstance(exc, DeployFailed):
                raise
            explanation = _explanation(exc)
            if spec.host_port and ("already allocated" in explanation or "already in use" in explanation):
                raise DeployFailed(f"cannot start container {name}: port {spec.host_port} on 127.0.0.1 "
                                   "is taken by another program (see SLOT_PORTS)") from None
            raise DeployFailed(f"cannot start container {name}: {explanation}") from None

    def run_release(self, spec: ContainerSpec, argv: list[str], *, timeout: float,
                    on_line: Callable[[str], None]) -> int | None:
        """Run `argv` once in a new container of `spec.image` with its environment and network,
        streaming its output to `on_line`; its exit code, or None when it ran past `timeout`
        seconds (then it is killed). The container is removed either way."""
        problem = _unsafe(app=spec.app, phase=spec.phase, version=spec.version, sha=spec.sha, env=spec.env)
        if problem:
            raise DeployFailed(f"release container refused: {problem}")
        args = release_container_args(self.instance, spec, argv)
        with suppress(NotFound):  # left by a worker that died while it ran
            self._own_container(args["name"]).remove(force=True, v=True)
        try:
            container = self.client.containers.create(**args)
        except APIError as exc:
            raise DeployFailed(f"cannot create the release container: {_explanation(exc)}") from None
        try:
            container.start()

            def follow() -> None:
                pending = b""
                with suppress(Exception):
                    for chunk in container.logs(stream=True, follow=True):
                        pending += chunk
                        *lines, pending = pending.split(b"\n")
                        for line in lines:
                            on_line(line.decode("utf-8", errors="replace"))
                if pending:
                    on_line(pending.decode("utf-8", errors="replace"))

            reader = threading.Thread(target=follow, daemon=True)
            reader.start()
            deadline = time.monotonic() + timeout
            while True:
                container.reload()
                if container.status in ("exited", "dead"):
                    break
                if time.monotonic() >= deadline:
                    with suppress(APIError, NotFound):
                        container.kill()
                    reader.join(timeout=5)
                    return None
                time.sleep(0.1)
            reader.join(timeout=5)
            return int((container.attrs.get("State") or {}).get("ExitCode", -1))
        except APIError as exc:
            raise DeployFailed(f"the release container failed to run: {_explanation(exc)}") from None
        finally:
            with suppress(APIError, NotFound):
                container.remove(force=True, v=True)

    def container_logs(self, container_id: str, tail: int = 50) -> list[str]:
        try:
            output = self._own_container(container_id).logs(tail=tail)
        except NotFound:
            return []
        return output.decode("utf-8", errors="replace").splitlines()

    def output(self, container_id: str, *, tail: int = 100, since: float | None = None) -> list[tuple[float, str]]:
        """What a container of this installation (an app's or a backing service's) wrote to
        stdout and stderr: its last `tail` lines, oldest first, as (unix time, text), only
        those after `since` when given (a live tail asks again with the last time it saw).
        [] when the container is gone. Secrets are the caller's to mask."""
        try:
            raw = self._own_container(container_id).logs(tail=tail, timestamps=True, since=since)
        except NotFound:
            return []
        except (DockerException, requests.ConnectionError) as exc:
            raise EngineUnavailable(f"the Docker engine cannot be asked: {exc}") from None
        return timestamped_lines(raw, since)

    def has_crashed(self, container_id: str) -> bool:
        """Whether the container is gone, stopped, or was restarted (its restart policy hides a
        crash loop from a status check that happens to catch it running)."""
        try:
            attrs = self._own_container(container_id).attrs
        except NotFound:
            return True
        status = (attrs.get("State") or {}).get("Status")
        return bool(attrs.get("RestartCount")) or status not in ("created", "running")

    def stop_and_remove(self, container_id: str, timeout: int = 10) -> Stopped | None:
        """Stop gracefully (SIGTERM, then SIGKILL after `timeout` s) and remove; None if it was
        gone already."""
        try:
            container = self._own_container(container_id)
            started = time.monotonic()
            container.stop(timeout=timeout)
            seconds = time.monotonic() - started
            container.reload()
            state = container.attrs.get("State") or {}
            container.remove(v=True)
        except NotFound:
            return None
        # 137 = 128 + SIGKILL: the engine killed it at the end of the timeout (not the kernel, for memory).
        killed = state.get("ExitCode") == 137 and not state.get("OOMKilled") and seconds >= timeout
        return Stopped(killed=killed, seconds=seconds)

    def list_containers(
        self, app: str | None = None, phase: str | None = None
    ) -> list[ContainerInfo]:
        """App containers only (they carry the app label; backing services do not)."""
        wanted = {LABEL_APP: app, LABEL_PHASE: phase}
        filters = self._filters(**{k: v for k, v in wanted.items() if v is not None})
        if app is None:
            filters["label"].append(LABEL_APP)  # presence: leaves service containers out
        return [_container_info(summary) for summary in self.client.api.containers(all=True, filters=filters)]

    def app_container(self, container_id: str) -> ContainerInfo | None:
        """One of our app containers as `list_containers` describes it; None once it is gone."""
        filters = self._filters()
        filters["label"].append(LABEL_APP)
        filters["id"] = [container_id]
        found = self.client.api.containers(all=True, filters=filters)
        return _container_info(found[0]) if found else None

    def app_container_changes(self) -> ContainerChanges:
        """The engine's stream of changes to our app containers' state, open when this returns
        (so a `list_containers` taken next misses none)."""
        filters = self._filters()
        filters["label"].append(LABEL_APP)
        return ContainerChanges(self.client.api.events(
            decode=True, filters={**filters, "type": ["container"], "event": list(STATE_EVENTS)}))

    # Whole installation

    # Labels

    def _labels(self, **labels: str) -> dict[str, str]:
        return {LABEL_INSTANCE: self.instance, **labels}

    def _filters(self, **labels: str) -> dict[str, list[str]]:
        return {"label": [f"{key}={value}" for key, value in self._labels(**labels).items()]}

    def _own_container(self, container_id: str):
        """The container, or NotFound when it does not exist or belongs to another instance."""
        container = self.client.containers.get(container_id)
        if container.labels.get(LABEL_INSTANCE) != self.instance:
            raise NotFound(f"container {container_id} does not belong to instance {self.instance}")
        return container

    # Backing services (app.services) ------------------------------------------------------------
    #
    # One set per app and phase (network, data volumes, containers), kept across deployments.
    # Everything carries LABEL_INSTANCE (so an uninstall removes it) but, on purpose, not
    # LABEL_APP/LABEL_PHASE: code that handles an app's containers by app and phase must never
    # mistake a database for an old app container. Service images are keyed by definition hash.

    LABEL_SERVICE = "release-pipeline.service"
    LABEL_SERVICE_APP = "release-pipeline.service-app"
    LABEL_SERVICE_PHASE = "release-pipeline.service-phase"
    LABEL_SERVICE_DEFINITION = "release-pipeline.service-definition"
    _SERVICE_ENV = re.compile(ENV_NAME)
    _SIZES_TTL = 30.0

    def service_labels(self, app: str, phase: str | None = None, service: str | None = None,
                       **extra: str) -> dict[str, str]:
        for what, value in (("app", app), ("phase", phase), ("service", service)):
            if value is not None and (not isinstance(value, str) or not _NAME.fullmatch(value)):
                raise DeployFailed(f"{what} {str(value)[:80]!r} is not safe to use in Docker names and labels")
        labels = {self.LABEL_SERVICE_APP: app}
        if phase is not None:
            labels[self.LABEL_SERVICE_PHASE] = phase
        if service is not None:
            labels[self.LABEL_SERVICE] = service
        return self._labels(**labels, **extra)

    def _owns(self, labels: dict | None, app: str, phase: str | None = None) -> bool:
        labels = labels or {}
        return (labels.get(LABEL_INSTANCE) == self.instance and labels.get(self.LABEL_SERVICE_APP) == app
                and (phase is None or labels.get(self.LABEL_SERVICE_PHASE) == phase))

    def ensure_network(self, name: str, *, app: str, phase: str) -> str:
        """The phase's own bridge network, created once; returns its name."""
        labels = self.service_labels(app, phase)
        api = self.client.api
        for network in api.networks(names=[name]):
            if network["Name"] == name:
                if not self._owns(network.get("Labels"), app, phase):
                    raise DeployFailed(f"network {name} exists but is not {app}/{phase}'s network of "
                                       f"installation {self.instance}")
                return name
        try:
            api.create_network(name, driver="bridge", labels=labels)
        except APIError as exc:
            raise DeployFailed(f"cannot create network {name}: {_explanation(exc)}") from None
        return name

    def ensure_volume(self, name: str, *, app: str, phase: str, service: str) -> str:
        """A named data volume for one service of one phase, created once; returns its name."""
        labels = self.service_labels(app, phase, service)
        api = self.client.api
        try:
            found = api.inspect_volume(name)
        except NotFound:
            try:
                api.create_volume(name, driver="local", labels=labels)
            except APIError as exc:
                raise DeployFailed(f"cannot create volume {name}: {_explanation(exc)}") from None
            return name
        if not self._owns(found.get("Labels"), app, phase) or (found.get("Labels") or {}).get(
                self.LABEL_SERVICE) != service:
            raise DeployFailed(f"volume {name} exists but is not {app}/{phase}/{service}'s volume of "
                               f"installation {self.instance}")
        return name

    def local_image(self, reference: str) -> str | None:
        """The id of `reference` if the engine has it; never pulls."""
        found = self.inspect_local_image(reference)
        return found[0] if found else None

    def inspect_local_image(self, reference: str) -> tuple[str, dict[str, str]] | None:
        """(id, labels) of `reference` if the engine has it; never pulls."""
        try:
            attrs = self.client.api.inspect_image(reference)
        except NotFound:
            return None
        except APIError as exc:
            raise DeployFailed(f"image {reference[:100]}: {_first_line(_explanation(exc))}") from None
        return attrs["Id"], dict((attrs.get("Config") or {}).get("Labels") or {})

    def built_for(self, labels: dict[str, str], app: str) -> bool:
        """Whether an image with `labels` is one this installation built for `app` (its own
        image, or one of its `build:` services)."""
        return labels.get(LABEL_INSTANCE) == self.instance and app in (
            labels.get(LABEL_APP), labels.get(self.LABEL_SERVICE_APP))

    def find_service_image(self, app: str, service: str, definition: str) -> str | None:
        images = self.client.api.images(filters=self._filters(**self.service_labels(
            app, service=service, **{self.LABEL_SERVICE_DEFINITION: definition})))
        return images[0]["Id"] if images else None

    def build_service_image(self, *, app: str, service: str, definition: str, context_tar: bytes,
                            dockerfile: str = "Dockerfile", on_line: Callable[[str], None]) -> str:
        """Build a `build:` service's image once per definition hash; returns the image id."""
        labels = self.service_labels(app, service=service, **{self.LABEL_SERVICE_DEFINITION: definition})
        tag = f"{self.instance}-{app}-svc-{service}:{definition[:12]}"
        return self._build(context_tar, dockerfile, tag, labels, on_line)

    def service_container_name(self, app: str, phase: str, service: str) -> str:
        # Dots never occur in slugs, so no app/phase/service combination collides with another
        # (or with an app container, named <instance>-<app>-<phase>-<deployment id>).
        return f"{self.instance}-{app}.{phase}.{service}"

    def run_service_container(
        self, *, app: str, phase: str, service: str, definition: str, image: str, network: str,
        env: dict[str, str], command: list[str] | None = None, volume: str | None = None,
        data_path: str | None = None, memory: str | None = None, cpus: float | None = None,
        healthcheck: list[str] | str | None = None, node: str | None = None,
    ) -> str:
        """Create and start a service container on `network` (alias: the service name); its id.
        (`node` is always None here: `volume_node`.)

        Not published on the host: only containers on the phase network reach it. It starts
        without a restart policy, so an exit while starting shows its real exit code; call
        `keep_running` once it is healthy.
        """
        labels = self.service_labels(app, phase, service, **{self.LABEL_SERVICE_DEFINITION: definition})
        for key, value in env.items():
            if not self._SERVICE_ENV.fullmatch(key) or "\x00" in value:
                raise DeployFailed(f"service {service}: environment variable {key[:80]!r} is not valid")
        name = self.service_container_name(app, phase, service)
        api = self.client.api
        mounts = [docker.types.Mount(target=data_path, source=volume, type="volume")] if volume else []
        check = None
        if healthcheck:
            test = ["CMD", *healthcheck] if isinstance(healthcheck, list) else ["CMD-SHELL", healthcheck]
            check = docker.types.Healthcheck(test=test, interval=10 * 10**9, timeout=5 * 10**9, retries=3)
        try:
            created = api.create_container(
                image, command=command, name=name, hostname=service, environment=env, labels=labels,
                healthcheck=check,
                host_config=api.create_host_config(
                    network_mode=network, mounts=mounts,
                    # CPU quota rather than nano_cpus: update_service_resources can change it in place.
                    mem_limit=memory, cpu_period=100_000 if cpus else None,
                    cpu_quota=round(cpus * 100_000) if cpus else None,
                ),
                networking_config=api.create_networking_config(
                    {network: api.create_endpoint_config(aliases=[service])}),
            )
        except APIError as exc:
            raise DeployFailed(f"cannot create service container {name}: {_first_line(_explanation(exc))}") from None
        try:
            api.start(created["Id"])
        except APIError as exc:
            with suppress(APIError):
                api.remove_container(created["Id"], force=True, v=True)
            raise DeployFailed(f"cannot start service container {name}: {_first_line(_explanation(exc))}") from None
        return created["Id"]

    def volume_node(self, known: str | None) -> None:
        """Where a service's data lives: one engine, no choice (a swarm pins it to a node)."""
        return None

    def remove_services(self, app: str, phase: str) -> list[str]:
        """Delete the phase's service containers, data volumes and network; the service names.
        The network stays while the phase's app container is attached: taking it away would
        re-publish that container on another host port behind the router's back."""
        names = []
        for container in self.service_containers(app, phase):
            names.append(container.labels.get(self.LABEL_SERVICE, ""))
            self.remove_service_container(container.id, timeout=1)
        for volume in self.service_volumes(app, phase):
            self.remove_volume(volume)
        for network in self.service_networks(app, phase):
            if not self.remove_network(network):
                log.info("kept network %s: the %s app container of %s still uses it", network, phase, app)
        return names

    def service_containers(self, app: str, phase: str | None = None) -> list[ServiceContainer]:
        """This app's service containers (of one phase)."""
        filters = self._filters(**self.service_labels(app, phase))
        out = []
        for summary in self.client.api.containers(all=True, filters=filters):
            status = summary.get("Status") or ""
            health = next((word for marker, word in (("(healthy)", "healthy"), ("(unhealthy)", "unhealthy"),
                                                     ("(health: starting)", "starting")) if marker in status), None)
            out.append(ServiceContainer(id=summary["Id"], name=summary["Names"][0].lstrip("/"),
                                        labels=summary.get("Labels") or {}, state=summary.get("State"),
                                        health=health, image_id=summary.get("ImageID")))
        return out

    def service_state(self, container_id: str) -> ServiceState | None:
        """Status, exit code, sizing, restart count and health; None when gone (or not ours)."""
        try:
            info = self.client.api.inspect_container(container_id)
        except NotFound:
            return None
        labels = info["Config"].get("Labels") or {}
        if labels.get(LABEL_INSTANCE) != self.instance or self.LABEL_SERVICE not in labels:
            return None
        state, host = info.get("State") or {}, info.get("HostConfig") or {}
        cpus = host["CpuQuota"] / host["CpuPeriod"] if host.get("CpuQuota") and host.get("CpuPeriod") else None
        return ServiceState(status=state.get("Status"), exit_code=state.get("ExitCode"),
                            memory=host.get("Memory") or None, cpus=cpus, restarts=info.get("RestartCount", 0),
                            health=(state.get("Health") or {}).get("Status"), image_id=info.get("Image"),
                            labels=labels,
                            has_image_healthcheck=bool((info["Config"].get("Healthcheck") or {}).get("Test")))

    def exec_check(self, container_id: str, command: list[str] | str, timeout: float = 5.0) -> int | None:
        """Run a health command inside a running service container: its exit code, or None
        (container not running, or the command still running after `timeout` seconds)."""
        import time

        if self.service_state(container_id) is None:
            return None
        api = self.client.api
        argv = command if isinstance(command, list) else ["/bin/sh", "-c", command]
        try:
            exec_id = api.exec_create(container_id, argv, stdout=False, stderr=False)["Id"]
            api.exec_start(exec_id, detach=True)
        except (NotFound, APIError):
            return None
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = api.exec_inspect(exec_id)
            except (NotFound, APIError):
                return None
            if not info.get("Running") and info.get("ExitCode") is not None:
                return int(info["ExitCode"])
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def keep_running(self, container_id: str) -> None:
        """Restart the service container whenever it stops (unless stopped on purpose)."""
        if self.service_state(container_id) is not None:
            self.client.api.update_container(container_id, restart_policy={"Name": "unless-stopped"})

    def start_service_container(self, container_id: str) -> None:
        if self.service_state(container_id) is not None:
            self.client.api.start(container_id)

    def update_service_resources(self, container_id: str, memory: str | None, cpus: float | None) -> None:
        """Apply new sizing to a running service container in place (no restart)."""
        if self.service_state(container_id) is None:
            return
        kwargs: dict = {}
        if memory:
            kwargs.update(mem_limit=memory, memswap_limit=-1)
        if cpus:
            kwargs["cpu_quota"], kwargs["cpu_period"] = round(cpus * 100_000), 100_000
        if kwargs:
            try:
                self.client.api.update_container(container_id, **kwargs)
            except APIError as exc:
                raise DeployFailed(f"cannot resize service container: {_first_line(_explanation(exc))}") from None

    def remove_service_container(self, container_id: str, timeout: int = 10) -> None:
        """Stop gracefully (a database flushes on SIGTERM) and remove; named volumes stay."""
        if self.service_state(container_id) is None:
            return
        with suppress(NotFound):
            self.client.api.stop(container_id, timeout=timeout)
        with suppress(NotFound):
            self.client.api.remove_container(container_id, force=True, v=True)

    def service_volumes(self, app: str, phase: str | None = None) -> list[str]:
        volumes = self.client.api.volumes(filters=self._filters(**self.service_labels(app, phase)))
        return sorted(v["Name"] for v in volumes.get("Volumes") or [])

    def service_networks(self, app: str, phase: str | None = None) -> list[str]:
        networks = self.client.api.networks(filters=self._filters(**self.service_labels(app, phase)))
        return sorted(n["Name"] for n in networks)

    def remove_volume(self, name: str) -> None:
        """Remove one of this installation's service volumes (its data is gone); absent is fine."""
        try:
            labels = self.client.api.inspect_volume(name).get("Labels") or {}
        except NotFound:
            return
        if labels.get(LABEL_INSTANCE) != self.instance or self.LABEL_SERVICE_APP not in labels:
            raise DeployFailed(f"volume {name} is not a service volume of installation {self.instance}")
        with suppress(NotFound):
            self.client.api.remove_volume(name, force=True)

    def remove_network(self, name: str) -> bool:
        """Remove a service network nothing is attached to; False when it is kept because a
        container (the phase's app) still uses it: taking it away would re-publish that
        container on another host port behind the router's back."""
        api = self.client.api
        try:
            network = api.inspect_network(name)
        except NotFound:
            return True
        labels = network.get("Labels") or {}
        if labels.get(LABEL_INSTANCE) != self.instance or self.LABEL_SERVICE_APP not in labels:
            raise DeployFailed(f"network {name} is not a service network of installation {self.instance}")
        if network.get("Containers"):
            return False
        try:
            api.remove_network(network["Id"])
        except NotFound:
            return True
        except APIError as exc:
            if exc.status_code == 409:  # something joined meanwhile
                return False
            raise
        return True

    def remove_service_image(self, image_id: str) -> bool:
        """Remove a service image no container uses any more; False when it is kept."""
        try:
            labels = self.client.api.inspect_image(image_id)["Config"].get("Labels") or {}
        except NotFound:
            return False
        if labels.get(LABEL_INSTANCE) != self.instance or self.LABEL_SERVICE not in labels:
            return False
        try:
            self.client.api.remove_image(image_id)
        except (NotFound, APIError):
            return False  # in use (another phase), or already gone
        return True

    def volume_sizes(self) -> dict[str, int | None]:
        """Bytes used by each of this installation's volumes (None: unknown), from the engine's
        disk-usage report, cached for a few seconds since the engine computes it for everything."""
        import time

        cached = getattr(self, "_volume_sizes", None)
        if cached is not None and time.monotonic() - cached[0] < self._SIZES_TTL:
            return cached[1]
        sizes: dict[str, int | None] = {}
        for volume in self.client.api.df().get("Volumes") or []:
            if (volume.get("Labels") or {}).get(LABEL_INSTANCE) != self.instance:
                continue
            size = (volume.get("UsageData") or {}).get("Size")
            sizes[volume["Name"]] = size if isinstance(size, int) and size >= 0 else None
        self._volume_sizes = (time.monotonic(), sizes)
        return sizes

    def service_logs(self, container_id: str, tail: int = 20) -> list[str]:
        if self.service_state(container_id) is None:
            return []
        try:
            output = self.client.api.logs(container_id, tail=tail)
        except NotFound:
            return []
        return output.decode("utf-8", errors="replace").splitlines()


def timestamped_lines(raw: bytes, since: float | None) -> list[tuple[float, str]]:
    """Docker's `timestamps=True` log output (a container's or a Swarm service's) as (unix
    time, text), only the lines after `since` when given."""
    lines = []
    for line in raw.decode("utf-8", errors="replace").splitlines():
        stamp, _, text = line.partition(" ")
        moment = _log_time(stamp)
        if moment is not None and (since is None or moment > since):
            lines.append((moment, text))
    return lines


def _log_time(stamp: str) -> float | None:
    """Docker's RFC 3339 log timestamp (nanoseconds, `Z`) as unix time; None if it is none."""
    head, _, fraction = stamp.rstrip("Z").partition(".")
    try:
        moment = datetime.fromisoformat(head).replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return moment.timestamp() + (float(f"0.{fraction[:9]}") if fraction.isdigit() else 0.0)


def _dockerfile_member(members: list[tarfile.TarInfo], dockerfile: str) -> tarfile.TarInfo | None:
    """The build context's Dockerfile, if it holds exactly one regular file by that name."""
    wanted = posixpath.normpath(dockerfile)
    found = [m for m in members if posixpath.normpath(m.name.removeprefix("./")) == wanted]
    return found[0] if len(found) == 1 and found[0].isfile() else None


def _dockerfile_text(context_tar: bytes, dockerfile: str) -> str | None:
    try:
        with tarfile.open(fileobj=io.BytesIO(context_tar)) as source:
            member = _dockerfile_member(source.getmembers(), dockerfile)
            return source.extractfile(member).read().decode("utf-8", "replace") if member else None
    except (tarfile.TarError, OSError):
        return None


_FROM = re.compile(r"(?i)^\s*FROM\s+((?:--\S+\s+)*)(\S+)(?:\s+AS\s+(\S+))?\s*$")
_ARG = re.compile(r"(?i)^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)(?:=(\S*))?\s*$")


def base_images(text: str) -> list[str]:
    """The images a Dockerfile's FROM lines need from outside the build: not `scratch`, not an
    earlier stage; build arguments declared before the first FROM are filled in with their
    defaults (one left unfilled keeps its `$`)."""
    logical = re.sub(r"\\\r?\n", " ", text).splitlines()
    args: dict[str, str] = {}
    stages: set[str] = set()
    images: list[str] = []
    seen_from = False
    for line in logical:
        arg = _ARG.match(line)
        if arg and not seen_from and arg.group(2) is not None:
            args[arg.group(1)] = arg.group(2).strip("\"'")
        match = _FROM.match(line)
        if not match:
            continue
        seen_from = True
        reference = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?",
                           lambda m: args.get(m.group(1), m.group(0)), match.group(2))
        if reference.lower() != "scratch" and reference.lower() not in stages and reference not in images:
            images.append(reference)
        if match.group(3):
            stages.add(match.group(3).lower())
    return images


def _with_label_line(context_tar: bytes, dockerfile: str, labels: dict[str, str]) -> bytes | None:
    """The build context with one LABEL instruction for all `labels` appended to its Dockerfile;
    None when that is not safe, and the engine adds the labels itself.

    Given labels, the engine's classic builder adds one LABEL step per label, each running and
    committing a container of its own (about 75 ms apiece): one line is one step. The values
    are checked slugs and hex digests, so they need no escaping.
    """
    try:
        with tarfile.open(fileobj=io.BytesIO(context_tar)) as source:
            members = source.getmembers()
            member = _dockerfile_member(members, dockerfile)
            if member is None:
                return None
            text = source.extractfile(member).read().decode("utf-8")
            escape = "`" if re.match(r"(?i)\A(?:#[^\n]*\n)*#\s*escape\s*=\s*`", text) else "\\"
            last = next((line.rstrip() for line in reversed(text.splitlines())
                         if line.strip() and not line.lstrip().startswith("#")), "")
            if last.endswith(escape):
                return None  # a dangling line continuation would swallow the LABEL line
            line = "LABEL " + " ".join(f'{key}="{value}"' for key, value in labels.items())
            data = (text.rstrip("\n") + "\n" + line + "\n").encode()
            out = io.BytesIO()
            with tarfile.open(fileobj=out, mode="w") as target:
                for entry in members:
                    if entry is member:
                        entry.size = len(data)
                        target.addfile(entry, io.BytesIO(data))
                    else:
                        target.addfile(entry, source.extractfile(entry) if entry.isfile() else None)
            return out.getvalue()
    except (tarfile.TarError, UnicodeDecodeError, OSError):
        return None


#: Where a docker CLI may be: the one on PATH, then Debian's docker.io package's (a newer CLI
#: without the buildx plugin on PATH cannot build with BuildKit; Debian's 20.10 has it built in).
_CLI_CANDIDATES = ("docker", "/usr/bin/docker")
#: BuildKit's plain progress names each step's digest on a line of its own: noise in a deployment log.
_STEP_DIGEST = re.compile(r"#\d+ sha256:[0-9a-f]{64}")


def cli_has_buildkit(version_text: str, has_buildx: bool) -> bool:
    """Whether a docker CLI (its `docker --version`) builds with BuildKit: built in from 18.09
    (with DOCKER_BUILDKIT=1), and only through the buildx plugin from 23.0 on."""
    match = re.search(r"\bversion (\d+)\.(\d+)", version_text)
    if match is None:
        return False
    version = (int(match.group(1)), int(match.group(2)))
    return (18, 9) <= version < (23, 0) or (version >= (23, 0) and has_buildx)


@cache
def buildkit_cli() -> str | None:
    """The first docker CLI here that builds with BuildKit, or None; asked once per process
    (the worker asks at start, so the work horses it forks know it)."""
    for candidate in _CLI_CANDIDATES:
        path = shutil.which(candidate)
        if path is None:
            continue
        version = _cli_output([path, "--version"])
        if version is None:
            continue
        if cli_has_buildkit(version, has_buildx=False) or cli_has_buildkit(
                version, has_buildx=_cli_output([path, "buildx", "version"]) is not None):
            return path
    return None


def _cli_output(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def buildkit_argv(cli: str, *, dockerfile: str, tag: str, labels: dict[str, str], iidfile: str) -> list[str]:
    """The `docker build` of a context tar on stdin; labels as flags (BuildKit adds them to the
    image config without a build step each)."""
    label_flags = [flag for key, value in labels.items() for flag in ("--label", f"{key}={value}")]
    return [cli, "build", "--progress=plain", "--file", dockerfile, "--tag", tag, *label_flags,
            "--iidfile", iidfile, "-"]


def _plain_tar(context_tar: bytes) -> bytes:
    """The context as a GNU tar without PAX headers, opening with the root directory: the docker
    CLI tells a tar on stdin from a Dockerfile by its first header alone, and takes the tar for a
    Dockerfile when a PAX record (Python's tarfile writes one for a fractional mtime) or a long
    name's extra record comes first."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(context_tar)) as source, \
            tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as target:
        root = tarfile.TarInfo(".")
        root.type, root.mode = tarfile.DIRTYPE, 0o755
        target.addfile(root)
        for entry in source.getmembers():
            entry.mtime = int(entry.mtime)
            entry.pax_headers = {}
            target.addfile(entry, source.extractfile(entry) if entry.isfile() else None)
    return out.getvalue()


def _without_ignored(context_tar: bytes, dockerfile: str) -> bytes:
    """The context without what its `.dockerignore` excludes, as `docker build DIR` leaves it
    out: a context sent as a tar goes to either builder whole. The Dockerfile and .dockerignore
    stay (the builder reads them)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(context_tar)) as source:
            members = source.getmembers()
            ignore = next((m for m in members if posixpath.normpath(m.name) == ".dockerignore" and m.isfile()), None)
            if ignore is None:
                return context_tar
            lines = (line.strip() for line in source.extractfile(ignore).read().decode("utf-8", "replace").splitlines())
            matcher = PatternMatcher([line for line in lines if line and not line.startswith("#")]
                                     + [f"!{posixpath.normpath(dockerfile)}"])
            kept = [m for m in members if not matcher.matches(posixpath.normpath(m.name))]
            if len(kept) == len(members):
                return context_tar
            out = io.BytesIO()
            with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as target:
                for entry in kept:
                    target.addfile(entry, source.extractfile(entry) if entry.isfile() else None)
            return out.getvalue()
    except (tarfile.TarError, OSError):
        return context_tar  # not a tar the engine can read either: its own error says so


def _feed(pipe, data: bytes) -> None:
    try:
        pipe.write(data)
    except BrokenPipeError:  # the CLI gave up early; its exit status says why
        pass
    finally:
        with suppress(BrokenPipeError):
            pipe.close()


def _output_lines(entry: dict) -> list[str]:
    if "stream" in entry:
        text = str(entry["stream"])
    elif "status" in entry:
        text = " ".join(str(entry[key]) for key in ("status", "progress") if entry.get(key))
    else:
        return []
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _explanation(exc: APIError) -> str:
    return str(exc.explanation or exc)


def _created_key(created: str) -> tuple[str, float]:
    """Sort key for Docker's RFC 3339 timestamps, whose fraction has a varying number of digits."""
    whole, _, fraction = created.rstrip("Z").partition(".")
    return whole, float(f"0.{fraction}") if fraction else 0.0
