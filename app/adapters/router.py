"""Give every app+phase a stable URL, served by the slot our own health gate last passed.

Each app+phase owns two fixed loopback ports, its slots (app.slots). A deployment starts the
new container on the slot the serving one does not use, checks its health itself, and then
switches: `CaddyRouter` lists both slots in the phase's route, the serving one first, with
Caddy's `first` selection policy, so the switch is one admin-API change of that order. Then
the old container gets no new requests (it only finishes those in flight) and can be drained
and stopped without a client seeing an error.

Why this is safe, measured on Caddy 2.6.2 (see README, "Zero downtime"):
- Every admin-API change reloads Caddy, and on Linux Caddy opens a new SO_REUSEPORT listener
  per reload and closes the old one: connections still in the old one's accept queue were
  reset (12 of 1,128 requests failed over 719 reloads). With the kernel's
  `net.ipv4.tcp_migrate_req=1` (Linux 5.14+) they move to the new listener instead (0 of
  1,116 over 706 reloads): `migration_enabled` says whether it is on (doctor checks it).
- Caddy's health checks are passive only: nothing probes an idle phase, so the router costs
  nothing at rest however many phases there are. A request whose connection to the preferred
  slot cannot be made (a crashed container) is tried on the other one for `try_duration`,
  whatever its method, and that slot counts as down for `fail_duration`; one whose connection
  broke before any answer is tried again too when its method is idempotent. An answer the slot
  had begun to send when it died cannot be repaired by any proxy (the client sees it cut).

A phase with several replicas (app.docker_runtime) lists only the serving deployment's
containers, round robin, instead of the two slots; the switch is still one change.

`DirectRouter` is the no-proxy fallback: the phase URL is the serving slot's own port, so it
changes with every deployment and is not zero-downtime.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import quote, urlsplit

import requests

from app.exceptions import RouterError

_ADMIN_ATTEMPTS = 4
_ADMIN_RETRY_PAUSE = 0.05
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
#: Requests Caddy may send again after the slot broke the connection before answering (RFC 9110 §9.2.2).
IDEMPOTENT_METHODS = ("GET", "HEAD", "OPTIONS", "PUT", "DELETE")
#: Seconds Caddy waits for an upstream's connection: a slot on loopback or a task on the LAN
#: answers (or refuses) in milliseconds, the kernel completing the handshake however busy the
#: app is.
DIAL_TIMEOUT = 0.25
#: The kernel setting that lets a Caddy reload keep the connections it is accepting.
MIGRATE_SETTING = Path("/proc/sys/net/ipv4/tcp_migrate_req")


@dataclass(frozen=True)
class Slots:
    """The two loopback ports of an app+phase (a new phase starts on `a`)."""

    a: int
    b: int

    def __post_init__(self) -> None:
        for port in (self.a, self.b):
            if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
                raise RouterError(f"slot port {port!r} is not a TCP port")
        if self.a == self.b:
            raise RouterError(f"the two slots of a phase need two ports, not {self.a} twice")

    @property
    def ports(self) -> tuple[int, int]:
        return self.a, self.b

    def other(self, port: int | None) -> int:
        """The slot a new container goes to when `port` serves now (A when nothing does)."""
        return self.b if port == self.a else self.a

    def serving_first(self, serving: int) -> tuple[int, int]:
        """Both ports, in the order a router tries them when `serving` serves."""
        if serving not in self.ports:
            raise RouterError(f"port {serving!r} is not one of the slots {self.a} and {self.b}")
        return serving, self.other(serving)


@runtime_checkable
class Router(Protocol):
    def ensure_route(self, app: str, phase: str, slots: Slots, serving: int, also: tuple[int, ...] = ()) -> bool:
        """Route the phase URL to slot `serving`, the other slot next; True if anything changed.
        Once it returns, every new request goes to `serving` while it accepts connections.
        With `also` (the ports of the serving deployment's other replicas), requests are
        spread over `serving` and `also` in turn, and the other slot is not listed."""

    def url_for(self, app: str, phase: str, port: int | None = None) -> str:
        """The public URL of the app in that phase (`port`: the serving slot, if it matters)."""

    def remove(self, app: str, phase: str) -> None:
        """Forget the route; removing an unknown route is not an error."""

    def routes(self) -> dict[tuple[str, str], tuple[int, ...]]:
        """(app, phase) -> its ports in the order the router tries them, serving first."""

    def ping(self) -> bool:
        """Whether the router can be reached."""

    def ensure_server(self) -> None:
        """Install the base configuration if it is missing (idempotent)."""


class CaddyRouter:
    """Routes in one Caddy HTTP server of our own, managed through the admin API (JSON config).

    Route ids are f"{instance}.{app}.{phase}": a dot never occurs in a slug, so the id maps
    back to exactly one (app, phase), unlike a hyphen ("a-b" + "c" and "a" + "b-c").

    Every change reloads Caddy gracefully: requests in flight finish on the old configuration,
    idle keep-alive connections are closed, new ones get the new configuration. An unchanged
    route is never written.
    """

    def __init__(
        self,
        admin_url: str,
        listen_port: int,
        url_template: str = "http://{app}-{phase}.localhost:{port}",
        instance: str = "rp",
        request_timeout: float = 10,
        try_duration: float = 5.0,
        bind: str = "",
        fail_duration: float = 2.0,
        phase_urls: Mapping[str, str] | None = None,
    ):
        self.admin_url = admin_url.rstrip("/")
        self.listen_port = listen_port
        #: The address the phase URLs are served on; "" or 0.0.0.0: every interface.
        self.bind = "" if bind in ("", "0.0.0.0", "::") else bind
        self.url_template = url_template
        #: Phases with a URL template of their own (`phases.<name>.url`); the route matches its host.
        self.phase_urls = dict(phase_urls or {})
        self.instance = _slug(instance, "instance")
        self.server_name = f"release-pipeline-{self.instance}"
        self.request_timeout = request_timeout
        self.try_duration = try_duration
        self.fail_duration = fail_duration
        self._session = requests.Session()
        self._session.trust_env = False  # a proxy from the environment must not see the admin API
        # Caddy restarts its admin endpoint with every config change, closing idle connections:
        # a reused one can be reset under the next request.
        self._session.headers["Connection"] = "close"

    def url_for(self, app: str, phase: str, port: int | None = None) -> str:
        template = self.phase_urls.get(phase, self.url_template)
        return template.format(app=_slug(app, "app"), phase=_slug(phase, "phase"), port=self.listen_port)

    def ensure_route(self, app: str, phase: str, slots: Slots, serving: int, also: tuple[int, ...] = ()) -> bool:
        """Create the route, or change it in place (one PATCH, applied atomically by Caddy)."""
        return self._put_route(self._route(app, phase, slots, serving, also))

    def ensure_upstreams(self, app: str, phase: str, endpoints: list[str]) -> bool:
        """Route the phase URL to every one of `endpoints` ("address:port", Swarm tasks on
        their nodes) in turn; a dial that fails is tried on the next one. True if it changed."""
        if not endpoints:
            raise RouterError(f"no endpoint to route {app}/{phase} to")
        return self._put_route(self._route_to(app, phase, list(endpoints), "round_robin"))

    def follow_upstreams(self, wanted: Mapping[tuple[str, str], list[str]]) -> list[tuple[str, str]]:
        """Route each (app, phase) to its endpoints, as `ensure_upstreams` does, for many phases
        at once: one read of our server's routes, then one write per phase whose route differs
        (none for an idle phase, however many there are); the (app, phase)s written."""
        existing = self._our_routes()
        routes = {key: self._route_to(*key, list(endpoints), "round_robin") for key, endpoints in wanted.items()}
        changed = routes_to_write(routes, existing)
        for key in changed:
            if key in existing:
                self._request("PATCH", f"/id/{routes[key]['@id']}", routes[key])
            else:
                self._put_route(routes[key])
        return changed

    def _put_route(self, route: dict) -> bool:
        route_id = route["@id"]
        response = self._request("GET", f"/id/{route_id}", ok=(404,))
        if response.status_code != 404:
            if response.json() == route:
                return False  # the usual case for reconcile: nothing to change, Caddy does not reload
            self._request("PATCH", f"/id/{route_id}", route)
            return True
        self.ensure_server()  # Caddy may have restarted without its config since start-up
        routes_path = f"{self._server_path()}/routes"
        existing = self._request("GET", routes_path).json() or []
        catch_all = next((i for i, r in enumerate(existing) if not r.get("match")), None)
        if catch_all is None:
            self._request("POST", routes_path, route)
        else:
            self._request("PUT", f"{routes_path}/{catch_all}", route)
        return True

    def remove(self, app: str, phase: str) -> None:
        self._request("DELETE", f"/id/{self._route_id(app, phase)}", ok=(404,))

    def routes(self) -> dict[tuple[str, str], tuple[int, ...]]:
        found = {key: _route_order(route) for key, route in self._our_routes().items()}
        return {key: order for key, order in found.items() if order is not None}

    def _our_routes(self) -> dict[tuple[str, str], dict]:
        """(app, phase) -> its route as Caddy holds it now, for every route of ours: one GET."""
        config = self._request("GET", "/config/").json() or {}
        server = config.get("apps", {}).get("http", {}).get("servers", {}).get(self.server_name)
        found = {}
        prefix = f"{self.instance}."
        for route in (server or {}).get("routes") or []:
            route_id = str(route.get("@id", ""))
            app, _, phase = route_id.removeprefix(prefix).partition(".")
            if route_id.startswith(prefix) and phase:
                found[(app, phase)] = route
        return found

    def ping(self) -> bool:
        try:
            self._request("GET", "/config/")
        except RouterError:
            return False
        return True

    def base_config(self) -> dict:
        """The whole configuration `release-pipeline router` starts Caddy with: its admin
        endpoint, our server with no routes yet (deploys add them), quiet health-check logs."""
        return {
            "admin": {"listen": urlsplit(self.admin_url).netloc, "config": {"persist": False}},
            # Caddy logs every failed active health check, i.e. the idle slot of every phase,
            # four times a second.
            "logging": {"logs": {"default": {"exclude": ["http.handlers.reverse_proxy.health_checker.active"]}}},
            **self._server_config(),
        }

    def _server_config(self) -> dict:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        server = {"listen": [f"{host}:{self.listen_port}"], "routes": [], "automatic_https": {"disable": True}}
        return {"apps": {"http": {"servers": {self.server_name: server}}}}

    def ensure_server(self) -> None:
        """Add our server, merging into whatever Caddy already serves; an existing one is kept."""
        nested = self._server_config()
        listen = nested["apps"]["http"]["servers"][self.server_name]["listen"]
        config = self._request("GET", "/config/").json()
        if config is None:  # Caddy started without any configuration
            self._request("POST", "/config/", nested)
            return
        path, node, value = "/config", config, nested
        for key in ("apps", "http", "servers", self.server_name):
            value = value[key]
            if not isinstance(node, dict) or key not in node:
                self._request("PUT", f"{path}/{key}", value)
                return
            path, node = f"{path}/{key}", node[key]
        if node.get("listen") != listen:
            self._request("PATCH", f"{path}/listen", listen)

    def _route(self, app: str, phase: str, slots: Slots, serving: int, also: tuple[int, ...]) -> dict:
        # One replica: the serving slot while it accepts connections, else the other. Several:
        # each new request to the next replica; a dead one is skipped.
        return self._route_to(app, phase, [f"127.0.0.1:{port}" for port in upstream_ports(slots, serving, also)],
                              "round_robin" if also else "first")

    def _route_to(self, app: str, phase: str, dials: list[str], policy: str) -> dict:
        proxy = {
            "handler": "reverse_proxy",
            "upstreams": [{"dial": dial} for dial in dials],
            "load_balancing": {
                "selection_policy": {"policy": policy},
                "try_duration": _duration(self.try_duration),
                # Short: a request still waiting to retry (or dialling) when a route change
                # reloads Caddy may be answered 502 — our reading, not proven, of a 502 in 1 of
                # ~8 swarm drains with 50 ms and a 1 s dial timeout.
                "try_interval": "10ms",
                # A connection that was made but broke before any answer (the slot stopping at
                # that instant) is retried for the idempotent methods too, not only GET (Caddy's
                # default); a connection that could not be made is retried for every method.
                "retry_match": [{"method": list(IDEMPOTENT_METHODS)}],
            },
            # Passive only: no request is ever made to check an idle phase.
            "health_checks": {"passive": {"fail_duration": _duration(self.fail_duration), "max_fails": 1}},
            # A dial still unanswered after this is an upstream that is gone without a word (a
            # lost node, a task's port left forwarding to nowhere): give up on it and try the
            # next. Caddy's 3 s default let two such upstreams outlast `try_duration` (a 502).
            "transport": {"protocol": "http", "dial_timeout": _duration(DIAL_TIMEOUT)},
        }
        return {
            "@id": self._route_id(app, phase),
            "match": [{"host": [urlsplit(self.url_for(app, phase)).hostname]}],
            "handle": [proxy],
            "terminal": True,
        }

    def _server_path(self) -> str:
        return f"/config/apps/http/servers/{self.server_name}"

    def _route_id(self, app: str, phase: str) -> str:
        return f"{self.instance}.{_slug(app, 'app')}.{_slug(phase, 'phase')}"

    def _request(
        self, method: str, path: str, body: object = None, *, ok: tuple[int, ...] = ()
    ) -> requests.Response:
        response = self._send(method, path, body)
        if response.ok or response.status_code in ok:
            return response
        try:
            detail = response.json().get("error", "")
        except ValueError:
            detail = response.text
        raise RouterError(
            f"Caddy refused {method} {path}: {response.status_code} {str(detail).strip()[:300]}"
        )

    def _send(self, method: str, path: str, body: object) -> requests.Response:
        for attempt in range(1, _ADMIN_ATTEMPTS + 1):
            try:
                return self._session.request(
                    method, self.admin_url + quote(path), json=body, timeout=self.request_timeout
                )
            except requests.ConnectionError as exc:
                # While the admin endpoint restarts after a change, a new connection can land on
                # the closing listener and be reset before it is read: send the request again.
                # (A change that did apply makes a repeated PATCH/DELETE a no-op, and a repeated
                # POST/PUT fail on the duplicate id or key with a readable RouterError.)
                if attempt == _ADMIN_ATTEMPTS:
                    failure = _reason(exc)
                    break
                time.sleep(_ADMIN_RETRY_PAUSE * attempt)
            except requests.RequestException as exc:
                failure = _reason(exc)
                break
        raise RouterError(
            f"Caddy admin API at {self.admin_url} unreachable ({method} {path}): {failure}"
        )


class DirectRouter:
    """No proxy: a phase URL is the serving slot's own port on this host.

    It cannot be zero-downtime: the URL changes with each deployment, and clients holding the
    old one fail once the old container stops. Routes live in this process's memory only.
    """

    def __init__(self, url_template: str = "http://127.0.0.1:{port}"):
        self.url_template = url_template
        self._routes: dict[tuple[str, str], tuple[int, int]] = {}

    def url_for(self, app: str, phase: str, port: int | None = None) -> str:
        _slug(app, "app"), _slug(phase, "phase")
        if port is None:
            raise RouterError(f"without a proxy, the URL of {app}/{phase} is its serving container's port")
        return self.url_template.format(app=app, phase=phase, host="127.0.0.1", port=port)

    def ensure_route(self, app: str, phase: str, slots: Slots, serving: int, also: tuple[int, ...] = ()) -> bool:
        if also:
            raise RouterError("ROUTER=direct gives a phase one port: several replicas need ROUTER=caddy")
        self._routes[(_slug(app, "app"), _slug(phase, "phase"))] = slots.serving_first(serving)
        return False  # nothing outside this process changes

    def remove(self, app: str, phase: str) -> None:
        self._routes.pop((_slug(app, "app"), _slug(phase, "phase")), None)

    def routes(self) -> dict[tuple[str, str], tuple[int, int]]:
        return dict(self._routes)

    def ping(self) -> bool:
        return True

    def ensure_server(self) -> None:
        """Nothing to install."""


def migration_enabled(setting: Path = MIGRATE_SETTING) -> bool | None:
    """Whether this host's kernel hands the connections a closing listener had accepted to the
    next one (`net.ipv4.tcp_migrate_req`); None when it cannot tell (no such setting)."""
    try:
        return setting.read_text().strip() == "1"
    except OSError:
        return None


def upstream_ports(slots: Slots, serving: int, also: tuple[int, ...] = ()) -> tuple[int, ...]:
    """The ports a phase's route lists, in order: both slots, the serving one first; or, for
    several replicas, the serving slot and the other replicas' ports."""
    ordered = slots.serving_first(serving)
    if not also:
        return ordered
    for port in also:
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536 or port in ordered:
            raise RouterError(f"replica port {port!r} is not a TCP port apart from the slots {slots.a} and {slots.b}")
    return (serving, *also)


def routes_to_write(wanted: Mapping[tuple[str, str], dict], existing: Mapping[tuple[str, str], dict]
                    ) -> list[tuple[str, str]]:
    """The (app, phase)s, in order, whose wanted route is not what the router holds (or not there)."""
    return sorted(key for key, route in wanted.items() if existing.get(key) != route)


def _route_order(route: dict) -> tuple[int, ...] | None:
    """The ports of one of our routes in the order Caddy tries them (None for anything else)."""
    try:
        proxy = route["handle"][0]
        hosts, ports = zip(*(u["dial"].rpartition(":")[::2] for u in proxy["upstreams"]))
        if set(hosts) != {"127.0.0.1"}:
            return None  # a route to Swarm tasks on their nodes has no slots
        ports = tuple(int(port) for port in ports)
        if not all(0 < port < 65536 for port in ports):
            return None
        return ports
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return None


def _duration(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _reason(exc: requests.RequestException) -> str:
    """The innermost cause of a failed request in a few words (urllib3 wraps it several times)."""
    cause: BaseException = exc
    while True:
        inner = getattr(cause, "reason", None)
        inner = inner if isinstance(inner, BaseException) else cause.__context__
        if inner is None:
            break
        cause = inner
    return (f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__)[:200]


def _slug(value: str, what: str) -> str:
    if not isinstance(value, str) or not _SLUG.fullmatch(value):
        raise RouterError(f"{what} {value!r} is not a slug ([a-z0-9-], up to 63 characters)")
    return value
