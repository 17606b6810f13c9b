"""`release-pipeline intake`: drain the inbox in order — plan, record and queue deliveries in batches.

One drainer holds the inbox at a time (a lease in Redis), so deliveries are recorded in the
order they were accepted; another one started beside it waits as a standby. An entry is
acknowledged only once it is recorded (or found recorded already), so a drainer killed midway
or a database that is down loses nothing: the entry is read again, and the delivery table makes
the repeat a no-op. While the database or the queue is down the drainer waits, backing off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from redis.exceptions import RedisError

from app import intake
from app.context import Context
from app.exceptions import ReleasePipelineError
from app.inbox import LEASE_SECONDS
from app.priority import Priority

log = logging.getLogger(__name__)

FIRST_PAUSE = 0.5
MAX_PAUSE = 30.0
#: How long one read waits for a new delivery (the lease is renewed between reads).
BLOCK_MS = 1000
#: Deliveries recorded per transaction: fewer commits, while SQLite's write lock is held for
#: a fraction of a second at most.
BATCH = 50


class Unavailable(ReleasePipelineError):
    """The database or the queue is down: the entries stay in the inbox for the next pass."""


def drain(ctx: Context, block_ms: int | None = None) -> list[intake.Receipt]:
    """Record one batch of waiting deliveries, in order; [] when none came within `block_ms`.

    One transaction and one acknowledgement for the batch. Raises Unavailable at the first
    delivery that cannot be recorded now (the database or the queue is down): it and those
    after it stay in the inbox. A delivery that breaks the planner or intake is set aside (kept
    in the inbox's failed stream, logged, counted by doctor), so it never blocks the rest."""
    entries = ctx.inbox.read(count=BATCH, block_ms=block_ms)
    receipts = intake.accept_many(ctx, entries) if entries else []
    waiting = next((i for i, receipt in enumerate(receipts) if receipt.status == 503), len(receipts))
    handled = list(zip(entries[:waiting], receipts[:waiting]))
    ctx.inbox.finish(done=[entry.entry_id for entry, receipt in handled if receipt.status != 500],
                     aside=[(entry, receipt.body["reason"]) for entry, receipt in handled if receipt.status == 500])
    if waiting < len(receipts):
        raise Unavailable(f"{receipts[waiting].body['error']}: delivery {entries[waiting].delivery_id} "
                          "waits in the inbox")
    return [receipt for _, receipt in handled if receipt.status != 500]


def run(ctx: Context, stopping: Callable[[], bool], sleep: Callable[[float], None] = time.sleep,
        priority: Priority | None = None) -> None:
    """Drain until `stopping()`; the caller checked Redis at start. With `priority`, the
    drainer runs behind the other processes while more than a batch waits (README, Intake)."""
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
            if priority is not None:
                priority.run_behind(inbox.waiting() > BATCH)
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
