"""A real local HTTP server standing in for a team's notification endpoint.

It records every request (headers and exact body bytes) and answers from a script: a list
of status codes used in turn (the last one repeats), or `hang=True` to accept connections
and never answer (a dead target that still takes the TCP connection).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple

import pytest


class Received(NamedTuple):
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict:
        return json.loads(self.body)


class Receiver:
    def __init__(self, answers: list[int] | None = None, *, hang: bool = False):
        self.answers = list(answers or [200])
        self.hang = hang
        self.received: list[Received] = []
        self.released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.received.append(Received(self.path, dict(self.headers), body))
                if receiver.hang:
                    receiver.released.wait(120)
                    return
                code = receiver.answers.pop(0) if len(receiver.answers) > 1 else receiver.answers[0]
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/release"

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[type[Receiver]]:
    """`receiver([500, 200])` starts one; all are stopped after the test."""
    started: list[Receiver] = []

    def start(answers: list[int] | None = None, *, hang: bool = False) -> Receiver:
        started.append(Receiver(answers, hang=hang))
        return started[-1]

    yield start
    for one in started:
        one.close()
