"""Enqueueing work on RQ with deterministic job ids, so a repeated request never queues twice.

Each kind of job is a small typed value (`DeployJob(deployment_id)`, ...) naming its queue and
its function by import path: the web process never imports Docker or git code. Work recorded
in the database is queued once its transaction is committed, through `enqueue_committed`,
which has the one policy for a queue outage.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError

from app.exceptions import QueueUnavailable

log = logging.getLogger(__name__)

DEPLOYS = "deploys"
REPORTS = "reports"
COMMANDS = "commands"
#: Outbound notifications have their own queue (and, in the Procfile, their own worker), so a
#: slow target never holds up a deploy.
NOTIFICATIONS = "notifications"
QUEUES = (DEPLOYS, COMMANDS, REPORTS, NOTIFICATIONS)

#: Builds can be slow; RQ's default of 180 s is not enough.
DEPLOY_TIMEOUT = 30 * 60
#: Reporting retries with backoff; GitHub outages are waited out, never fail a deployment.
REPORT_RETRY = Retry(max=8, interval=[5, 15, 30, 60, 120, 300, 600, 900])
#: A notification is tried 7 times over about 10 minutes, the first retry after 3 seconds.
NOTIFY_RETRY = Retry(max=6, interval=[3, 15, 45, 90, 180, 270])


def job_id(*parts: object) -> str:
    """RQ ids allow letters, digits, '_' and '-' only."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", "-".join(str(p) for p in parts))[:200]


def _job(queue: str, func: str, **options: Any):
    """A job kind: a frozen dataclass of its keyword arguments, queued on `queue` as `func`."""

    def kind(cls):
        cls.queue, cls.func, cls.options = queue, func, options
        return dataclass(frozen=True)(cls)

    return kind


@_job(DEPLOYS, "workers.deploy.run", timeout=DEPLOY_TIMEOUT, result_ttl=3600, failure_ttl=7 * 24 * 3600)
class DeployJob:
    deployment_id: int

    def ident(self) -> str:
        return job_id("deploy", self.deployment_id)


@_job(REPORTS, "workers.report.send", timeout=120, retry=REPORT_RETRY, failure_ttl=7 * 24 * 3600)
class ReportJob:
    report_id: int

    def ident(self) -> str:
        return job_id("report", self.report_id)


@_job(COMMANDS, "workers.command.run", timeout=600)
class CommandJob:
    """A slash-command to check and run (workers.command)."""

    app_id: int
    pr_number: int
    comment_id: int
    actor: str
    body: str
    commented_at: str | None = None

    def ident(self) -> str:
        return job_id("command", self.comment_id)


@_job(COMMANDS, "workers.command.open_promotion_pr", timeout=300)
class PromotionJob:
    """Open the promotion pull request a portal user asked for (a phase that needs approvals)."""

    app_id: int
    phase: str
    branch: str
    version: str
    sha: str
    source_id: int
    actor: str
    override: str | None = None

    def ident(self) -> str:
        return job_id("promotion", self.app_id, self.phase, self.version)


@_job(COMMANDS, "workers.promotion.summarize", timeout=300)
class SummaryJob:
    """Refresh a promotion PR's summary comment and status."""

    app_id: int
    pr_number: int
    phase: str

    def ident(self) -> None:
        return None  # not unique: every delivery (a new review, a push) must be read again


@_job(DEPLOYS, "workers.preview.teardown", timeout=600)
class PreviewTeardownJob:
    """Remove what a preview runs (containers, route, services, volumes); once per generation."""

    app_id: int
    pr_number: int
    generation: int
    up_to: int
    reason: str

    def ident(self) -> str:
        return job_id("preview-teardown", self.app_id, self.pr_number, self.generation)


@_job(NOTIFICATIONS, "workers.notify.send", timeout=60, retry=NOTIFY_RETRY, failure_ttl=24 * 3600)
class NotifyJob:
    notification_id: str

    def ident(self) -> str:
        return job_id("notify", self.notification_id)


Job = DeployJob | ReportJob | CommandJob | PromotionJob | SummaryJob | PreviewTeardownJob | NotifyJob


class Jobs:
    def __init__(self, redis: Redis):
        self.redis = redis
        self.queues = {name: Queue(name, connection=redis) for name in QUEUES}

    def enqueue(self, job: Job) -> str | None:
        """Queue `job`; a repeat of a unique one (same id) is harmless by design. Raises RedisError."""
        ident = job.ident()
        try:
            self.queues[job.queue].enqueue_call(job.func, kwargs=asdict(job), job_id=ident, unique=ident is not None,
                                                **job.options)
        except DuplicateJobError:
            pass  # already queued or done
        return ident

    def ping(self) -> bool:
        try:
            return bool(self.redis.ping())
        except Exception:
            return False


#: Why a deployment whose job could not be queued was withdrawn.
QUEUE_DOWN_REASON = "the job queue (Redis) was unavailable; nothing was deployed"


def enqueue_committed(ctx, jobs: Iterable[Job]) -> None:
    """Queue the jobs of work its caller has just committed.

    The one policy for a queue outage: the work is withdrawn, so nothing of it happens later
    behind the asker's back, and QueueUnavailable tells the asker at once (the portal answers
    503, the intake drainer keeps the delivery in its inbox for a later pass, a job fails). A deployment among the jobs is marked failed with
    `QUEUE_DOWN_REASON` and its dedup key released (a redelivery may schedule it again); its
    reports, and the reports among the jobs, are deleted unsent.
    """
    jobs = list(jobs)
    try:
        for job in jobs:
            ctx.jobs.enqueue(job)
    except RedisError as exc:
        log.error("queue unavailable (%s): withdrawing %s", exc, ", ".join(map(repr, jobs)))
        _withdraw(ctx, [j.deployment_id for j in jobs if isinstance(j, DeployJob)],
                  [j.report_id for j in jobs if isinstance(j, ReportJob)])
        raise QueueUnavailable("the job queue is unavailable") from None


def _withdraw(ctx, deployment_ids: list[int], report_ids: list[int]) -> None:
    from sqlalchemy import delete, or_, select

    from app.models import Deployment, DeploymentStatus, Report, ReportState, utcnow

    if not deployment_ids and not report_ids:
        return
    with ctx.db.session() as session:
        for deployment in session.scalars(select(Deployment).where(Deployment.id.in_(deployment_ids))):
            deployment.status, deployment.reason = DeploymentStatus.FAILED.value, QUEUE_DOWN_REASON
            deployment.finished_at, deployment.dedup_key = utcnow(), None
        session.execute(delete(Report).where(or_(
            Report.deployment_id.in_(deployment_ids),
            Report.id.in_(report_ids) & (Report.state == ReportState.PENDING.value))))
