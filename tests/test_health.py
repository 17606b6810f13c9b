"""Health checks against real HTTP servers: what counts as healthy, and how failures are told."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app.adapters.docker import ContainerSpec
from app.health import waiting_line, wait_healthy
from tests.support.dockerkit import (
    APP_PORT,
    container_status,
    context_tar,
    free_port,
    write_sample_app,
)


class Scripted:
    """An HTTP server answering each GET as its attributes say at that moment."""

    def __init__(
        self, port: int = 0, status: int = 200, delay: float = 0, location: str | None = None
    ):
        self.status, self.delay, self.location = status, delay, location
        #: How many first requests are answered at once, whatever `delay` says.
        self.quick_answers = 0
        self.requests = 0
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                scripted.requests += 1
                if scripted.requests > scripted.quick_answers:
                    time.sleep(scripted.delay)
                self.send_response(scripted.status)
                if scripted.location:
                    self.send_header("Location", scripted.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/healthz"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    server = Scripted()
    yield server
    server.close()


def test_healthy_at_once(scripted):
    result = wait_healthy(scripted.url, timeout=2)
    assert result.ok and result.attempts == 1
    assert result.responses == ["200 OK"]


def test_a_redirect_is_healthy_and_not_followed(scripted):
    scripted.status, scripted.location = 302, f"http://127.0.0.1:{free_port()}/nowhere"
    result = wait_healthy(scripted.url, timeout=2)
    assert result.ok and result.responses == ["302 Found"]


def test_waits_for_a_server_that_starts_late():
    port = free_port()
    started: list[Scripted] = []
    timer = threading.Timer(0.5, lambda: started.append(Scripted(port)))
    timer.start()
    try:
        result = wait_healthy(f"http://127.0.0.1:{port}/healthz", timeout=5, interval=0.05)
    finally:
        timer.join()
        for server in started:
            server.close()
    assert result.ok and result.attempts > 1
    assert result.responses[0] == "connection refused" and result.responses[-1] == "200 OK"


def test_failure_names_status_path_and_time(scripted):
    scripted.status = 503
    started = time.monotonic()
    result = wait_healthy(scripted.url, timeout=0.6, interval=0.05)
    assert not result.ok
    assert time.monotonic() - started >= 0.6  # waited the whole timeout
    assert result.reason == "health check failed: 503 Service Unavailable on /healthz after 0.6s"
    assert result.attempts > 1 and len(result.responses) <= 10
    assert set(result.responses) == {"503 Service Unavailable"}


def test_keeps_only_the_last_ten_responses(scripted):
    scripted.status = 500
    result = wait_healthy(scripted.url, timeout=1, interval=0.01)
    assert result.attempts > 10 and len(result.responses) == 10


def test_a_slow_answer_counts_as_no_answer(scripted):
    scripted.delay = 0.5
    result = wait_healthy(scripted.url, timeout=0.4, request_timeout=0.2, interval=0.05)
    assert not result.ok
    assert result.responses[0] == "no answer within 0.2s"


def test_a_last_probe_cut_short_by_the_deadline_keeps_the_real_answer_as_evidence(scripted):
    scripted.status, scripted.quick_answers, scripted.delay = 404, 1, 2
    result = wait_healthy(scripted.url, timeout=0.6, request_timeout=2, interval=0.05)
    assert not result.ok and scripted.requests >= 2  # the second probe ran into the deadline
    assert result.reason == "health check failed: 404 Not Found on /healthz after 0.6s"
    assert result.responses == ["404 Not Found"]


def test_stops_early_when_the_container_has_exited():
    result = wait_healthy(
        f"http://127.0.0.1:{free_port()}/healthz", timeout=30, is_alive=lambda: False
    )
    assert not result.ok and result.attempts == 1  # stopped after one try, not after 30 s of them
    assert result.reason.startswith("container exited")


def test_a_long_wait_says_where_it_stands():
    """Progress lines while the check keeps failing: time waited, the timeout, the last answer."""
    told: list[str] = []
    result = wait_healthy(f"http://127.0.0.1:{free_port()}/healthz", timeout=1, interval=0.05,
                          progress=told.append, progress_every=0.3)
    assert not result.ok
    assert told, "a failing wait said nothing"
    for line in told:
        assert re.fullmatch(r"waiting for /healthz: \d+ s of 1, last answer: connection refused", line), line


def test_a_quick_success_says_no_progress(scripted):
    told: list[str] = []
    assert wait_healthy(scripted.url, timeout=2, progress=told.append, progress_every=0.3).ok
    assert told == []


def test_the_progress_line_reads_as_in_the_issue():
    assert waiting_line("/healthz", 12.7, 30, "connection refused") == \
        "waiting for /healthz: 12 s of 30, last answer: connection refused"


@pytest.mark.docker
@pytest.mark.parametrize("healthy", [True, False])
def test_the_sample_app_container(docker_engine, tmp_path, healthy):
    context = context_tar(write_sample_app(tmp_path, healthy=healthy))
    image = docker_engine.build_image(
        app="health",
        tree=("1" if healthy else "0") * 40,
        sha="2" * 40,
        context_tar=context,
        on_line=lambda line: None,
    )
    running = docker_engine.run_container(
        ContainerSpec(
            app="health",
            phase="demo",
            version="1.0.0",
            sha="2" * 40,
            deployment_id=int(healthy),
            image=image,
            env={},
            port=APP_PORT,
            memory="64m",
            cpus=0.5,
        )
    )
    try:
        result = wait_healthy(
            f"http://127.0.0.1:{running.host_port}/healthz",
            # Long enough for a busy machine to start the container and answer once.
            timeout=10,
            interval=0.05,
            is_alive=lambda: container_status(docker_engine, running.id) == "running",
        )
    finally:
        docker_engine.stop_and_remove(running.id, timeout=2)
    assert result.ok is healthy
    if not healthy:
        assert result.reason == "health check failed: 404 Not Found on /healthz after 10s"
