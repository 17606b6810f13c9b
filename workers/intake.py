"""`release-pipeline intake`: drain the inbox in order — plan each delivery, record it, queue its work.

One drainer holds the inbox at a time (a lease in Redis), so deliveries are recorded in the
order they were accepted; another one started beside it waits as a standby. An entry is
acknowledged only once it is recorded (or found recorded already), so a drainer killed midway
or a database that is down loses nothing: the entry is read again, and the delivery table makes
the repeat a no-op. While the database or the queue is down the drainer waits, backing off.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from redis.exceptions import RedisError

from app import intake
from app.context import Context
from app.exceptions import ReleasePipelineError
from app.inbox import LEASE_SECONDS, Entry
from app.logs import log_context
from app.planner import plan

log = logging.getLogger(__name__)

FIRST_PAUSE = 0.5
MAX_PAUSE = 30.0
#: How long one read waits for a new delivery (the lease is renewed between reads).
BLOCK_MS = 1000


class Unavailable(ReleasePipelineError):
    """The database or the queue is down: the entry stays in the inbox for the next pass."""


def record(ctx: Context, entry: Entry) -> intake.Receipt:
    """Plan and record one delivery (the request checked its signature, headers and JSON)."""
    payload = json.loads(entry.body)
    with log_context(delivery_id=entry.delivery_id):
        decided = plan(entry.event, payload, ctx.config)
        receipt = intake.accept(ctx, entry.delivery_id, entry.event, decided,
                                payload if isinstance(payload, dict) else {})
        log.info("delivery %s %s: %s %s", entry.delivery_id, entry.event, receipt.status,
                 receipt.body.get("reason", ""), extra={"deployment_id": receipt.body.get("deployment")})
    return receipt


def drain(ctx: Context, block_ms: int | None = None) -> list[intake.Receipt]:
    """Record one batch of waiting deliveries, in order; [] when none came within `block_ms`.

    Raises Unavailable at the first delivery that cannot be recorded now; it and those after
    it stay in the inbox. A delivery that breaks the planner or intake is set aside (kept in
    the inbox's failed stream, logged, counted by doctor), so it never blocks the rest."""
    receipts = []
    for entry in ctx.inbox.read(block_ms=block_ms):
        try:
            receipt = record(ctx, entry)
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the deliveries behind it
            log.exception("delivery %s %s could not be recorded; set aside", entry.delivery_id, entry.event)
            ctx.inbox.set_aside(entry, f"{type(exc).__name__}: {exc}")
            continue
        if receipt.status == 503:
            raise Unavailable(f"{receipt.body['error']}: delivery {entry.delivery_id} waits in the inbox")
        ctx.inbox.done(entry.entry_id)
        receipts.append(receipt)
    return receipts


def run(ctx: Context, stopping: Callable[[], bool], sleep: Callable[[float], None] = time.sleep) -> None:
    """Drain until `stopping()`; the caller checked Redis at start."""
    inbox = ctx.inbox
    inbox.ensure_group()
    pause, problem, standby = 0.0, "", False
    while not stopping():
        try:
            if not inbox.take_lease():
                if not standby:
                    log.info("another drainer (%s) holds the inbox; standing by", inbox.drainer())
                standby = True
                sleep(LEASE_SECONDS / 3)
                continue
            if standby:
                log.info("holding the inbox now")
            standby = False
            drain(ctx, block_ms=BLOCK_MS)
            if problem:
                log.info("recording deliveries again")
            pause, problem = 0.0, ""
        except (Unavailable, RedisError) as exc:
            if str(exc) != problem:  # said once per problem, not once per retry
                log.warning("%s; retrying with backoff", exc)
            problem = str(exc)
            pause = min(MAX_PAUSE, max(FIRST_PAUSE, pause * 2))
            sleep(pause)
    try:
        inbox.release_lease()
    except RedisError:
        pass  # it expires on its own
