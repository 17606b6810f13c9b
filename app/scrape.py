"""`GET /metrics`: Prometheus text format, for the admin token (or on METRICS_PORT, loopback)."""

from flask import Blueprint, Response, abort, current_app
from prometheus_client import CONTENT_TYPE_LATEST

from app import metrics
from app.portal import auth

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def scrape():
    user = auth.user_from_bearer()
    if user is None or not user.is_admin_everywhere:
        abort(401, description="send Authorization: Bearer <ADMIN_TOKEN> (or scrape METRICS_PORT on loopback)")
    return Response(metrics.exposition(current_app.extensions["release_pipeline"]), mimetype=CONTENT_TYPE_LATEST)
