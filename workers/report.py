"""The report job: send outbox entries to GitHub, in order, retrying transient failures.

Each job first sends the still-pending reports of the same deployment that came before it,
so a `success` status can never overtake its `pending` one after a retry. A transient
failure raises (RQ retries with backoff); a permanent one is recorded and skipped. Nothing
here can fail or undo a deployment.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select

from app.context import Context
from app.exceptions import GitHubError, TransientGitHubError
from app.models import App, PullRequestComment, Report, ReportState, utcnow
from workers import runtime

log = logging.getLogger(__name__)


def send(*, report_id: int) -> str:
    """RQ entry point."""
    return Sender(runtime.context()).send_up_to(report_id)


def catch_up(*, older_than_seconds: int = 60) -> int:
    """Periodic sweep: queue every report still pending (e.g. after a long GitHub outage)."""
    ctx = runtime.context()
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    with ctx.db.session() as session:
        ids = session.scalars(
            select(Report.id).where(Report.state == ReportState.PENDING.value, Report.created_at < cutoff)
        ).all()
    for report_id in ids:
        ctx.jobs.report(report_id)
    return len(ids)


class Sender:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def send_up_to(self, report_id: int) -> str:
        with self.ctx.db.session() as session:
            report = session.get(Report, report_id)
            if report is None or report.state != ReportState.PENDING.value:
                return "nothing to send"
            query = select(Report.id).where(Report.state == ReportState.PENDING.value, Report.id <= report_id)
            if report.deployment_id is not None:
                query = query.where(Report.deployment_id == report.deployment_id)
            else:
                query = query.where(Report.id == report_id)
            ids = session.scalars(query.order_by(Report.id)).all()
        for each in ids:
            self.send_one(each)
        return f"sent {len(ids)}"

    def send_one(self, report_id: int) -> None:
        with self.ctx.db.session() as session:
            report = session.get(Report, report_id)
            app = session.get(App, report.app_id)
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
        if self.ctx.github is None:
            raise GitHubError("reporting is off (GITHUB_APP_ID unset)")
        if app.installation_id is None:
            app.installation_id = self.ctx.github.installation_for_repo(app.full_name)
        client = self.ctx.github.repo(app.installation_id, app.full_name)
        body = report.body
        if report.kind == "status":
            client.create_status(body["sha"], state=body["state"], context=body["context"],
                                 description=body["description"], target_url=body["target_url"])
        elif report.kind == "deployment":
            deployment_id = client.create_deployment(
                ref=body["ref"], environment=body["environment"], payload=body["payload"],
                description=body["description"], production_environment=body["production_environment"])
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
        created = session.scalars(
            select(Report).where(Report.deployment_id == deployment_id, Report.kind == "deployment",
                                 Report.state == ReportState.SENT.value)
        ).first()
        return created.result.get("github_deployment_id") if created else None

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
