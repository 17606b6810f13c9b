"""Deleting an app (issue 12): admin only, confirmed by its name; its containers, images, routes,
backing services and volumes go, its history stays readable, and deliveries for it deploy nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.adapters.docker import LABEL_APP
from app.context import Context
from tests.support.dockerkit import remove_instance_objects
from tests.support.pipeline_e2e import APP, Pipeline, service_environment
from tests.test_services_deploy import commit
from workers import runtime

pytestmark = pytest.mark.docker
TOKEN = "deletion-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def pipeline(github, database_url, redis_conn, instance, tmp_path, monkeypatch) -> Iterator[Pipeline]:
    settings = service_environment(monkeypatch, database_url=database_url, instance=instance, tmp_path=tmp_path,
                                   github=github, ADMIN_TOKEN=TOKEN)
    try:
        yield Pipeline(ctx=Context.from_settings(settings), github=github, redis_conn=redis_conn,
                       repo_path=tmp_path / "repo")
    finally:
        runtime.reset()
        remove_instance_objects(instance)


def test_deleting_an_app_removes_what_it_runs_and_keeps_its_history(pipeline):
    engine = pipeline.ctx.engine
    pipeline.push(commit(pipeline, "1.0.0", tag="v1.0.0"))
    pipeline.work()
    pipeline.push_tag("v1.0.0")
    pipeline.work()
    assert [(d.phase, d.status) for d in pipeline.deployments()] == [("demo", "succeeded"), ("stage", "succeeded")]
    assert len(engine.list_containers(app=APP)) == 2 and len(engine.service_containers(APP)) == 2
    queued = pipeline.push(commit(pipeline, "1.1.0"))["deployment"]  # not worked: still queued
    client = pipeline.client

    refused = client.delete(f"/api/v1/apps/{APP}", json={"confirm": "demo"}, headers=AUTH)
    assert refused.status_code == 400 and f"confirm with “{APP}”" in refused.get_json()["reason"]
    assert len(engine.list_containers(app=APP)) == 2

    deleted = client.delete(f"/api/v1/apps/{APP}", json={"confirm": APP}, headers=AUTH)
    assert deleted.status_code == 200, deleted.get_json()
    removed = deleted.get_json()["removed"]
    assert removed["containers"] == 2 and removed["services"] == {"demo": ["store"], "stage": ["store"]}
    assert engine.list_containers(app=APP) == [] and engine.service_containers(APP) == []
    assert engine.service_volumes(APP) == [] and engine.service_networks(APP) == []
    assert engine.client.images.list(filters={"label": [f"{LABEL_APP}={APP}",
                                                        f"release-pipeline.instance={engine.instance}"]}) == []
    pipeline.work()  # the queued deployment never starts
    assert [(d.id, d.status, d.reason) for d in pipeline.deployments()][-1] == (
        queued, "superseded", "the app was deleted by admin")

    # The history stays readable; the app is gone from the list and says it was deleted.
    history = client.get(f"/api/v1/apps/{APP}/deployments", headers=AUTH).get_json()["deployments"]
    assert len(history) == 3
    assert client.get(f"/api/v1/apps/{APP}", headers=AUTH).get_json()["deleted_by"] == "admin"
    assert client.get("/api/v1/apps", headers=AUTH).get_json()["apps"] == []
    audit = client.get(f"/api/v1/apps/{APP}/audit", headers=AUTH).get_json()["entries"]
    assert audit[0]["action"] == "app.delete" and audit[0]["actor"] == "admin"

    # Later deliveries for it deploy nothing.
    answer = pipeline.push(commit(pipeline, "1.2.0"))
    assert answer["reason"] == f"{APP} was deleted by admin: nothing to do" and "deployment" not in answer
    assert len(pipeline.deployments()) == 3
