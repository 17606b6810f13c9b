"""The deploy job end to end on the real engine, through a real Caddy (README, Zero downtime; issue 3).

Each test drives `workers.deploy.Rollout` (or a signed push and an RQ worker) against the
busybox sample app in a file:// repository, and checks what a client of the phase URL sees:
requests go to 127.0.0.1:ROUTER_PORT naming the phase host, as *.localhost may not resolve.
"""

from __future__ import annotations

import json
import logging
import os
import re
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from rq import Queue, SimpleWorker
from sqlalchemy import func, select

from app.adapters.docker import LABEL_APP, LABEL_INSTANCE, ContainerSpec
from app.context import Context
from app.deployments import schedule
from app.locks import deploy_lock, take
from app.models import App, Build, Deployment, DeploymentStatus, LogLine, PhaseSlots, Profile
from app.plans import Deploy, Repo
from app.registry import ensure_app
from app.web import create_app
from tests.conftest import delivery_headers, drain_inbox, load_payload
from tests.support.dockerkit import (
    container_status,
    RequestLoop,
    wait_until,
    APP_PORT,
    CRASH_MESSAGE,
    context_tar,
    free_port,
    make_sample_repo,
    write_sample_app,
)
from workers import reconcile as reconcile_job
from workers import runtime
from workers.deploy import Rollout

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("remove_docker_objects")]

REPO = "acme/shop"
APP = "shop"
REPO_FILE = {".release-pipeline.yml": f"port: {APP_PORT}\nhealthcheck: /healthz\n"}
PIPELINE = """\
defaults:
  health_timeout: 10
  profile: {memory: 64m, cpus: 0.5}
phases:
  demo:
    trigger: push
    health_timeout: 3
  stage:
    trigger: tag
    profile: {env: {GREETING: hello stage}}
images:
  keep_last: 1
"""
TOKEN = "ghs_TopSecretInstallationToken1234567890"


@pytest.fixture(scope="module")
def router_port() -> int:
    return free_port()


@dataclass
class Rig:
    ctx: Context
    environ: dict[str, str]
    repo_path: Path
    router_port: int
    clone_url: str = ""
    versions: dict[str, str] = field(default_factory=dict)  # version -> sha

    def commit(self, version: str, **options) -> str:
        self.clone_url, sha = make_sample_repo(self.repo_path, version_text=version, extra_files=REPO_FILE,
                                               **options)
        self.versions[version] = sha
        return sha

    def schedule(self, version: str, phase: str = "demo", *, source_id: int | None = None,
                 trigger: str = "push", clone_url: str | None = None, sha: str | None = "from-commit",
                 installation_id: int | None = None) -> int:
        sha = self.versions.get(version) if sha == "from-commit" else sha
        with self.ctx.db.session() as session:
            repo = Repo(REPO, clone_url or self.clone_url, "main", installation_id=installation_id)
            app = ensure_app(session, repo)
            deployment = schedule(session, app, Deploy(repo=repo, phase=phase, ref="main" if sha is None else sha,
                                                       sha=sha, version=version, trigger=trigger, actor="dora"),
                                  source_id=source_id)
            session.flush()
            return deployment.id

    def run(self, deployment_id: int) -> Deployment:
        Rollout(self.ctx, deployment_id).run()
        return self.deployment(deployment_id)

    def deploy(self, version: str, phase: str = "demo", **options) -> Deployment:
        return self.run(self.schedule(version, phase, **options))

    def deployment(self, deployment_id: int) -> Deployment:
        with self.ctx.db.session() as session:
            return session.get(Deployment, deployment_id)

    def lines(self, deployment_id: int, stream: str | None = None) -> list[str]:
        with self.ctx.db.session() as session:
            query = select(LogLine.text).where(LogLine.deployment_id == deployment_id).order_by(LogLine.id)
            if stream:
                query = query.where(LogLine.stream == stream)
            return list(session.scalars(query))

    def count(self, model) -> int:
        with self.ctx.db.session() as session:
            return session.scalar(select(func.count()).select_from(model))

    def host(self, phase: str = "demo") -> str:
        return f"{APP}-{phase}.localhost:{self.router_port}"

    def get(self, path: str = "/version", phase: str = "demo", session=None) -> requests.Response:
        session = session or requests
        return session.get(f"http://127.0.0.1:{self.router_port}{path}", headers={"Host": self.host(phase)},
                           timeout=10)

    def serves(self, phase: str = "demo") -> str:
        return self.get(phase=phase).text.strip()

    def info(self, phase: str = "demo") -> dict[str, str]:
        text = self.get("/cgi-bin/info", phase).text
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def containers(self, phase: str = "demo"):
        return self.ctx.engine.list_containers(app=APP, phase=phase)


