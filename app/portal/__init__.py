"""The Apps Portal: its template filters and globals (`init_app`), error pages, and the HTML-or-JSON rule."""

from __future__ import annotations

from datetime import datetime, timezone

from flask import Flask, render_template, request

from app.humanize import ago_words
from app.portal.queries import aware, iso

STATUS_TONE = {
    "succeeded": "ok",
    "failed": "bad",
    "refused": "bad",
    "queued": "wait",
    "building": "busy",
    "deploying": "busy",
    "superseded": "muted",
    # notification deliveries
    "sent": "ok",
    "pending": "wait",
    "retrying": "wait",
}


def init_app(flask_app: Flask) -> None:
    """The portal's template filters and globals (its blueprints are registered by `create_app`)."""
    from app.portal import auth

    ctx = flask_app.extensions["release_pipeline"]
    flask_app.jinja_env.filters.update(ago=ago, timestamp=timestamp, iso=iso, duration=duration, tone=tone,
                                       source_label=source_label)

    @flask_app.context_processor
    def portal_globals():
        return {"current_user": auth.current_user(), "sign_in_methods": auth.methods(),
                "phase_names": ctx.config.phase_names}


def wants_html() -> bool:
    """Browsers get pages; API clients, the webhook sender and JSON askers get JSON."""
    if request.path.startswith("/api/") or request.path in ("/healthz", "/metrics"):
        return False
    accept = request.accept_mimetypes
    return not accept or accept.best_match(["text/html", "application/json"]) == "text/html"


def error_page(code: int, title: str, reason: str):
    return render_template("error.html", code=code, title=title, reason=reason), code


# --- template filters ------------------------------------------------------------------------------


def ago(moment: datetime | None) -> str:
    moment = aware(moment)
    if moment is None:
        return "—"
    return ago_words((datetime.now(timezone.utc) - moment).total_seconds())


def timestamp(moment: datetime | None) -> str:
    moment = aware(moment)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "—"


def duration(deployment) -> str:
    start, end = aware(deployment.started_at or deployment.queued_at), aware(deployment.finished_at)
    if start is None or end is None:
        return "—"
    seconds = max(0, int((end - start).total_seconds()))
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def tone(status: str) -> str:
    return STATUS_TONE.get(status, "muted")


def source_label(source: str, phase: str) -> str:
    if source == phase:
        return "set here"
    if source == "pipeline":
        return "pipeline default"
    return f"inherited from {source.capitalize()}"
