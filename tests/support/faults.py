"""Real services a fault test can break: a Caddy, a Redis and a Docker engine of the test's own,
and `release-pipeline worker` processes that can be SIGKILLed (work horse included).

Every process here is started by the test and stopped by pid; nothing shared on the machine
(its Redis, its Docker engine, other Caddys) is ever touched.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path

import requests
from redis import Redis

from app.settings import PROJECT_ROOT, Settings
from tests.support.dockerkit import engine_answers, free_port


def wait_for(condition, timeout: float, what: str, *, pause: float = 0.05, details=lambda: ""):
    """Poll `condition` until it returns something truthy (returned) or `timeout` s pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = details()
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}" + (f"\n{extra}" if extra else ""))
        time.sleep(pause)


# -- processes ---------------------------------------------------------------------------------


def descendants(root: int) -> list[int]:
    """Every living descendant of `root` (children first), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def running(pid: int) -> bool:
    """Whether `pid` is a process that still runs (a zombie waiting to be reaped does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


def kill_tree(root: int) -> list[int]:
    """SIGKILL `root` and all its descendants at once, as a crash or an OOM kill would.

    RQ's work horse runs in a process group of its own, so killing the worker's group would
    miss it: the whole tree is frozen first (SIGSTOP, so nothing forks or reacts meanwhile),
    then killed.
    """
    frozen: list[int] = []
    while True:
        tree = [pid for pid in [root, *descendants(root)] if pid not in frozen]
        if not tree:
            break
        for pid in tree:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        frozen += tree
    for pid in frozen:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return frozen


class WorkerProcess:
    """`python -m app.cli worker` (reconciles on start, then serves every queue), or with
    command="intake" the intake drainer."""

    def __init__(self, environ: dict[str, str], log_path: Path, *, burst: bool = False, queues: str | None = None,
                 command: str = "worker"):
        # Only the test's settings: nothing from the shell's environment may redirect the worker.
        env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
        env.update(environ, PYTHONUNBUFFERED="1")
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", command, *(["--burst"] if burst else []),
             *(["--queues", queues] if queues else [])],
            cwd=PROJECT_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> list[int]:
        """SIGKILL the worker and every process under it (the work horse, the RQ scheduler)."""
        killed = kill_tree(self.process.pid)
        self.process.wait(timeout=10)
        return killed

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (RQ's warm shutdown finishes the current job), then SIGKILL what is left."""
        if self.alive():
            tree = descendants(self.process.pid)
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                kill_tree(self.process.pid)
                self.process.wait(timeout=10)
            for pid in tree:  # e.g. RQ's scheduler process, if it outlived the worker
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._log.close()

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _stop_process(process: subprocess.Popen | None, timeout: float = 30) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


# -- Caddy -------------------------------------------------------------------------------------


class PrivateCaddy:
    """`caddy run` on ports of its own; `kill()` and `start()` again: same ports, empty config."""

    def __init__(self, home: Path):
        self.home = home
        self.admin_port, self.http_port = free_port(), free_port()
        self.process: subprocess.Popen | None = None

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self) -> None:
        quiet = {"default": {"exclude": ["http.handlers.reverse_proxy.health_checker.active"]}}
        config = self.home / "caddy.json"
        config.write_text(json.dumps({"admin": {"listen": f"127.0.0.1:{self.admin_port}"},
                                      "logging": {"logs": quiet}}))
        env = {**os.environ, "HOME": str(self.home), "XDG_CONFIG_HOME": str(self.home / "config"),
               "XDG_DATA_HOME": str(self.home / "data")}
        with (self.home / "caddy.log").open("ab") as log:
            self.process = subprocess.Popen(["caddy", "run", "--config", str(config)], env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

        def answers() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"caddy exited with {self.process.returncode}")
            try:
                return requests.get(f"{self.admin_url}/config/", timeout=1).ok
            except requests.ConnectionError:
                return False

        wait_for(answers, 15, "caddy's admin API")

    def ensure_running(self) -> None:
        if self.process is None or self.process.poll() is not None:
            self.start()

    def kill(self) -> None:
        """SIGKILL: Caddy loses its whole configuration (it was never saved to load again)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        _stop_process(self.process, timeout=10)


# -- Redis -------------------------------------------------------------------------------------


class PrivateRedis:
    """A redis-server of our own without persistence: a restart loses every key."""

    def __init__(self, home: Path):
        self.home = home
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        with (self.home / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--daemonize", "no", "--dir", str(self.home)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        client = Redis.from_url(self.url, socket_connect_timeout=1)

        def answers() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            try:
                return bool(client.ping())
            except Exception:
                return False

        try:
            wait_for(answers, 15, "the private redis-server")
        finally:
            client.close()

    def stop(self) -> None:
        _stop_process(self.process, timeout=15)


# -- Docker ------------------------------------------------------------------------------------


class PrivateDockerUnavailable(Exception):
    pass


class PrivateDocker:
    """A dockerd of our own: its own socket, data root, exec root (and managed containerd) and
    bridge, and no iptables rules (published ports go through docker-proxy), so it never
    touches the machine's engine or its firewall rules. Needs root, `dockerd` and `ip`."""

    def __init__(self, name: str):
        if os.geteuid() != 0:
            raise PrivateDockerUnavailable("a private Docker engine needs root")
        for tool in ("dockerd", "ip", "docker-proxy"):
            if shutil.which(tool) is None:
                raise PrivateDockerUnavailable(f"{tool} is not installed")
        # Unix socket paths are short: keep the whole tree near /.
        self.home = Path(tempfile.mkdtemp(prefix=f"rpd-{name}-", dir="/tmp"))
        self.bridge = f"rpf{name}"[:15]
        self.process: subprocess.Popen | None = None
        self._bridge_made = False
        try:
            self._make_bridge()
        except subprocess.CalledProcessError as exc:
            self.close()
            raise PrivateDockerUnavailable(f"cannot create bridge {self.bridge}: {exc.stderr.strip()}") from None

    @property
    def host(self) -> str:
        return f"unix://{self.home / 'docker.sock'}"

    def _make_bridge(self) -> None:
        routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
        subnet = next(f"10.231.{n}" for n in random.sample(range(1, 255), 254) if f"10.231.{n}." not in routes)
        for args in (["link", "add", self.bridge, "type", "bridge"],
                     ["addr", "add", f"{subnet}.1/24", "dev", self.bridge],
                     ["link", "set", self.bridge, "up"]):
            subprocess.run(["ip", *args], capture_output=True, text=True, check=True)
            self._bridge_made = True

    def start(self, timeout: float = 60) -> None:
        (self.home / "daemon.json").write_text("{}")  # never the machine's /etc/docker/daemon.json
        with (self.home / "dockerd.log").open("ab") as log:
            self.process = subprocess.Popen(
                ["dockerd", "--config-file", str(self.home / "daemon.json"), "--host", self.host,
                 "--data-root", str(self.home / "data"), "--exec-root", str(self.home / "exec"),
                 "--pidfile", str(self.home / "docker.pid"), f"--bridge={self.bridge}", "--iptables=false",
                 "--ip6tables=false", "--ip-masq=false", "--ip-forward=false"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def answers() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self.process.returncode}: {self.log_tail()}")
            return self.ping()

        wait_for(answers, timeout, "the private dockerd", pause=0.1)

    def ping(self) -> bool:
        return engine_answers(self.host)

    def stop(self) -> None:
        """A graceful engine stop, as `systemctl restart docker` does: containers are stopped
        (SIGTERM), their restart policies decide what runs again when the engine is back."""
        _stop_process(self.process, timeout=90)

    def forget_container(self, container_id: str) -> None:
        """While the engine is stopped: the container's record disappears (lost disk, restore)."""
        assert self.process is None or self.process.poll() is not None, "stop the engine first"
        shutil.rmtree(self.home / "data" / "containers" / container_id)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.home / "dockerd.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        """Stop the engine, end any process it left (by pid: those naming our directory),
        unmount, delete the directory and the bridge."""
        self.stop()
        home = str(self.home)
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                if home in cmdline:
                    with suppress(ProcessLookupError):
                        os.kill(int(entry), signal.SIGKILL)
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(home)), key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True)
        shutil.rmtree(self.home, ignore_errors=True)
        if self._bridge_made:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
