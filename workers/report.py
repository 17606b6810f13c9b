"""The report job: send outbox entries to GitHub, in order, retrying transient failures.

Each job first sends the still-pending reports of the same deployment that came before it,
so a `success` status can never overtake its `pending` one after a retry; one app's reports
are sent by one job at a time (a Redis lock), so two workers never post the same status or
comment twice. A transient failure raises, and RQ retries the job with backoff (never sooner
than GitHub's `Retry-After`); a permanent one is recorded and skipped. When RQ gives up, the
periodic `catch_up` sweep queues what is still pending. Nothing here can fail or undo a
deployment: the deploy job only writes outbox rows.
"""

from __future__ import annotations

import logging
import math
from datetime import timedelta

from rq import get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from sqlalchemy import select

from app.context import Context
from app.exceptions import GitHubError, TransientGitHubError
from app.jobs import ReportJob, job_id
from app.models import App, PullRequestComment, Report, ReportState, utcnow
from app.reporting import describe
from workers import runtime

log = logging.getLogger(__name__)

SEND_LOCK = "rp:report:send:{app_id}"
#: Longer than the GitHub calls of one job can take (each has a 20 s timeout).
SEND_LOCK_SECONDS = 110
SEND_LOCK_WAIT_SECONDS = 60
#: RQ jobs in these states will not run again by themselves: the sweep replaces them.
_SETTLED = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}


def send(*, report_id: int) -> str:
    """RQ entry point."""
    try:
        return Sender(runtime.context()).send_up_to(report_id)
    except TransientGitHubError as exc:
        _retry_no_sooner_than(exc.retry_after)
        raise


def _retry_no_sooner_than(seconds: float | None) -> None:
    """Stretch the running job's next RQ retry interval to GitHub's `Retry-After`.

    RQ retries the job object it is running (in the work horse), so changing it here
    changes the wait RQ schedules next.
    """
    job = get_current_job()
    if not seconds or job is None or not job.retries_left:
        return
    intervals = list(job.retry_intervals or [0])
    index = max(len(intervals) - job.retries_left, 0)
    intervals[index] = max(intervals[index], math.ceil(seconds))
    job.retry_intervals = intervals


def catch_up(*, older_than_seconds: int = 60) -> int:
    """Periodic sweep: queue every report still pending (e.g. after a long GitHub outage).

    A report whose job RQ gave up on (failed after its retries) gets a fresh job; one whose
    job is still queued or waiting for a retry is left to it.
    """
    ctx = runtime.context()
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    with ctx.db.session() as session:
        ids = session.scalars(
            select(Report.id).where(Report.state == ReportState.PENDING.value, Report.created_at < cutoff)
            .order_by(Report.id)
        ).all()
    for report_id in ids:
        try:
            job = Job.fetch(job_id("report", report_id), connection=ctx.redis)
        except NoSuchJobError:
            job = None
        if job is not None and job.get_status(refresh=False) in _SETTLED:
            job.delete()
        ctx.jobs.enqueue(ReportJob(report_id))
    if ids:
        log.info("catch-up: %s pending report(s) queued again", len(ids))
    return len(ids)


