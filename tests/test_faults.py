"""Faults caused for real (issue 8, item 3), each on the real service.

A signed push goes through the real webhook endpoint; `release-pipeline worker` runs as a
separate process (SIGKILLed here, work horse included); containers run on a Docker engine
behind a Caddy of the test's own, and clients use the phase URL. What breaks:

- the worker, SIGKILLed mid-build and mid-rollout;
- Redis (a private redis-server without persistence), stopped and started again;
- the Docker engine (a private dockerd with its own socket, data root and bridge), restarted;
- the router: Caddy SIGKILLed and started again with an empty configuration;
- GitHub answering 502s and then rate limits for several catch-up rounds.

The machine's own Redis (only TEST_REDIS_URL's database) and Docker engine (only this run's
instance label) are used by the other tests and left running. The four service faults are
marked `slow` (about 10-20 s each); they run in CI, `-m "not slow"` leaves them out locally.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import timezone
from pathlib import Path

import pytest
import requests
from rq import Queue, Retry, SimpleWorker
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry
from sqlalchemy import select

import app.jobs
from app.adapters.docker import LABEL_DEPLOYMENT, Engine
from app.adapters.router import Slots
from app.context import Context
from app.deployments import schedule
from app.exceptions import RouterError
from app.jobs import DEPLOYS, QUEUES, REPORTS, DeployJob, job_id
from app.locks import holder, is_held
from app.models import Delivery, Deployment, DeploymentStatus, LogLine, Report, ReportState
from app.plans import Deploy, Repo
from app.registry import ensure_app
from app.settings import load_settings
from app.slots import find_slots
from app.web import create_app
from tests.conftest import REDIS_URL, SECRET_KEY, WEBHOOK_SECRET, delivery_headers, drain_inbox, load_payload
from tests.support.dockerkit import container_status, make_sample_repo, require_caddy
from tests.support.faults import (
    PrivateCaddy,
    PrivateDocker,
    PrivateDockerUnavailable,
    PrivateRedis,
    WorkerProcess,
    running,
    wait_for,
)
from tests.support.requires import Part, missing, used
from workers import report as report_job

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("remove_docker_objects")]

REPO = "acme/shop"
APP = "shop"
ADMIN_TOKEN = "faults-admin-token-5f0c2a"
#: A killed worker's deploy lock is free again after this many seconds (DEPLOY_LOCK_SECONDS).
LOCK_SECONDS = 3
INTERRUPTED = "the worker stopped during the deploy; the previous version kept serving"
REPO_FILE = {".release-pipeline.yml": "port: 8080\nhealthcheck: /healthz\n"}
PIPELINE = """\
defaults:
  health_timeout: 20
  profile: {memory: 64m, cpus: 0.5}
phases:
  demo:
    trigger: push
  stage:
    trigger: tag
images:
  keep_last: 3
