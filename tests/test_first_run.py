"""A first run as a newcomer or an operator makes it (issue 12): the Procfile alone on an empty
database, `up` then `doctor` on a fresh clone, a local repository taken demo → stage → live with
`simulate`, and every process refusing at start, in one line, what it cannot run with.

Everything runs as real processes (honcho, gunicorn, RQ, Caddy, Docker), configured only with the
settings the README documents.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, text

from app.settings import PROJECT_ROOT, Settings
from tests.conftest import POSTGRES_ADMIN_URL, load_payload, sign
from tests.support.dockerkit import free_port, make_sample_repo
from tests.support.faults import wait_for

VENV_BIN = Path(sys.executable).parent
#: The sample app answers its health check on /healthz (its / is a 404).
REPO_FILE = {".release-pipeline.yml": "port: 8080\nhealthcheck: /healthz\n"}
WEBHOOK_SECRET = "first-run-webhook-secret"
SECRET_KEY = "first-run-secret-key"


def clean_environ(**settings: str) -> dict[str, str]:
    """The shell's environment without any of our settings, plus `settings`: nothing else leaks in."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields and k != "PORT"}
    env.update(PATH=f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}", PYTHONUNBUFFERED="1", **settings)
    return env


def readme_settings(tmp_path: Path, instance: str, database_url: str, redis_url: str) -> dict[str, str]:
    """Settings from the README's table only; ports and names of this test's own."""
    low = 24000 + 20 * (os.getpid() % 200)
    return {
        "GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "SECRET_KEY": SECRET_KEY,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "PIPELINE_ALLOW_FILE_CLONES": "1",
        "PIPELINE_INSTANCE": instance,
        "CADDY_ADMIN_URL": f"http://127.0.0.1:{free_port()}",
        "ROUTER_PORT": str(free_port()),
        "SLOT_PORTS": f"{low}-{low + 19}",
        "WORK_DIR": str(tmp_path / "work"),
        "HOME": str(tmp_path / "home"),  # Caddy keeps its state under $HOME
    }


class Processes:
    """Started in their own session; stopped (SIGTERM, then SIGKILL) with everything under them."""

    def __init__(self):
        self.started: list[tuple[subprocess.Popen, Path]] = []

    def start(self, argv: list[str], env: dict, log: Path, cwd: Path = PROJECT_ROOT) -> subprocess.Popen:
        handle = log.open("ab")
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.started.append((process, log))
        return process

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-60:])
                         for _, log in self.started)

    def stop(self) -> None:
        for process, _ in reversed(self.started):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process, _ in reversed(self.started):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def processes():
    running = Processes()
    yield running
    running.stop()


@pytest.fixture
def redis_url(redis_conn):
    from tests.conftest import REDIS_URL

    return REDIS_URL


