"""Outbound notifications: configuration errors, what each format sends, and delivery to a real
local HTTP receiver through real RQ jobs (signature, retries, recorded attempts, test events)."""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess
import sys

import pytest
from rq import Queue, SimpleWorker
from rq.registry import ScheduledJobRegistry
from sqlalchemy import select

from app.context import Context
from app.exceptions import ConfigError
from app.jobs import COMMANDS, DEPLOYS, NOTIFICATIONS, REPORTS
from app.models import App, Deployment, DeploymentStatus, Notification, NotificationAttempt, utcnow
from app.notifications import Event, finished_event, slack_message
from app.pipeline import parse_pipeline
from app.settings import PROJECT_ROOT
from app.web import create_app
from tests.support.faults import WorkerProcess, wait_for
from tests.support.pipeline_e2e import service_environment
from tests.support.portal_data import csrf_from

SECRET = "ops-signing-secret-7c2e"
PHASES = "phases: {demo: {trigger: push}, live: {trigger: pull_request, branch: live, approvals: 1}}\n"
SHA = "a" * 40


def pipeline_yml(*targets: str) -> str:
    return PHASES + "notifications:\n" + "".join(targets)


def target(name: str, url: str, fmt: str = "json", events: str = "[deployment.succeeded, deployment.failed]",
           timeout: float | None = None) -> str:
    lines = f"  - name: {name}\n    url: {url}\n    format: {fmt}\n    events: {events}\n"
    if fmt == "json":
        lines += "    secret_env: OPS_SECRET\n"
    if timeout is not None:
        lines += f"    timeout: {timeout}\n"
    return lines


# -- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize("targets,message", [
    ("  - {name: ops, url: 'http://h/x', events: [deployment.exploded], secret_env: S}\n",
     "notifications/0/events: 'deployment.exploded' is not an event"),
    ("  - {name: ops, url: 'http://h/x', events: []}\n", "notifications/0/events: list at least one event"),
    ("  - {name: ops, url: 'http://h/x', events: [deployment.failed]}\n",
     "notifications/0: a json target needs secret_env"),
    ("  - {name: ops, url: 'http://h/x', format: slack, secret_env: S, events: [deployment.failed]}\n",
     "notifications/0: a slack target is not signed"),
    ("  - {name: ops, url: 'ftp://h/x', secret_env: S, events: [deployment.failed]}\n",
     "notifications/0/url: must be an http:// or https:// URL"),
    ("  - {name: ops, url: 'http://h/x', format: xml, secret_env: S, events: [deployment.failed]}\n",
     "notifications/0/format: Input should be 'json' or 'slack'"),
    ("  - {name: ops, url: 'http://h/x', secret_env: 'no spaces', events: [deployment.failed]}\n",
     "notifications/0/secret_env:"),
    ("  - {name: ops, url: 'http://h/x', secret_env: S, events: [deployment.failed], retries: 3}\n",
     "notifications/0/retries: is not a known setting"),
    ("  - {name: ops, url: 'http://h/x', secret_env: S, events: [deployment.failed]}\n"
     "  - {name: ops, url: 'http://h/y', secret_env: S, events: [deployment.failed]}\n",
     "notifications: target names must be unique: ops is used twice"),
])
def test_configuration_errors_name_their_path(targets, message):
    with pytest.raises(ConfigError) as caught:
        parse_pipeline(PHASES + "notifications:\n" + targets)
    assert message in str(caught.value)


def test_the_specs_example_is_valid():
    config = parse_pipeline(PHASES + """notifications:
  - name: ops
    url: https://hooks.example.com/release
    format: json
    secret_env: OPS_WEBHOOK_SECRET
    events: [deployment.succeeded, deployment.failed]
""")
    (ops,) = config.notifications
    assert (ops.name, ops.format, ops.secret_env, ops.events) == (
        "ops", "json", "OPS_WEBHOOK_SECRET", ["deployment.succeeded", "deployment.failed"])


# -- deciding ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("status,trigger,event", [
    ("succeeded", "push", Event.DEPLOYMENT_SUCCEEDED),
    ("succeeded", "rollback", Event.DEPLOYMENT_ROLLED_BACK),
    ("failed", "push", Event.DEPLOYMENT_FAILED),
    ("refused", "pull_request", Event.DEPLOYMENT_FAILED),
    ("superseded", "push", Event.DEPLOYMENT_SUPERSEDED),
])
def test_finished_deployments_are_announced_as(status, trigger, event):
    assert finished_event(Deployment(status=status, trigger=trigger)) is event