@pytest.fixture
def rig(make_settings, database_url, redis_conn, caddy_server, router_port, tmp_path) -> Iterator[Rig]:
    pipeline = tmp_path / "pipeline.yml"
    pipeline.write_text(PIPELINE)
    low = 20000 + 100 * (os.getpid() % 90)  # a range of its own for each concurrent test run
    environ = {
        "DATABASE_URL": database_url,
        "ROUTER": "caddy",
        "CADDY_ADMIN_URL": caddy_server.admin_url,
        "ROUTER_PORT": str(router_port),
        "SLOT_PORTS": f"{low}-{low + 99}",
        "DRAIN_SECONDS": "0.3",
        "PIPELINE_CONFIG": str(pipeline),
    }
    ctx = Context.from_settings(make_settings(**environ))
    ctx.router.ensure_server()
    yield Rig(ctx=ctx, environ=environ, repo_path=tmp_path / "repo", router_port=router_port)
    api = ctx.engine.client.api
    for container in api.containers(all=True, filters={"label": f"{LABEL_INSTANCE}={ctx.engine.instance}"}):
        api.remove_container(container["Id"], force=True, v=True)


# -- deploying ---------------------------------------------------------------------------------


def test_first_deploy_then_redeploy_serve_at_the_phase_url(rig):
    rig.commit("1.0.0")
    first = rig.deploy("1.0.0")
    assert first.status == "succeeded", first.reason
    assert first.url == f"http://{APP}-demo.localhost:{rig.router_port}"
    assert rig.serves() == "1.0.0"
    assert rig.info().items() >= {"APP_VERSION": "1.0.0", "APP_PHASE": "demo", "BUILD": "1.0.0"}.items()
    assert rig.count(Build) == 1 and rig.lines(first.id, "build")
    with rig.ctx.db.session() as session:
        slots = session.scalar(select(PhaseSlots))
    assert (slots.phase, slots.port_b) == ("demo", slots.port_a + 1)
    assert [(c.id, c.host_port) for c in rig.containers()] == [(first.container_id, slots.port_a)]

    rig.commit("2.0.0")
    second = rig.deploy("2.0.0")
    assert second.status == "succeeded", second.reason
    assert rig.serves() == "2.0.0"
    assert [(c.id, c.host_port) for c in rig.containers()] == [(second.container_id, slots.port_b)]
    assert rig.count(Build) == 2
    lines = rig.lines(second.id)
    assert any(line.startswith(f"stopped the previous container {rig.ctx.engine.instance}-shop-demo-")
               for line in lines)
    assert f"{second.url} now serves 2.0.0 (slot port {slots.port_b})" in lines


def test_the_next_phase_reuses_the_image(rig):
    rig.commit("1.0.0")
    demo = rig.deploy("1.0.0")
    builds, build_lines = rig.count(Build), len(rig.lines(demo.id, "build"))
    stage = rig.deploy("1.0.0", "stage", source_id=demo.id, trigger="promotion")
    assert stage.status == "succeeded", stage.reason
    assert rig.count(Build) == builds and build_lines > 0
    assert rig.lines(stage.id, "build") == []
    assert not any("building" in line for line in rig.lines(stage.id))
    assert stage.image_id == demo.image_id and stage.build_id == demo.build_id
    assert rig.info("stage").items() >= {"APP_VERSION": "1.0.0", "APP_PHASE": "stage",
                                         "GREETING": "hello stage"}.items()
    assert rig.serves("demo") == "1.0.0"


def test_a_container_that_exits_at_once_fails_and_the_old_one_keeps_serving(rig):
    rig.commit("1.0.0")
    assert rig.deploy("1.0.0").status == "succeeded"
    serving = rig.containers()
    rig.commit("2.0.0", crashes=True)
    with RequestLoop(lambda session: rig.get(session=session)) as loop:
        failed = rig.deploy("2.0.0")
    assert failed.status == "failed"
    assert failed.reason.startswith("container exited") and "\n" not in failed.reason
    assert CRASH_MESSAGE in failed.evidence["logs"]
    assert failed.evidence["health"]
    assert f"container: {CRASH_MESSAGE}" in rig.lines(failed.id)
    assert failed.container_id is None
    assert rig.containers() == serving  # the crashed one is removed, the old one untouched
    assert rig.serves() == "1.0.0"
    assert loop.failures == [] and set(loop.answers) == {"1.0.0"}


