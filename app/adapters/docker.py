"""Build images and run app containers on one Docker engine, touching only our own objects.

Everything created here carries `release-pipeline.instance=<instance>`, and everything listed
or removed is filtered by it, so two installations (or test runs) can share an engine.
The client is created on first use: RQ forks a work horse per job, and a client opened
before the fork would share its connection pool across processes.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field

import docker
import requests
from docker.errors import APIError, DockerException, NotFound

from app.exceptions import BuildFailed, DeployFailed, InvalidVersion
from app.versions import validate_version

LABEL_INSTANCE = "release-pipeline.instance"
LABEL_APP = "release-pipeline.app"
LABEL_PHASE = "release-pipeline.phase"
LABEL_VERSION = "release-pipeline.version"
LABEL_SHA = "release-pipeline.sha"
LABEL_TREE = "release-pipeline.tree"
LABEL_DEPLOYMENT = "release-pipeline.deployment"

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


@dataclass(frozen=True)
class RunningContainer:
    id: str
    name: str
    host_port: int


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    labels: dict[str, str] = field(hash=False)
    status: str
    host_port: int | None


class Engine:
    """This installation's view of a Docker engine (`base_url` None: DOCKER_HOST or the socket)."""

    def __init__(self, base_url: str | None = None, instance: str = "rp"):
        if not _INSTANCE.match(instance):
            raise ValueError(f"instance {instance!r} must match {_INSTANCE.pattern}")
        self.base_url = base_url
        self.instance = instance
        self._client: docker.DockerClient | None = None

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
        try:
            stream = self.client.api.build(
                fileobj=io.BytesIO(context_tar),
                custom_context=True,
                dockerfile=dockerfile,
                tag=tag,
                labels=self._labels(**{LABEL_APP: app, LABEL_TREE: tree, LABEL_SHA: sha}),
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
        """Create and start the container for `spec`, published on a random 127.0.0.1 port."""
        problem = _unsafe(app=spec.app, phase=spec.phase, version=spec.version, sha=spec.sha, env=spec.env)
        if problem:
            raise DeployFailed(f"container refused: {problem}")
        name = f"{self.instance}-{spec.app}-{spec.phase}-{spec.deployment_id}"
        environment = {
            **spec.env,
            "PORT": str(spec.port),
            "APP_PHASE": spec.phase,
            "APP_VERSION": spec.version,
        }
        labels = self._labels(
            **{
                LABEL_APP: spec.app,
                LABEL_PHASE: spec.phase,
                LABEL_VERSION: spec.version,
                LABEL_SHA: spec.sha,
                LABEL_DEPLOYMENT: str(spec.deployment_id),
            }
        )
        try:
            # create + start rather than run(): run() pulls a missing image, we never pull.
            container = self.client.containers.create(
                spec.image,
                command=spec.command,
                name=name,
                labels=labels,
                environment=environment,
                mem_limit=spec.memory,
                nano_cpus=round(spec.cpus * 1e9) if spec.cpus else None,
                restart_policy={"Name": "unless-stopped"},
                ports={f"{spec.port}/tcp": ("127.0.0.1", None)},
                network=spec.network,
            )
        except APIError as exc:
            raise DeployFailed(f"cannot create container {name}: {_explanation(exc)}") from None
        try:
            container.start()
            container.reload()
            bindings = container.ports.get(f"{spec.port}/tcp") or []
            if not bindings:
                raise DeployFailed(f"container {name} has no published port ({container.status})")
            return RunningContainer(
                id=container.id, name=name, host_port=int(bindings[0]["HostPort"])
            )
        except (APIError, DeployFailed) as exc:
            container.remove(force=True, v=True)
            if isinstance(exc, DeployFailed):
                raise
            raise DeployFailed(f"cannot start container {name}: {_explanation(exc)}") from None

    def container_logs(self, container_id: str, tail: int = 50) -> list[str]:
        try:
            output = self._own_container(container_id).logs(tail=tail)
        except NotFound:
            return []
        return output.decode("utf-8", errors="replace").splitlines()

    def container_status(self, container_id: str) -> str | None:
        """ "running", "restarting", "exited", … or None when the container is gone."""
        try:
            container = self._own_container(container_id)
            container.reload()
        except NotFound:
            return None
        return container.status

    def stop_and_remove(self, container_id: str, timeout: int = 10) -> None:
        """Stop gracefully (SIGTERM, then SIGKILL after `timeout` s) and remove; gone is fine."""
        try:
            container = self._own_container(container_id)
            container.stop(timeout=timeout)
            container.remove(v=True)
        except NotFound:
            return

    def list_containers(
        self, app: str | None = None, phase: str | None = None
    ) -> list[ContainerInfo]:
        wanted = {LABEL_APP: app, LABEL_PHASE: phase}
        summaries = self.client.api.containers(
            all=True, filters=self._filters(**{k: v for k, v in wanted.items() if v is not None})
        )
        return [
            ContainerInfo(
                id=summary["Id"],
                name=summary["Names"][0].lstrip("/"),
                labels=summary.get("Labels") or {},
                status=summary["State"],
                host_port=next(
                    (p["PublicPort"] for p in summary.get("Ports", []) if p.get("PublicPort")), None
                ),
            )
            for summary in summaries
        ]

    # Whole installation

    def remove_instance_objects(self) -> None:
        """Remove every container, image, network and volume of this instance (uninstall)."""
        api, filters = self.client.api, self._filters()
        for summary in api.containers(all=True, filters=filters):
            with suppress(NotFound):
                api.remove_container(summary["Id"], force=True, v=True)
        for summary in api.images(filters=filters):
            with suppress(NotFound):
                api.remove_image(summary["Id"], force=True)
        for network in api.networks(filters=filters):
            with suppress(NotFound):
                api.remove_network(network["Id"])
        for volume in api.volumes(filters=filters).get("Volumes") or []:
            with suppress(NotFound):
                api.remove_volume(volume["Name"], force=True)

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
