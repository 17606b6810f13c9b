"""Plain HTTP for the pipeline's own probes: a container's health check, `doctor`'s checks of
the web server and the router, `simulate`'s signed deliveries. Failures come back as words
(`connection refused`, `no answer within 2s`), never as requests' exceptions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import requests


@dataclass(frozen=True)
class Answer:
    """What came back: the status (None when nothing did) and words for it."""

    status: int | None
    words: str
    body: bytes = b""
    #: Nothing came back within the timeout (not refused, not closed).
    timed_out: bool = False

    @property
    def healthy(self) -> bool:
        """2xx or 3xx: what a health check counts as ready."""
        return self.status is not None and 200 <= self.status < 400


class Prober:
    """GETs on one connection pool that bypasses any proxy (a probe goes straight to its target)."""

    def __init__(self, session: requests.Session):
        self._session = session

    def get(self, url: str, *, timeout: float) -> Answer:
        """One GET, redirects not followed, the body not read."""
        try:
            with self._session.get(url, timeout=timeout, allow_redirects=False, stream=True) as response:
                return Answer(response.status_code, f"{response.status_code} {response.reason}".strip())
        except requests.RequestException as exc:
            return Answer(None, _failure(exc, timeout), timed_out=isinstance(exc, requests.Timeout))

    def post(self, url: str, body: bytes, headers: dict[str, str], *, timeout: float) -> Answer:
        try:
            response = self._session.post(url, data=body, headers=headers, timeout=timeout)
        except requests.RequestException as exc:
            return Answer(None, _failure(exc, timeout))
        return Answer(response.status_code, f"{response.status_code} {response.reason}".strip(), response.content)


@contextmanager
def prober(*, via_proxy: bool = False) -> Iterator[Prober]:
    """A health probe never goes through a proxy; `via_proxy`: the environment's proxy settings
    apply (a check of PUBLIC_URL, a delivery to another host)."""
    with requests.Session() as session:
        session.trust_env = via_proxy
        yield Prober(session)


def get(url: str, *, timeout: float, via_proxy: bool = False) -> Answer:
    with prober(via_proxy=via_proxy) as probe:
        return probe.get(url, timeout=timeout)


def post(url: str, body: bytes, headers: dict[str, str], *, timeout: float, via_proxy: bool = False) -> Answer:
    with prober(via_proxy=via_proxy) as probe:
        return probe.post(url, body, headers, timeout=timeout)


def _failure(exc: requests.RequestException, timeout: float) -> str:
    if isinstance(exc, requests.Timeout):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, requests.ConnectionError):
        text = str(exc).lower()
        if "refused" in text:
            return "connection refused"
        if "reset" in text or "aborted" in text or "closed" in text:
            return "connection closed"
        return "connection failed"
    return type(exc).__name__