@pytest.fixture(params=["sqlite", "postgresql"])
def new_database_url(request, tmp_path):
    """A database nothing has touched: a new SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'new.db'}"
        return
    name = f"rp_first_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://"),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def procfile() -> dict[str, str]:
    lines = (PROJECT_ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


def push_of(clone_url: str, sha: str) -> dict:
    """The recorded push delivery, for a push of `sha` to the default branch of a local repository."""
    payload = load_payload("push/with-installation")
    payload.update(ref="refs/heads/main", after=sha, deleted=False, head_commit={"id": sha})
    payload["repository"].update(clone_url=clone_url, default_branch="main")
    return payload


def phase_serves(router_port: int, host: str) -> str | None:
    try:
        response = requests.get(f"http://127.0.0.1:{router_port}/version", headers={"Host": host}, timeout=5)
    except requests.RequestException:
        return None
    return response.text.strip() if response.ok else None


# -- the Procfile alone ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("remove_docker_objects")  # its apps' containers and images
def test_the_procfile_alone_deploys_and_reports_on_a_new_database(
        new_database_url, redis_url, instance, github, tmp_path, processes):
    assert set(procfile()) == {"release", "web", "intake", "worker", "notifier", "scheduler", "router"}
    web_port = free_port()
    settings = readme_settings(tmp_path, instance, new_database_url, redis_url)
    env = clean_environ(**settings, **github.environ, PORT=str(web_port),
                        PUBLIC_URL=f"http://127.0.0.1:{web_port}")
    honcho = [str(VENV_BIN / "honcho"), "--no-colour", "-f", str(PROJECT_ROOT / "Procfile"), "-d", str(PROJECT_ROOT)]

    # The release phase first, as Heroku runs it (honcho runs it on its own the same way).
    release = subprocess.run([*honcho, "start", "release"], env=env, capture_output=True, text=True, timeout=120)
    assert release.returncode == 0, release.stdout + release.stderr
    assert "database is at the latest schema" in release.stdout

    honcho_process = processes.start([*honcho, "start", "web", "intake", "worker", "notifier", "scheduler", "router"], env,
                                     tmp_path / "honcho.log")
    web = f"http://127.0.0.1:{web_port}"

    def web_up() -> bool:
        assert honcho_process.poll() is None, processes.logs()
        try:
            return requests.get(f"{web}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_for(web_up, 60, "the web process", details=processes.logs)

    url, sha = make_sample_repo(tmp_path / "repo", version_text="first-run 1.0", extra_files=REPO_FILE)
    body = json.dumps(push_of(url, sha)).encode()
    response = requests.post(f"{web}/api/github/webhooks", data=body, timeout=10, headers={
        "X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(body, WEBHOOK_SECRET), "Content-Type": "application/json"})
    assert response.status_code == 202, response.text
    assert response.json()["reason"].startswith("accepted")

    router_port = int(settings["ROUTER_PORT"])

    def details() -> str:
        try:
            config = requests.get(f"{settings['CADDY_ADMIN_URL']}/config/", timeout=5).text
        except requests.RequestException as exc:
            config = str(exc)
        return f"{processes.logs()}\ncaddy config: {config[:3000]}"

    wait_for(lambda: phase_serves(router_port, "hello-world-demo.localhost") == "first-run 1.0", 120,
             "the demo phase URL to serve the commit", details=details)
    # Reported to GitHub: the commit status names the phase URL.
    phase_url = f"http://hello-world-demo.localhost:{router_port}"

    def reported():
        statuses = [c.json for c in github.calls_to("POST", f"/repos/Codertocat/Hello-World/statuses/{sha}")]
        return [s for s in statuses if s["state"] == "success"]

    success = wait_for(reported, 60, "the success status",
                       details=lambda: f"{processes.logs()}\nGitHub saw: {[(c.method, c.path, c.json) for c in github.calls]} sha {sha}")
    assert success[0]["target_url"] == phase_url and success[0]["context"] == "release-pipeline/demo"
    assert honcho_process.poll() is None, processes.logs()


# -- refusing at start, in one line ------------------------------------------------------------


def run_cli(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def start_env(tmp_path, redis_url, instance):
    def make(**changes: str | None) -> dict:
        settings = readme_settings(tmp_path, instance, f"sqlite:///{tmp_path / 'state.db'}", redis_url)
        settings.update({k: v for k, v in changes.items() if v is not None})
        return clean_environ(**{k: v for k, v in settings.items() if changes.get(k, "") is not None})

    return make


@pytest.mark.parametrize("process", ["serve", "worker", "scheduler"])
def test_a_process_on_a_database_without_schema_refuses_to_start(start_env, process):
    result = run_cli(process, env=start_env())
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["Error: the database has no schema yet: run release-pipeline migrate"]


def test_a_process_on_a_schema_behind_refuses_to_start(start_env):
    from alembic import command

    from app.db import alembic_config

    env = start_env()
    command.upgrade(alembic_config(env["DATABASE_URL"]), "0001")
    result = run_cli("worker", env=env)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert re.fullmatch(r"Error: the database schema is at 0001, this version needs \S+: run release-pipeline migrate",
                        line), line
    assert run_cli("migrate", env=env).returncode == 0
    assert run_cli("worker", "--burst", env=env).returncode == 0


@pytest.mark.parametrize("process, what", [("serve", "web server"), ("worker", "worker")])
def test_a_process_that_needs_secret_key_refuses_to_start_without_it(start_env, process, what):
    env = start_env(SECRET_KEY=None)
    assert run_cli("migrate", env=env).returncode == 0  # migrating needs no SECRET_KEY
    result = run_cli(process, env=env)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"Error: SECRET_KEY is required to run the {what} (it signs sessions and encrypts secrets): "
        "set it to a long random string, the same for every process"]


@pytest.mark.parametrize("process", ["serve", "worker", "scheduler", "router", "migrate"])
def test_a_process_with_an_invalid_pipeline_refuses_to_start(start_env, tmp_path, process):
    pipeline = tmp_path / "pipeline.yml"
    pipeline.write_text((PROJECT_ROOT / "config" / "pipeline.yml").read_text().replace("approvals: 1", "approvals: -1"))
    result = run_cli(process, env=start_env(PIPELINE_CONFIG=str(pipeline)))
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: ") and "phases/live/approvals" in line, line


def test_a_worker_waits_for_a_database_that_is_away(start_env, tmp_path, processes, redis_conn):
    """Away is not a reason to exit: it says so once, waits, and starts once the database is back."""
    from rq import Worker

    name = f"rp_away_{uuid.uuid4().hex[:8]}"
    url = f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    env = start_env(DATABASE_URL=url)
    admin = create_engine(POSTGRES_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://"),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        assert run_cli("migrate", env=env).returncode == 0
        with admin.connect() as conn:  # the database refuses every connection, as while it restarts
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
        log = tmp_path / "worker.log"
        worker = processes.start([sys.executable, "-m", "app.cli", "worker"], env, log)
        wait_for(lambda: "waiting for the database" in log.read_text(), 60, "the worker to say it waits",
                 details=lambda: log.read_text())
        assert worker.poll() is None and not Worker.all(connection=redis_conn)
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        wait_for(lambda: Worker.all(connection=redis_conn), 60, "the worker to register with RQ",
                 details=lambda: log.read_text())
        assert worker.poll() is None
        assert log.read_text().count("waiting for the database") == 1
    finally:
        processes.stop()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# -- up, doctor, the sign-in link, simulate --------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("remove_docker_objects")  # its apps' containers and images
def test_up_on_a_fresh_clone_then_doctor_sign_in_and_simulate_demo_stage_live(
        redis_url, instance, tmp_path, processes):
    from tests.support.faults import descendants

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(PROJECT_ROOT), str(clone)], check=True)
    web_port = free_port()
    settings = readme_settings(tmp_path, instance, "unused", redis_url)
    for generated in ("GITHUB_WEBHOOK_SECRET", "SECRET_KEY", "DATABASE_URL"):  # up's own defaults
        del settings[generated]
    env = clean_environ(**settings, PIPELINE_CONFIG=str(clone / "config" / "pipeline.local.yml"))
    up_log = tmp_path / "up.log"
    up = processes.start([sys.executable, "-m", "app.cli", "up", "--port", str(web_port)], env, up_log, cwd=clone)
    link = wait_for(lambda: re.search(r"sign in \(one use.*\): (\S+)", up_log.read_text()), 120,
                    "up to print the sign-in link", details=lambda: up_log.read_text())[1]
    assert link.startswith(f"http://localhost:{web_port}/signin/once?token=")
    assert (clone / "var" / "sign-in-link").read_text().strip() == link
    assert "ADMIN_TOKEN generated into" in up_log.read_text()  # the sign-in form works after the link is spent

    def doctor() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "app.cli", "doctor"], cwd=clone, env=env,
                              capture_output=True, text=True, timeout=120)

    result = wait_for(lambda: (r := doctor()).returncode == 0 and r, 60, "doctor to pass",
                      details=lambda: doctor().stdout + up_log.read_text())
    for check in ("schema", "intake", "worker", "scheduler", "sign-in", "web", "router"):
        assert re.search(rf"^\[ok \] {check}: ", result.stdout, re.M), result.stdout

    # The link signs in once, as admin.
    browser = requests.Session()
    page = browser.get(link, timeout=10)
    assert page.status_code == 200 and "Sign in as admin" in page.text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)[1]
    token = link.partition("token=")[2]
    signed_in = browser.post(f"http://localhost:{web_port}/signin/once", data={"csrf_token": csrf, "token": token},
                             timeout=10)
    assert signed_in.status_code == 200 and signed_in.url == f"http://localhost:{web_port}/"
    assert browser.get(f"http://localhost:{web_port}/api/v1/me", timeout=10).json()["signed_in_with"] == \
        "one-time sign-in link"
    again = requests.Session()
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', again.get(link, timeout=10).text or "")
    assert csrf is None  # spent: the page says so instead of offering the button

    # A newcomer's own repository, demo → stage → live in three commands.
    repo = tmp_path / "myapp"
    make_sample_repo(repo, version_text="my app 1.0", extra_files=REPO_FILE)
    router_port = settings["ROUTER_PORT"]
    for command, phase in ((["push"], "demo"), (["tag", "v1.0.0"], "stage"), (["pr-merge"], "live")):
        step = subprocess.run([sys.executable, "-m", "app.cli", "simulate", "--repo", str(repo), *command], cwd=clone,
                              env=env, capture_output=True, text=True, timeout=600)
        assert step.returncode == 0, step.stdout + step.stderr + up_log.read_text()
        assert f"{phase} serves " in step.stdout and f"http://myapp-{phase}.localhost:{router_port}" in step.stdout
    assert phase_serves(int(router_port), "myapp-live.localhost") == "my app 1.0"

    # A child that dies is restarted, and says so.
    (worker,) = [pid for pid in descendants(up.pid) if parent(pid) == up.pid
                 and "app.cli\x00worker" in (cmdline := Path(f"/proc/{pid}/cmdline").read_text(errors="replace"))
                 and "\x00notifications" not in cmdline]  # the notifier is a worker of its own
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: "worker restarted" in up_log.read_text(), 60, "up to restart the worker",
             details=lambda: up_log.read_text())
    assert re.search(r"worker exited with status -9; restarting it", up_log.read_text())
    wait_for(lambda: doctor().returncode == 0, 90, "doctor to pass again",
             details=lambda: doctor().stdout + up_log.read_text()[-6000:])
