"""The intake's guarantees (issue 19): the request only appends to the inbox; the drainer
records in order, once, and loses nothing — real Redis, real SQLite/PostgreSQL, the real
`release-pipeline intake` process."""

from __future__ import annotations

import json
import os
import shlex
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
from workers.intake import BATCH, Unavailable, drain

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


def _intake_process(tmp_path: Path, database_url: str, instance: str, log: Path, *,
                    as_honcho: bool = False) -> subprocess.Popen:
    """`release-pipeline intake`, in this session; or `as_honcho` runs a Procfile line: through
    `sh -c`, in a session of its own."""
    env = {**os.environ, "GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET, "SECRET_KEY": SECRET_KEY,
           "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "PIPELINE_INSTANCE": instance,
           "ROUTER": "direct", "WORK_DIR": str(tmp_path / "work"), "PUBLIC_URL": "http://portal.test",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), "HOME": str(tmp_path)}
    argv = [sys.executable, "-m", "app.cli", "intake"]
    return subprocess.Popen(shlex.join(argv) if as_honcho else argv, shell=as_honcho, start_new_session=as_honcho,
                            env=env, cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def autogroup(pid: int) -> str:
    """'/autogroup-85 nice 0': the kernel's CPU group of the process's session, and its niceness."""
    return Path(f"/proc/{pid}/autogroup").read_text().strip()


def test_a_drainer_alone_in_its_session_runs_the_session_behind_while_a_backlog_waits(
        tmp_path, make_settings, database_url, instance):
    """As honcho runs a Procfile line: `sh -c`, in a session of its own. Sessions share the CPU
    as one each (autogroups), so only the session's niceness puts it behind the web server; and
    only while more than a batch waits: a lone delivery is recorded at once, at full priority."""
    ctx = Context.from_settings(make_settings(DATABASE_URL=database_url))
    for number in range(BATCH + 1):
        ctx.inbox.append(f"burst-{number}", "push", push(f"{number:040x}"))
    lock = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # the backlog stays until the test lets the drainer write
    log = tmp_path / "intake.log"
    shell = _intake_process(tmp_path, database_url, instance, log, as_honcho=True)
    normal = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        wait_for(lambda: ctx.inbox.drainer() is not None, 60, "the drainer to hold the inbox", details=log.read_text)
        drainer = int(ctx.inbox.drainer().rpartition(":")[2])
        assert os.getsid(drainer) == shell.pid != drainer  # the shell leads the session
        wait_for(lambda: autogroup(drainer).endswith(" nice 19"), 30, "the session behind", details=log.read_text)
        assert os.getpriority(os.PRIO_PROCESS, drainer) == 19
        assert autogroup(shell.pid) == autogroup(drainer) != autogroup(os.getpid())

        lock.execute("ROLLBACK")
        wait_for(lambda: ctx.inbox.waiting() == 0, 60, "the backlog recorded", details=log.read_text)
        ctx.inbox.append("lone", "push", push("f" * 40))  # the next pass finds no backlog
        wait_for(lambda: ctx.inbox.waiting() == 0, 60, "the lone delivery recorded", details=log.read_text)
        assert autogroup(drainer).endswith(f" nice {normal}") and os.getpriority(os.PRIO_PROCESS, drainer) == normal
        assert count(ctx, Delivery) == BATCH + 2
    finally:
        lock.close()
        os.killpg(shell.pid, signal.SIGTERM)  # as honcho stops it
        shell.wait(timeout=30)


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
        # one delivery waits: recorded at full priority; and it shares this session, so the
        # session's priority (its autogroup's) is never its to change
        assert os.getpriority(os.PRIO_PROCESS, drainer.pid) == os.getpriority(os.PRIO_PROCESS, 0)
        assert autogroup(drainer.pid) == autogroup(os.getpid())
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
    ctx.inbox.finish(aside=[(Entry(ctx.inbox.read()[0].entry_id, "w-1", "push", body), "TypeError: a bug")])
    aside = _intake(ctx)
    assert (aside.ok, aside.detail) == (False, "1 deliveries set aside: they could not be recorded")


def deployed_shas(ctx: Context) -> list[str]:
    with ctx.db.session() as session:
        return [sha[:7] for sha in session.scalars(select(Deployment.sha).where(Deployment.status == "queued")
                                                   .order_by(Deployment.id))]


def test_a_batch_is_recorded_in_order_in_one_pass_and_a_redelivery_in_it_once(any_database_url, make_settings,
                                                                              redis_conn):
    """The drainer reads many entries at once and records them in one transaction: in the
    order accepted; an id recorded before (its seen key expired) is recognised, not deployed."""
    ctx = Context.from_settings(make_settings(DATABASE_URL=any_database_url))
    ctx.inbox.ensure_group()
    assert ctx.inbox.append("b-1", "push", push("1" * 40))
    drain_inbox(ctx)
    redis_conn.delete(ctx.inbox._seen_prefix + "b-1")  # as after SEEN_TTL: the inbox takes it again
    for name, sha in (("b-2", "2"), ("b-1", "1"), ("b-3", "3"), ("b-4", "4")):
        assert ctx.inbox.append(name, "push", push(sha * 40))
    outcomes = drain(ctx)  # one pass
    assert [o.body["reason"] for o in outcomes] == [
        "deploying 2222222 to demo", "delivery b-1 was already received", "deploying 3333333 to demo",
        "deploying 4444444 to demo"]
    assert deployed_shas(ctx) == ["1111111", "2222222", "3333333", "4444444"]
    assert (count(ctx, Delivery), len(deploy_jobs(redis_conn))) == (4, 4)
    assert ctx.inbox.waiting() == 0 and pending(ctx) == 0


def test_a_delivery_that_breaks_intake_is_set_aside_and_the_rest_of_its_batch_recorded(ctx, redis_conn,
                                                                                      monkeypatch):
    import app.intake

    real_plan = app.intake.plan

    def plan_with_a_bug(event, payload, config):
        if payload.get("after") == "2" * 40:
            raise TypeError("a bug in the planner")
        return real_plan(event, payload, config)

    monkeypatch.setattr(app.intake, "plan", plan_with_a_bug)
    ctx.inbox.ensure_group()
    for name, sha in (("x-1", "1"), ("x-2", "2"), ("x-3", "3")):
        ctx.inbox.append(name, "push", push(sha * 40))
    outcomes = drain(ctx)
    assert [o.body["reason"] for o in outcomes] == ["deploying 1111111 to demo", "deploying 3333333 to demo"]
    assert deployed_shas(ctx) == ["1111111", "3333333"] and count(ctx, Delivery) == 2
    assert ctx.inbox.waiting() == 0 and ctx.inbox.set_aside_count() == 1
    [(_, aside)] = redis_conn.xrange(ctx.inbox.failed)
    assert (aside[b"delivery"], aside[b"error"]) == (b"x-2", b"TypeError: a bug in the planner")


def test_the_queue_refusing_a_batch_s_jobs_keeps_the_whole_batch_for_later(ctx, redis_conn):
    """Recorded, then the deploy jobs cannot be queued (a real Redis error: the queue's key holds
    the wrong type): the batch's deliveries are forgotten, their deployments withdrawn, the
    entries kept; the next pass records and queues each once."""
    ctx.inbox.ensure_group()
    for name, sha in (("q-1", "1"), ("q-2", "2"), ("q-3", "3")):
        ctx.inbox.append(name, "push", push(sha * 40))
    queue_key = Queue("deploys", connection=redis_conn).key
    redis_conn.set(queue_key, "not a list")
    with pytest.raises(Unavailable, match="queue unavailable: delivery q-1 waits in the inbox"):
        drain(ctx)
    assert count(ctx, Delivery) == 0 and deployed_shas(ctx) == []  # withdrawn: failed, not queued
    assert ctx.inbox.waiting() == 3

    redis_conn.delete(queue_key)
    assert [o.body["reason"] for o in drain_inbox(ctx)] == [
        "deploying 1111111 to demo", "deploying 2222222 to demo", "deploying 3333333 to demo"]
    assert deployed_shas(ctx) == ["1111111", "2222222", "3333333"]
    assert (count(ctx, Delivery), len(deploy_jobs(redis_conn))) == (3, 3) and ctx.inbox.waiting() == 0