def test_a_container_that_never_turns_healthy_is_never_routed_to(rig):
    """The third deploy starts on slot A, the one Caddy prefers: its health check fails, so
    Caddy never sends it a request while the second version keeps serving from slot B."""
    for version in ("1.0.0", "2.0.0"):
        rig.commit(version)
        assert rig.deploy(version).status == "succeeded"
    serving = rig.containers()
    rig.commit("3.0.0", healthy=False)
    with RequestLoop(lambda session: rig.get(session=session)) as loop:
        started = time.monotonic()
        failed = rig.deploy("3.0.0")
        elapsed = time.monotonic() - started
    assert failed.status == "failed" and elapsed >= 3  # demo's health_timeout
    assert failed.reason == "health check failed: 404 Not Found on /healthz after 3s"
    assert failed.evidence["health"][-1] == "404 Not Found"
    assert isinstance(failed.evidence["logs"], list)
    assert rig.containers() == serving
    # The log was not silent meanwhile: the wait said where it stood (every 2 s).
    assert any(re.fullmatch(r"waiting for /healthz: \d s of 3, last answer: (404 Not Found|connection refused)", line)
               for line in rig.lines(failed.id)), rig.lines(failed.id)
    assert rig.serves() == "2.0.0"
    assert loop.failures == [] and set(loop.answers) == {"2.0.0"}
    with rig.ctx.db.session() as session:
        slot_a = session.scalar(select(PhaseSlots.port_a))
    assert f"starting 3.0.0 ({failed.image_id[:19]}) on slot port {slot_a}" in rig.lines(failed.id)


class Traffic:
    """What the users of a slow app send through the phase URL, from clients that never retry:
    POSTs with a 512-byte body, each on a new connection (two clients), and GETs (one client
    with a new connection each, one keep-alive); the app takes 200 ms over every request."""

    BODY = b"x" * 512

    def __init__(self, rig: Rig, phase: str = "demo"):
        url = f"http://127.0.0.1:{rig.router_port}/cgi-bin/slow"
        headers = {"Host": rig.host(phase)}
        self.gets = RequestLoop(lambda session: session.get(url, headers=headers, timeout=10), limit=240)
        self.posts = [RequestLoop(lambda session: session.post(url, headers=headers, data=self.BODY, timeout=10),
                                  limit=240, keep_alive=False) for _ in range(2)]

    def __enter__(self) -> Traffic:
        for loop in (self.gets, *self.posts):
            loop.__enter__()
        wait_until(lambda: self.gets.answers and all(loop.answers for loop in self.posts), timeout=10)
        return self

    def __exit__(self, *exc) -> None:
        for loop in (self.gets, *self.posts):
            loop.__exit__(*exc)

    @property
    def failed(self) -> dict[str, list[str]]:
        return {"GET": self.gets.failures, "POST": [f for loop in self.posts for f in loop.failures]}

    @property
    def answered(self) -> dict[str, set[str]]:
        return {"GET": set(self.gets.answers), "POST": {a for loop in self.posts for a in loop.answers}}


def test_ten_rollouts_alternating_slots_fail_no_post_and_no_get(rig):
    """Issue 24: the router moves new requests to the new container before the old one stops,
    so a write (which no proxy may retry) is never caught by a stopping container."""
    rig.commit("1.0.0")
    assert rig.deploy("1.0.0").status == "succeeded"
    versions = [f"{n}.0.0" for n in range(2, 12)]
    for version in versions:
        rig.commit(version)
    ports = []
    with Traffic(rig) as traffic:
        for version in versions:
            deployment = rig.deploy(version)
            assert deployment.status == "succeeded", deployment.reason
            ports.append(deployment.host_port)
            # The switch is done when the deployment is: the very next request is the new version.
            assert rig.get("/cgi-bin/slow").text.strip() == version
    assert traffic.failed == {"GET": [], "POST": []}
    assert traffic.answered["POST"] >= {"1.0.0", "11.0.0"} and len(traffic.answered["GET"]) > 5
    assert len(set(ports)) == 2 and all(a != b for a, b in zip(ports, ports[1:]))  # slots alternate
    assert len(rig.containers()) == 1
    lines = rig.lines(deployment.id)
    switched = lines.index(f"{deployment.url} now serves 11.0.0 (slot port {ports[-1]})")
    drained = lines.index("the previous container gets no new requests; it has 0.3 s to finish those in flight")
    stopped = next(i for i, line in enumerate(lines) if line.startswith("stopped the previous container"))
    assert switched < drained < stopped
    assert re.fullmatch(r"stopped the previous container \S+ after \d+\.\d s", lines[stopped])


