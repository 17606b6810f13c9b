"""Webhook intake through the real endpoint, real Redis queue and real database."""

from __future__ import annotations

import json

import pytest
from rq import Queue
from sqlalchemy import func, select

from app.context import Context
from app.models import App, Deployment, Delivery, Report
from app.web import create_app
from tests.conftest import FIXTURES, delivery_headers, drain_inbox, load_payload

ALL_PAYLOADS = sorted(p.relative_to(FIXTURES).as_posix() for p in FIXTURES.rglob("*.json"))
CLONE_URL = "https://github.com/Codertocat/Hello-World.git"


def queued_jobs(redis_conn) -> list[str]:
    return [job_id for name in ("deploys", "commands", "reports") for job_id in Queue(name, connection=redis_conn).job_ids]


def count(ctx: Context, model) -> int:
    with ctx.db.session() as session:
        return session.scalar(select(func.count()).select_from(model))


def main_push(sha: str = "a" * 40) -> dict:
    payload = load_payload("push/with-installation")
    payload.update(ref="refs/heads/master", after=sha, deleted=False)
    payload["head_commit"] = {"id": sha}
    return payload


@pytest.mark.parametrize("name", ALL_PAYLOADS)
def test_every_recorded_payload_signed_unsigned_and_wrongly_signed(name, client, post_delivery, redis_conn, ctx):
    event = name.split("/")[0]
    payload = json.loads((FIXTURES / name).read_text())

    unsigned = client.post("/api/github/webhooks", json=payload,
                           headers={"X-GitHub-Event": event, "X-GitHub-Delivery": "d-unsigned"})
    wrong = post_delivery(event, payload, secret="not-the-secret")
    assert unsigned.status_code == 401 and wrong.status_code == 401
    assert "signature" in wrong.get_json()["reason"] and "X-Hub-Signature-256" in unsigned.get_json()["reason"]
    assert queued_jobs(redis_conn) == [] and count(ctx, Delivery) == 0

    signed = post_delivery(event, payload)
    assert signed.status_code in (200, 202), signed.get_json()
    assert signed.get_json()["reason"]
    if event == "ping":
        assert signed.status_code == 200


def recorded(ctx: Context, delivery_id: str) -> Delivery:
    with ctx.db.session() as session:
        return session.get(Delivery, delivery_id)


def test_push_to_default_branch_records_and_enqueues_one_deploy(client, redis_conn, ctx):
    body = json.dumps(main_push()).encode()
    response = client.post("/api/github/webhooks", data=body, headers=delivery_headers("push", body, delivery="delivery-1"))
    assert response.status_code == 202
    # The request only appended it to the inbox: the drainer plans and records it.
    assert count(ctx, Delivery) == 0 and queued_jobs(redis_conn) == []
    [outcome] = drain_inbox(ctx)
    assert outcome.body["reason"] == "deploying aaaaaaa to demo"
    assert queued_jobs(redis_conn)[0] == f"deploy-{outcome.body['deployment']}"
    with ctx.db.session() as session:
        deployment = session.get(Deployment, outcome.body["deployment"])
        assert (deployment.phase, deployment.sha, deployment.status, deployment.trigger) == ("demo", "a" * 40, "queued", "push")
        app = session.get(App, deployment.app_id)
        assert (app.full_name, app.name, app.clone_url) == ("Codertocat/Hello-World", "hello-world", CLONE_URL)
    delivery = recorded(ctx, "delivery-1")
    assert (delivery.event, delivery.outcome, delivery.repository, delivery.reason) == (
        "push", "accepted", "Codertocat/Hello-World", "deploying aaaaaaa to demo")


def test_redelivery_never_enqueues_twice(post_delivery, redis_conn, ctx):
    first = post_delivery("push", main_push(), delivery="same-id")
    again = post_delivery("push", main_push(), delivery="same-id")
    assert first.status_code == again.status_code == 202
    assert "already received" in again.get_json()["reason"]
    # Redis forgets a delivery id after days; the delivery table still knows it.
    redis_conn.delete(*redis_conn.keys("rp:*:inbox:seen:*"))
    late = post_delivery("push", main_push(), delivery="same-id")
    assert late.status_code == 202 and late.get_json()["reason"].startswith("accepted")
    assert count(ctx, Deployment) == 1 and count(ctx, Delivery) == 1
    assert len([j for j in queued_jobs(redis_conn) if j.startswith("deploy-")]) == 1


def test_one_tag_reported_as_push_create_and_release_deploys_once(post_delivery, redis_conn, ctx):
    push = main_push("b" * 40)
    push["ref"] = "refs/tags/v1.2.3"
    create = load_payload("create/with-installation")
    create.update(ref="v1.2.3", ref_type="tag")
    release = load_payload("release/created")
    release["release"]["tag_name"] = "v1.2.3"
    for event, payload in (("push", push), ("create", create), ("release", release)):
        assert post_delivery(event, payload, delivery=f"tag-{event}").status_code == 202
    assert recorded(ctx, "tag-push").reason == "deploying v1.2.3 to stage"
    assert "already planned" in recorded(ctx, "tag-create").reason
    assert "already planned" in recorded(ctx, "tag-release").reason
    assert count(ctx, Deployment) == 1
    assert len([j for j in queued_jobs(redis_conn) if j.startswith("deploy-")]) == 1


