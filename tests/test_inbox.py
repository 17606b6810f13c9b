"""The intake's guarantees (issue 19): the request only appends to the inbox; the drainer
records in order, once, and loses nothing — real Redis, real SQLite/PostgreSQL, the real
`release-pipeline intake` process."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from redis.exceptions import ResponseError
from rq import Queue
from sqlalchemy import func, select

from app.context import Context
from app.models import Deployment, Delivery
from app.web import create_app
from tests.conftest import REDIS_URL, SECRET_KEY, WEBHOOK_SECRET, delivery_headers, drain_inbox, load_payload
from tests.support.faults import wait_for
from workers.intake import Unavailable

ROOT = Path(__file__).resolve().parent.parent


def push(sha: str = "a" * 40) -> bytes:
    payload = load_payload("push/with-installation")
    payload.update(ref="refs/heads/master", after=sha, deleted=False)
    payload["head_commit"] = {"id": sha}
    return json.dumps(payload).encode()


def count(ctx: Context, model) -> int:
    with ctx.db.session() as session:
        return session.scalar(select(func.count()).select_from(model))


def deploy_jobs(redis_conn) -> list[str]:
    return [j for j in Queue("deploys", connection=redis_conn).job_ids if j.startswith("deploy-")]


def pending(ctx: Context) -> int:
    """Entries a drainer read and never acknowledged (0 before any drainer made the group)."""
    try:
        return ctx.redis.xpending(ctx.inbox.stream, "drainer")["pending"]
    except ResponseError:
        return 0


def test_twenty_concurrent_identical_deliveries_deploy_once(any_database_url, make_settings, redis_conn):
    ctx = Context.from_settings(make_settings(DATABASE_URL=any_database_url))
    flask_app = create_app(context=ctx)
    body = push()
    barrier = threading.Barrier(20)
    answers: list[tuple[int, str]] = []

    def deliver():
        client = flask_app.test_client()
        barrier.wait(timeout=10)
        response = client.post("/api/github/webhooks", data=body, headers=delivery_headers("push", body, delivery="twin"))
        answers.append((response.status_code, response.get_json()["reason"]))

    threads = [threading.Thread(target=deliver) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [status for status, _ in answers] == [202] * 20
    assert sum(reason.startswith("accepted") for _, reason in answers) == 1
    assert sum("already received" in reason for _, reason in answers) == 19
    assert ctx.inbox.waiting() == 1
    [outcome] = drain_inbox(ctx)
    assert outcome.body["reason"] == "deploying aaaaaaa to demo"
    assert (count(ctx, Delivery), count(ctx, Deployment), len(deploy_jobs(redis_conn))) == (1, 1, 1)


def test_the_database_down_while_redis_is_up_loses_nothing(make_settings, database_url, redis_conn):
    """Deliveries are still accepted (202: the request never touches the database); the drainer
    keeps them until the database is back, then records each once, in order."""
    down = Context.from_settings(make_settings(DATABASE_URL="postgresql://rp@127.0.0.1:1/gone"))
    client = create_app(context=down).test_client()
    first, second = push("a" * 40), push("b" * 40)
    for name, body in (("down-1", first), ("down-2", second), ("down-1", first)):
        response = client.post("/api/github/webhooks", data=body, headers=delivery_headers("push", body, delivery=name))
        assert response.status_code == 202, response.get_json()
    with pytest.raises(Unavailable, match="database unavailable: delivery down-1 waits in the inbox"):
        drain_inbox(down)
    assert down.inbox.waiting() == 2 and pending(down) == 2

    back = Context.from_settings(make_settings(DATABASE_URL=database_url))
    outcomes = drain_inbox(back)
    assert [o.body["reason"] for o in outcomes] == ["deploying aaaaaaa to demo", "deploying bbbbbbb to demo"]
    assert (count(back, Delivery), count(back, Deployment), len(deploy_jobs(redis_conn))) == (2, 2, 2)
    assert back.inbox.waiting() == 0 and pending(back) == 0


def _intake_process(tmp_path: Path, database_url: str, instance: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET, "SECRET_KEY": SECRET_KEY,
           "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "PIPELINE_INSTANCE": instance,
           "ROUTER": "direct", "WORK_DIR": str(tmp_path / "work"), "PUBLIC_URL": "http://portal.test",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), "HOME": str(tmp_path)}
    return subprocess.Popen([sys.executable, "-m", "app.cli", "intake"], env=env, cwd=ROOT,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def test_a_drainer_killed_between_append_and_record_loses_nothing(tmp_path, make_settings, database_url,
                                                                  redis_conn, instance):
    """The drainer reads the delivery, cannot record it yet (the database is locked), and is
    SIGKILLed; the next drainer records it, once."""
    ctx = Context.from_settings(make_settings(DATABASE_URL=database_url))
    body = push()
    response = create_app(context=ctx).test_client().post(
        "/api/github/webhooks", data=body, headers=delivery_headers("push", body, delivery="kill-1"))
    assert response.status_code == 202
    log = tmp_path / "intake.log"
    lock = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # every write (and read) by the drainer waits
    drainer = _intake_process(tmp_path, database_url, instance, log)
    try:
        wait_for(lambda: pending(ctx) == 1, 60, "the drainer to read the delivery", details=log.read_text)
    finally:
        drainer.send_signal(signal.SIGKILL)
        drainer.wait(timeout=10)
        lock.execute("ROLLBACK")
        lock.close()
    assert count(ctx, Delivery) == 0 and ctx.inbox.waiting() == 1  # read, not recorded, not lost

    second = _intake_process(tmp_path, database_url, instance, log)
    try:
        wait_for(lambda: ctx.inbox.waiting() == 0, 60, "the next drainer to record it", details=log.read_text)
        assert (count(ctx, Delivery), count(ctx, Deployment), len(deploy_jobs(redis_conn))) == (1, 1, 1)
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
    finally:
        if second.poll() is None:
            second.kill()
    assert ctx.inbox.drainer() is None  # a stopped drainer gives the inbox up at once


def test_doctor_says_whether_a_drainer_holds_the_inbox_and_what_waits(ctx, client):
    from app.doctor import _intake
    from app.inbox import Entry

    body = push()
    client.post("/api/github/webhooks", data=body, headers=delivery_headers("push", body, delivery="w-1"))
    idle = _intake(ctx)
    assert (idle.ok, idle.detail) == (False, "no drainer running: 1 accepted deliveries wait unrecorded")
    assert "release-pipeline intake" in idle.fix
    assert ctx.inbox.take_lease()
    held = _intake(ctx)
    assert held.ok and held.detail == f"drainer {ctx.inbox.holder}, 1 deliveries waiting"
    ctx.inbox.ensure_group()
    ctx.inbox.set_aside(Entry(ctx.inbox.read()[0].entry_id, "w-1", "push", body), "TypeError: a bug")
    aside = _intake(ctx)
    assert (aside.ok, aside.detail) == (False, "1 deliveries set aside: they could not be recorded")
