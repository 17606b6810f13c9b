"""Phase URLs through a real, private Caddy: one route per phase over two slots, switched to the
slot our health gate passed by one admin-API change, and the no-proxy fallback."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from app.adapters.router import CaddyRouter, DirectRouter, Router, Slots, migration_enabled, routes_to_write
from app.context import Context
from app.exceptions import RouterError
from tests.support.dockerkit import (
    RequestLoop,
    free_port,
    unique_instance,
    wait_until,
)

HEALTH = "/healthz"
MIGRATION_OFF = "net.ipv4.tcp_migrate_req is off: scripts/dev test turns it on (see README, Zero downtime)"


@pytest.fixture
def router(caddy_server) -> CaddyRouter:
    """A router with its own server (own port, own instance) in the shared Caddy."""
    caddy_router = CaddyRouter(caddy_server.admin_url, free_port(), instance=unique_instance())
    caddy_router.ensure_server()
    return caddy_router


class Upstream:
    """A plain HTTP server on a fixed port answering its name; its health check can be failed,
    and it can be stopped and started again on the same port (like a slot's containers)."""

    def __init__(self, name: str, port: int | None = None, healthy: bool = True):
        self.name, self.port, self.healthy = name, port or free_port(), healthy
        self.health_paths = {HEALTH}
        self.served = 0  # requests other than health checks
        self.health_checks = 0
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()

    def start(self) -> Upstream:
        upstream = self
        payload = self.name.encode()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Each answer leaves in one write, as a real server's small answers do: a stop closes
            # a connection before an answer or after it, never between its headers and its body
            # (an answer cut halfway is beyond any proxy's repair: see app.adapters.router).
            wbufsize = 1 << 16

            def setup(self):
                super().setup()
                upstream._connections.add(self.connection)

            def finish(self):
                upstream._connections.discard(self.connection)
                super().finish()

            def do_GET(self):
                if self.path in upstream.health_paths:
                    upstream.health_checks += 1
                    status, body = (200, b"ok") if upstream.healthy else (503, b"sick")
                elif self.path != "/":
                    status, body = 404, b"not found"
                else:
                    upstream.served += 1
                    status, body = 200, payload
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.do_GET()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Like a process exiting: the listener and every open connection are closed."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for connection in list(self._connections):
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def pair() -> Iterator[tuple[Upstream, Upstream]]:
    """Slot A ("blue") and slot B ("green"), both up and healthy."""
    blue, green = Upstream("blue").start(), Upstream("green").start()
    yield blue, green
    blue.stop()
    green.stop()


def slots_of(pair) -> Slots:
    return Slots(pair[0].port, pair[1].port)


def test_the_phase_url_goes_to_the_serving_slot_as_soon_as_it_is_switched(router, pair):
    """No timer: the request right after the switch returns goes to the new slot."""
    blue, green = pair
    slots = slots_of(pair)
    url = router.url_for("shop", "demo")
    assert url == f"http://shop-demo.localhost:{router.listen_port}"
    assert router.ensure_route("shop", "demo", slots, serving=blue.port) is True
    assert _get(url).text == "blue"
    for serving, name in ((green, "green"), (blue, "blue"), (green, "green")):
        assert router.ensure_route("shop", "demo", slots, serving=serving.port) is True
        assert [_get(url).text for _ in range(3)] == [name] * 3
    assert router.routes() == {("shop", "demo"): (green.port, blue.port)}


def test_the_standby_slot_gets_no_request_and_no_health_check(router, pair):
    """Nothing probes a phase at rest: the slot not serving sees no request at all, however
    healthy it is, and the serving one only its clients' requests."""
    blue, green = pair
    router.ensure_route("shop", "demo", slots_of(pair), serving=blue.port)
    url = router.url_for("shop", "demo")
    assert [_get(url).text for _ in range(20)] == ["blue"] * 20
    time.sleep(1)  # long enough for several of Caddy's active checks, had there been any
    assert (blue.served, blue.health_checks, green.served, green.health_checks) == (20, 0, 0, 0)


def test_ensure_route_is_a_no_op_when_nothing_changed(router, pair):
    """Caddy reloads on every change and closes idle connections then: an unchanged route must
    not be written at all, so a client's keep-alive connection survives."""
    router.ensure_route("shop", "demo", slots_of(pair), serving=pair[0].port)
    host = f"shop-demo.localhost:{router.listen_port}"
    connection = http.client.HTTPConnection("127.0.0.1", router.listen_port, timeout=5)
    try:
        for _ in range(3):
            assert router.ensure_route("shop", "demo", slots_of(pair), serving=pair[0].port) is False
            time.sleep(0.2)
            connection.request("GET", "/", headers={"Host": host})
            response = connection.getresponse()
            assert response.read() == b"blue"
    finally:
        connection.close()


def test_following_many_phases_reads_the_router_once_and_writes_only_the_changed_one(router, caddy_server):
    """The swarm follow runs every 2 s over every served phase: one GET of the routes, a write
    only for a phase whose tasks moved; idle phases cost Caddy no request."""
    wanted = {("shop", f"p{i}"): [f"10.0.0.{i % 200 + 1}:30001", "10.0.1.1:30001"] for i in range(120)}
    assert len(router.follow_upstreams(wanted)) == 120
    sent: list[str] = []
    router._session.hooks["response"].append(lambda response, **_: sent.append(response.request.method))
    assert router.follow_upstreams(wanted) == [] and sent == ["GET"]
    sent.clear()
    moved = {**wanted, ("shop", "p7"): ["10.0.1.1:30001", "10.0.1.2:30002"]}
    assert router.follow_upstreams(moved) == [("shop", "p7")] and sent == ["GET", "PATCH"]
    route = requests.get(f"{caddy_server.admin_url}/id/{router.instance}.shop.p7", timeout=5).json()
    assert [u["dial"] for u in route["handle"][0]["upstreams"]] == ["10.0.1.1:30001", "10.0.1.2:30002"]
    sent.clear()
    assert router.follow_upstreams({**moved, ("shop", "new"): ["10.0.2.1:30001"]}) == [("shop", "new")]
    assert sent.count("GET") >= 1 and sent.count("PATCH") == 0 and ("POST" in sent or "PUT" in sent)
    assert router.ensure_upstreams("shop", "new", ["10.0.2.1:30001"]) is False  # the same route follow wrote


def test_a_route_is_written_when_it_differs_or_is_missing():
    held = {("a", "x"): {"@id": "rp.a.x", "n": 1}, ("a", "y"): {"@id": "rp.a.y", "n": 1}}
    wanted = {("a", "y"): {"@id": "rp.a.y", "n": 2}, ("a", "x"): {"@id": "rp.a.x", "n": 1},
              ("a", "z"): {"@id": "rp.a.z", "n": 1}}
    assert routes_to_write(wanted, held) == [("a", "y"), ("a", "z")]
    assert routes_to_write({}, held) == []


def test_switching_under_load_fails_no_request(router, pair):
    """Every switch reloads Caddy; clients that never retry (POSTs with a body and GETs, a new
    connection each) see no error through 40 switches back and forth. (A keep-alive client can:
    the reload closes idle connections, and a request sent on one at that instant is lost.)"""
    assert migration_enabled() is not False, MIGRATION_OFF
    blue, green = pair
    slots = slots_of(pair)
    router.ensure_route("busy", "live", slots, serving=blue.port)
    url = router.url_for("busy", "live")
    with RequestLoop(lambda session: _get(url, session), keep_alive=False) as gets, \
            RequestLoop(lambda session: _post(url, session), keep_alive=False) as posts:
        for turn in range(40):
            router.ensure_route("busy", "live", slots, serving=(green, blue)[turn % 2].port)
            time.sleep(0.05)
    assert (gets.failures, posts.failures) == ([], [])
    assert len(gets.answers) > 20 and len(posts.answers) > 20
    assert {"blue", "green"} <= set(posts.answers)


def test_a_stopped_slot_is_failed_over_without_a_client_error(router, pair):
    """Should the serving slot's container die, a request whose connection cannot be made, or
    breaks before an answer, is tried on the other slot: clients that never retry see no error
    while it stops and starts."""
    blue, green = pair
    router.ensure_route("busy", "live", slots_of(pair), serving=blue.port)
    url = router.url_for("busy", "live")
    wait_until(lambda: _get(url).text == "blue", timeout=3)
    with RequestLoop(lambda session: _get(url, session)) as loop:
        for _ in range(3):
            blue.stop()  # slot A goes away: B takes over
            wait_until(lambda: loop.last == "green", timeout=15)
            blue.start()  # A is back: once its failure expires (fail_duration) it serves again
            wait_until(lambda: loop.last == "blue", timeout=15)
        green.stop()
        time.sleep(0.3)
        green.start()
    assert loop.failures == []
    assert len(loop.answers) > 50


def test_upstreams_that_never_answer_a_connection_are_given_up_on_in_time(router, pair):
    """A node lost without a word leaves upstreams whose connections are neither accepted nor
    refused until the route follows (a task's port forwarding to nowhere). Caddy gives up on
    each after DIAL_TIMEOUT and the request reaches the task that lives: two of them must not
    outlast try_duration and turn into a 502, as with Caddy's 3 s default."""
    blue, _ = pair
    silent, queued = [], []
    try:
        for _ in range(2):  # a listener whose one-place accept queue is full drops every SYN
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            queued.append(socket.create_connection(listener.getsockname(), timeout=5))
            silent.append(listener)
        router.ensure_upstreams("lost", "demo", [*(f"127.0.0.1:{s.getsockname()[1]}" for s in silent),
                                                 f"127.0.0.1:{blue.port}"])
        url = router.url_for("lost", "demo")
        answers = [(response.status_code, response.text) for response in (_get(url) for _ in range(4))]
    finally:
        for sock in (*queued, *silent):
            sock.close()
    assert answers == [(200, "blue")] * 4


def test_hyphenated_names_get_distinct_routes(router, pair):
    router.ensure_route("a-b", "c", slots_of(pair), serving=pair[0].port)
    other = Slots(free_port(), free_port())
    router.ensure_route("a", "b-c", other, serving=other.b)
    assert router.routes() == {("a-b", "c"): (pair[0].port, pair[1].port), ("a", "b-c"): (other.b, other.a)}


def test_remove_is_idempotent(router, pair):
    router.ensure_route("gone", "stage", slots_of(pair), serving=pair[0].port)
    router.remove("gone", "stage")
    router.remove("gone", "stage")
    assert ("gone", "stage") not in router.routes()
    assert _get(router.url_for("gone", "stage")).text != "blue"


def test_ensure_server_merges_and_keeps_existing_config(caddy_server, pair):
    other_port = free_port()
    admin = caddy_server.admin_url
    other = {
        "listen": [f":{other_port}"],
        "automatic_https": {"disable": True},
        "routes": [{"handle": [{"handler": "static_response", "body": "someone else"}]}],
    }
    name = f"other-{unique_instance()}"
    requests.put(f"{admin}/config/apps/http/servers/{name}", json=other, timeout=5).raise_for_status()

    first = CaddyRouter(admin, caddy_server.http_port, instance=unique_instance())
    first.ensure_server()
    first.ensure_route("keep", "demo", slots_of(pair), serving=pair[0].port)
    first.ensure_server()
    assert first.routes() == {("keep", "demo"): (pair[0].port, pair[1].port)}

    second = CaddyRouter(admin, free_port(), instance=unique_instance())
    second.ensure_server()
    second.ensure_route("keep", "demo", slots_of(pair), serving=pair[1].port)
    assert _get(second.url_for("keep", "demo")).text == "green"
    assert _get(first.url_for("keep", "demo")).text == "blue"
    assert _get(f"http://127.0.0.1:{other_port}/").text == "someone else"
    assert first.routes() == {("keep", "demo"): (pair[0].port, pair[1].port)}


def test_ensure_route_restores_a_lost_configuration(caddy_server, pair):
    """As after a Caddy restart that lost the configuration: ensuring the route repairs it."""
    fresh = CaddyRouter(caddy_server.admin_url, free_port(), instance=unique_instance())
    assert fresh.routes() == {}
    assert fresh.ensure_route("shop", "demo", slots_of(pair), serving=pair[0].port) is True
    assert _get(fresh.url_for("shop", "demo")).text == "blue"
    requests.delete(f"{caddy_server.admin_url}/config/apps/http/servers/{fresh.server_name}",
                    timeout=5).raise_for_status()
    assert fresh.routes() == {}
    assert fresh.ensure_route("shop", "demo", slots_of(pair), serving=pair[0].port) is True
    assert _get(fresh.url_for("shop", "demo")).text == "blue"


def test_new_routes_go_before_a_catch_all(router, pair, caddy_server):
    fallback = {"handle": [{"handler": "static_response", "body": "fallback"}]}
    requests.post(
        f"{caddy_server.admin_url}/config/apps/http/servers/{router.server_name}/routes",
        json=fallback,
        timeout=5,
    ).raise_for_status()
    router.ensure_route("late", "demo", slots_of(pair), serving=pair[0].port)
    assert _get(router.url_for("late", "demo")).text == "blue"
    assert _get(router.url_for("unrouted", "demo")).text == "fallback"


def test_a_phase_with_its_own_url_is_served_and_reported_there(caddy_server, pair, make_settings, tmp_path):
    """`phases.<name>.url` is where the router serves that phase (its route matches that host)
    and what a deployment reports (the URL `url_for` gives the deploy job); other phases keep
    `defaults.url`."""
    pipeline = tmp_path / "pipeline.yml"
    pipeline.write_text(Path("config/pipeline.yml").read_text().replace(
        "  live:\n", '  live:\n    url: "http://{app}.shop-live.localhost:{port}"\n', 1))
    port = free_port()
    ctx = Context.from_settings(make_settings(ROUTER="caddy", CADDY_ADMIN_URL=caddy_server.admin_url, ROUTER_PORT=port,
                                              PIPELINE_INSTANCE=unique_instance(), PIPELINE_CONFIG=str(pipeline)))
    router = ctx.router
    router.ensure_server()
    assert router.url_for("shop", "live") == f"http://shop.shop-live.localhost:{port}"
    assert router.url_for("shop", "demo") == f"http://shop-demo.localhost:{port}"
    router.ensure_route("shop", "live", slots_of(pair), serving=pair[0].port)
    router.ensure_route("shop", "demo", slots_of(pair), serving=pair[1].port)
    assert _get(f"http://shop.shop-live.localhost:{port}").text == "blue"
    assert _get(f"http://shop-demo.localhost:{port}").text == "green"
    assert _get(f"http://shop-live.localhost:{port}").text == ""  # the default URL is not live's


def test_refuses_unsafe_names_slots_and_ports(router):
    slots = Slots(41001, 41002)
    for app, phase in (("Shop", "demo"), ("shop", "demo.evil"), ("-x", "demo"), ("a/b", "demo"), ("", "demo"),
                       ("shop", "demo\n")):
        with pytest.raises(RouterError, match="slug"):
            router.ensure_route(app, phase, slots, serving=slots.a)
    for serving in (41003, None, "41001"):
        with pytest.raises(RouterError, match="not one of the slots"):
            router.ensure_route("shop", "demo", slots, serving=serving)
    for ports in ((0, 1), (1, 65536), (41001, 41001), ("80", 81), (True, 81)):
        with pytest.raises(RouterError, match="port"):
            Slots(*ports)
    assert router.routes() == {}


def test_port_clash_is_a_readable_router_error(router, caddy_server):
    clash = CaddyRouter(caddy_server.admin_url, router.listen_port, instance=unique_instance())
    with pytest.raises(RouterError, match="Caddy refused") as failure:
        clash.ensure_server()
    assert "Traceback" not in str(failure.value)


def test_unreachable_caddy():
    router = CaddyRouter(f"http://127.0.0.1:{free_port()}", free_port())
    assert router.ping() is False
    with pytest.raises(RouterError, match="unreachable"):
        router.ensure_route("shop", "demo", Slots(41001, 41002), serving=41001)


def test_direct_router_serves_the_slot_port():
    router = DirectRouter()
    assert isinstance(router, Router) and router.ping()
    router.ensure_server()
    with pytest.raises(RouterError):
        router.url_for("shop", "demo")
    assert router.ensure_route("shop", "demo", Slots(41001, 41002), serving=41002) is False
    assert router.url_for("shop", "demo", 41002) == "http://127.0.0.1:41002"
    assert router.routes() == {("shop", "demo"): (41002, 41001)}
    with pytest.raises(RouterError, match="not one of the slots"):
        router.ensure_route("shop", "demo", Slots(41001, 41002), serving=41003)
    router.remove("shop", "demo")
    router.remove("shop", "demo")
    assert router.routes() == {}
    with pytest.raises(RouterError):
        router.ensure_route("shop", "Demo", Slots(41001, 41002), serving=41001)


def test_caddy_router_is_a_router(router):
    assert isinstance(router, Router) and router.ping()


def test_slots_pick_the_other_slot():
    slots = Slots(20000, 20001)
    assert slots.other(None) == 20000
    assert slots.other(20000) == 20001
    assert slots.other(20001) == 20000
    assert slots.other(31337) == 20000  # a container from before slots: A is free
    assert slots.serving_first(20001) == (20001, 20000)
    with pytest.raises(RouterError, match="not one of the slots"):
        slots.serving_first(31337)


def _get(url: str, session=None) -> requests.Response:
    """GET a phase URL: connect to 127.0.0.1 and name the host, as *.localhost may not resolve."""
    host = url.split("//", 1)[1].split("/", 1)[0]
    port = host.rsplit(":", 1)[1]
    if session is None:
        with requests.Session() as fresh:
            fresh.trust_env = False
            return fresh.get(f"http://127.0.0.1:{port}/", headers={"Host": host}, timeout=10)
    return session.get(f"http://127.0.0.1:{port}/", headers={"Host": host}, timeout=10)


def _post(url: str, session) -> requests.Response:
    """POST 512 bytes to a phase URL (the upstream echoes its name)."""
    host = url.split("//", 1)[1].split("/", 1)[0]
    port = host.rsplit(":", 1)[1]
    return session.post(f"http://127.0.0.1:{port}/", headers={"Host": host}, data=b"x" * 512, timeout=10)
