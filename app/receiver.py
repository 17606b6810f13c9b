"""The webhook endpoint: bounded read, signature, headers, one append to the inbox, 202.

Nothing else happens in the request: planning, recording and queueing run in the intake
drainer (workers/intake.py), in order. It is a plain WSGI function that `app.web` puts in
front of Flask, so a delivery pays for no routing, request context or session.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable

from githubkit.webhooks import verify
from redis.exceptions import RedisError

from app.context import Context
from app.logs import log_access
from app.metrics import DELIVERIES

log = logging.getLogger(__name__)

PATH = "/api/github/webhooks"
DELIVERY_ID = re.compile(r"^[A-Za-z0-9-]{1,100}$")
EVENT_NAME = re.compile(r"^[a-z_]{1,50}$")
_HEADERS = [("Content-Type", "application/json"), ("X-Content-Type-Options", "nosniff"),
            ("Cache-Control", "no-store")]
_STATUS = {200: "200 OK", 202: "202 Accepted", 400: "400 Bad Request", 401: "401 Unauthorized",
           405: "405 Method Not Allowed", 413: "413 Request Entity Too Large", 503: "503 Service Unavailable"}


class Receiver:
    """The WSGI application of PATH; every other path goes on to `rest` (the Flask app)."""

    def __init__(self, ctx: Context, rest: Callable):
        self.ctx = ctx
        self.rest = rest

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            return self.rest(environ, start_response)
        started = time.perf_counter()
        if environ.get("REQUEST_METHOD") != "POST":
            status, body, extra = 405, {"error": "method not allowed", "reason": "deliveries are POSTed"}, [("Allow", "POST")]
        else:
            (status, body), extra = self.receive(environ), []
        data = json.dumps(body).encode()
        if status != 202:  # an accepted delivery gets its line from the drainer, once recorded
            log_access(environ, _STATUS[status], started)
        start_response(_STATUS[status], [*_HEADERS, *extra, ("Content-Length", str(len(data)))])
        return [data]

    def receive(self, environ: dict) -> tuple[int, dict]:
        settings = self.ctx.settings
        limit = settings.max_body_bytes
        length = environ.get("CONTENT_LENGTH") or ""
        if length.isdigit() and int(length) > limit:
            return _refuse(413, "request entity too large", f"the body is larger than MAX_BODY_BYTES ({limit} bytes)")
        # A chunked body has no length to refuse up front: read one byte past the cap, and a
        # body that reaches it was cut, so it must not reach the signature check.
        body = environ["wsgi.input"].read(int(length) if length.isdigit() else limit + 1)
        if len(body) > limit:
            return _refuse(413, "request entity too large", f"the body is larger than MAX_BODY_BYTES ({limit} bytes)")
        secret = settings.webhook_secret
        # Only development mode without any secret skips the check; settings refuse an empty one.
        if secret or not settings.pipeline_dev:
            signature = environ.get("HTTP_X_HUB_SIGNATURE_256", "")
            # githubkit falls back to SHA-1 for other prefixes; only accept SHA-256 signatures.
            if not signature.startswith("sha256="):
                return _refuse(401, "unauthorized", "missing X-Hub-Signature-256 header")
            # WSGI headers are latin-1 text; hmac.compare_digest raises TypeError on non-ASCII.
            if not signature.isascii() or not secret or not verify(secret, body, signature):
                return _refuse(401, "unauthorized", "signature does not match the webhook secret")
        event = environ.get("HTTP_X_GITHUB_EVENT", "")
        delivery_id = environ.get("HTTP_X_GITHUB_DELIVERY", "")
        if not EVENT_NAME.fullmatch(event):
            return _refuse(400, "malformed delivery", "missing or invalid X-GitHub-Event header")
        if not DELIVERY_ID.fullmatch(delivery_id):
            return _refuse(400, "malformed delivery", "missing or invalid X-GitHub-Delivery header", event)
        try:
            json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: absurdly deep nesting
            return _refuse(400, "malformed delivery", "the body is not valid JSON", event)
        if event == "ping":  # GitHub's hello when a hook is created: nothing to record
            DELIVERIES.labels(event=event, outcome="ignored").inc()
            return 200, {"ok": True, "reason": "pong"}
        try:
            new = self.ctx.inbox.append(delivery_id, event, body)
        except RedisError as exc:
            log.error("inbox unavailable, delivery %s refused with 503: %s", delivery_id, exc)
            DELIVERIES.labels(event=event, outcome="unavailable").inc()
            return 503, {"error": "queue unavailable", "reason": "try the delivery again later"}
        DELIVERIES.labels(event=event, outcome="accepted" if new else "ignored").inc()
        if not new:
            return 202, {"ok": True, "reason": f"delivery {delivery_id} was already received"}
        return 202, {"ok": True, "reason": "accepted: planned and recorded in order by the intake drainer",
                     "delivery": delivery_id}


def _refuse(status: int, error: str, reason: str, event: str = "unverified") -> tuple[int, dict]:
    DELIVERIES.labels(event=event, outcome="unauthorized" if status == 401 else "malformed").inc()
    return status, {"error": error, "reason": reason}
