"""Decide whether a freshly started container is ready to receive traffic.

A deployment only switches the phase URL to a new container once this says yes; the
attempts it records are shown to whoever has to find out why a deployment failed.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from app.adapters import http

_KEPT_RESPONSES = 10
#: How often a wait that has not succeeded yet says where it stands (see `wait_healthy`).
PROGRESS_SECONDS = 2.0


@dataclass(frozen=True)
class HealthResult:
    ok: bool
    attempts: int
    responses: list[str]
    reason: str


#: The first pause between health attempts (then doubling up to the interval).
FIRST_PAUSE = 0.02


def wait_healthy(
    url: str,
    *,
    timeout: float = 30,
    interval: float = 0.2,
    request_timeout: float = 2,
    is_alive: Callable[[], bool] | None = None,
    progress: Callable[[str], None] | None = None,
    progress_every: float = PROGRESS_SECONDS,
) -> HealthResult:
    """GET `url` until it answers 2xx/3xx (redirects are not followed) or `timeout` s pass.

    The pause between attempts starts at FIRST_PAUSE and doubles up to `interval`: most apps
    answer within a few tens of milliseconds of their start, and a promotion waits on this.

    `is_alive`, when given, is asked after each failed attempt; once it says False the wait
    ends at once instead of running out the clock on a container that has exited.
    `progress`, when given, is told every `progress_every` s of a wait that has not passed yet
    where it stands, so a log watched during a failing health wait is never silent.
    """
    begun = time.monotonic()
    deadline = begun + timeout
    next_progress = begun + progress_every
    path = urlsplit(url).path or "/"
    responses: deque[str] = deque(maxlen=_KEPT_RESPONSES)
    attempts, pause = 0, min(FIRST_PAUSE, interval)
    with http.prober() as probe:  # straight to the container, never via a proxy
        while True:
            attempts += 1
            remaining = deadline - time.monotonic()
            probe_timeout = max(0.05, min(request_timeout, remaining))
            answer = probe.get(url, timeout=probe_timeout)
            healthy = answer.healthy
            # A probe the deadline cut short that heard nothing says nothing about the app: the
            # answer before it stays the evidence ("404 Not Found", not "no answer within 0.05s").
            if healthy or not (answer.timed_out and probe_timeout < request_timeout and responses):
                responses.append(answer.words)
            description = responses[-1]
            if healthy:
                reason = f"healthy: {description} on {path} after {attempts} attempt(s)"
                return HealthResult(True, attempts, list(responses), reason)
            if is_alive is not None and not is_alive():
                reason = f"container exited: last check {description} on {path}"
                return HealthResult(False, attempts, list(responses), reason)
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                reason = f"health check failed: {description} on {path} after {timeout:g}s"
                return HealthResult(False, attempts, list(responses), reason)
            if progress is not None and now >= next_progress:
                next_progress = now + progress_every
                progress(waiting_line(path, now - begun, timeout, description))
            time.sleep(min(pause, remaining))
            pause = min(interval, pause * 2)


def waiting_line(path: str, waited: float, timeout: float, last: str) -> str:
    """One progress line of a health wait, as the deployment log shows it."""
    return f"waiting for {path}: {int(waited)} s of {timeout:g}, last answer: {last}"
