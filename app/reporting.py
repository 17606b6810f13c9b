"""What to tell GitHub about a deployment, written to an outbox in the same transaction.

Deciding what to report happens here, next to the state change that causes it; sending
happens in `workers.report`, in its own jobs with retries, so a GitHub outage never fails
or undoes a deployment and reports catch up afterwards.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.models import App, Deployment, DeploymentStatus, Report, ReportState

STATUS_CONTEXT = "release-pipeline/{phase}"
DESCRIPTION_LIMIT = 140


class Reports:
    """Outbox writer bound to the settings that shape the links (portal URL, reporting on/off)."""

    def __init__(self, *, public_url: str, enabled: bool, last_phase: str):
        self.public_url = public_url.rstrip("/")
        self.enabled = enabled
        self.last_phase = last_phase

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
        return report

    def _status(self, session, app, deployment, state: str, description: str, target_url: str) -> Report:
        return self._add(
            session,
            app,
            "status",
            {
                "sha": deployment.sha,
                "state": state,
                "context": STATUS_CONTEXT.format(phase=deployment.phase),
                "description": description[:DESCRIPTION_LIMIT],
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
        """Once the sha is known and the deploy begins: a GitHub Deployment, in progress."""
        reports = []
        if deployment.trigger in ("tag", "command", "portal", "rollback") and deployment.sha:
            reports.append(
                self._status(
                    session, app, deployment, "pending",
                    f"{deployment.version} deploying to {deployment.phase}",
                    self.deployment_page(app, deployment),
                )
            )
        reports.append(
            self._add(
                session,
                app,
                "deployment",
                {
                    "ref": deployment.sha,
                    "environment": deployment.phase,
                    "description": f"{deployment.version} to {deployment.phase}"[:DESCRIPTION_LIMIT],
                    "payload": {"version": deployment.version, "deployment": deployment.id},
                    "production_environment": deployment.phase == self.last_phase,
                    "state": "in_progress",
                    "log_url": self.deployment_page(app, deployment),
                },
                deployment,
            )
        )
        return reports

    def finished(self, session: Session, app: App, deployment: Deployment) -> list[Report]:
        """The outcome: commit status, deployment status and, for PR-driven ones, the PR reply."""
        succeeded = deployment.status == DeploymentStatus.SUCCEEDED.value
        page = self.deployment_page(app, deployment)
        reports: list[Report] = []
        if deployment.sha:
            if succeeded:
                description = f"{deployment.version} {deployment.phase}"
                reports.append(self._status(session, app, deployment, "success", description, deployment.url or page))
            else:
                state = "error" if deployment.status == DeploymentStatus.REFUSED.value else "failure"
                reports.append(self._status(session, app, deployment, state, deployment.reason or "failed", page))
            if deployment.status != DeploymentStatus.REFUSED.value:
                reports.append(
                    self._add(
                        session,
                        app,
                        "deployment_status",
                        {
                            "state": "success" if succeeded else "failure",
                            "environment_url": deployment.url if succeeded else None,
                            "log_url": page,
                            "description": (deployment.reason or f"{deployment.version} {deployment.phase}")[
                                :DESCRIPTION_LIMIT
                            ],
                        },
                        deployment,
                    )
                )
        if deployment.pr_number:
            reports.append(self.comment(session, app, deployment.pr_number, f"deploy-{deployment.phase}",
                                        outcome_text(deployment, page), deployment))
        return reports

    def comment(
        self, session: Session, app: App, pr_number: int, topic: str, body: str, deployment: Deployment | None = None
    ) -> Report:
        """One comment per PR and topic, edited in place on later updates."""
        return self._add(session, app, "comment", {"pr_number": pr_number, "topic": topic, "body": body}, deployment)

    def reaction(self, session: Session, app: App, comment_id: int, content: str) -> Report:
        return self._add(session, app, "reaction", {"comment_id": comment_id, "content": content}, None)


def outcome_text(deployment: Deployment, page: str) -> str:
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
