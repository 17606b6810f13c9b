"""Phase URLs through a real, private Caddy: routes, atomic switches, and the no-proxy fallback."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from app.adapters.router import CaddyRouter, DirectRouter, Router
from app.exceptions import RouterError
from tests.support.dockerkit import (
    caddy_server,  # noqa: F401 (fixture)
    free_port,
    unique_instance,
)


@pytest.fixture
def router(caddy_server) -> CaddyRouter:  # noqa: F811
    """A router with its own server (own port, own instance) in the shared Caddy."""
    caddy_router = CaddyRouter(caddy_server.admin_url, free_port(), instance=unique_instance())
    caddy_router.ensure_server()
    return caddy_router


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, str]]:
    """Two plain HTTP servers answering "blue" and "green": body -> "127.0.0.1:PORT"."""
    servers = {body: _serve(body) for body in ("blue", "green")}
    yield {body: f"127.0.0.1:{server.server_port}" for body, server in servers.items()}
    for server in servers.values():
        server.shutdown()
        server.server_close()


def test_switch_serves_the_new_upstream_on_the_phase_url(router, upstreams):
    url = router.url_for("shop", "demo")
    assert url == f"http://shop-demo.localhost:{router.listen_port}"
    router.switch("shop", "demo", upstreams["blue"])
    assert _get(url).text == "blue"
    router.switch("shop", "demo", upstreams["green"])
    assert _get(url).text == "green"
    router.switch("shop", "live", upstreams["blue"])
    assert _get(router.url_for("shop", "live")).text == "blue"
    assert router.routes() == {
        ("shop", "demo"): upstreams["green"],
        ("shop", "live"): upstreams["blue"],
    }


def test_hyphenated_names_get_distinct_routes(router, upstreams):
    router.switch("a-b", "c", upstreams["blue"])
    router.switch("a", "b-c", upstreams["green"])
    assert router.routes() == {("a-b", "c"): upstreams["blue"], ("a", "b-c"): upstreams["green"]}


def test_requests_during_repeated_switches_never_fail(router, upstreams):
    """Back-to-back switches under load: every request is answered by one of the upstreams.

    Caddy applies each switch by a graceful config reload. On Linux that rebinds the listener
    (SO_REUSEPORT) and closes idle keep-alive connections, so a request racing either can be
    reset before it is read; HTTP clients retry such idempotent requests (browsers do), and
    so do these. A gap in service would show up as a 502 or as retries running out.
    """
    router.switch("busy", "live", upstreams["blue"])
    url = router.url_for("busy", "live")
    bodies: list[str] = []
    errors: list[str] = []
    done = threading.Event()

    def hammer(keep_alive: bool) -> None:
        with _retrying_session(keep_alive) as session:
            while not done.is_set():
                try:
                    response = _get(url, session)
                    if response.status_code != 200:
                        errors.append(f"{response.status_code} {response.text[:80]}")
                    bodies.append(response.text)
                except requests.RequestException as exc:
                    errors.append(repr(exc))

    clients = [threading.Thread(target=hammer, args=(keep_alive,)) for keep_alive in (True, False)]
    for client in clients:
        client.start()
    try:
        for switch in range(20):
            target = "green" if switch % 2 == 0 else "blue"
            served_before = len(bodies)
            router.switch("busy", "live", upstreams[target])
            # The clients must have been answered by the new upstream before the next switch.
            _wait_until(lambda t=target, n=served_before: t in bodies[n:], timeout=5)
    finally:
        done.set()
        for client in clients:
            client.join()
    assert errors == []
    assert len(bodies) >= 20


def test_remove_is_idempotent(router, upstreams):
    router.switch("gone", "stage", upstreams["blue"])
    router.remove("gone", "stage")
    router.remove("gone", "stage")
    assert ("gone", "stage") not in router.routes()
    assert _get(router.url_for("gone", "stage")).text != "blue"


def test_ensure_server_merges_and_keeps_existing_config(caddy_server, upstreams):  # noqa: F811
    other_port = free_port()
    admin = caddy_server.admin_url
    other = {
        "listen": [f":{other_port}"],
        "automatic_https": {"disable": True},
        "routes": [{"handle": [{"handler": "static_response", "body": "someone else"}]}],
    }
    name = f"other-{unique_instance()}"
    requests.put(
        f"{admin}/config/apps/http/servers/{name}", json=other, timeout=5
    ).raise_for_status()

    first = CaddyRouter(admin, caddy_server.http_port, instance=unique_instance())
    first.ensure_server()
    first.switch("keep", "demo", upstreams["blue"])
    first.ensure_server()
    assert first.routes() == {("keep", "demo"): upstreams["blue"]}

    second_port = free_port()
    second = CaddyRouter(admin, second_port, instance=unique_instance())
    second.ensure_server()
    second.switch("keep", "demo", upstreams["green"])
    assert _get(second.url_for("keep", "demo")).text == "green"
    assert _get(first.url_for("keep", "demo")).text == "blue"
    assert _get(f"http://127.0.0.1:{other_port}/").text == "someone else"
    assert first.routes() == {("keep", "demo"): upstreams["blue"]}


def test_switch_installs_a_missing_server(caddy_server, upstreams):  # noqa: F811
    """As after a Caddy restart that lost the configuration: the first switch repairs it."""
    fresh = CaddyRouter(caddy_server.admin_url, free_port(), instance=unique_instance())
    assert fresh.routes() == {}
    fresh.switch("shop", "demo", upstreams["blue"])
    assert _get(fresh.url_for("shop", "demo")).text == "blue"


def test_new_routes_go_before_a_catch_all(router, upstreams, caddy_server):  # noqa: F811
    fallback = {"handle": [{"handler": "static_response", "body": "fallback"}]}
    requests.post(
        f"{caddy_server.admin_url}/config/apps/http/servers/{router.server_name}/routes",
        json=fallback,
        timeout=5,
    ).raise_for_status()
    router.switch("late", "demo", upstreams["green"])
    assert _get(router.url_for("late", "demo")).text == "green"
    assert _get(router.url_for("unrouted", "demo")).text == "fallback"


def test_refuses_unsafe_names_and_upstreams(router):
    for app, phase in (
        ("Shop", "demo"),
        ("shop", "demo.evil"),
        ("-x", "demo"),
        ("a/b", "demo"),
        ("", "demo"),
    ):
        with pytest.raises(RouterError, match="slug"):
            router.switch(app, phase, "127.0.0.1:8080")
    for upstream in ("127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999", "http://x:80", "a b:80"):
        with pytest.raises(RouterError, match="upstream"):
            router.switch("shop", "demo", upstream)


def test_port_clash_is_a_readable_router_error(router, caddy_server):  # noqa: F811
    clash = CaddyRouter(caddy_server.admin_url, router.listen_port, instance=unique_instance())
    with pytest.raises(RouterError, match="Caddy refused") as failure:
        clash.ensure_server()
    assert "Traceback" not in str(failure.value)


def test_unreachable_caddy():
    router = CaddyRouter(f"http://127.0.0.1:{free_port()}", free_port())
    assert router.ping() is False
    with pytest.raises(RouterError, match="unreachable"):
        router.switch("shop", "demo", "127.0.0.1:8080")


def test_direct_router_records_the_latest_upstream():
    router = DirectRouter()
    assert isinstance(router, Router) and router.ping()
    router.ensure_server()
    with pytest.raises(RouterError):
        router.url_for("shop", "demo")
    router.switch("shop", "demo", "127.0.0.1:41001")
    router.switch("shop", "demo", "127.0.0.1:41002")
    assert router.url_for("shop", "demo") == "http://127.0.0.1:41002"
    assert router.routes() == {("shop", "demo"): "127.0.0.1:41002"}
    router.remove("shop", "demo")
    router.remove("shop", "demo")
    assert router.routes() == {}
    with pytest.raises(RouterError):
        router.switch("shop", "Demo", "127.0.0.1:41001")


def test_caddy_router_is_a_router(router):
    assert isinstance(router, Router) and router.ping()


def _retrying_session(keep_alive: bool) -> requests.Session:
    """A client that, like a browser, retries a GET whose connection was reset before any answer."""
    session = requests.Session()
    retry = Retry(
        total=3,
        connect=3,
        read=3,
        status=0,
        other=0,
        backoff_factor=0,
        allowed_methods={"GET"},
        raise_on_status=False,
    )
    session.mount("http://", HTTPAdapter(max_retries=retry))
    if not keep_alive:
        session.headers["Connection"] = "close"
    return session


def _wait_until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def _get(url: str, session=requests) -> requests.Response:
    """GET a phase URL: connect to 127.0.0.1 and name the host, as *.localhost may not resolve."""
    host = url.split("//", 1)[1].split("/", 1)[0]
    port = host.rsplit(":", 1)[1]
    return session.get(f"http://127.0.0.1:{port}/", headers={"Host": host}, timeout=5)


def _serve(body: str) -> ThreadingHTTPServer:
    payload = body.encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