def test_a_rollout_that_never_turns_healthy_fails_no_post_and_no_get(rig):
    for version in ("1.0.0", "2.0.0"):
        rig.commit(version)
        assert rig.deploy(version).status == "succeeded"
    rig.commit("3.0.0", healthy=False)
    with Traffic(rig) as traffic:
        failed = rig.deploy("3.0.0")
        assert failed.status == "failed" and failed.reason.startswith("health check failed")
    assert traffic.failed == {"GET": [], "POST": []}
    assert traffic.answered == {"GET": {"2.0.0"}, "POST": {"2.0.0"}}
    assert rig.ctx.router.routes()[(APP, "demo")][0] == rig.containers()[0].host_port


def test_a_rollback_fails_no_post_and_no_get(rig):
    rig.commit("1.0.0")
    first = rig.deploy("1.0.0")
    rig.commit("2.0.0")
    assert rig.deploy("2.0.0").status == "succeeded"
    with Traffic(rig) as traffic:
        back = rig.deploy("1.0.0", source_id=first.id, trigger="rollback")
        assert back.status == "succeeded", back.reason
        assert rig.get("/cgi-bin/slow").text.strip() == "1.0.0"
    assert traffic.failed == {"GET": [], "POST": []}
    assert traffic.answered["POST"] == {"1.0.0", "2.0.0"}
    assert back.image_id == first.image_id and rig.lines(back.id, "build") == []


def test_three_replicas_answer_from_three_containers_and_roll_out_failing_no_request(rig):
    """Profile `replicas: 3` on the docker runtime: three containers behind the phase URL, each
    answering; a rollout moves all three at once (no POST or GET fails); a version whose
    health check fails on its first replica never gets a request."""
    rig.commit("1.0.0")
    with rig.ctx.db.session() as session:
        app = ensure_app(session, Repo(REPO, rig.clone_url, "main"))
        session.add(Profile(app_id=app.id, phase="demo", replicas=3))
    first = rig.deploy("1.0.0")
    assert first.status == "succeeded", first.reason
    containers = rig.containers()
    assert len(containers) == 3 and {c.labels["release-pipeline.deployment"] for c in containers} == {str(first.id)}
    with requests.Session() as client:
        client.headers["Connection"] = "close"  # a new connection each: Caddy picks the next replica
        hostnames = {dict(line.split("=", 1) for line in rig.get("/cgi-bin/info", session=client).text.splitlines()
                          if "=" in line)["HOSTNAME"] for _ in range(12)}
    assert hostnames == {c.id[:12] for c in containers}
    assert len(rig.ctx.router.routes()[(APP, "demo")]) == 3

    rig.commit("2.0.0")
    with Traffic(rig) as traffic:
        second = rig.deploy("2.0.0")
        assert second.status == "succeeded", second.reason
        assert rig.get("/cgi-bin/slow").text.strip() == "2.0.0"
    assert traffic.failed == {"GET": [], "POST": []}
    assert traffic.answered["POST"] >= {"2.0.0"}
    replaced = rig.containers()
    assert len(replaced) == 3 and {c.labels["release-pipeline.deployment"] for c in replaced} == {str(second.id)}
    lines = rig.lines(second.id)
    assert any(line.startswith("starting 2.0.0 (") and line.endswith("and 2 more ports") for line in lines), lines
    assert sum(line.startswith("stopped the previous container") for line in lines) == 3
    # Reconcile expects every replica of the serving deployment, and restores a lost route to all three.
    route = rig.ctx.router.routes()[(APP, "demo")]
    rig.ctx.router.remove(APP, "demo")
    findings = reconcile_job.reconcile(rig.ctx)
    assert (findings.removed_containers, findings.redeployed, findings.restored_routes) == ([], [], [f"{APP}/demo"])
    assert rig.containers() == replaced and rig.ctx.router.routes()[(APP, "demo")] == route

    rig.commit("3.0.0", healthy=False)
    with RequestLoop(lambda session: rig.get(session=session)) as loop:
        failed = rig.deploy("3.0.0")
    assert failed.status == "failed"
    assert failed.reason == "replica 1 of 3: health check failed: 404 Not Found on /healthz after 3s"
    assert rig.containers() == replaced
    assert loop.failures == [] and set(loop.answers) == {"2.0.0"}


