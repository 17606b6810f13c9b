"""One deploy lock per app and phase in Redis: with an owner, an expiry, always released.

A heartbeat keeps the lock while the deploy runs; a SIGKILLed worker stops beating and the
lock expires by itself, so a phase is never stuck.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from redis import Redis
from redis.lock import Lock

from app.exceptions import LockHeld


def _name(app: str, phase: str) -> str:
    return f"rp:lock:deploy:{app}:{phase}"


def holder(redis: Redis, app: str, phase: str) -> str | None:
    value = redis.get(_name(app, phase) + ":owner")
    return value.decode() if value else None


def is_held(redis: Redis, app: str, phase: str) -> bool:
    return bool(redis.exists(_name(app, phase)))


def take(redis: Redis, app: str, phase: str, owner: str, *, expires: float, wait: float = 0) -> Lock | None:
    """The lock, without a heartbeat: it lapses after `expires` seconds unless renewed (what a
    worker that died leaves behind). None when another holder kept it for `wait` seconds."""
    lock = Lock(redis, _name(app, phase), timeout=expires, blocking_timeout=wait, thread_local=False)
    if not lock.acquire():
        return None
    redis.set(_name(app, phase) + ":owner", owner, px=int(expires * 1000))
    return lock


@contextmanager
def deploy_lock(redis: Redis, app: str, phase: str, owner: str, *, expires: float = 60,
                wait: float = 1800) -> Iterator[None]:
    name = _name(app, phase)
    lock = take(redis, app, phase, owner, expires=expires, wait=wait)
    if lock is None:
        raise LockHeld(f"{app}/{phase} is being deployed by {holder(redis, app, phase) or 'another worker'}")
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(expires / 3):
            try:
                lock.reacquire()
                redis.pexpire(name + ":owner", int(expires * 1000))
            except Exception:
                return

    heartbeat = threading.Thread(target=beat, daemon=True, name=f"lock-{app}-{phase}")
    heartbeat.start()
    try:
        yield
    finally:
        stop.set()
        heartbeat.join(timeout=5)
        redis.delete(name + ":owner")
        try:
            lock.release()
        except Exception:
            pass  # expired meanwhile: nothing left to release
