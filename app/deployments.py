"""Scheduling deployments: the one path shared by git events, slash-commands and the portal."""

from __future__ import annotations

from sqlalchemy import select
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
        commit_title=plan.commit_title,
        commit_author=plan.commit_author,
    )
    if plan.commit_title is None and source_id is not None:  # a promotion or rollback: the same commit
        source = session.get(Deployment, source_id)
        if source is not None and source.sha == plan.sha:
            deployment.commit_title, deployment.commit_author = source.commit_title, source.commit_author
    try:
        with session.begin_nested():
            session.add(deployment)
    except IntegrityError:
        return None
    return deployment



def version_taken(session: Session, app_id: int, version: str, sha: str | None, *, but: int | None = None) -> str | None:
    """The other commit `version` already names in this app (README, Release controls: a version belongs to one
    commit), or None. Failed attempts do not claim a name."""
    if not sha:
        return None
    query = select(Deployment.sha).where(
        Deployment.app_id == app_id, Deployment.version == version, Deployment.sha.is_not(None),
        Deployment.sha != sha,
        Deployment.status.in_([DeploymentStatus.SUCCEEDED.value, DeploymentStatus.DEPLOYING.value]))
    if but is not None:
        query = query.where(Deployment.id != but)
    return session.scalar(query.limit(1))


def version_taken_reason(version: str, other_sha: str) -> str:
    return (f"version {version} already names commit {other_sha[:7]}; a version belongs to one commit, "
            "so use another tag or name")
