"""Live pages as server-sent events, for the portal's pages and the API alike.

A deployment's log: `line` per log line (its id is the event id, so a client resumes with
Last-Event-ID), `status` on each change (with the queue a queued one waits behind), `done` at
the end. The apps list and a board: `state` whenever what they show changes (see `watch`).
One stream lasts at most STREAM_SECONDS, as it holds a server thread; clients reconnect and
resume after the last id (or state) they saw.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

from flask import Response, request
from sqlalchemy.orm import Session

from app.models import Deployment
from app.portal import queries

#: How often the stream looks for new lines.
POLL_SECONDS = 0.5
#: How often a watched page's state is looked at (one small query).
WATCH_SECONDS = 1.0
#: Open watch streams per process (see `paced`), and when the others come back.
HELD_STREAMS = 2
SHORT_RETRY_MS = 3000
_held = threading.BoundedSemaphore(HELD_STREAMS)
STREAM_SECONDS = 55.0
HEARTBEAT_SECONDS = 15.0


def response(ctx, deployment_id: int) -> Response:
    """The stream of `deployment_id` (already checked visible), after Last-Event-ID or ?after."""
    after = request.headers.get("Last-Event-ID", type=queries.row_id) or request.args.get("after", type=queries.row_id) or 0
    return events_response(stream(ctx, deployment_id, max(after, 0)))


def watch_response(ctx, app_ids: list[int], payload: Callable[[Session], dict] | None = None, *,
                   new_apps: bool = False) -> Response:
    """A `state` event each time what a page shows of these (visible) apps changes."""
    return events_response(watch(ctx, app_ids, payload, new_apps=new_apps))


def events_response(body) -> Response:
    return Response(body, mimetype="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def event(kind: str, data: dict, event_id: int | str | None = None) -> str:
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
            ahead = [f"#{a.id} {a.app.name}/{a.phase} ({a.status})" for a in queries.queue_position(session, d)]
        for line in lines:
            last = line.id
            yield event("line", {"id": line.id, "stream": line.stream, "text": line.text,
                                 "at": queries.iso(line.at)}, line.id)
        changed = (status, url, ahead) != last_status
        if changed:
            last_status = (status, url, ahead)
            yield event("status", {"status": status, "reason": reason, "url": url, "waiting_behind": ahead})
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


def watch(ctx, app_ids: list[int], payload: Callable[[Session], dict] | None = None, *, new_apps: bool = False):
    """`state` at once and on every change of `queries.fingerprint`: `{"state": ...}` plus, for
    API clients, `payload` (the document the page's JSON endpoint returns)."""
    last = None

    def tick(held: bool) -> list[str]:
        nonlocal last
        with ctx.db.session() as session:
            now = queries.fingerprint(session, app_ids, new_apps=new_apps)
            if now == last:
                return []
            last = now
            return [event("state", {"state": now, **(payload(session) if payload else {})})]

    return paced(tick)


def paced(tick: Callable[[bool], list[str]]):
    """Send what `tick` finds new every WATCH_SECONDS, for up to STREAM_SECONDS, while one of
    HELD_STREAMS places is free; without a free place, answer once and have the client come
    back after SHORT_RETRY_MS. An open stream holds a server thread (the web server has a few per
    process): the webhook and the pages must always find one free."""
    held = _held.acquire(blocking=False)
    try:
        yield f"retry: {2000 if held else SHORT_RETRY_MS}\n\n"
        started = quiet_since = time.monotonic()
        while True:
            fresh = tick(held)
            yield from fresh
            if not held:
                return
            now = time.monotonic()
            if fresh:
                quiet_since = now
            if now - started > STREAM_SECONDS:
                return
            if now - quiet_since > HEARTBEAT_SECONDS:
                quiet_since = now
                yield ": still here\n\n"
            time.sleep(WATCH_SECONDS)
    finally:
        if held:
            _held.release()