def test_an_app_that_ignores_sigterm_is_killed_after_the_profiles_stop_timeout(rig):
    rig.commit("1.0.0", ignores_term=True)
    with rig.ctx.db.session() as session:
        app = ensure_app(session, Repo(REPO, rig.clone_url, "main"))
        session.add(Profile(app_id=app.id, phase="demo", stop_timeout=1, updated_by="dora"))
    assert rig.deploy("1.0.0").status == "succeeded"
    rig.commit("2.0.0")
    second = rig.deploy("2.0.0")
    assert second.status == "succeeded", second.reason
    assert second.profile_snapshot["stop_timeout"] == 1
    assert f"stopping the previous container {rig.ctx.engine.instance}-shop-demo-{second.id - 1}: SIGTERM, " \
           "SIGKILL after 1 s" in rig.lines(second.id)
    killed = [line for line in rig.lines(second.id) if "ignored SIGTERM" in line]
    assert killed == [f"the previous container ignored SIGTERM; stopped after 1 s (SIGKILL, "
                      f"{rig.ctx.engine.instance}-shop-demo-{second.id - 1}; the profile's stop_timeout sets the wait)"]
    # The new version stops gracefully: no such line.
    rig.commit("3.0.0")
    third = rig.deploy("3.0.0")
    assert not any("ignored SIGTERM" in line for line in rig.lines(third.id))
    assert any(line.startswith("stopped the previous container") for line in rig.lines(third.id))


# -- serialisation -----------------------------------------------------------------------------


def test_a_newer_queued_deployment_supersedes_an_older_one(rig):
    rig.commit("1.0.0")
    rig.commit("2.0.0")
    older, newer = rig.schedule("1.0.0"), rig.schedule("2.0.0")
    assert rig.run(older).status == "superseded"
    assert rig.deployment(older).reason == f"superseded by deployment {newer}"
    assert rig.containers() == [] and rig.count(Build) == 0
    assert rig.run(newer).status == "succeeded"
    assert rig.serves() == "2.0.0"


def test_a_held_lock_blocks_a_deploy_until_released(rig):
    rig.commit("1.0.0")
    deployment_id = rig.schedule("1.0.0")
    outcome: list[str] = []
    with deploy_lock(rig.ctx.redis, APP, "demo", owner="someone else"):
        worker = threading.Thread(target=lambda: outcome.append(Rollout(rig.ctx, deployment_id).run()))
        worker.start()
        time.sleep(1.0)
        assert worker.is_alive() and rig.deployment(deployment_id).status == "queued"
    worker.join(timeout=60)
    assert outcome == ["succeeded"]
    assert rig.lines(deployment_id)[0] == "waiting behind someone else, which is deploying shop/demo"


def test_a_lock_whose_holder_died_expires(rig):
    """A SIGKILLed worker stops renewing its lock: it expires by itself, never a stuck phase."""
    rig.commit("1.0.0")
    deployment_id = rig.schedule("1.0.0")
    assert take(rig.ctx.redis, APP, "demo", "deployment 1 (killed)", expires=1.5) is not None
    started = time.monotonic()
    assert Rollout(rig.ctx, deployment_id).run() == "succeeded"
    assert time.monotonic() - started >= 1.0


# -- secrets -----------------------------------------------------------------------------------


class _TokenGitHub:
    def installation_token(self, installation_id: int) -> str:
        return TOKEN


