"""Outbound HTTP for notification targets: one POST, its answer or why there was none.

Translated once into an `Answer`, so the notify job never handles requests' exceptions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import requests

#: Seconds to open the connection; the target's `timeout` bounds the whole attempt.
CONNECT_TIMEOUT = 3.0


@dataclass(frozen=True)
class Answer:
    outcome: str  # delivered | http_error | timeout | unreachable (not_sent: the notify job did not try)
    status_code: int | None
    error: str
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.outcome == "delivered"


def post(url: str, body: bytes, headers: dict[str, str], *, timeout: float) -> Answer:
    """POST `body`; never follows redirects (a 3xx is the target's answer, not a new URL)."""
    started = time.monotonic()

    def took() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        with requests.post(url, data=body, headers=headers, timeout=(min(CONNECT_TIMEOUT, timeout), timeout),
                           allow_redirects=False, stream=True) as response:
            code = response.status_code
    except requests.Timeout:
        return Answer("timeout", None, f"no answer within {timeout:g} s", took())
    except requests.RequestException as exc:
        return Answer("unreachable", None, _reason(exc), took())
    if 200 <= code < 300:
        return Answer("delivered", code, "", took())
    return Answer("http_error", code, f"answered HTTP {code}", took())


def _reason(exc: requests.RequestException) -> str:
    """The cause without the URL (a Slack webhook URL is a secret)."""
    cause = exc
    while cause.__context__ is not None and cause.__context__ is not cause:
        cause = cause.__context__
    return f"{type(exc).__name__}: {type(cause).__name__}"[:300]
