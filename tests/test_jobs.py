"""Typed jobs on a real Redis, and the one policy for work whose jobs the queue refuses."""

from __future__ import annotations

import pytest
from rq import Queue
from sqlalchemy import select

from app.context import Context
from app.deployments import schedule
from app.exceptions import QueueUnavailable
from app.jobs import (COMMANDS, DEPLOYS, QUEUE_DOWN_REASON, CommandJob, DeployJob, ReportJob, SummaryJob,
                      enqueue_committed)
from app.models import Deployment, Report
from app.plans import Deploy, Repo
from app.registry import ensure_app

REPO = Repo("acme/shop", None, "main")


def test_a_typed_job_names_its_function_and_arguments_and_queues_once(ctx, redis_conn):
    assert ctx.jobs.enqueue(DeployJob(7)) == "deploy-7"
    assert ctx.jobs.enqueue(DeployJob(7)) == "deploy-7"  # a repeat (a redelivery) is harmless
    [job] = Queue(DEPLOYS, connection=redis_conn).get_jobs()
    assert (job.id, job.func_name, job.kwargs, job.timeout) == ("deploy-7", "workers.deploy.run",
                                                                {"deployment_id": 7}, 30 * 60)
    command = CommandJob(app_id=1, pr_number=2, comment_id=3, actor="ada", body="/status")
    ctx.jobs.enqueue(command)
    ctx.jobs.enqueue(SummaryJob(app_id=1, pr_number=2, phase="live"))
    ctx.jobs.enqueue(SummaryJob(app_id=1, pr_number=2, phase="live"))  # every delivery is read again
    queued = [(j.func_name, j.kwargs) for j in Queue(COMMANDS, connection=redis_conn).get_jobs()]
    assert queued == [
        ("workers.command.run", {"app_id": 1, "pr_number": 2, "comment_id": 3, "actor": "ada", "body": "/status",
                                 "commented_at": None}),
        ("workers.promotion.summarize", {"app_id": 1, "pr_number": 2, "phase": "live"}),
        ("workers.promotion.summarize", {"app_id": 1, "pr_number": 2, "phase": "live"}),
    ]


@pytest.fixture
def queue_down(make_settings, database_url, redis_conn) -> Context:
    return Context.from_settings(make_settings(DATABASE_URL=database_url, REDIS_URL="redis://127.0.0.1:1/0"))


def _recorded(ctx: Context, dedup_key: str | None = "tag:acme/shop:stage:v1.0.0") -> tuple[int, int, int]:
    """A queued deployment with its queued report, and a reply of its own."""
    with ctx.db.session() as session:
        app = ensure_app(session, REPO)
        deployment = schedule(session, app, Deploy(repo=REPO, phase="stage", ref="refs/tags/v1.0.0", sha="a" * 40,
                                                   version="v1.0.0", trigger="tag", actor="ada", dedup_key=dedup_key))
        session.flush()
        status = Report(app_id=app.id, deployment_id=deployment.id, kind="status", body={}, state="pending")
        reply = Report(app_id=app.id, kind="comment", body={}, state="pending")
        session.add_all([status, reply])
        session.flush()
        return deployment.id, status.id, reply.id


def test_work_whose_jobs_the_queue_refuses_is_withdrawn_and_the_asker_told(queue_down):
    deployment_id, status_id, reply_id = _recorded(queue_down)
    with pytest.raises(QueueUnavailable):
        enqueue_committed(queue_down, [DeployJob(deployment_id), ReportJob(status_id), ReportJob(reply_id)])
    with queue_down.db.session() as session:
        deployment = session.get(Deployment, deployment_id)
        assert (deployment.status, deployment.reason, deployment.dedup_key) == ("failed", QUEUE_DOWN_REASON, None)
        assert deployment.finished_at is not None
        assert session.scalars(select(Report.id)).all() == []  # nothing of it is sent later
        # the dedup key is free again: GitHub's redelivery of the tag schedules it afresh
        again = schedule(session, ensure_app(session, REPO), Deploy(
            repo=REPO, phase="stage", ref="refs/tags/v1.0.0", sha="a" * 40, version="v1.0.0", trigger="tag",
            actor="ada", dedup_key="tag:acme/shop:stage:v1.0.0"))
        assert again is not None


def test_committed_work_is_left_alone_when_the_queue_takes_it(ctx, redis_conn):
    deployment_id, status_id, reply_id = _recorded(ctx)
    enqueue_committed(ctx, [DeployJob(deployment_id), ReportJob(status_id), ReportJob(reply_id)])
    with ctx.db.session() as session:
        assert session.get(Deployment, deployment_id).status == "queued"
        assert sorted(session.scalars(select(Report.id)).all()) == sorted([status_id, reply_id])
    assert {j.id for j in Queue(DEPLOYS, connection=redis_conn).get_jobs()} == {f"deploy-{deployment_id}"}
