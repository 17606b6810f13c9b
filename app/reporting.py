"""What to tell GitHub about a deployment, written to an outbox in the same transaction.

Deciding what to report happens here, next to the state change that causes it; sending
happens in `workers.report`, in its own jobs with retries, so a GitHub outage never fails
or undoes a deployment and reports catch up afterwards.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import metrics
from app.models import App, Deployment, DeploymentStatus, Report, ReportState, aware, utcnow
from app.plans import Trigger
from app.notifications import Event, Notifier, finished_event
from app.pipeline import is_preview

log = logging.getLogger(__name__)

STATUS_CONTEXT = "release-pipeline/{phase}"
PROMOTION_CONTEXT = "release-pipeline/promotion"
#: Every pull request preview (`pr-<n>`) reports under one context, so it can be a required check.
PREVIEW_CONTEXT = "release-pipeline/preview"
#: The topic of the one comment per PR about its preview (app.previews.TOPIC).
PREVIEW_TOPIC = "preview"


def status_context(phase: str) -> str:
    return PREVIEW_CONTEXT if is_preview(phase) else STATUS_CONTEXT.format(phase=phase)
#: GitHub rejects longer status and deployment-status descriptions.
DESCRIPTION_LIMIT = 140


def short(text: str, limit: int = DESCRIPTION_LIMIT) -> str:
    """One line of at most `limit` characters (GitHub's limit), cut with an ellipsis."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def status_state(deployment: Deployment) -> str:
    """The commit status of a finished deployment.

    `failure` when the version itself did not make it (build, health check, release command,
    missing approvals, a freeze); `error` when the pipeline did not get to judge it
    (superseded by a newer deployment, cancelled, an internal error).
    """
    if deployment.status == DeploymentStatus.SUCCEEDED.value:
        return "success"
    if deployment.status in (DeploymentStatus.SUPERSEDED.value, DeploymentStatus.CANCELLED.value):
        return "error"
    if (deployment.reason or "").startswith("internal error"):
        return "error"
    return "failure"


def describe(kind: str, body: dict, repo: str) -> str:
    """What a report would do on GitHub, in one line without secrets (for the log)."""
    if kind == "status":
        return (f"commit status {body['state']} {body['context']} on {repo}@{(body.get('sha') or '')[:7]}: "
                f"{body.get('description')!r} -> {body.get('target_url')}")
    if kind == "deployment":
        return (f"GitHub deployment of {repo}@{(body.get('ref') or '')[:7]} to {body.get('environment')} "
                f"(version {(body.get('payload') or {}).get('version')}), status {body.get('state')}")
    if kind == "deployment_status":
        url = body.get("environment_url")
        return (f"deployment status {body['state']} on {repo}: {body.get('description')!r}"
                + (f", environment_url {url}" if url else "") + f", log_url {body.get('log_url')}")
    if kind == "comment":
        return f"comment on {repo}#{body.get('pr_number')} ({body.get('topic')}): {short(body.get('body', ''), 100)!r}"
    if kind == "reaction":
        return f"reaction {body.get('content')} on {repo} comment {body.get('comment_id')}"
    return f"{kind} on {repo}"


def command_topic(comment_id: int) -> str:
    """The topic of the one bot reply to a command comment, edited as its work progresses."""
    return f"command-{comment_id}"


def reply_topic(deployment: Deployment) -> str:
    """Where a deployment's outcome goes on its PR: the reply to the command that asked for it,
    else one comment per phase (a merged promotion PR)."""
    if is_preview(deployment.phase):
        return PREVIEW_TOPIC
    if deployment.comment_id:
        return command_topic(deployment.comment_id)
    return f"deploy-{deployment.phase}"


class Reports:
    """Outbox writer bound to the settings that shape the links (portal URL, reporting on/off)."""

    def __init__(self, *, public_url: str, enabled: bool, last_phase: str, notifier: Notifier | None = None):
        self.public_url = public_url.rstrip("/")
        self.enabled = enabled
        self.last_phase = last_phase
        self.notifier = notifier

    def _announce(self, session: Session, app: App, deployment: Deployment, event: Event) -> None:
        """Notifications and metrics come from the same place as GitHub's reports, in the same
        transaction, so no state change of a deployment is announced twice or missed."""
        if self.notifier is not None:
            self.notifier.notify(session, event, app=app, deployment=deployment)
        if event is not Event.DEPLOYMENT_STARTED:  # previews share one label: PR numbers are unbounded
            phase_label = "preview" if is_preview(deployment.phase) else deployment.phase
            metrics.DEPLOYMENTS.labels(phase=phase_label, outcome=deployment.status).inc()
        if deployment.status == DeploymentStatus.SUCCEEDED.value and deployment.trigger == Trigger.PUSH:
            metrics.PUSH_TO_URL.labels(phase=deployment.phase).observe(
                (utcnow() - aware(deployment.queued_at)).total_seconds())

    def deployment_page(self, app: App, deployment: Deployment) -> str:
        return f"{self.public_url}/apps/{app.name}/deployments/{deployment.id}"

    def _add(self, session: Session, app: App, kind: str, body: dict, deployment: Deployment | None) -> Report:
        report = Report(
            app_id=app.id,
            deployment_id=deployment.id if deployment is not None else None,
            kind=kind,
            body=body,
            state=(ReportState.PENDING if self.enabled else ReportState.RECORDED).value,
        )
        session.add(report)
        session.flush()
        if not self.enabled:
            log.info("reporting is off (no GITHUB_APP_ID): report %s recorded, would have sent %s",
                     report.id, describe(kind, body, app.full_name))
        return report

    @staticmethod
    def _earlier(session: Session, deployment: Deployment, kind: str) -> list[Report]:
        return list(session.scalars(
            select(Report).where(Report.deployment_id == deployment.id, Report.kind == kind).order_by(Report.id)
        ))

    def _status(self, session, app, deployment, state: str, description: str, target_url: str) -> Report:
        return self._add(
            session,
            app,
            "status",
            {
                "sha": deployment.sha,
                "state": state,
                "context": status_context(deployment.phase),
                "description": short(description),
                "target_url": target_url,
            },
            deployment,
        )

    def queued(self, session: Session, app: App, deployment: Deployment) -> list[Report]:
        if not deployment.sha:
            return []  # the sha is resolved by the worker; it reports once it knows it
        return [
            self._status(
                session, app, deployment, "pending",
                f"{deployment.version} queued for {deployment.phase}",
                self.deployment_page(app, deployment),
            )
        ]

    def started(self, session: Session, app: App, deployment: Deployment) -> list[Report]:
        """Once the sha is known and the deploy begins: a GitHub Deployment, in progress.

        The commit gets its pending status here when intake could not give it one (the sha
        was resolved by the worker) or the deployment is not a plain push (a rollback,
        promotion or command says what it is doing now).
        """
        self._announce(session, app, deployment, Event.DEPLOYMENT_STARTED)
        reports = []
        if deployment.sha and self._needs_deploying_status(session, deployment):
            reports.append(
                self._status(
                    session, app, deployment, "pending",
                    f"{deployment.version} deploying to {deployment.phase}",
                    self.deployment_page(app, deployment),
                )
            )
        if deployment.sha:
            reports.append(self._deployment(session, app, deployment))
        if deployment.pr_number and deployment.comment_id:
            reports.append(self.progress_reply(session, app, deployment))
        return reports

    def _needs_deploying_status(self, session: Session, deployment: Deployment) -> bool:
        earlier = [r.body.get("sha") for r in self._earlier(session, deployment, "status")]
        return deployment.trigger != Trigger.PUSH or deployment.sha not in earlier

    def _deployment(self, session: Session, app: App, deployment: Deployment) -> Report:
        """One GitHub Deployment per deployment (created in_progress; see workers.report)."""
        return self._add(
            session,
            app,
            "deployment",
            {
                "ref": deployment.sha,
                "environment": deployment.phase,
                "description": short(f"{deployment.version} to {deployment.phase}"),
                "payload": {"version": deployment.version, "deployment": deployment.id, "app": app.name},
                "production_environment": deployment.phase == self.last_phase,
                # A preview's environment goes away with its pull request.
                "transient_environment": is_preview(deployment.phase),
                "state": "in_progress",
                "log_url": self.deployment_page(app, deployment),
            },
            deployment,
        )

    def finished(self, session: Session, app: App, deployment: Deployment) -> list[Report]:
        """The outcome: commit status, deployment status and, for PR-driven ones, the PR reply.

        A deployment that failed before it started (clone, build) still gets its GitHub
        Deployment, so the environment's history shows the failure; one that never ran
        (superseded, refused) gets none.
        """
        self._announce(session, app, deployment, finished_event(deployment))
        succeeded = deployment.status == DeploymentStatus.SUCCEEDED.value
        page = self.deployment_page(app, deployment)
        reports: list[Report] = []
        if deployment.sha:
            if succeeded:
                description = f"{deployment.version} live"
                reports.append(self._status(session, app, deployment, "success", description, deployment.url or page))
            else:
                reports.append(self._status(session, app, deployment, status_state(deployment),
                                            deployment.reason or deployment.status, page))
            ran = deployment.status not in (DeploymentStatus.REFUSED.value, DeploymentStatus.SUPERSEDED.value)
            has_github_deployment = bool(self._earlier(session, deployment, "deployment"))
            if ran and not has_github_deployment:
                reports.append(self._deployment(session, app, deployment))
                has_github_deployment = True
            if has_github_deployment:
                reports.append(
                    self._add(
                        session,
                        app,
                        "deployment_status",
                        {
                            "state": "success" if succeeded else "failure",
                            "environment_url": deployment.url if succeeded else None,
                            "log_url": page,
                            "description": short(
                                f"{deployment.version} live" if succeeded
                                else (deployment.reason or deployment.status)
                            ),
                        },
                        deployment,
                    )
                )
        if deployment.pr_number:
            reports.append(self.progress_reply(session, app, deployment))
        return reports

    def comment(
        self, session: Session, app: App, pr_number: int, topic: str, body: str, deployment: Deployment | None = None,
        *, intro: str | None = None,
    ) -> Report:
        """One comment per PR and topic, edited in place on later updates.

        `intro` (a command reply's own words, e.g. what a rollback changes) is kept with the
        report so later edits of the same reply can repeat it above the deployment's progress.
        """
        body_fields = {"pr_number": pr_number, "topic": topic, "body": body}
        if intro:
            body_fields["intro"] = intro
        return self._add(session, app, "comment", body_fields, deployment)

    def command_reply(self, session: Session, app: App, pr_number: int, comment_id: int, intro: str,
                      deployment: Deployment | None = None) -> Report:
        """The reply to a slash-command; with a deployment, its progress follows `intro` and
        the deployment's later reports edit this same comment."""
        if deployment is None:
            return self.comment(session, app, pr_number, command_topic(comment_id), intro)
        body = f"{intro}\n\n{outcome_text(deployment, self.deployment_page(app, deployment))}"
        return self.comment(session, app, pr_number, command_topic(comment_id), body, deployment, intro=intro)

    def progress_reply(self, session: Session, app: App, deployment: Deployment) -> Report:
        """The deployment's state on its PR, in the reply it already has (keeping its intro)."""
        first = session.scalars(
            select(Report).where(Report.deployment_id == deployment.id, Report.kind == "comment")
            .order_by(Report.id).limit(1)
        ).first()
        intro = (first.body or {}).get("intro", "") if first is not None else ""
        text = outcome_text(deployment, self.deployment_page(app, deployment))
        return self.comment(session, app, deployment.pr_number, reply_topic(deployment),
                            f"{intro}\n\n{text}" if intro else text, deployment, intro=intro or None)

    def promotion_status(self, session: Session, app: App, sha: str, state: str, description: str,
                         target_url: str) -> Report:
        """`release-pipeline/promotion` on a promotion PR's head: whether merging would deploy."""
        return self._add(session, app, "status", {
            "sha": sha, "state": state, "context": PROMOTION_CONTEXT, "description": short(description),
            "target_url": target_url}, None)

    def preview_removed(self, session: Session, app: App, pr_number: int, phase: str, text: str) -> list[Report]:
        """A torn-down preview: every GitHub Deployment of it that succeeded becomes `inactive`,
        its comment says why, and `preview.removed` is announced."""
        reports = [self.comment(session, app, pr_number, PREVIEW_TOPIC, text)]
        succeeded = session.scalars(select(Deployment).where(
            Deployment.app_id == app.id, Deployment.phase == phase,
            Deployment.status == DeploymentStatus.SUCCEEDED.value).order_by(Deployment.id)).all()
        for deployment in succeeded:
            inactive = [r for r in self._earlier(session, deployment, "deployment_status")
                        if r.body.get("state") == "inactive"]
            if self._earlier(session, deployment, "deployment") and not inactive:
                reports.append(self._add(session, app, "deployment_status", {
                    "state": "inactive", "environment_url": None, "log_url": self.deployment_page(app, deployment),
                    "description": short(text)}, deployment))
        last = succeeded[-1] if succeeded else None
        if self.notifier is not None:
            self.notifier.notify(session, Event.PREVIEW_REMOVED, app=app, deployment=last, phase=phase,
                                 pr_number=pr_number, reason=short(text, 300))
        return reports

    def reaction(self, session: Session, app: App, comment_id: int, content: str) -> Report:
        return self._add(session, app, "reaction", {"comment_id": comment_id, "content": content}, None)


def outcome_text(deployment: Deployment, page: str) -> str:
    if is_preview(deployment.phase):
        return preview_text(deployment, page)
    phase = deployment.phase.capitalize()
    if deployment.status == DeploymentStatus.SUCCEEDED.value:
        return (
            f"**{deployment.version}** is live on **{phase}**: {deployment.url}\n\n"
            f"Commit `{deployment.short_sha}` · [deployment log]({page})"
        )
    if deployment.status in (DeploymentStatus.QUEUED.value, DeploymentStatus.BUILDING.value,
                             DeploymentStatus.DEPLOYING.value):
        return f"**{deployment.version}** → **{phase}**: {deployment.status}… [follow the log]({page})"
    return (
        f"**{deployment.version}** was not deployed to **{phase}**: {deployment.reason or deployment.status}\n\n"
        f"[deployment log]({page})"
    )


def preview_text(deployment: Deployment, page: str) -> str:
    """The preview comment of a PR: its URL, version and state."""
    head = f"**Preview** of #{deployment.pr_number}"
    if deployment.status == DeploymentStatus.SUCCEEDED.value:
        return (f"{head} is ready: {deployment.url}\n\n"
                f"Version `{deployment.version}` (commit `{deployment.sha}`) · [deployment log]({page})")
    if deployment.status in (DeploymentStatus.QUEUED.value, DeploymentStatus.BUILDING.value,
                             DeploymentStatus.DEPLOYING.value):
        return f"{head}: `{deployment.version}` is {deployment.status}… [follow the log]({page})"
    return (f"{head}: `{deployment.version}` was not deployed: {deployment.reason or deployment.status}\n\n"
            f"[deployment log]({page})")
