"""The intake's inbox: a Redis stream of signed deliveries, deduplicated by delivery id.

The webhook request only appends (one round trip: a Lua script sets the delivery's seen key
and adds the stream entry only if that key was new) and answers 202. `release-pipeline intake`
(workers/intake.py) reads the stream in order through a consumer group and acknowledges an
entry only after it is recorded in the database, so an entry read by a drainer that died, or
while the database was down, is read again; nothing accepted is lost. The database's delivery
table stays the lasting dedup (a seen key expires after SEEN_TTL).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import ResponseError

from app.metrics import process_alive

#: How long Redis remembers a delivery id; later redeliveries meet the database's record.
SEEN_TTL = 3 * 24 * 3600
#: A drainer holds the inbox (one at a time, for order) while it renews this lease.
LEASE_SECONDS = 15
GROUP = "drainer"
CONSUMER = "drainer"

# SET NX and XADD in one script: a delivery id is appended once, however many requests race.
_APPEND = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[4]) then
  return redis.call('XADD', KEYS[1], '*', 'delivery', ARGV[1], 'event', ARGV[2], 'body', ARGV[3])
end
return false
"""


@dataclass(frozen=True)
class Entry:
    """One delivery as the request appended it."""

    entry_id: str
    delivery_id: str
    event: str
    body: bytes


class Inbox:
    def __init__(self, redis: Redis, instance: str):
        self.redis = redis
        self.stream = f"rp:{instance}:inbox"
        self.lease_key = f"rp:{instance}:inbox:drainer"
        self.failed = f"rp:{instance}:inbox:failed"
        self._seen_prefix = f"rp:{instance}:inbox:seen:"
        self._append = redis.register_script(_APPEND)
        self.holder = f"{socket.gethostname()}:{os.getpid()}"

    def append(self, delivery_id: str, event: str, body: bytes) -> bool:
        """True if the delivery is new (appended), False if its id was seen. Raises RedisError."""
        added = self._append(keys=[self.stream, self._seen_prefix + delivery_id],
                             args=[delivery_id, event, body, SEEN_TTL])
        return added is not None

    # -- the drainer's side --

    def ensure_group(self) -> None:
        """The consumer group, reading from the stream's start (entries appended before any
        drainer ever ran are drained too)."""
        try:
            self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def take_lease(self) -> bool:
        """Hold the inbox for LEASE_SECONDS more; False while another drainer holds it. A
        lease left by a dead drainer of this host is taken at once (`up` restarting one)."""
        if self.redis.set(self.lease_key, self.holder, nx=True, ex=LEASE_SECONDS):
            return True
        holder = self.drainer() or ""
        if holder == self.holder:
            self.redis.expire(self.lease_key, LEASE_SECONDS)
            return True
        host, _, pid = holder.rpartition(":")
        if host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid)):
            self.redis.delete(self.lease_key)
            return bool(self.redis.set(self.lease_key, self.holder, nx=True, ex=LEASE_SECONDS))
        return False

    def release_lease(self) -> None:
        if (self.redis.get(self.lease_key) or b"").decode() == self.holder:
            self.redis.delete(self.lease_key)

    def read(self, count: int = 100, block_ms: int | None = None) -> list[Entry]:
        """Entries read before and not yet acknowledged first (a drainer died, the database was
        down), then new ones, waiting up to `block_ms` for one."""
        entries = self._read("0", count, None)
        return entries or self._read(">", count, block_ms)

    def _read(self, start: str, count: int, block_ms: int | None) -> list[Entry]:
        try:
            answer = self.redis.xreadgroup(GROUP, CONSUMER, {self.stream: start}, count=count, block=block_ms)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.ensure_group()  # Redis came back empty (restarted without persistence)
            return []
        entries = []
        for _, messages in answer or []:
            for entry_id, fields in messages:
                entry_id = entry_id.decode()
                if not fields:  # deleted while pending: nothing left to record
                    self.finish([entry_id])
                    continue
                entries.append(Entry(entry_id, fields[b"delivery"].decode(), fields[b"event"].decode(),
                                     fields[b"body"]))
        return entries

    def finish(self, done: Sequence[str] = (), aside: Sequence[tuple[Entry, str]] = ()) -> None:
        """A batch handled, in one transaction: the `done` entries (recorded) acknowledged and
        deleted; the `aside` ones (they cannot be recorded at all: a bug) moved to the failed
        stream with their error, out of the way of the deliveries behind them."""
        pipe = self.redis.pipeline()
        for entry, error in aside:
            pipe.xadd(self.failed, {"delivery": entry.delivery_id, "event": entry.event, "body": entry.body,
                                    "error": error[:500]})
        ids = [*done, *(entry.entry_id for entry, _ in aside)]
        if ids:
            pipe.xack(self.stream, GROUP, *ids)
            pipe.xdel(self.stream, *ids)
            pipe.execute()

    def set_aside_count(self) -> int:
        return self.redis.xlen(self.failed)

    def waiting(self) -> int:
        """Entries not yet recorded (new and pending)."""
        return self.redis.xlen(self.stream)

    def drainer(self) -> str | None:
        """Who holds the inbox now (host:pid), if anyone."""
        holder = self.redis.get(self.lease_key)
        return holder.decode() if holder else None

