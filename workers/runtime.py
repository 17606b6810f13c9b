"""The worker's Context, built from the environment once per process.

RQ forks a work horse per job; a Context (database pool, Redis and Docker clients) built
in the parent must not be shared with the child, so it is rebuilt when the pid changes.
"""

from __future__ import annotations

import os

from app.context import Context

_cached: tuple[int, Context] | None = None


def context() -> Context:
    global _cached
    if _cached is None or _cached[0] != os.getpid():
        _cached = (os.getpid(), Context.from_settings())
    return _cached[1]


def reset() -> None:
    """Forget the cached Context (tests change the environment between runs)."""
    global _cached
    _cached = None