def test_the_installation_token_never_reaches_logs_the_database_or_errors(rig, make_settings, caplog):
    settings = make_settings(**rig.environ, GITHUB_URL="https://127.0.0.1")
    ctx = Context.from_settings(settings, github=_TokenGitHub())  # what GitHubApp hands out for the installation
    clone_url = f"https://127.0.0.1:{free_port()}/acme/shop.git"  # nothing listens there
    caplog.set_level(logging.DEBUG)
    rig.ctx = ctx
    outcomes = []
    for sha in ("a" * 40, None):  # fetch a commit, and resolve a branch first
        deployment_id = rig.schedule("1.0.0", clone_url=clone_url, sha=sha, installation_id=99)
        outcomes.append(rig.run(deployment_id))
    for deployment in outcomes:
        assert deployment.status == "failed"
        assert "127.0.0.1" in deployment.reason
        assert TOKEN not in deployment.reason and TOKEN not in json.dumps(deployment.evidence)
    with ctx.db.session() as session:
        texts = session.scalars(select(LogLine.text)).all()
        assert texts and not any(TOKEN in text for text in texts)
        assert not any(TOKEN in (app.clone_url or "") for app in session.scalars(select(App)))
    assert TOKEN not in caplog.text
    kept = [path for path in Path(settings.work_dir).rglob("*") if path.is_file()]  # the app's repository
    assert kept and not any(TOKEN.encode() in path.read_bytes() for path in kept)


# -- reconcile and retention -------------------------------------------------------------------


def test_reconcile_restores_a_vanished_container_and_removes_orphans(rig):
    rig.commit("1.0.0")
    served = rig.deploy("1.0.0")
    engine = rig.ctx.engine
    engine.client.api.remove_container(served.container_id, force=True)  # behind our back
    orphan = engine.run_container(ContainerSpec(
        app=APP, phase="demo", version="0.0.1", sha="b" * 40, deployment_id=999_999, image=served.image_id,
        env={}, port=APP_PORT))

    findings = reconcile_job.reconcile(rig.ctx)
    assert orphan.name in findings.removed_containers and container_status(engine, orphan.id) is None
    assert len(findings.redeployed) == 1
    restore = rig.deployment(findings.redeployed[0])
    assert (restore.trigger, restore.source_id, restore.version) == ("restore", served.id, "1.0.0")
    assert Queue("deploys", connection=rig.ctx.redis).job_ids == [f"deploy-{restore.id}"]

    assert rig.run(restore.id).status == "succeeded"
    assert rig.serves() == "1.0.0"
    assert rig.lines(restore.id, "build") == []

    # Caddy lost its configuration (restarted without it): reconcile puts the route back.
    requests.delete(f"{rig.environ['CADDY_ADMIN_URL']}/config/apps/http/servers/{rig.ctx.router.server_name}",
                    timeout=5).raise_for_status()
    with pytest.raises(requests.ConnectionError):
        rig.get()
    findings = reconcile_job.reconcile(rig.ctx)
    assert findings.restored_routes == ["shop/demo"] and findings.redeployed == []
    wait_until(lambda: rig.get().text.strip() == "1.0.0", timeout=5)
    assert reconcile_job.reconcile(rig.ctx).restored_routes == []  # nothing to do: no reload


def test_pruning_keeps_every_rollback_target(rig, tmp_path):
    """keep_last is 1: besides the newest image, only what a phase serves or can roll back to
    (its last two good deployments) survives a deploy's pruning."""
    engine = rig.ctx.engine
    images = {
        number: engine.build_image(
            app=APP, tree=f"{number}" * 40, sha=f"{number}" * 40, on_line=lambda line: None,
            context_tar=context_tar(write_sample_app(tmp_path / str(number), version_text=f"{number}.0.0")))
        for number in range(1, 6)
    }
    with rig.ctx.db.session() as session:
        app = ensure_app(session, Repo(REPO, "file:///nowhere", "main"))
        rows = [Deployment(app_id=app.id, phase="stage", version="1.0.0", trigger="promotion",
                           status="succeeded", image_id=images[1])]
        rows += [Deployment(app_id=app.id, phase="demo", version=f"{n}.0.0", trigger="push",
                            status="succeeded", image_id=images[n]) for n in range(1, 6)]
        rows.append(Deployment(app_id=app.id, phase="demo", version="9.0.0", trigger="push", status="failed",
                               image_id=images[3]))
        session.add_all(rows)
        session.flush()
        latest = rows[-2].id
    Rollout(rig.ctx, latest).prune(APP)
    present = {image.id for image in engine.client.images.list(
        filters={"label": [f"{LABEL_INSTANCE}={engine.instance}", f"{LABEL_APP}={APP}"]})}
    assert present == {images[1], images[4], images[5]}


# -- the service: a signed push, the queue, the phase URL --------------------------------------


