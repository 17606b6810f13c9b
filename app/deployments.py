"""Scheduling deployments: the one path shared by git events, slash-commands and the portal."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.models import App, Deployment, DeploymentStatus
from app.plans import Deploy


def schedule(session: Session, app: App, plan: Deploy, *, source_id: int | None = None) -> Deployment | None:
    """Record a queued deployment; None when the same change was already planned (dedup key)."""
    deployment = Deployment(
        app_id=app.id,
        phase=plan.phase,
        version=plan.version,
        ref=plan.ref,
        sha=plan.sha,
        trigger=plan.trigger,
        actor=plan.actor,
        dedup_key=plan.dedup_key,
        pr_number=plan.pr_number,
        required_approvals=plan.required_approvals,
        source_id=source_id,
        status=DeploymentStatus.QUEUED.value,
    )
    try:
        with session.begin_nested():
            session.add(deployment)
    except IntegrityError:
        return None
    return deployment