# Slack's incoming-webhook message fields (api.slack.com/messaging/webhooks, Block Kit reference):
# top-level `text` (the notification and fallback) with `blocks`; a section has a text object
# (≤ 3000 characters) and up to 10 `fields` (≤ 2000 each); an actions block holds up to 25
# elements, a button has a plain_text label (≤ 75) and a `url` (≤ 3000); at most 50 blocks.
SLACK_TOP = {"text", "blocks", "attachments", "thread_ts", "mrkdwn", "unfurl_links", "unfurl_media"}
TEXT_TYPES = {"plain_text", "mrkdwn"}


def slack_problems(message: dict) -> list[str]:
    problems = [f"unknown top-level field {k}" for k in set(message) - SLACK_TOP]
    if not isinstance(message.get("text"), str) or not message["text"]:
        problems.append("text must be a non-empty string (it is the notification when blocks are sent)")
    blocks = message.get("blocks", [])
    if len(blocks) > 50:
        problems.append("more than 50 blocks")
    for i, block in enumerate(blocks):
        kind = block.get("type")
        if kind == "section":
            if set(block) - {"type", "text", "fields", "accessory", "block_id"}:
                problems.append(f"blocks/{i}: unknown section field")
            text = block.get("text")
            if text is None and not block.get("fields"):
                problems.append(f"blocks/{i}: a section needs text or fields")
            if text is not None and (text.get("type") not in TEXT_TYPES or not 0 < len(text.get("text", "")) <= 3000):
                problems.append(f"blocks/{i}/text: a text object of at most 3000 characters")
            fields = block.get("fields", [])
            if len(fields) > 10 or any(f.get("type") not in TEXT_TYPES or len(f.get("text", "")) > 2000 for f in fields):
                problems.append(f"blocks/{i}/fields: up to 10 text objects of at most 2000 characters")
        elif kind == "actions":
            elements = block.get("elements", [])
            if not 0 < len(elements) <= 25:
                problems.append(f"blocks/{i}: 1 to 25 elements")
            for element in elements:
                label = element.get("text", {})
                if (element.get("type") != "button" or label.get("type") != "plain_text"
                        or not 0 < len(label.get("text", "")) <= 75 or len(element.get("url", "")) > 3000):
                    problems.append(f"blocks/{i}: a button needs a plain_text label ≤ 75 and a url ≤ 3000")
        elif kind not in ("context", "divider", "header", "image"):
            problems.append(f"blocks/{i}: unknown block type {kind}")
    return problems


def failed_fields(reason: str = "health check failed: GET /healthz answered 500") -> dict:
    return {"app": "acme/shop", "phase": "demo", "version": "a1b2c3d", "sha": SHA, "url": None,
            "deployment_id": 7, "reason": reason, "actor": "dora", "trigger": "push",
            "log_url": "http://portal.test/apps/shop/deployments/7"}


def test_slack_message_follows_slacks_documented_fields():
    message = slack_message("deployment.failed", failed_fields())
    assert slack_problems(message) == []
    assert message["text"] == "acme/shop: :x: a1b2c3d was not deployed to demo"
    assert "health check failed" in message["blocks"][0]["text"]["text"]
    buttons = message["blocks"][1]["elements"]
    assert [(b["text"]["text"], b["url"]) for b in buttons] == [
        ("Deployment log", "http://portal.test/apps/shop/deployments/7")]


def test_slack_message_escapes_markup_and_stays_within_limits():
    message = slack_message("deployment.failed", failed_fields("<!channel> & " + "x" * 5000))
    assert slack_problems(message) == []
    text = message["blocks"][0]["text"]["text"]
    assert "&lt;!channel&gt; &amp;" in text and "<!channel>" not in text


# -- sending, against a real receiver -----------------------------------------------------------------


@pytest.fixture
def notify_env(monkeypatch, database_url, redis_conn, instance, tmp_path):
    """Settings and environment for the worker's Context, with pipeline.yml written by the test."""
    config = tmp_path / "pipeline.yml"

    def make(yml: str) -> Context:
        config.write_text(yml)
        settings = service_environment(monkeypatch, database_url=database_url, instance=instance,
                                       tmp_path=tmp_path, github=None, PIPELINE_CONFIG=str(config),
                                       OPS_SECRET=SECRET, ADMIN_TOKEN="admin-token-for-tests")
        return Context.from_settings(settings)

    return make


