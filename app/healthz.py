"""`GET /healthz`: is each part this service depends on reachable?"""

from flask import Blueprint, current_app, jsonify

bp = Blueprint("healthz", __name__)


@bp.get("/healthz")
def healthz():
    ctx = current_app.extensions["release_pipeline"]
    checks = {"database": ctx.db.ping(), "redis": ctx.jobs.ping(), "docker": ctx.engine.ping()}
    ok = all(checks.values())
    return jsonify({"ok": ok, **checks}), 200 if ok else 503
