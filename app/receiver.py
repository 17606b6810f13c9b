"""The webhook endpoint: verify, parse, plan, record, enqueue, answer 202 — nothing slow."""

from __future__ import annotations

import json
import logging
import re

from flask import Blueprint, current_app, jsonify, request
from githubkit.webhooks import verify

from app import intake
from app.logs import log_context
from app.metrics import DELIVERIES
from app.planner import plan

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__)

DELIVERY_ID = re.compile(r"^[A-Za-z0-9-]{1,100}$")
EVENT_NAME = re.compile(r"^[a-z_]{1,50}$")


def _refuse(status: int, error: str, reason: str, event: str = "unverified"):
    DELIVERIES.labels(event=event, outcome="unauthorized" if status == 401 else "malformed").inc()
    return jsonify({"error": error, "reason": reason}), status


@bp.post("/api/github/webhooks")
def receive():
    ctx = current_app.extensions["release_pipeline"]
    body = request.get_data(cache=False)
    limit = ctx.settings.max_body_bytes
    # A chunked body has no length to refuse up front: Werkzeug stops reading at the cap, so
    # a byte left over means the body was cut, and a cut body must not reach the signature check.
    if request.content_length is None and len(body) >= limit and request.environ["wsgi.input"].read(1):
        return _refuse(413, "request entity too large", f"the body is larger than MAX_BODY_BYTES ({limit} bytes)")
    secret = ctx.settings.webhook_secret
    # Only development mode without any secret skips the check; settings refuse an empty one.
    if secret or not ctx.settings.pipeline_dev:
        signature = request.headers.get("X-Hub-Signature-256", "")
        # githubkit falls back to SHA-1 for other prefixes; only accept SHA-256 signatures.
        if not signature.startswith("sha256="):
            return _refuse(401, "unauthorized", "missing X-Hub-Signature-256 header")
        if not signature.isascii():  # hmac.compare_digest raises TypeError on non-ASCII text
            return _refuse(401, "unauthorized", "signature does not match the webhook secret")
        if not secret or not verify(secret, body, signature):
            return _refuse(401, "unauthorized", "signature does not match the webhook secret")
    event = request.headers.get("X-GitHub-Event", "")
    delivery_id = request.headers.get("X-GitHub-Delivery", "")
    if not EVENT_NAME.fullmatch(event):
        return _refuse(400, "malformed delivery", "missing or invalid X-GitHub-Event header")
    if not DELIVERY_ID.fullmatch(delivery_id):
        return _refuse(400, "malformed delivery", "missing or invalid X-GitHub-Delivery header", event)
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: absurdly deep nesting
        return _refuse(400, "malformed delivery", "the body is not valid JSON", event)
    with log_context(delivery_id=delivery_id):
        decided = plan(event, payload, ctx.config)
        receipt = intake.accept(ctx, delivery_id, event, decided, payload if isinstance(payload, dict) else {})
        log.info("delivery %s %s: %s %s", delivery_id, event, receipt.status, receipt.body.get("reason", ""),
                 extra={"deployment_id": receipt.body.get("deployment")})
    DELIVERIES.labels(event=event, outcome=_outcome(receipt)).inc()
    return jsonify(receipt.body), receipt.status


def _outcome(receipt: intake.Receipt) -> str:
    """accepted (work queued), ignored (nothing to do), malformed, or unavailable (503)."""
    if receipt.status >= 500:
        return "unavailable"
    if receipt.status >= 400:
        return "malformed"
    return "accepted" if receipt.enqueue else "ignored"
