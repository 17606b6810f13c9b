"""Backing services through the real deploy job: push → Demo, tag → Stage, each with its own store.

The sample app reaches its `store` service by name through the injected STORE_URL; data
written in Demo survives a redeploy and a rollback, and Stage's store is another instance.
"""

from __future__ import annotations

import pytest
import requests
from sqlalchemy import select

from app import services
from app.models import ServiceInstance
from tests.support.dockerkit import APP_PORT, make_sample_repo
from tests.support.pipeline_e2e import REPO
from tests.test_services import _APP_CGI, REPO_FILE, STORE_PORT, write_store

pytestmark = pytest.mark.docker


def commit(pipeline, version: str, *, tag: str | None = None, healthy_store: bool = True) -> str:
    """A commit of the sample app that declares the store service (built from the repository)."""
    root = pipeline.repo_path
    write_store(root / "services" / "store")
    cgi = root / "www" / "cgi-bin" / "store"
    cgi.parent.mkdir(parents=True, exist_ok=True)
    cgi.write_text(_APP_CGI)
    cgi.chmod(0o755)
    extra = "" if healthy_store else '    command: ["/bin/sh", "-c", "exit 3"]\n'
    pipeline.clone_url, sha = make_sample_repo(
        root, version_text=version, tag=tag,
        extra_files={".release-pipeline.yml": REPO_FILE.format(app_port=APP_PORT, port=STORE_PORT, extra=extra)})
    return sha


def store(url: str, query: str) -> str:
    return requests.get(f"{url.rstrip('/')}/cgi-bin/store?{query}", timeout=10).text.strip()


def test_each_phase_gets_its_own_store_that_survives_redeploys_and_rollbacks(pipeline, caplog):
    pipeline.github.permissions[(REPO, "ada")] = "admin"
    first = commit(pipeline, "1.0.0", tag="v1.0.0")
    pipeline.push(first)
    pipeline.work()
    [demo] = pipeline.deployments("demo")
    assert demo.status == "succeeded", demo.reason
    assert store(demo.url, "k=greeting&v=hello-demo") == "stored"

    second = commit(pipeline, "1.1.0")
    pipeline.push(second)
    pipeline.work()
    demo2 = pipeline.deployments("demo")[-1]
    assert demo2.status == "succeeded", demo2.reason
    assert store(demo2.url, "k=greeting") == "hello-demo"  # the data outlived the app container

    pipeline.comment("/rollback demo", user="ada")
    pipeline.work()
    rolled = pipeline.deployments("demo")[-1]
    assert (rolled.status, rolled.version) == ("succeeded", first[:7]), rolled.reason
    assert store(rolled.url, "k=greeting") == "hello-demo"

    pipeline.push_tag("v1.0.0")
    pipeline.work()
    [stage] = pipeline.deployments("stage")
    assert stage.status == "succeeded", stage.reason
    assert store(stage.url, "k=greeting") == "missing"  # Stage's own store, not Demo's
    assert store(stage.url, "k=greeting&v=hello-stage") == "stored"
    assert store(rolled.url, "k=greeting") == "hello-demo"

    with pipeline.ctx.db.session() as session:
        rows = session.scalars(select(ServiceInstance).order_by(ServiceInstance.phase)).all()
        assert [(r.phase, r.name) for r in rows] == [("demo", "store"), ("stage", "store")]
        # one store per phase, each with its own volume, kept across the three demo deployments
        assert rows[0].container_id != rows[1].container_id and rows[0].volume != rows[1].volume
    described = services.describe_app(pipeline.ctx, demo.app_id)
    assert {s["name"] for s in described["demo"]} == {"store"}
    for deployment in pipeline.deployments():
        assert "pw=" not in (deployment.reason or "")
    assert "pw=" not in caplog.text


def test_a_broken_service_blocks_the_deploy_and_the_phase_keeps_serving(pipeline):
    good = commit(pipeline, "2.0.0")
    pipeline.push(good)
    pipeline.work()
    [serving] = pipeline.deployments("demo")
    assert serving.status == "succeeded", serving.reason
    store(serving.url, "k=a&v=kept")

    # A changed service definition is only noted by the first deploy that sees it…
    pipeline.push(commit(pipeline, "2.1.0", healthy_store=False))
    pipeline.work()
    noted = pipeline.deployments("demo")[-1]
    assert noted.status == "succeeded", noted.reason
    # …and applied by the next one: the broken service fails it, and the phase keeps serving.
    pipeline.push(commit(pipeline, "2.2.0", healthy_store=False))
    pipeline.work()
    failed = pipeline.deployments("demo")[-1]
    assert failed.status == "failed" and "store" in failed.reason, failed.reason
    assert requests.get(noted.url.rstrip("/") + "/version", timeout=5).text.strip() == "2.1.0"
    assert store(noted.url, "k=a") == "kept"
