"""The bench's own installation: ports, Redis DB, database, Caddy, processes, and their cleanup.

Everything runs on free loopback ports under an instance name of its own (`bench…`), so a
bench never touches another installation's containers, routes, queues or database, and
everything it started is stopped (by pid) and removed at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


class BenchError(RuntimeError):
    """Something the bench needs is missing or did not come up; the message says what to do."""


#: `--ports LOW-HIGH` (a machine shared with others): the bench's own ports come from here, the
#: upper half of the range being the deployed apps' slot ports (SLOT_PORTS).
PORTS: tuple[int, int] | None = None


def free_port() -> int:
    """A port free on 127.0.0.1 now: any, or one from the lower half of PORTS."""
    if PORTS is None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]
    low, high = PORTS
    for port in random.sample(range(low, (low + high) // 2), (high - low) // 2):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise BenchError(f"no free port in {low}-{(low + high) // 2}")


def slot_ports() -> str | None:
    """SLOT_PORTS for the service under test: the upper half of PORTS (None: the default)."""
    return None if PORTS is None else f"{(PORTS[0] + PORTS[1]) // 2 + 1}-{PORTS[1]}"


def wait_until(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.05,
               process: Proc | None = None) -> None:
    """Poll `check` until it is true; BenchError naming `what` (and the log) after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.popen.poll() is not None:
            raise BenchError(f"{what}: {process.name} exited with {process.popen.returncode}; "
                             f"last lines of {process.log}:\n{process.tail()}")
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet, whatever the reason
            pass
        time.sleep(interval)
    tail = f"; last lines of {process.log}:\n{process.tail()}" if process is not None else ""
    raise BenchError(f"{what} did not happen within {timeout:g}s{tail}")


# --- processes ---------------------------------------------------------------------------------


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may contain spaces and parentheses
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry.name))
    return found


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM to the process group we created for it (its own children only), then SIGKILL."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        # children left behind in the group (a web server worker, an RQ work horse)
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


# --- the installation --------------------------------------------------------------------------