@pytest.mark.parametrize(
    "body,headers,reason",
    [
        (b"{not json", {}, "not valid JSON"),
        (b"\xff\xfe", {}, "not valid JSON"),
        (b"{}", {"X-GitHub-Event": ""}, "X-GitHub-Event"),
        (b"{}", {"X-GitHub-Delivery": "../../etc"}, "X-GitHub-Delivery"),
    ],
)
def test_malformed_signed_deliveries_get_400_with_a_reason(client, redis_conn, ctx, body, headers, reason):
    sent = delivery_headers("push", body)
    sent.update(headers)
    response = client.post("/api/github/webhooks", data=body, headers=sent)
    assert response.status_code == 400
    assert reason in response.get_json()["reason"]
    assert queued_jobs(redis_conn) == [] and ctx.inbox.waiting() == 0


def test_a_signed_delivery_the_planner_cannot_read_is_recorded_as_malformed(post_delivery, redis_conn, ctx):
    """Valid JSON, but not a push: accepted (the request does not plan), then recorded with
    the planner's reason, and nothing queued."""
    response = post_delivery("push", {"ref": "refs/heads/master"}, delivery="odd-1")
    assert response.status_code == 202
    delivery = recorded(ctx, "odd-1")
    assert (delivery.outcome, "malformed" in delivery.reason) == ("malformed", True)
    assert queued_jobs(redis_conn) == [] and count(ctx, Deployment) == 0 and ctx.inbox.waiting() == 0


def test_body_size_is_capped(make_settings, database_url, redis_conn):
    ctx = Context.from_settings(make_settings(DATABASE_URL=database_url, MAX_BODY_BYTES=1000))
    client = create_app(context=ctx).test_client()
    body = json.dumps({"pad": "x" * 2000}).encode()
    response = client.post("/api/github/webhooks", data=body, headers=delivery_headers("push", body))
    assert response.status_code == 413
    assert response.get_json()["reason"]


def test_queue_unavailable_answers_503_and_forgets_the_delivery(make_settings, database_url, redis_conn):
    ctx = Context.from_settings(make_settings(DATABASE_URL=database_url, REDIS_URL="redis://127.0.0.1:1/0"))
    client = create_app(context=ctx).test_client()
    body = json.dumps(main_push()).encode()
    response = client.post("/api/github/webhooks", data=body, headers=delivery_headers("push", body, delivery="d-1"))
    assert response.status_code == 503
    assert count(ctx, Delivery) == 0 and count(ctx, Deployment) == 0
    # once the queue is back, GitHub's redelivery of the same id is accepted
    ctx_ok = Context.from_settings(make_settings(DATABASE_URL=database_url))
    again = create_app(context=ctx_ok).test_client().post(
        "/api/github/webhooks", data=body, headers=delivery_headers("push", body, delivery="d-1"))
    assert again.status_code == 202
    drain_inbox(ctx_ok)
    assert count(ctx_ok, Deployment) == 1


def test_installation_events_keep_the_registry_current(post_delivery, ctx):
    assert post_delivery("installation", load_payload("installation/created")).status_code == 202
    with ctx.db.session() as session:
        app = session.scalar(select(App))
        assert (app.full_name, app.installation_id, app.active) == ("Codertocat/Hello-World", 957387, True)
    deleted = load_payload("installation/deleted")
    deleted["installation"]["id"] = 957387
    deleted["repositories"] = []  # GitHub may omit them: the installation id alone retires its apps
    assert post_delivery("installation", deleted).status_code == 202
    with ctx.db.session() as session:
        assert session.scalar(select(App)).active is False


def test_reporting_off_records_the_pending_status_it_would_send(post_delivery, ctx):
    post_delivery("push", main_push())
    with ctx.db.session() as session:
        report = session.scalar(select(Report))
        assert (report.kind, report.state, report.body["state"], report.body["context"]) == (
            "status", "recorded", "pending", "release-pipeline/demo")


def test_access_lines_name_refusals_and_pages_while_the_drainer_names_accepted_deliveries(
        client, post_delivery, caplog):
    caplog.set_level("INFO")
    refused = post_delivery("push", main_push(), secret="not-the-secret", delivery="d-refused")
    accepted = post_delivery("push", main_push(), delivery="d-accepted")  # and drained
    page = client.get("/healthz?token=never-logged")
    assert (refused.status_code, accepted.status_code, page.status_code) == (401, 202, 200)

    access = [r.getMessage() for r in caplog.records if r.name == "release_pipeline.access"]
    assert len(access) == 2, access
    assert '"POST /api/github/webhooks" 401' in access[0]
    assert '"GET /healthz" 200' in access[1] and "never-logged" not in access[1]

    drained = [r.getMessage() for r in caplog.records if r.name == "app.intake"]
    assert any("d-accepted" in line and "deploying" in line for line in drained), drained
