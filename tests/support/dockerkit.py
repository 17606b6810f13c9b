"""Real things for tests: a tiny busybox web app, a git repository holding it, Docker and Caddy.

The sample app builds `FROM scratch` in well under a second and needs no registry. It serves
  /healthz          200 when built healthy, 404 otherwise
  /version          the `version_text` it was built with
  /cgi-bin/info     APP_VERSION, APP_PHASE and the profile variable GREETING, one per line
  /cgi-bin/slow     any method: reads the request body, then answers the version after 200 ms
and stops gracefully on SIGTERM; built with `crashes=True` it exits at once instead, with
`ignores_term=True` it ignores SIGTERM (busybox httpd as PID 1) and must be killed.
Import the fixtures you use into your test module:
    from tests.support.dockerkit import caddy_server, docker_engine
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import docker
import pytest
import requests
from docker.errors import NotFound

from app.adapters.docker import LABEL_INSTANCE, Engine
from tests.support.requires import Part, first_line, missing, used

BUSYBOX = Path("/bin/busybox")
PROFILE_VARIABLE = "GREETING"
APP_PORT = 8080
CRASH_MESSAGE = "sample app: crashing on purpose"

_DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
COPY www /www
# PID 1 ignores SIGTERM unless it traps it. A graceful stop, as apps should do it: close the
# listener, give requests in flight a moment, exit (everything left is killed with PID 1).
CMD {command}
"""
_START = (
    "trap 'kill $httpd; /bin/busybox sleep 0.5; exit 0' TERM; "
    "/bin/busybox httpd -f -p \"$PORT\" -h /www & httpd=$!; wait"
)

_IGNORING_TERM = "exec /bin/busybox httpd -f -p \"$PORT\" -h /www"
# A slow app, as a real one with a database behind it: reads the whole body, then thinks.
_CGI_SLOW = """\
#!/bin/busybox sh
/bin/busybox head -c "${CONTENT_LENGTH:-0}" >/dev/null
/bin/busybox sleep 0.2
echo "Content-Type: text/plain"
echo ""
/bin/busybox cat /www/version
"""

_CGI_INFO = """\
#!/bin/busybox sh
echo "Content-Type: text/plain"
echo ""
echo "APP_VERSION=$APP_VERSION"
echo "APP_PHASE=$APP_PHASE"
echo "APP_NODE=$APP_NODE"
echo "{profile}=${profile}"
echo "BUILD="{version}
echo "HOSTNAME=$HOSTNAME"
"""