def finish_deployment(ctx: Context, status: str = "succeeded", reason: str = "") -> int:
    """A deployment of acme/shop to demo that has just finished, announced as the deploy job does."""
    with ctx.db.session() as session:
        app = App(full_name="acme/shop", name="shop", clone_url="file:///nowhere")
        session.add(app)
        session.flush()
        deployment = Deployment(app_id=app.id, phase="demo", version="a1b2c3d", sha=SHA, trigger="push",
                                actor="dora", status=status, reason=reason, finished_at=utcnow(),
                                url="http://shop-demo.localhost:8088" if status == "succeeded" else None)
        session.add(deployment)
        session.flush()
        ctx.reports.finished(session, app, deployment)
        return deployment.id


def work_notifications(redis_conn) -> None:
    queue = Queue(NOTIFICATIONS, connection=redis_conn)
    SimpleWorker([queue], connection=redis_conn).work(burst=True, with_scheduler=True)


def attempts(ctx: Context) -> list[NotificationAttempt]:
    with ctx.db.session() as session:
        return list(session.scalars(select(NotificationAttempt).order_by(NotificationAttempt.id)))


def notifications(ctx: Context) -> list[Notification]:
    with ctx.db.session() as session:
        return list(session.scalars(select(Notification).order_by(Notification.created_at)))


