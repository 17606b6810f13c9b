"""The API's JSON shapes of the portal's rows and views (used by `app.api.v1` only)."""

from __future__ import annotations

from typing import Any

from app import shipped
from app.crypto import MASK
from app.freezes import Freeze
from app.models import App, Deployment, iso
from app.portal.queries import PhaseView, Sent, TargetView, is_finished
from app.profiles import ResolvedProfile


def notification_json(sent: Sent) -> dict:
    n = sent.notification
    return {
        "id": n.id, "event": n.event, "app": sent.app_name, "deployment_id": n.deployment_id, "state": n.state,
        "created_at": iso(n.created_at), "last_attempt_at": iso(n.last_attempt_at),
        "attempts": [{"at": iso(a.at), "outcome": a.outcome, "status_code": a.status_code, "error": a.error,
                      "duration_ms": a.duration_ms} for a in sent.attempts],
    }


def target_json(view: TargetView) -> dict:
    t = view.target
    return {"name": t.name, "format": t.format, "url": view.shown_url, "events": t.events,
            "signed": t.secret_env is not None, "recent": [notification_json(s) for s in view.recent]}


def deployment_json(app: App, d: Deployment) -> dict[str, Any]:
    return {
        "id": d.id,
        "app": app.name,
        "phase": d.phase,
        "version": d.version,
        "sha": d.sha,
        "commit_title": d.headline[0],
        "commit_author": d.headline[1],
        "ref": d.ref,
        "status": d.status,
        "reason": d.reason,
        "trigger": d.trigger,
        "actor": d.actor,
        "url": d.url,
        "image": d.image_id,
        "source_deployment": d.source_id,
        "pr_number": d.pr_number,
        "queued_at": iso(d.queued_at),
        "started_at": iso(d.started_at),
        "finished_at": iso(d.finished_at),
        "finished": is_finished(d),
        "commits": [{**c, "url": shipped.commit_url(app.html_url, c["sha"])} for c in d.commits or []],
        "override": d.override,
        "cancel_requested_by": d.cancel_requested_by,
    }


def freeze_json(freeze: Freeze | None) -> dict[str, Any] | None:
    if freeze is None:
        return None
    return {"author": freeze.author, "reason": freeze.reason, "until": iso(freeze.until),
            "description": freeze.describe()}


def profile_json(resolved: ResolvedProfile) -> dict[str, Any]:
    """Effective values with where each comes from; secrets as names with a mask."""
    return {
        "phase": resolved.phase,
        "env": {k: {"value": v.value, "source": v.source} for k, v in sorted(resolved.env.items())},
        "secrets": {k: {"value": MASK, "source": v.source} for k, v in sorted(resolved.secrets.items())},
        "sizing": {k: {"value": v.value, "source": v.source} for k, v in resolved.sizing.items()},
    }


def phase_json(app: App, view: PhaseView) -> dict[str, Any]:
    return {
        "name": view.name,
        "role": view.role,
        "approvals": view.approvals,
        "next": view.next,
        "current": deployment_json(app, view.current) if view.current else None,
        "in_progress": deployment_json(app, view.in_progress) if view.in_progress else None,
        "last_failure": deployment_json(app, view.last_failure) if view.last_failure else None,
        "url": view.current.url if view.current else None,
        "health": {"state": view.health.state, "label": view.health.label},
        "allowed": {
            "promote_to_next": bool(view.promote and view.promote.allowed),
            "rollback": view.rollback.allowed,
            "edit_profile": view.edit_profile.allowed,
            "freeze": bool(view.change_freeze and view.change_freeze.allowed),
            "redeploy": bool(view.redeploy and view.redeploy.allowed),
        },
        "freeze": freeze_json(view.freeze),
        "rollback_to": deployment_json(app, view.rollback_to) if view.rollback_to else None,
        "profile_changed_since_deployed": view.profile_pending,
    }


def app_json(app: App) -> dict[str, Any]:
    return {
        "name": app.name,
        "repository": app.full_name,
        "html_url": app.html_url,
        "default_branch": app.default_branch,
        "deleted_at": iso(app.deleted_at),
        "deleted_by": app.deleted_by,
    }