@dataclass
class Env:
    """One bench installation. Use as a context manager: everything is cleaned up on exit."""

    redis_url: str = "redis://127.0.0.1:6379/7"
    database: str = "sqlite"  # or a PostgreSQL admin URL: a fresh database is created there
    postgres_admin: str = "postgresql://postgres@127.0.0.1:5432/postgres"  # for parts run on both
    keep: bool = False
    instance: str = field(default_factory=lambda: "bench" + secrets.token_hex(3))
    processes: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix=f"rp-{self.instance}-"))
        self.logs = self.home / "logs"
        self.logs.mkdir()
        self.webhook_secret = secrets.token_hex(20)
        self.admin_token = secrets.token_urlsafe(24)
        self.caddy_admin_port = free_port()
        self.router_port = free_port()
        self._pg_admin: str | None = None
        self._pg_databases: list[str] = []
        self._ctx = None
        self.pipeline_config = self.home / "pipeline.yml"
        config = yaml.safe_load((ROOT / "config" / "pipeline.yml").read_text())
        # Live normally takes a promotion PR approved on GitHub; the bench has no GitHub, so
        # the scale part promotes into Live through the API (same deploy path, no PR).
        config["phases"]["live"]["approvals"] = 0
        self.pipeline_config.write_text(yaml.safe_dump(config, sort_keys=False))

    # -- lifecycle --

    def __enter__(self) -> Env:
        self._check_tools()
        self._claim_redis()
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def _check_tools(self) -> None:
        missing = [tool for tool in ("wrk", "webhook", "caddy", "docker", "git") if shutil.which(tool) is None]
        if missing:
            raise BenchError(f"missing tools: {', '.join(missing)} "
                             "(apt-get install wrk webhook caddy docker.io git)")
        from app.adapters.docker import Engine

        if not Engine(instance=self.instance).ping():
            raise BenchError("the Docker engine does not answer (start dockerd, or set DOCKER_HOST)")

    def _claim_redis(self) -> None:
        from redis import Redis

        self.redis = Redis.from_url(self.redis_url, socket_connect_timeout=2, socket_timeout=10)
        try:
            keys = self.redis.dbsize()
        except Exception as exc:  # noqa: BLE001
            raise BenchError(f"Redis at {self.redis_url} does not answer ({exc}); start redis-server") from None
        if keys and not self.redis.exists("bench:owner"):
            raise BenchError(f"Redis database {self.redis_url} holds {keys} keys that are not the bench's: "
                             "pick an empty one with --redis-url redis://127.0.0.1:6379/N")
        self.redis.flushdb()  # left over by an earlier bench run (it carries bench:owner)
        self.redis.set("bench:owner", self.instance)

    def flush_redis(self) -> None:
        self.redis.flushdb()
        self.redis.set("bench:owner", self.instance)

    def cleanup(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()
        if self._ctx is not None:
            self._ctx.db.engine.dispose()
        from tests.support.dockerkit import remove_instance_objects

        for instance in (self.instance, self.naive_instance):
            try:
                remove_instance_objects(instance)
            except Exception as exc:  # noqa: BLE001
                print(f"bench: could not remove Docker objects of {instance}: {exc}", file=sys.stderr)
        try:
            self.redis.flushdb()
        except Exception:  # noqa: BLE001
            pass
        for name in self._pg_databases:
            self._drop_pg(name)
        if not self.keep:
            shutil.rmtree(self.home, ignore_errors=True)

    @property
    def naive_instance(self) -> str:
        """The naive script's objects carry their own label, so the worker's reconcile (which
        removes containers of its instance that no deployment expects) never sees them."""
        return f"{self.instance}-naive"

    # -- settings --

    def database_url(self, name: str, database: str | None = None) -> str:
        """A fresh database: SQLite, or PostgreSQL via `postgres_admin` ("postgresql"); the
        bench's default (`database`) when not given."""
        kind = database or ("sqlite" if self.database == "sqlite" else "postgresql")
        if kind == "sqlite":
            return f"sqlite:///{self.home / (name + '.db')}"
        return self._create_pg(f"{self.instance}_{name}")

    def _create_pg(self, name: str) -> str:
        from sqlalchemy import create_engine, text

        admin = create_engine(self._pg_url.replace("postgresql://", "postgresql+psycopg://", 1),
                              isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        except Exception as exc:  # noqa: BLE001
            raise BenchError(f"cannot create PostgreSQL database {name} via {self._pg_url}: {exc}") from None
        finally:
            admin.dispose()
        self._pg_databases.append(name)
        return f"{self._pg_url.rsplit('/', 1)[0]}/{name}"

    @property
    def _pg_url(self) -> str:
        return self.postgres_admin if self.database == "sqlite" else self.database

    def _drop_pg(self, name: str) -> None:
        from sqlalchemy import create_engine, text

        admin = create_engine(self._pg_url.replace("postgresql://", "postgresql+psycopg://", 1),
                              isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        except Exception as exc:  # noqa: BLE001
            print(f"bench: could not drop database {name}: {exc}", file=sys.stderr)
        finally:
            admin.dispose()

    def settings_env(self, database_url: str, web_port: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "PIPELINE_", "CADDY_"))}
        for name in ("ADMIN_TOKEN", "SECRET_KEY", "DATABASE_URL", "REDIS_URL", "ROUTER", "ROUTER_PORT",
                     "DRAIN_SECONDS", "WORK_DIR", "PUBLIC_URL", "SLOT_PORTS", "PORT"):
            env.pop(name, None)
        env.update({
            "GITHUB_WEBHOOK_SECRET": self.webhook_secret,
            "SECRET_KEY": "bench-" + self.instance,
            "ADMIN_TOKEN": self.admin_token,
            "REDIS_URL": self.redis_url,
            "DATABASE_URL": database_url,
            "PIPELINE_INSTANCE": self.instance,
            "PIPELINE_CONFIG": str(self.pipeline_config),
            "PIPELINE_ALLOW_FILE_CLONES": "1",
            "ROUTER": "caddy",
            "CADDY_ADMIN_URL": f"http://127.0.0.1:{self.caddy_admin_port}",
            "ROUTER_PORT": str(self.router_port),
            "WORK_DIR": str(self.home / "work"),
            "PUBLIC_URL": f"http://127.0.0.1:{web_port}",
            "PYTHONUNBUFFERED": "1",
            # The signing secret of part 6's notification target.
            "BENCH_NOTIFY_SECRET": "bench-notify-" + self.instance,
            **({"SLOT_PORTS": slot_ports()} if slot_ports() else {}),
            "PROMETHEUS_MULTIPROC_DIR": str(self.home / "metrics"),
        })
        return env

    def context(self, env: dict[str, str]):
        """The service's own Context, for the bench's reading of the database and the router."""
        from app.context import Context
        from app.settings import load_settings

        if self._ctx is not None:
            self._ctx.db.engine.dispose()
        self._ctx = Context.from_settings(load_settings(env))
        return self._ctx

    # -- processes --

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> Proc:
        log = self.logs / f"{name}.log"
        handle = log.open("ab")
        popen = subprocess.Popen(argv, env=env, cwd=cwd or ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        handle.close()
        proc = Proc(name, popen, log)
        self.processes.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.processes:
            self.processes.remove(proc)

    def release_pipeline(self, *args: str) -> list[str]:
        """`release-pipeline …` as the Procfile runs it (the venv's console script)."""
        script = VENV_BIN / "release-pipeline"
        return [str(script), *args] if script.exists() else [sys.executable, "-m", "app.cli", *args]

    def start_caddy(self) -> Proc:
        home = self.home / "caddy"
        home.mkdir(exist_ok=True)
        config = home / "caddy.json"
        config.write_text(json.dumps({"admin": {"listen": f"127.0.0.1:{self.caddy_admin_port}"}}))
        env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"),
               "XDG_DATA_HOME": str(home / "data")}
        proc = self.start("caddy", ["caddy", "run", "--config", str(config)], env=env)
        wait_until("Caddy's admin API answering",
                   lambda: requests.get(f"http://127.0.0.1:{self.caddy_admin_port}/config/", timeout=1).ok,
                   timeout=15, process=proc)
        return proc

    def start_web(self, env: dict[str, str], port: int, name: str = "web") -> Proc:
        proc = self.start(name, self.release_pipeline("serve", "--port", str(port)), env=env)
        wait_until(f"the web server answering on port {port}",
                   lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200,
                   timeout=60, interval=0.2, process=proc)
        # the main process answers through its workers: wait until every worker is up
        wait_until("the web server's workers", lambda: len(children_of(proc.pid)) >= 2, timeout=30, process=proc)
        return proc

    def start_intake(self, env: dict[str, str], name: str = "intake") -> Proc:
        """`release-pipeline intake` (the Procfile's intake: line), once it holds the inbox."""
        from app.inbox import Inbox

        inbox = Inbox(self.redis, env["PIPELINE_INSTANCE"])
        proc = self.start(name, self.release_pipeline("intake"), env=env)
        wait_until("the intake drainer holding the inbox", lambda: inbox.drainer() is not None,
                   timeout=60, interval=0.2, process=proc)
        return proc

    def start_worker(self, env: dict[str, str], name: str = "worker",
                     queues: str = "deploys,commands,reports") -> Proc:
        """`release-pipeline worker --queues …` (the Procfile's worker: line by default)."""
        from rq import Worker

        before = len(Worker.all(connection=self.redis))
        proc = self.start(name, self.release_pipeline("worker", "--queues", queues), env=env)
        wait_until(f"the RQ worker {name} registering in Redis",
                   lambda: len(Worker.all(connection=self.redis)) > before,
                   timeout=60, interval=0.2, process=proc)
        return proc

    def check_alive(self) -> None:
        for proc in self.processes:
            if proc.popen.poll() is not None:
                raise BenchError(f"{proc.name} exited with {proc.popen.returncode}; "
                                 f"last lines of {proc.log}:\n{proc.tail()}")
