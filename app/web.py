"""The Flask application factory: settings in, a configured app out; nothing read at import."""

from __future__ import annotations

import gc

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from app import logs
from app.context import Context
from app.settings import Settings

#: Scripts and styles come from /static only: the portal has no inline script or style.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def create_app(settings: Settings | None = None, context: Context | None = None) -> Flask:
    ctx = context or Context.from_settings(settings)
    flask_app = Flask(__name__)
    flask_app.extensions["release_pipeline"] = ctx
    flask_app.config.update(
        MAX_CONTENT_LENGTH=ctx.settings.max_body_bytes,
        SECRET_KEY=ctx.settings.secret_key.get_secret_value() if ctx.settings.secret_key else None,
    )
    logs.configure(ctx.settings.log_format)

    from app import github_setup, healthz, portal, receiver, scrape, security
    from app.api import v1
    from app.portal import auth, tokens, views
    from app.portal.queries import RowIdConverter

    flask_app.url_map.converters["id"] = RowIdConverter
    security.init_app(flask_app, ctx.settings.public_url)
    for blueprint in (healthz.bp, scrape.bp, github_setup.bp, auth.bp, views.bp, tokens.bp, v1.bp):
        flask_app.register_blueprint(blueprint)
    portal.init_app(flask_app)

    @flask_app.after_request
    def security_headers(response):
        # No page may be framed (a framed rollback button is a clickjacking attack); pages that
        # set a stricter policy of their own (the manifest flow's) keep it.
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @flask_app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if portal.wants_html():
            return portal.error_page(exc.code, exc.name, exc.description)
        return jsonify({"error": exc.name.lower(), "reason": exc.description}), exc.code

    @flask_app.errorhandler(Exception)
    def unexpected(exc: Exception):
        flask_app.logger.exception("unexpected error")
        if portal.wants_html():
            return portal.error_page(500, "Something went wrong", "The error was logged.")
        return jsonify({"error": "internal error", "reason": "the error was logged"}), 500

    # Deliveries skip Flask altogether (app.receiver): the intake's cost is its own work.
    flask_app.wsgi_app = receiver.Receiver(ctx, logs.AccessLog(flask_app.wsgi_app))
    return flask_app


def worker_app() -> Flask:
    """The app of one web server process (app.server forks them): its own context, and its
    own index of the app containers from the engine's events for the portal's health."""
    flask_app = create_app()
    flask_app.extensions["release_pipeline"].watch_containers()
    # What the process built to serve (~170k objects) lives as long as it does: out of the
    # collector's sight, its full collections no longer stall a request (p95 of the apps list
    # with 600 phases: 209 → 70 ms in-process).
    gc.freeze()
    return flask_app
