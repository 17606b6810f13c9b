"""HTTP to a Release Pipeline installation's API (`app.client` re-exports it): requests in,
dicts and errors out.

Every failure becomes a ClientError whose message is fit to print: the server's own reason
for a refusal (`{"error", "reason"}` bodies), or what went wrong reaching it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests

TIMEOUT_SECONDS = 30
#: A live log stream may be quiet for a while: the server sends a heartbeat every 15 s.
STREAM_READ_SECONDS = 60
#: A dropped stream is resumed after its last event this many times in a row before giving up.
STREAM_RETRIES = 5


class ClientError(Exception):
    """Something the user must be told; exits the command with status 1."""


class ConnectionFailed(ClientError):
    pass


class ApiError(ClientError):
    def __init__(self, status: int, error: str, reason: str):
        self.status, self.error, self.reason = status, error, reason
        super().__init__(f"refused ({status} {error}): {reason}")


@dataclass(frozen=True)
class Event:
    """One server-sent event of a deployment's live log."""

    kind: str
    data: dict[str, Any]
    #: As the server sent it: a log line's number, or a runtime log's unix time.
    id: str | None = None


def path(*parts: str | int) -> str:
    """An API path from parts, each quoted (an app or phase name never changes the path)."""
    return "/api/v1/" + "/".join(quote(str(part), safe="") for part in parts)


class Client:
    def __init__(self, url: str, token: str, *, session: requests.Session | None = None):
        self.url = url.rstrip("/")
        self.token = token
        self.http = session or requests.Session()
        self.http.headers.update({"Authorization": f"Bearer {token}", "Accept": "application/json",
                                  "User-Agent": "release-pipeline-cli"})

    def portal_link(self, app: str, deployment_id: int) -> str:
        return f"{self.url}/apps/{quote(app, safe='')}/deployments/{deployment_id}"

    # -- plain requests ----------------------------------------------------------------------

    def request(self, method: str, api_path: str, *, body: dict | None = None,
                params: dict | None = None) -> tuple[int, Any]:
        try:
            response = self.http.request(method, self.url + api_path, json=body, params=params,
                                         timeout=TIMEOUT_SECONDS)
        except requests.RequestException as exc:
            raise ConnectionFailed(f"cannot reach Release Pipeline at {self.url}: {_reason(exc)}") from None
        return response.status_code, self._json(response)

    def get(self, api_path: str, **params: Any) -> Any:
        return self.request("GET", api_path, params={k: v for k, v in params.items() if v is not None})[1]

    def post(self, api_path: str, body: dict | None = None) -> Any:
        return self.request("POST", api_path, body=body or {})[1]

    def delete(self, api_path: str, body: dict | None = None) -> Any:
        return self.request("DELETE", api_path, body=body or {})[1]

    def _json(self, response: requests.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.ok and body is not None:
            return body
        if isinstance(body, dict) and "reason" in body:
            raise ApiError(response.status_code, str(body.get("error", "error")), str(body["reason"]))
        if response.ok:
            raise ClientError(f"{self.url} answered {response.status_code} without JSON: is it Release Pipeline?")
        raise ApiError(response.status_code, response.reason or "error",
                       f"{self.url} answered without a reason (is it Release Pipeline?)")

    # -- the live log --------------------------------------------------------------------------

    def events(self, deployment_id: int, after: int = 0) -> Iterator[Event]:
        """A deployment's live log until its `done` event, resuming dropped streams."""
        for event in self._stream(path("deployments", deployment_id, "events"), str(after)):
            yield event
            if event.kind == "done":
                return

    def tail(self, app: str, phase: str, since: float | None = None) -> Iterator[Event]:
        """A phase's running containers' output after `since` (unix time; None: from now) as it
        comes (`line` events), for as long as asked."""
        return self._stream(path("apps", app, "phases", phase, "logs", "events"),
                            repr(since) if since is not None else None)

    def _stream(self, api_path: str, last: str | None) -> Iterator[Event]:
        """Server-sent events from `api_path`, asking again from the last event id when a stream
        ends (the server ends each after a minute) or drops."""
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last} if last else {})}
            try:
                with self.http.get(self.url + api_path, headers=headers, stream=True,
                                   timeout=(TIMEOUT_SECONDS, STREAM_READ_SECONDS)) as response:
                    if not response.ok:
                        self._json(response)
                    for event in parse_events(response.iter_lines(decode_unicode=True)):
                        failures = 0
                        if event.id is not None:
                            last = event.id
                        yield event
            except requests.RequestException as exc:
                failures += 1
                if failures > STREAM_RETRIES:
                    raise ConnectionFailed(f"lost the event stream from {self.url}: {_reason(exc)}") from None
                time.sleep(min(2 ** failures, 10) / 4)


def parse_events(lines: Iterator[str]) -> Iterator[Event]:
    """Server-sent events (the subset our server sends: id, event, one data line of JSON)."""
    fields: dict[str, str] = {}
    for line in lines:
        if line:
            if not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value
            continue
        if "event" in fields and "data" in fields:
            try:
                data = json.loads(fields["data"])
            except ValueError:
                data = {}
            yield Event(fields["event"], data if isinstance(data, dict) else {}, fields.get("id") or None)
        fields = {}


def _reason(exc: requests.RequestException) -> str:
    """The cause in a few words, without the pool and object reprs requests wraps around it."""
    if isinstance(exc, requests.Timeout):
        return "no answer in time"
    match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc))
    if match:
        return match.group(1).strip()
    if isinstance(exc, requests.ConnectionError):
        return "the connection failed"
    return str(exc)[:200]
