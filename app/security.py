"""What protects the browser-facing endpoints: CSRF for forms and cookie-authenticated API
calls, and the session cookie's flags. The portal and the API both use it; neither owns it."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlsplit

from flask import Flask, request
from flask_wtf.csrf import CSRFProtect

csrf = CSRFProtect()

#: Methods that change something: a session cookie alone is never enough for them.
UNSAFE = ("POST", "PUT", "PATCH", "DELETE")


def init_app(flask_app: Flask, public_url: str) -> None:
    flask_app.config.update(
        # Forms are checked by each blueprint's before_request (`protect_forms`), so other
        # endpoints — the webhook, token-authenticated API calls — are never affected by CSRF checks.
        WTF_CSRF_CHECK_DEFAULT=False,
        # The token lives as long as the session: a board left open over lunch still works.
        WTF_CSRF_TIME_LIMIT=None,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=urlsplit(public_url).scheme == "https",
        SESSION_COOKIE_NAME="release_pipeline_session",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=12),
    )
    csrf.init_app(flask_app)


def protect_forms() -> None:
    """Every form posts a CSRF token (the portal's blueprints call this before each request)."""
    if request.method in UNSAFE:
        csrf.protect()