"""
# The sample app (tests.support.dockerkit) with a slow build step and/or a health file that
# only appears some seconds after the start; `nonce` keeps Docker's layer cache from skipping
# the slow step. A build killed half-way leaves its intermediate images behind, untagged: the
# instance label on them (not only on the final image) lets the cleanup find them.
DOCKERFILE = """\
FROM scratch
LABEL release-pipeline.instance={instance}
COPY busybox /bin/busybox
COPY www /www
COPY nonce /nonce
{run}CMD {command}
"""


def _start_command(ready_after: float) -> str:
    later = f"(/bin/busybox sleep {ready_after}; echo ok > /www/healthz) & " if ready_after else ""
    return ("trap 'kill $httpd; /bin/busybox sleep 0.5; exit 0' TERM; " + later
            + "/bin/busybox httpd -f -p \"$PORT\" -h /www & httpd=$!; wait")


@pytest.fixture(scope="module")
def caddy(tmp_path_factory) -> Iterator[PrivateCaddy]:
    require_caddy()
    server = PrivateCaddy(tmp_path_factory.mktemp("caddy"))
    server.start()
    yield server
    server.stop()


# -- the service -------------------------------------------------------------------------------


@dataclass
class Stack:
    """The web endpoint (in this process), worker processes, the phase URL and the database."""

    ctx: Context
    environ: dict[str, str]
    caddy: PrivateCaddy
    tmp: Path
    clone_url: str = ""
    workers: list[WorkerProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.web = create_app(context=self.ctx).test_client()
        self.http = requests.Session()
        self.http.trust_env = False

    # git and GitHub

    def commit(self, version: str, *, build_seconds: int = 0, ready_after: int = 0) -> str:
        extra = dict(REPO_FILE)
        if build_seconds or ready_after:
            run = f'RUN ["/bin/busybox", "sleep", "{self.build_sleep(build_seconds)}"]\n' if build_seconds else ""
            command = json.dumps(["/bin/busybox", "sh", "-c", _start_command(ready_after)])
            dockerfile = DOCKERFILE.format(instance=self.ctx.settings.pipeline_instance, run=run, command=command)
            extra.update({"Dockerfile": dockerfile, "nonce": secrets.token_hex(8)})
        self.clone_url, sha = make_sample_repo(self.tmp / "repo", version_text=version, healthy=not ready_after,
                                               extra_files=extra)
        return sha

    def deliver_push(self, sha: str, *, delivery: str | None = None):
        """GitHub's push delivery for `sha` on main, signed; the endpoint's answer."""
        payload = load_payload("push/with-installation")
        payload["repository"].update(full_name=REPO, name=APP, clone_url=self.clone_url, default_branch="main",
                                     html_url=f"https://github.com/{REPO}")
        payload.update(ref="refs/heads/main", after=sha, deleted=False, created=False)
        payload["head_commit"] = {**(payload.get("head_commit") or {}), "id": sha}
        body = json.dumps(payload).encode()
        return self.web.post("/api/github/webhooks", data=body,
                             headers=delivery_headers("push", body, delivery=delivery))

    def push(self, sha: str) -> int:
        """A push that must be accepted; the id of the deployment it queued."""
        response = self.deliver_push(sha)
        assert response.status_code == 202, response.get_json()
        return self.drain()["deployment"]

    def drain(self) -> dict:
        """The intake drainer's pass, run here: what it recorded last (reason, deployment)."""
        return drain_inbox(self.ctx)[-1].body

    def api(self, path: str):
        return self.web.get(f"/api/v1{path}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})

    # workers

    def start_worker(self) -> WorkerProcess:
        worker = WorkerProcess(self.environ, self.tmp / f"worker-{len(self.workers) + 1}.log")
        self.workers.append(worker)
        return worker

    def worker_logs(self) -> str:
        return "\n".join(f"--- worker {i + 1} (pid {w.pid}):\n{w.tail()}" for i, w in enumerate(self.workers))

    # what happened

    def deployment(self, deployment_id: int) -> Deployment:
        with self.ctx.db.session() as session:
            return session.get(Deployment, deployment_id)

    def deployments(self) -> list[Deployment]:
        with self.ctx.db.session() as session:
            return list(session.scalars(select(Deployment).order_by(Deployment.id)))

    def lines(self, deployment_id: int, stream: str | None = None) -> list[str]:
        with self.ctx.db.session() as session:
            query = select(LogLine.text).where(LogLine.deployment_id == deployment_id).order_by(LogLine.id)
            if stream:
                query = query.where(LogLine.stream == stream)
            return list(session.scalars(query))

    def wait_status(self, deployment_id: int, status: str, timeout: float = 60) -> Deployment:
        finished = {s.value for s in DeploymentStatus if s.finished}

        def reached():
            deployment = self.deployment(deployment_id)
            if deployment.status != status and deployment.status in finished:
                raise AssertionError(f"deployment {deployment_id} ended {deployment.status}: {deployment.reason}\n"
                                     + "\n".join(self.lines(deployment_id)[-15:]) + "\n" + self.worker_logs())
            return deployment if deployment.status == status else None

        return wait_for(reached, timeout, f"deployment {deployment_id} to be {status}",
                        details=lambda: "\n".join(self.lines(deployment_id)[-15:]) + "\n" + self.worker_logs())

    def lock_free(self, phase: str = "demo") -> bool:
        return holder(self.ctx.redis, APP, phase) is None and not is_held(self.ctx.redis, APP, phase)

    def slots(self, phase: str = "demo") -> Slots:
        with self.ctx.db.session() as session:
            app_id = self.deployments()[0].app_id
            return find_slots(session, app_id, phase)

    def containers(self, phase: str | None = "demo"):
        return self.ctx.engine.list_containers(app=APP, phase=phase)

    def build_sleep(self, seconds: int) -> str:
        """The slow build step's `sleep` argument: its fraction names this stack, so the step's
        process is told from any other on the host."""
        return f"{seconds}.{int(self.ctx.settings.pipeline_instance.encode().hex(), 16) % 9000 + 1000}"

    def build_step_running(self, seconds: int = 8) -> bool:
        """Whether the slow build step runs now: its process, on this host, whichever builder
        runs it (a classic build's container, a BuildKit step's)."""
        wanted = ["/bin/busybox", "sleep", self.build_sleep(seconds)]
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            with suppress(OSError):
                if cmdline.read_bytes().split(b"\0")[:-1] == [part.encode() for part in wanted]:
                    return True
        return False

    def containers_of(self, deployment_id: int):
        return [c for c in self.containers(None) if c.labels.get(LABEL_DEPLOYMENT) == str(deployment_id)]

    # the phase URL

    def get(self, path: str = "/version", phase: str = "demo", timeout: float = 10, **headers) -> requests.Response:
        host = f"{APP}-{phase}.localhost:{self.caddy.http_port}"
        return self.http.get(f"http://127.0.0.1:{self.caddy.http_port}{path}", headers={"Host": host, **headers},
                             timeout=timeout)

    def serves(self, phase: str = "demo") -> str:
        response = self.get(phase=phase)
        return response.text.strip() if response.status_code == 200 else f"<{response.status_code}>"

    def serves_soon(self, version: str, phase: str = "demo", timeout: float = 15) -> None:
        def check() -> bool:
            try:
                return self.serves(phase) == version
            except requests.RequestException:
                return False

        wait_for(check, timeout, f"{phase} to serve {version}", pause=0.1)

    def upstream(self, phase: str = "demo") -> int:
        """The slot port the router sends the phase URL's requests to first."""
        return self.ctx.router.routes()[(APP, phase)][0]

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        with suppress(Exception):  # the engine may be the private one, already gone
            api = self.ctx.engine.client.api
            for container in self.containers(None):
                api.remove_container(container.id, force=True, v=True)
        for phase in self.ctx.config.phase_names:
            with suppress(RouterError):
                self.ctx.router.remove(APP, phase)


class PhaseWatch:
    """GETs on the phase URL every few milliseconds, from a client that never retries."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.answers: list[str] = []
        self.failures: list[str] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PhaseWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        with requests.Session() as session:
            session.trust_env = False
            while not self._done.is_set():
                try:
                    response = session.get(f"http://127.0.0.1:{self.stack.caddy.http_port}/version", timeout=10,
                                           headers={"Host": f"{APP}-demo.localhost:{self.stack.caddy.http_port}"})
                    if response.status_code == 200:
                        self.answers.append(response.text.strip())
                    else:
                        self.failures.append(f"{response.status_code} {response.text[:80]!r}")
                except requests.RequestException as exc:
                    self.failures.append(repr(exc))
                time.sleep(0.02)


@pytest.fixture
def make_stack(database_url, redis_conn, instance, caddy, tmp_path) -> Iterator:
    stacks: list[Stack] = []

    def make(*, redis_url: str = REDIS_URL, docker_host: str | None = None) -> Stack:
        caddy.ensure_running()  # a test that failed half-way through a router restart leaves it down
        pipeline_file = tmp_path / "pipeline.yml"
        pipeline_file.write_text(PIPELINE)
        low = 21000 + 50 * (os.getpid() % 150)  # a range of its own for each concurrent test run
        environ = {
            "GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "SECRET_KEY": SECRET_KEY,
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "PIPELINE_INSTANCE": instance,
            "PIPELINE_ALLOW_FILE_CLONES": "1",
            "PIPELINE_CONFIG": str(pipeline_file),
            "ROUTER": "caddy",
            "CADDY_ADMIN_URL": caddy.admin_url,
            "ROUTER_PORT": str(caddy.http_port),
            "SLOT_PORTS": f"{low}-{low + 49}",
            "DRAIN_SECONDS": "0.3",
            "DEPLOY_LOCK_SECONDS": str(LOCK_SECONDS),
            "WORK_DIR": str(tmp_path / "work"),
            "PUBLIC_URL": "http://portal.test",
        }
        if docker_host:
            environ["DOCKER_HOST"] = docker_host
        ctx = Context.from_settings(load_settings(environ))
        ctx.router.ensure_server()
        stack = Stack(ctx=ctx, environ=environ, caddy=caddy, tmp=tmp_path)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.close()


# -- 1. the worker SIGKILLed -------------------------------------------------------------------


@pytest.mark.slow
def test_a_worker_killed_mid_build_and_mid_rollout(make_stack):
    stack = make_stack()
    engine = stack.ctx.engine
    worker = stack.start_worker()
    first = stack.wait_status(stack.push(stack.commit("1.0.0")), "succeeded")
    slots = stack.slots()
    assert first.host_port == slots.a and stack.serves() == "1.0.0"

    with PhaseWatch(stack) as watch:
        # Killed while Docker runs the slow build step.
        building = stack.push(stack.commit("2.0.0", build_seconds=8))
        wait_for(stack.build_step_running, 30, "the slow build step", details=stack.worker_logs)
        time.sleep(0.5)
        killed = worker.kill()
        assert len(killed) >= 2  # the worker and its work horse (and RQ's scheduler process)
        wait_for(lambda: not any(running(pid) for pid in killed), 5, "every killed process to be gone")
        assert stack.deployment(building).status == "building"
        assert holder(stack.ctx.redis, APP, "demo") == f"deployment {building}"
        # The engine cancels a build whose client went away: its build container goes at once.
        wait_for(lambda: not stack.build_step_running(), 10, "the engine to end the abandoned build")
        wait_for(stack.lock_free, LOCK_SECONDS + 2, "the dead worker's lock to expire")
        assert stack.deployment(building).status == "building"  # until a worker reconciles

        worker = stack.start_worker()  # reconciles on start
        interrupted = stack.wait_status(building, "failed", timeout=30)
        assert interrupted.reason == INTERRUPTED and interrupted.finished_at is not None
        assert stack.containers_of(building) == []

        # Killed while the new container is started but not yet healthy (it needs 6 s).
        rolling = stack.push(stack.commit("3.0.0", ready_after=6))
        started = wait_for(lambda: (d := stack.deployment(rolling)).status == "deploying" and d.container_id and d,
                           30, "the new container to start", details=stack.worker_logs)
        assert started.host_port == slots.b
        worker.kill()
        assert container_status(engine, started.container_id) == "running"  # left by the dead worker
        wait_for(stack.lock_free, LOCK_SECONDS + 2, "the dead worker's lock to expire")

        worker = stack.start_worker()
        interrupted = stack.wait_status(rolling, "failed", timeout=30)
        assert interrupted.reason == INTERRUPTED
        assert interrupted.container_id is None
        assert container_status(engine, started.container_id) is None and stack.containers_of(rolling) == []
        assert f"failed: {INTERRUPTED}" in stack.lines(rolling)
        time.sleep(0.5)

    # Every request through both kills was answered by the old version.
    assert watch.failures == [] and set(watch.answers) == {"1.0.0"} and len(watch.answers) > 100
    assert [c.id for c in stack.containers()] == [first.container_id]
    assert stack.ctx.router.routes()[(APP, "demo")] == (slots.a, slots.b)
    assert stack.lock_free()

    # The phase is not stuck: the next push deploys.
    last = stack.wait_status(stack.push(stack.commit("4.0.0")), "succeeded")
    assert stack.serves() == "4.0.0" and last.host_port == slots.b
    assert [c.id for c in stack.containers()] == [last.container_id]


# -- 2. Redis stopped and restarted ------------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.mark.slow
def test_redis_stopped_and_restarted(make_stack, private_redis):
    stack = make_stack(redis_url=private_redis.url)
    # Accepted and queued before the outage; no worker runs yet.
    accepted_delivery = str(uuid.uuid4())
    first_sha = stack.commit("1.0.0")
    response = stack.deliver_push(first_sha, delivery=accepted_delivery)
    assert response.status_code == 202
    first = stack.drain()["deployment"]
    assert Job.exists(job_id("deploy", first), connection=stack.ctx.redis)

    private_redis.stop()
    refused_delivery = str(uuid.uuid4())
    second_sha = stack.commit("2.0.0")
    response = stack.deliver_push(second_sha, delivery=refused_delivery)
    assert response.status_code == 503
    assert response.get_json() == {"error": "queue unavailable", "reason": "try the delivery again later"}
    with stack.ctx.db.session() as session:
        # Nothing of the refused delivery is kept, so GitHub's redelivery will be accepted.
        assert session.get(Delivery, refused_delivery) is None
        assert session.get(Delivery, accepted_delivery) is not None
    assert [(d.id, d.status) for d in stack.deployments()] == [(first, "queued")]
    health = stack.web.get("/healthz")
    assert health.status_code == 503 and health.get_json()["redis"] is False
    history = stack.api(f"/apps/{APP}/deployments")  # the portal still reads the database
    assert history.status_code == 200
    assert [(d["id"], d["status"]) for d in history.get_json()["deployments"]] == [(first, "queued")]

    # Back, and empty: the queued job is gone, the database still has the deployment.
    private_redis.start()
    assert not Job.exists(job_id("deploy", first), connection=stack.ctx.redis)
    worker = stack.start_worker()  # reconcile on start queues it again
    stack.wait_status(first, "succeeded")
    assert stack.serves() == "1.0.0"

    # GitHub redelivers the refused delivery: accepted now. The accepted one is known.
    response = stack.deliver_push(second_sha, delivery=refused_delivery)
    assert response.status_code == 202, response.get_json()
    second = stack.drain()["deployment"]
    # Redis came back empty: the delivery table still knows the accepted one.
    repeated = stack.deliver_push(first_sha, delivery=accepted_delivery)
    assert repeated.status_code == 202 and "already received" in stack.drain()["reason"]
    stack.wait_status(second, "succeeded")
    assert stack.serves() == "2.0.0"

    # A second outage while the worker waits for work: deliveries and portal actions are
    # refused with 503; the worker reconnects and carries on.
    private_redis.stop()
    third_sha, third_delivery = stack.commit("3.0.0"), str(uuid.uuid4())
    assert stack.deliver_push(third_sha, delivery=third_delivery).status_code == 503
    promotion = stack.web.post(f"/api/v1/apps/{APP}/phases/stage/promote", json={},
                               headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert promotion.status_code == 503, promotion.get_json()
    assert promotion.get_json()["reason"] == "the job queue is unavailable; nothing was deployed, try again"
    time.sleep(1)
    private_redis.start()
    response = stack.deliver_push(third_sha, delivery=third_delivery)
    assert response.status_code == 202
    third = stack.wait_status(stack.drain()["deployment"], "succeeded", timeout=60)
    assert stack.serves() == "3.0.0" and worker.alive()
    assert [(d.phase, d.status, d.reason) for d in stack.deployments()] == [
        ("demo", "succeeded", ""), ("demo", "succeeded", ""),
        ("stage", "failed", "the job queue (Redis) was unavailable; nothing was deployed"),
        ("demo", "succeeded", ""),
    ]
    assert third.id == stack.deployments()[-1].id


# -- 3. the Docker engine restarted ------------------------------------------------------------


@pytest.fixture
def private_docker(instance) -> Iterator[PrivateDocker]:
    try:
        engine, problem = PrivateDocker(instance), None
    except PrivateDockerUnavailable as exc:
        problem = str(exc)
    if problem:  # outside the except: the failure shows its instruction, not a traceback
        missing(Part.NETNS, f"a private Docker engine is needed to restart one: {problem}")
    try:
        engine.start()
        used(Part.NETNS, Engine(base_url=engine.host, instance=instance).client.version()["Version"])
        yield engine
    finally:
        engine.close()


def _promote(stack: Stack, source_id: int, phase: str) -> int:
    """Queue `phase` to run what `source_id` runs (as /promote does), through the real queue."""
    source = stack.deployment(source_id)
    with stack.ctx.db.session() as session:
        repo = Repo(REPO, stack.clone_url, "main")
        deployment = schedule(session, ensure_app(session, repo), Deploy(
            repo=repo, phase=phase, ref=source.sha, sha=source.sha, version=source.version, trigger="promotion",
            actor="dora"), source_id=source_id)
        session.flush()
        deployment_id = deployment.id
    stack.ctx.jobs.enqueue(DeployJob(deployment_id))
    return deployment_id


@pytest.mark.slow
def test_the_docker_engine_restarted(make_stack, private_docker):
    stack = make_stack(docker_host=private_docker.host)
    worker = stack.start_worker()
    demo = stack.wait_status(stack.push(stack.commit("1.0.0")), "succeeded")
    stage = stack.wait_status(_promote(stack, demo.id, "stage"), "succeeded")
    assert stack.serves("demo") == "1.0.0" and stack.serves("stage") == "1.0.0"

    private_docker.stop()
    # While it is down: the phase URLs fail (the engine stopped the containers), the service
    # answers, and a deploy fails with a reason.
    assert stack.get(phase="demo", timeout=15).status_code in (502, 503)
    health = stack.web.get("/healthz")
    assert health.status_code == 503 and health.get_json()["docker"] is False
    board = stack.api(f"/apps/{APP}")
    assert board.status_code == 200
    assert {p["name"]: p["health"]["state"] for p in board.get_json()["phases"]}["demo"] == "unknown"
    during = stack.wait_status(stack.push(stack.commit("2.0.0")), "failed")
    assert during.reason.startswith("the Docker engine failed or is unreachable: "), during.reason
    # A worker started meanwhile (a reboot, Docker not up yet) cannot reconcile, and runs anyway.
    late = stack.start_worker()
    wait_for(lambda: "Listening on" in late.tail(), 30, "the late worker to listen", details=late.tail)
    assert "reconcile on start failed" in late.tail() and late.alive()

    # The engine comes back having lost stage's container (its record deleted meanwhile).
    private_docker.forget_container(stage.container_id)
    private_docker.start()
    # Demo's container is started again by its restart policy, on its slot: nothing to do.
    stack.serves_soon("1.0.0", "demo")
    assert container_status(stack.ctx.engine, demo.container_id) == "running"
    assert container_status(stack.ctx.engine, stage.container_id) is None
    with pytest.raises(requests.ConnectionError):  # nothing on stage's slot until reconciled
        stack.http.get(f"http://127.0.0.1:{stage.host_port}/version", timeout=5)

    # The periodic reconcile (`release-pipeline scheduler` queues it every minute) runs on the
    # worker, which kept running: stage is redeployed from its image, demo left alone.
    job = Queue(DEPLOYS, connection=stack.ctx.redis).enqueue("workers.reconcile.run")
    findings = wait_for(lambda: job.refresh() or job.return_value(), 30, "the reconcile job", pause=0.2,
                        details=stack.worker_logs)
    assert findings["removed_containers"] == [] and findings["failed"] == []
    (restore_id,) = findings["redeployed"]
    restore = stack.wait_status(restore_id, "succeeded")
    assert (restore.trigger, restore.source_id, restore.phase) == ("restore", stage.id, "stage")
    assert restore.image_id == stage.image_id and stack.lines(restore_id, "build") == []
    stack.serves_soon("1.0.0", "stage")

    # Database, engine and router agree: each phase's current container runs on its recorded
    # slot port, and the router routes each phase to its slots.
    routes = stack.ctx.router.routes()
    for current in (demo, restore):
        phase = current.phase
        (container,) = stack.containers(phase)
        recorded = stack.deployment(current.id)
        assert (container.id, container.status, container.host_port) == (
            recorded.container_id, "running", recorded.host_port)
        assert recorded.host_port in stack.slots(phase).ports and routes[(APP, phase)] == stack.slots(phase).serving_first(recorded.host_port)
    assert worker.alive() and late.alive()


# -- 4. the router restarted -------------------------------------------------------------------


@pytest.mark.slow
def test_the_router_restarted_gets_its_routes_back_from_the_database(make_stack, caddy):
    stack = make_stack()
    worker = stack.start_worker()
    first = stack.wait_status(stack.push(stack.commit("1.0.0")), "succeeded")
    slots = stack.slots()

    caddy.kill()
    with pytest.raises(requests.ConnectionError):
        stack.get()
    # A deploy while the router is down fails with the reason; the serving container stays.
    during = stack.wait_status(stack.push(stack.commit("2.0.0")), "failed")
    assert during.reason.startswith(f"Caddy admin API at {caddy.admin_url} unreachable"), during.reason
    assert [c.id for c in stack.containers()] == [first.container_id]

    caddy.start()  # same ports, empty configuration
    assert stack.ctx.router.routes() == {}
    with pytest.raises(requests.ConnectionError):
        stack.get()

    job = Queue(DEPLOYS, connection=stack.ctx.redis).enqueue("workers.reconcile.run")
    findings = wait_for(lambda: job.refresh() or job.return_value(), 30, "the reconcile job", pause=0.2,
                        details=stack.worker_logs)
    assert findings["restored_routes"] == [f"{APP}/demo"] and findings["redeployed"] == []
    stack.serves_soon("1.0.0")
    assert stack.ctx.router.routes() == {(APP, "demo"): (slots.a, slots.b)}
    # The next deploy goes through the restored route.
    third = stack.wait_status(stack.push(stack.commit("3.0.0")), "succeeded")
    assert stack.serves() == "3.0.0" and third.host_port == slots.b
    assert worker.alive()


# -- 5. GitHub down, then rate limiting, for many rounds ---------------------------------------


def _run(redis_conn, queues=QUEUES, *, with_scheduler: bool = False) -> dict[str, list[str]]:
    rq_queues = [Queue(name, connection=redis_conn) for name in queues]
    SimpleWorker(rq_queues, connection=redis_conn).work(burst=True, with_scheduler=with_scheduler)
    return {q.name: FailedJobRegistry(queue=q).get_job_ids() for q in rq_queues}


def _wait_for_retries(redis_conn) -> None:
    """Until every report job RQ scheduled for a retry is due (RQ keeps whole seconds)."""
    registry = ScheduledJobRegistry(queue=Queue(REPORTS, connection=redis_conn))
    due = [registry.get_scheduled_time(j).replace(tzinfo=timezone.utc).timestamp() for j in registry.get_job_ids()]
    time.sleep(max([0.0, *(d - time.time() + 0.2 for d in due)]))


def _reports(pipeline_) -> list[Report]:
    with pipeline_.ctx.db.session() as session:
        return list(session.scalars(select(Report).order_by(Report.id)))


def test_github_down_then_rate_limiting_for_many_rounds_then_the_reports_catch_up_in_order(
        pipeline, github, redis_conn, monkeypatch):
    monkeypatch.setitem(app.jobs.ReportJob.options, "retry", Retry(max=1, interval=0))  # RQ gives up quickly
    github.down()
    first_sha = pipeline.commit("1.0.0")
    pipeline.push(first_sha)
    assert _run(redis_conn, (DEPLOYS,)) == {DEPLOYS: []}
    assert len(_run(redis_conn, (REPORTS,))[REPORTS]) == 4

    # Catch-up rounds while GitHub stays down: nothing is sent, nothing is lost.
    for _ in range(2):
        assert report_job.catch_up(older_than_seconds=0) == 4
        _run(redis_conn, (REPORTS,))
    # Then GitHub answers, but only with rate limits (403, Retry-After: 1) for minutes.
    github.down(False)
    github.rate_limit_next(10_000, retry_after=1)
    second_sha = pipeline.commit("1.1.0")
    pipeline.push(second_sha)
    assert _run(redis_conn, (DEPLOYS,)) == {DEPLOYS: []}
    for _ in range(2):
        report_job.catch_up(older_than_seconds=0)
        _run(redis_conn, (REPORTS,))
        _wait_for_retries(redis_conn)  # RQ's retry waits for Retry-After
        _run(redis_conn, (REPORTS,), with_scheduler=True)

    # Both deployments succeeded meanwhile; GitHub has heard nothing.
    first, second = pipeline.deployments()
    assert (first.status, second.status) == ("succeeded", "succeeded")
    assert pipeline.fetch(second.url, "/version").strip() == "1.1.0"
    assert github.statuses == {} and github.deployments == {}
    reports = _reports(pipeline)
    assert len(reports) == 8 and {r.state for r in reports} == {ReportState.PENDING.value}
    # Each round tried each deployment's oldest report (the later ones wait behind it).
    assert reports[0].attempts >= 6 and reports[4].attempts >= 2
    assert "rate limited" in reports[0].last_error and "rate limited" in reports[4].last_error

    # GitHub is back: one round sends everything, in order, once.
    with github._lock:  # the stand-in counts faults; end the rest of the rate limiting
        github._faults.clear()
    _wait_for_retries(redis_conn)
    sent_from = len(github.calls)
    assert report_job.catch_up(older_than_seconds=0) == 8
    assert _run(redis_conn, (REPORTS,), with_scheduler=True) == {REPORTS: []}
    assert {r.state for r in _reports(pipeline)} == {ReportState.SENT.value}
    repo = f"/repos/{REPO}"
    sent = [(c.method, c.path, (c.json or {}).get("state")) for c in github.calls[sent_from:]
            if not c.path.endswith("/access_tokens")]
    old_id, new_id = sorted(github.deployments)
    assert sent == [
        ("POST", f"{repo}/statuses/{first_sha}", "pending"),
        ("POST", f"{repo}/deployments", None),
        ("POST", f"{repo}/deployments/{old_id}/statuses", "in_progress"),
        ("POST", f"{repo}/statuses/{first_sha}", "success"),
        ("POST", f"{repo}/deployments/{old_id}/statuses", "success"),
        ("POST", f"{repo}/statuses/{second_sha}", "pending"),
        ("POST", f"{repo}/deployments", None),
        ("POST", f"{repo}/deployments/{new_id}/statuses", "in_progress"),
        ("POST", f"{repo}/statuses/{second_sha}", "success"),
        ("POST", f"{repo}/deployments/{new_id}/statuses", "success"),
    ]
    assert [s["state"] for s in github.deployments[old_id]["statuses"]] == ["in_progress", "success", "inactive"]
    assert github.deployments[new_id]["statuses"][-1]["environment_url"] == second.url
    assert {d.status for d in pipeline.deployments()} == {"succeeded"}