def _push(client, rig: Rig, sha: str) -> None:
    payload = load_payload("push/with-installation")
    payload["repository"].update(full_name=REPO, name=APP, clone_url=rig.clone_url, default_branch="main",
                                 html_url=f"https://github.com/{REPO}")
    payload.update(ref="refs/heads/main", after=sha, deleted=False, created=False)
    payload["head_commit"] = {**(payload.get("head_commit") or {}), "id": sha}
    body = json.dumps(payload).encode()
    response = client.post("/api/github/webhooks", data=body, headers=delivery_headers("push", body))
    assert response.status_code in (200, 202), response.get_json()
    drain_inbox(rig.ctx)


@pytest.fixture
def service(rig, monkeypatch):
    """The web endpoint and an RQ worker whose Context comes from the environment."""
    for name, value in rig.environ.items():
        monkeypatch.setenv(name, value)
    for name in ("GITHUB_APP_ID", "GITHUB_PRIVATE_KEY", "GITHUB_PRIVATE_KEY_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GITHUB_WEBHOOK_SECRET", rig.ctx.settings.webhook_secret)
    monkeypatch.setenv("SECRET_KEY", rig.ctx.settings.secret_key.get_secret_value())
    monkeypatch.setenv("REDIS_URL", rig.ctx.settings.redis_url)
    monkeypatch.setenv("PIPELINE_INSTANCE", rig.ctx.settings.pipeline_instance)
    monkeypatch.setenv("PIPELINE_ALLOW_FILE_CLONES", "1")
    monkeypatch.setenv("WORK_DIR", str(rig.ctx.settings.work_dir))
    runtime.reset()
    yield create_app(context=rig.ctx).test_client()
    runtime.reset()


def _push_to_url(client, rig: Rig, version: str) -> float:
    """Seconds from a signed push of a new commit to the phase URL serving it (an RQ worker
    runs the queued deploy in this thread: it needs the main thread for its signals)."""
    sha = rig.commit(version)
    served: list[float] = []

    def watch() -> None:
        while time.monotonic() - started < 60:
            try:
                if rig.get().text.strip() == version:
                    served.append(time.monotonic())
                    return
            except requests.RequestException:
                pass
            time.sleep(0.02)

    started = time.monotonic()
    _push(client, rig, sha)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    SimpleWorker([Queue("deploys", connection=rig.ctx.redis)], connection=rig.ctx.redis).work(burst=True)
    watcher.join(timeout=60)
    assert served, f"{version} was never served at the phase URL"
    return served[0] - started


def test_a_signed_push_ends_served_at_the_phase_url(rig, service):
    elapsed = _push_to_url(service, rig, "1.0.0")
    with rig.ctx.db.session() as session:
        deployment = session.scalar(select(Deployment))
    assert (deployment.trigger, deployment.status) == ("push", DeploymentStatus.SUCCEEDED.value)
    assert elapsed < 30


@pytest.mark.measurement
def test_measure_push_to_url_and_dropped_requests(rig, service):
    """RP_BENCH=1 pytest tests/test_deploy.py -k measure -s"""
    _push_to_url(service, rig, "0.1.0")
    timings = []
    with RequestLoop(lambda session: rig.get(session=session), limit=300) as loop:
        for number in range(1, 6):
            timings.append(_push_to_url(service, rig, f"1.{number}.0"))
    print(f"\npush-to-URL seconds: {[round(t, 2) for t in timings]}, median {statistics.median(timings):.2f}; "
          f"requests through the phase URL during the 5 redeploys: {len(loop.answers) + len(loop.failures)}, "
          f"failed: {len(loop.failures)} {loop.failures[:3]}")
    with rig.ctx.db.session() as session:  # where the time goes, for the last two (one per slot order)
        for deployment in session.scalars(select(Deployment).order_by(Deployment.id.desc()).limit(2)):
            lines = session.scalars(select(LogLine).where(LogLine.deployment_id == deployment.id)
                                    .order_by(LogLine.id)).all()
            print(f"deployment {deployment.id} (queued {deployment.queued_at:%H:%M:%S.%f}):")
            for line in lines:
                if line.stream == "deploy" or line.text.startswith(("fetch", "build")):
                    print(f"  +{(line.at - deployment.queued_at).total_seconds():6.2f}s {line.text[:110]}")
    assert loop.failures == []
    with rig.ctx.db.session() as session:
        assert {d.status for d in session.scalars(select(Deployment))} == {"succeeded"}
        assert session.scalar(select(func.count()).select_from(Deployment)) == 6
