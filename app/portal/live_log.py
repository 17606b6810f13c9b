"""A deployment's live log as server-sent events, for the portal's page and the API alike.

Events: `line` per log line (its id is the event id, so a client resumes with Last-Event-ID),
`status` on each change, `done` at the end. One stream lasts at most STREAM_SECONDS, as it
holds a server thread; clients reconnect and resume after the last id they saw.
"""

from __future__ import annotations

import json
import time

from flask import Response, request

from app.models import Deployment
from app.portal import queries

#: How often the stream looks for new lines.
POLL_SECONDS = 0.5
STREAM_SECONDS = 55.0
HEARTBEAT_SECONDS = 15.0


def response(ctx, deployment_id: int) -> Response:
    """The stream of `deployment_id` (already checked visible), after Last-Event-ID or ?after."""
    after = request.headers.get("Last-Event-ID", type=queries.row_id) or request.args.get("after", type=queries.row_id) or 0
    return Response(stream(ctx, deployment_id, max(after, 0)), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def event(kind: str, data: dict, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data)}\n\n"


def stream(ctx, deployment_id: int, after: int):
    last, last_status = after, None
    started = quiet_since = time.monotonic()
    yield "retry: 2000\n\n"
    while True:
        with ctx.db.session() as session:
            lines = queries.log_lines(session, deployment_id, after=last, limit=500)
            d = session.get(Deployment, deployment_id)
            if d is None:  # removed while we watched (an app uninstalled): nothing more to say
                yield event("done", {"status": "gone", "reason": "the deployment no longer exists", "url": None})
                return
            status, reason, finished = d.status, d.reason, queries.is_finished(d)
            url = d.url
        for line in lines:
            last = line.id
            yield event("line", {"id": line.id, "stream": line.stream, "text": line.text,
                                 "at": queries.iso(line.at)}, line.id)
        changed = status != last_status
        if changed:
            last_status = status
            yield event("status", {"status": status, "reason": reason, "url": url})
        if lines or changed:
            quiet_since = time.monotonic()
        if finished and not lines:
            yield event("done", {"status": status, "reason": reason, "url": url})
            return
        now = time.monotonic()
        if now - started > STREAM_SECONDS:
            return  # the client reconnects, resuming after Last-Event-ID
        if now - quiet_since > HEARTBEAT_SECONDS:
            quiet_since = now
            yield ": still here\n\n"
        if not lines:
            time.sleep(POLL_SECONDS)