def expected_signature(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def test_json_delivery_is_signed_with_the_targets_secret(notify_env, receiver, redis_conn):
    ops = receiver([200])
    ctx = notify_env(pipeline_yml(target("ops", ops.url)))
    deployment_id = finish_deployment(ctx)
    work_notifications(redis_conn)

    (got,) = ops.received
    assert got.headers["X-Release-Pipeline-Signature-256"] == expected_signature(got.body)
    assert got.headers["X-Release-Pipeline-Event"] == "deployment.succeeded"
    (notification,) = notifications(ctx)
    assert got.headers["X-Release-Pipeline-Delivery"] == notification.id
    body = got.json
    assert {k: body[k] for k in ("event", "app", "phase", "version", "sha", "url", "deployment_id", "reason")} == {
        "event": "deployment.succeeded", "app": "acme/shop", "phase": "demo", "version": "a1b2c3d", "sha": SHA,
        "url": "http://shop-demo.localhost:8088", "deployment_id": deployment_id, "reason": None}
    assert body["delivered_at"].endswith("Z")
    assert notification.state == "sent"
    assert [(a.outcome, a.status_code) for a in attempts(ctx)] == [("delivered", 200)]


def test_a_wrong_secret_does_not_verify(notify_env, receiver, redis_conn):
    """The receiver's check has teeth: the same body signed with another secret differs."""
    ops = receiver([200])
    ctx = notify_env(pipeline_yml(target("ops", ops.url)))
    finish_deployment(ctx, "failed", "build failed")
    work_notifications(redis_conn)
    (got,) = ops.received
    other = "sha256=" + hmac.new(b"another-secret", got.body, hashlib.sha256).hexdigest()
    assert got.headers["X-Release-Pipeline-Signature-256"] != other
    assert got.json["reason"] == "build failed" and got.json["event"] == "deployment.failed"


def test_a_500_is_retried_and_every_attempt_recorded(notify_env, receiver, redis_conn):
    ops = receiver([500, 200])
    ctx = notify_env(pipeline_yml(target("ops", ops.url)))
    finish_deployment(ctx)
    work_notifications(redis_conn)

    (notification,) = notifications(ctx)
    assert notification.state == "retrying"
    assert [(a.outcome, a.status_code) for a in attempts(ctx)] == [("http_error", 500)]
    registry = ScheduledJobRegistry(queue=Queue(NOTIFICATIONS, connection=redis_conn))
    assert registry.get_job_ids() == [f"notify-{notification.id}"]  # RQ's Retry holds it for a few seconds

    def retried() -> bool:
        work_notifications(redis_conn)
        return len(ops.received) == 2

    wait_for(retried, 30, "the retry", pause=0.5)
    (notification,) = notifications(ctx)
    assert notification.state == "sent" and notification.attempts == 2
    assert [(a.outcome, a.status_code) for a in attempts(ctx)] == [("http_error", 500), ("delivered", 200)]
    first, second = ops.received
    assert first.headers["X-Release-Pipeline-Delivery"] == second.headers["X-Release-Pipeline-Delivery"]
    for got in (first, second):
        assert got.headers["X-Release-Pipeline-Signature-256"] == expected_signature(got.body)


def test_the_last_failed_attempt_marks_the_notification_failed(notify_env, receiver, redis_conn):
    ops = receiver([503])
    ctx = notify_env(pipeline_yml(target("ops", ops.url)))
    finish_deployment(ctx)
    (notification,) = notifications(ctx)
    Queue(NOTIFICATIONS, connection=redis_conn).empty()
    # The same job without retries left: its one attempt is the last.
    Queue(NOTIFICATIONS, connection=redis_conn).enqueue_call(
        "workers.notify.send", kwargs={"notification_id": notification.id})
    work_notifications(redis_conn)
    (notification,) = notifications(ctx)
    assert notification.state == "failed"
    assert [(a.outcome, a.status_code, a.error) for a in attempts(ctx)] == [("http_error", 503, "answered HTTP 503")]


def test_slack_target_gets_an_unsigned_incoming_webhook_message(notify_env, receiver, redis_conn):
    slack = receiver([200])
    ctx = notify_env(pipeline_yml(target("chat", slack.url, fmt="slack", events="[deployment.failed]")))
    finish_deployment(ctx, "failed", "release command exited with 3")
    work_notifications(redis_conn)
    (got,) = slack.received
    assert "X-Release-Pipeline-Signature-256" not in got.headers
    assert slack_problems(got.json) == []
    assert got.json["text"] == "acme/shop: :x: a1b2c3d was not deployed to demo"
    assert "release command exited with 3" in got.json["blocks"][0]["text"]["text"]


def test_only_subscribed_events_are_sent(notify_env, receiver, redis_conn):
    ops = receiver([200])
    ctx = notify_env(pipeline_yml(target("ops", ops.url, events="[deployment.failed]")))
    finish_deployment(ctx, "succeeded")
    work_notifications(redis_conn)
    assert ops.received == [] and notifications(ctx) == []


def test_a_dead_target_records_why_and_leaves_the_deployment_alone(notify_env, receiver, redis_conn):
    dead = receiver(hang=True)
    ctx = notify_env(pipeline_yml(target("ops", dead.url, timeout=0.5)))
    deployment_id = finish_deployment(ctx)
    work_notifications(redis_conn)
    assert [(a.outcome, a.status_code, a.error) for a in attempts(ctx)] == [("timeout", None, "no answer within 0.5 s")]
    with ctx.db.session() as session:
        assert session.get(Deployment, deployment_id).status == DeploymentStatus.SUCCEEDED.value


def test_send_a_test_event_from_the_api_and_see_its_delivery(notify_env, receiver, redis_conn):
    ops = receiver([200])
    ctx = notify_env(pipeline_yml(target("ops", ops.url)))
    api = create_app(context=ctx).test_client()
    token = {"Authorization": "Bearer admin-token-for-tests"}
    assert api.post("/api/v1/notifications/nope/test", headers=token).status_code == 404
    assert api.post("/api/v1/notifications/ops/test").status_code == 401
    answer = api.post("/api/v1/notifications/ops/test", headers=token)
    assert answer.status_code == 202, answer.get_json()
    work_notifications(redis_conn)

    (got,) = ops.received
    assert got.json["event"] == "test" and got.headers["X-Release-Pipeline-Event"] == "test"
    assert got.headers["X-Release-Pipeline-Signature-256"] == expected_signature(got.body)
    listing = api.get("/api/v1/notifications", headers=token).get_json()
    (ops_view,) = listing["targets"]
    assert ops_view["url"] == f"http://127.0.0.1:{ops.server.server_address[1]}/…"  # the path may be a secret
    (recent,) = ops_view["recent"]
    assert recent["id"] == answer.get_json()["notification"] and recent["state"] == "sent"
    assert [(a["outcome"], a["status_code"]) for a in recent["attempts"]] == [("delivered", 200)]


def test_the_portal_shows_each_targets_deliveries_and_sends_tests(notify_env, receiver, redis_conn):
    ops = receiver([500])
    ctx = notify_env(pipeline_yml(target("ops", ops.url)))
    finish_deployment(ctx)
    work_notifications(redis_conn)
    browser = create_app(context=ctx).test_client()
    browser.post("/signin", data={"token": "admin-token-for-tests",
                                  "csrf_token": csrf_from(browser.get("/signin").get_data(as_text=True))})
    page = browser.get("/notifications").get_data(as_text=True)
    assert "deployment.succeeded" in page and "HTTP 500" in page and "retrying" in page
    sent = browser.post("/notifications/ops/test", data={"csrf_token": csrf_from(page)}, follow_redirects=True)
    assert "Test event queued for ops" in sent.get_data(as_text=True)
    ops.answers[:] = [200]
    work_notifications(redis_conn)
    assert [r.json["event"] for r in ops.received][-1] == "test"


def test_a_worker_for_notifications_refuses_to_start_without_the_secret(tmp_path, database_url):
    config = tmp_path / "pipeline.yml"
    config.write_text(pipeline_yml(target("ops", "http://127.0.0.1:9/x")))
    env = {"PATH": "/usr/bin:/bin", "PIPELINE_CONFIG": str(config), "DATABASE_URL": database_url,
           "GITHUB_WEBHOOK_SECRET": "x", "SECRET_KEY": "y", "REDIS_URL": "redis://127.0.0.1:6379/8",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    run = subprocess.run([sys.executable, "-m", "app.cli", "worker", "--burst", "--queues", "notifications"],
                         cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        "Error: notifications/ops/secret_env: OPS_SECRET is not set (its signing secret)"]


def test_catch_up_queues_notifications_whose_enqueue_was_lost(notify_env, receiver, redis_conn):
    from workers import notify

    ops = receiver([200])
    ctx = notify_env(pipeline_yml(target("ops", ops.url)))
    finish_deployment(ctx)
    Queue(NOTIFICATIONS, connection=redis_conn).empty()  # as if Redis had lost the job (and its record)
    with ctx.db.session() as session:
        for n in session.scalars(select(Notification)):
            n.created_at = utcnow().replace(year=2020)
    assert notify.catch_up() == 1
    work_notifications(redis_conn)
    assert len(ops.received) == 1




# -- a dead target during real deploys --------------------------------------------------------------


@pytest.fixture
def dead_target(receiver):
    return receiver(hang=True)


@pytest.fixture
def pipeline_extra_env(dead_target, tmp_path) -> dict[str, str]:
    config = tmp_path / "pipeline-notify.yml"
    config.write_text((PROJECT_ROOT / "config" / "pipeline.yml").read_text() + "\nnotifications:\n"
                      + target("ops", dead_target.url, events="[deployment.started, deployment.succeeded]",
                               timeout=30))
    return {"PIPELINE_CONFIG": str(config), "OPS_SECRET": SECRET}


@pytest.mark.docker
@pytest.mark.slow
def test_a_target_that_never_answers_holds_up_no_deploy(pipeline, dead_target, tmp_path):
    """The notifier worker sits on the dead target's first event while deploys go on and succeed."""
    notifier = WorkerProcess(dict(os.environ), tmp_path / "notifier.log", queues=NOTIFICATIONS)
    others = (DEPLOYS, COMMANDS, REPORTS)
    try:
        pipeline.push(pipeline.commit("1.0.0"))
        pipeline.work(others)
        wait_for(lambda: dead_target.received, 60, "the notifier to call the dead target", details=notifier.tail)
        pipeline.push(pipeline.commit("1.0.1"))
        pipeline.work(others)
        first, second = pipeline.deployments()
        assert (first.status, second.status) == ("succeeded", "succeeded"), (first.reason, second.reason)
        assert pipeline.fetch(second.url, "/version").strip() == "1.0.1"
        # The first event's one attempt is still waiting for an answer; the rest wait their turn.
        sent = notifications(pipeline.ctx)
        assert [(n.event, n.deployment_id) for n in sent] == [
            ("deployment.started", first.id), ("deployment.succeeded", first.id),
            ("deployment.started", second.id), ("deployment.succeeded", second.id)]
        assert [n.attempts for n in sent] == [0, 0, 0, 0] and len(dead_target.received) == 1
    finally:
        notifier.kill()