class Sender:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def send_up_to(self, report_id: int) -> str:
        with self.ctx.db.session() as session:
            report = session.get(Report, report_id)
            if report is None or report.state != ReportState.PENDING.value:
                return "nothing to send"
            app_id = report.app_id
        lock = self.ctx.redis.lock(SEND_LOCK.format(app_id=app_id), timeout=SEND_LOCK_SECONDS,
                                   blocking_timeout=SEND_LOCK_WAIT_SECONDS)
        if not lock.acquire():
            raise TransientGitHubError(f"another job is sending the reports of app {app_id}")
        try:
            with self.ctx.db.session() as session:
                report = session.get(Report, report_id)
                if report.state != ReportState.PENDING.value:
                    return "sent by another job"
                query = select(Report.id).where(Report.state == ReportState.PENDING.value, Report.id <= report_id)
                if report.deployment_id is not None:
                    query = query.where(Report.deployment_id == report.deployment_id)
                else:
                    query = query.where(Report.id == report_id)
                ids = session.scalars(query.order_by(Report.id)).all()
            for each in ids:
                self.send_one(each)
        finally:
            try:
                lock.release()
            except Exception:  # expired meanwhile: nothing to release
                pass
        return f"sent {len(ids)}"

    def send_one(self, report_id: int) -> None:
        with self.ctx.db.session() as session:
            report = session.get(Report, report_id)
            app = session.get(App, report.app_id)
            if self.ctx.github is None:
                # Queued while reporting was on, sent after GITHUB_APP_ID was removed.
                report.state, report.last_error = ReportState.RECORDED.value, "reporting is off (GITHUB_APP_ID unset)"
                log.info("reporting is off (no GITHUB_APP_ID): report %s recorded, would have sent %s",
                         report.id, describe(report.kind, report.body, app.full_name))
                return
            report.attempts += 1
            try:
                report.result = self.deliver(session, app, report) or {}
                report.state, report.sent_at, report.last_error = ReportState.SENT.value, utcnow(), ""
            except TransientGitHubError as exc:
                report.last_error = str(exc)[:300]
                session.commit()
                log.warning("report %s (%s) will be retried: %s", report.id, report.kind, exc)
                raise
            except GitHubError as exc:
                report.state, report.last_error = ReportState.FAILED.value, str(exc)[:300]
                log.error("report %s (%s) failed: %s", report.id, report.kind, exc)

    def deliver(self, session, app: App, report: Report) -> dict | None:
        if app.installation_id is None:
            app.installation_id = self.ctx.github.installation_for_repo(app.full_name)
            session.commit()
        client = self.ctx.github.repo(app.installation_id, app.full_name)
        body = report.body
        if report.kind == "status":
            client.create_status(body["sha"], state=body["state"], context=body["context"],
                                 description=body["description"], target_url=body["target_url"])
        elif report.kind == "deployment":
            deployment_id = (report.result or {}).get("github_deployment_id")
            if deployment_id is None:
                deployment_id = client.create_deployment(
                    ref=body["ref"], environment=body["environment"], payload=body["payload"],
                    description=body["description"], production_environment=body["production_environment"],
                    transient_environment=body.get("transient_environment", False))
                # Kept before the status is posted: a retry must not create a second deployment.
                report.result = {"github_deployment_id": deployment_id}
                session.commit()
            client.create_deployment_status(deployment_id, state=body["state"], log_url=body["log_url"])
            return {"github_deployment_id": deployment_id}
        elif report.kind == "deployment_status":
            github_id = self.github_deployment_id(session, report.deployment_id)
            if github_id is None:
                return {"skipped": "no GitHub deployment was created"}
            client.create_deployment_status(
                github_id, state=body["state"], environment_url=body.get("environment_url"),
                log_url=body["log_url"], description=body["description"])
        elif report.kind == "comment":
            return self.upsert_comment(session, app, client, body)
        elif report.kind == "reaction":
            client.add_reaction(body["comment_id"], body["content"])
        else:
            raise GitHubError(f"unknown report kind {report.kind}")
        return None

    @staticmethod
    def github_deployment_id(session, deployment_id: int | None) -> int | None:
        """The GitHub Deployment created for this deployment (even if its first status failed)."""
        for created in session.scalars(
            select(Report).where(Report.deployment_id == deployment_id, Report.kind == "deployment")
            .order_by(Report.id)
        ):
            if (created.result or {}).get("github_deployment_id"):
                return created.result["github_deployment_id"]
        return None

    @staticmethod
    def upsert_comment(session, app: App, client, body: dict) -> dict:
        """One bot comment per PR and topic: edited in place rather than posted again."""
        row = session.scalar(
            select(PullRequestComment).where(PullRequestComment.app_id == app.id,
                                             PullRequestComment.pr_number == body["pr_number"],
                                             PullRequestComment.topic == body["topic"])
        )
        if row is not None and row.comment_id:
            client.update_comment(row.comment_id, body["body"])
            return {"comment_id": row.comment_id, "edited": True}
        comment_id = client.create_comment(body["pr_number"], body["body"])
        if row is None:
            session.add(PullRequestComment(app_id=app.id, pr_number=body["pr_number"], topic=body["topic"],
                                           comment_id=comment_id))
        else:
            row.comment_id = comment_id
        return {"comment_id": comment_id, "edited": False}