def write_sample_app(
    path: Path,
    *,
    version_text: str = "1.0.0",
    healthy: bool = True,
    crashes: bool = False,
    ignores_term: bool = False,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write (or rewrite) the sample app's build context into `path` and return it.

    `crashes`: the container prints CRASH_MESSAGE and exits at once instead of serving.
    `ignores_term`: it serves, but only SIGKILL stops it.
    """
    path = Path(path)
    (path / "www" / "cgi-bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, path / "busybox")
    start = f"echo {CRASH_MESSAGE!r} >&2; exit 3" if crashes else _IGNORING_TERM if ignores_term else _START
    command = json.dumps(["/bin/busybox", "sh", "-c", start])
    (path / "Dockerfile").write_text(_DOCKERFILE.format(command=command))
    (path / "www" / "version").write_text(version_text + "\n")
    health = path / "www" / "healthz"
    if healthy:
        health.write_text("ok\n")
    else:
        health.unlink(missing_ok=True)
    info = path / "www" / "cgi-bin" / "info"
    info.write_text(_CGI_INFO.format(profile=PROFILE_VARIABLE, version=shlex.quote(version_text)))
    info.chmod(0o755)
    slow = path / "www" / "cgi-bin" / "slow"
    slow.write_text(_CGI_SLOW)
    slow.chmod(0o755)
    for relative, text in (extra_files or {}).items():
        target = path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        if target.parent == path / "www" / "cgi-bin":
            target.chmod(0o755)  # busybox httpd runs only executable scripts
    return path


def context_tar(directory: Path) -> bytes:
    """`directory` as an uncompressed tar with paths relative to it (a Docker build context)."""
    buffer = BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for child in sorted(Path(directory).iterdir()):
            tar.add(child, arcname=child.name)
    return buffer.getvalue()


def make_sample_repo(
    path: Path,
    *,
    version_text: str = "1.0.0",
    healthy: bool = True,
    crashes: bool = False,
    ignores_term: bool = False,
    tag: str | None = None,
    extra_files: dict[str, str] | None = None,
) -> tuple[str, str]:
    """Commit the sample app into a git repository at `path` (created on first use).

    Calling it again on the same path adds a commit on `main`. `tag` adds an annotated tag.
    Returns (file:// clone URL, commit sha).
    """
    path = Path(path)
    if not (path / ".git").exists():
        path.mkdir(parents=True, exist_ok=True)
        _git(path, "init", "--quiet", "--initial-branch=main")
    write_sample_app(path, version_text=version_text, healthy=healthy, crashes=crashes,
                     ignores_term=ignores_term, extra_files=extra_files)
    _git(path, "add", "--all")
    _git(path, "commit", "--quiet", "--allow-empty", "-m", f"Sample app {version_text}")
    if tag:
        _git(path, "tag", "-a", tag, "-m", f"Release {tag}")
    sha = _git(path, "rev-parse", "HEAD")
    return path.resolve().as_uri(), sha


def _git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Sample Author",
        "GIT_AUTHOR_EMAIL": "author@example.test",
        "GIT_COMMITTER_NAME": "Sample Author",
        "GIT_COMMITTER_EMAIL": "author@example.test",
    }
    result = subprocess.run(
        ["git", "-C", str(repo), *args], env=env, check=True, capture_output=True, text=True
    )
    return result.stdout.strip()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def unique_instance() -> str:
    """An instance name no other test run on this engine uses."""
    return "t" + secrets.token_hex(3)


def require_engine(instance: str) -> Engine:
    """The machine's Docker engine for `instance`; without one the test fails (RP_SKIP=docker: skips)."""
    engine = Engine(instance=instance)
    if not engine.ping():
        missing(Part.DOCKER, f"no Docker engine reachable at {os.environ.get('DOCKER_HOST') or 'the local socket'}")
    used(Part.DOCKER, engine.client.version()["Version"])
    return engine


def require_caddy() -> None:
    """Without a `caddy` binary the test fails (RP_SKIP=caddy: skips)."""
    if shutil.which("caddy") is None:
        missing(Part.CADDY, "caddy is not installed")
    used(Part.CADDY, first_line(["caddy", "version"]).split()[0])


def engine_answers(base_url: str, timeout: int = 2) -> bool:
    """Whether the Docker engine at `base_url` answers a ping (a private engine starting or
    stopped answers nothing, or refuses: False)."""
    try:
        client = docker.DockerClient(base_url=base_url, timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def remove_instance_objects(instance: str) -> None:
    """Remove every container, image, network and volume labelled with `instance` (a test
    run's own objects; the product never removes a whole instance)."""
    api = docker.from_env().api
    filters = {"label": [f"{LABEL_INSTANCE}={instance}"]}
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


def container_status(engine: Engine, container_id: str) -> str | None:
    """What `engine` sees of one of its app containers ("running", "exited", ...), or None."""
    return next((c.status for c in engine.list_containers() if c.id == container_id), None)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Engine]:
    """A Docker engine adapter with its own instance label; its objects are removed afterwards."""
    engine = require_engine(unique_instance())
    try:
        yield engine
    finally:
        remove_instance_objects(engine.instance)


@dataclass(frozen=True)
class CaddyServer:
    admin_url: str
    http_port: int


@pytest.fixture(scope="session")
def caddy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CaddyServer]:
    """A private `caddy run` whose admin API and HTTP server use random free ports."""
    require_caddy()
    home = tmp_path_factory.mktemp("caddy")
    admin_port, http_port = free_port(), free_port()
    config = home / "caddy.json"
    quiet = {"default": {"exclude": ["http.handlers.reverse_proxy.health_checker.active"]}}
    config.write_text(json.dumps({"admin": {"listen": f"127.0.0.1:{admin_port}"}, "logging": {"logs": quiet}}))
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_DATA_HOME": str(home / "data"),
    }
    log = (home / "caddy.log").open("wb")
    process = subprocess.Popen(
        ["caddy", "run", "--config", str(config)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    admin_url = f"http://127.0.0.1:{admin_port}"
    try:
        _wait_for(f"{admin_url}/config/", process)
        yield CaddyServer(admin_url=admin_url, http_port=http_port)
    finally:
        stop_process(process, timeout=10)
        log.close()


def stop_process(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM (a graceful stop), then SIGKILL if it is not gone within `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_for(url: str, process: subprocess.Popen, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"caddy exited with {process.returncode}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError(f"caddy admin API did not answer at {url}")


class RequestLoop:
    """Requests until stopped (and at most `limit` seconds): one client opens a new connection per
    request and never retries; the other keeps one keep-alive connection (`keep_alive` True or
    False: that client only) and, as HTTP clients do, sends a request again once on a new
    connection when its idle connection was closed under it. Any other exception and any non-2xx
    answer is a failure; `get(session)` makes one request."""

    def __init__(self, get: Callable[[requests.Session], requests.Response], limit: float = 60,
                 keep_alive: bool | None = None):
        self.get, self.limit = get, limit
        self.failures: list[str] = []
        self.answers: list[str] = []
        self._done = threading.Event()
        modes = (False, True) if keep_alive is None else (keep_alive,)
        self._threads = [threading.Thread(target=self._run, args=(mode,), daemon=True) for mode in modes]

    def __enter__(self) -> RequestLoop:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        for thread in self._threads:
            thread.join(timeout=15)

    @property
    def last(self) -> str:
        return self.answers[-1] if self.answers else ""

    def _run(self, keep_alive: bool) -> None:
        with requests.Session() as session:
            session.trust_env = False
            if not keep_alive:
                session.headers["Connection"] = "close"
            stop_at = time.monotonic() + self.limit  # bounded even if the test forgets to stop it
            while not self._done.is_set() and time.monotonic() < stop_at:
                try:
                    self._record(self.get(session))
                except requests.ConnectionError as exc:
                    # A server may close an idle keep-alive connection at any moment (a router reload
                    # does, as any idle timeout does: README, Zero downtime); HTTP clients then send an
                    # idempotent request again on a new connection (RFC 9112 §9.3.1), once.
                    if keep_alive and self._again(session):
                        continue
                    self.failures.append(repr(exc))
                except requests.RequestException as exc:
                    self.failures.append(repr(exc))
                time.sleep(0.002)

    def _record(self, response: requests.Response) -> None:
        if 200 <= response.status_code < 300:
            self.answers.append(response.text.strip())
        else:
            self.failures.append(f"{response.status_code} {response.text[:80]!r}")

    def _again(self, session: requests.Session) -> bool:
        """The one retry of a keep-alive client whose reused connection broke, on a new connection:
        False when it broke again (the caller counts that failure); an answer is recorded as any."""
        session.close()
        try:
            self._record(self.get(session))
        except requests.RequestException:
            return False
        return True


def wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def remove_docker_objects(instance) -> Iterator[None]:
    """For a module that asks for it (`pytest.mark.usefixtures`): it needs the engine; its run's
    objects are removed after it."""
    engine = require_engine(instance)
    yield
    remove_instance_objects(engine.instance)
