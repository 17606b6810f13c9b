"""Give every app+phase a stable URL, served by whichever of its two slots is healthy.

Each app+phase owns two fixed loopback ports, its slots (app.slots). A deployment starts the
new container on the slot the serving one does not use; the router's configuration does not
change for it, because every change makes Caddy 2.6 reload, which resets some connections.

`CaddyRouter` installs one route per app+phase, once, listing both slots in order (A, B).
Caddy checks each slot's health path every `health_interval` (active health checks) and sends
every request to the first healthy slot. A request whose connection to a slot fails is tried
again on the other one for up to `try_duration` (any request whose connection could not be
made; after the request was sent, GET requests only), and that failure marks the slot down at
once (passive health check). So a new container receives no traffic until Caddy's own check
of it passed, and a stopped one is left without a client seeing an error.

`DirectRouter` is the no-proxy fallback: the phase URL is the serving slot's own port, so it
changes with every deployment and is not zero-downtime.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable
from urllib.parse import quote, urlsplit

import requests

from app.exceptions import RouterError

_ADMIN_ATTEMPTS = 4
_ADMIN_RETRY_PAUSE = 0.05
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_PATH = re.compile(r"^/[^\s\x00-\x1f\x7f]{0,499}$")
#: A request carrying this header is answered with UPSTREAM_HEADER naming the slot that served it.
PROBE_HEADER = "X-Release-Pipeline-Probe"
UPSTREAM_HEADER = "X-Release-Pipeline-Upstream"
#: How long a check of a ready container takes at most, beyond the interval.
_CHECK_MARGIN = 0.1
_PROBE_PAUSE = 0.05


@dataclass(frozen=True)
class Slots:
    """The two loopback ports of an app+phase; the router prefers `a` when both are healthy."""

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


@runtime_checkable
class Router(Protocol):
    def ensure_route(self, app: str, phase: str, slots: Slots, health_path: str) -> bool:
        """Route the phase URL to both slots, checked on `health_path`; True if anything changed."""

    def url_for(self, app: str, phase: str, port: int | None = None) -> str:
        """The public URL of the app in that phase (`port`: the serving slot, if it matters)."""

    def wait_serving(self, app: str, phase: str, port: int, timeout: float = 10) -> bool:
        """Call once the container on slot `port` passed its health check. True when the phase
        URL now sends its traffic there; False when the router holds it ready to take over the
        moment the container serving now stops. RouterError if neither happens in `timeout` s."""

    def remove(self, app: str, phase: str) -> None:
        """Forget the route; removing an unknown route is not an error."""

    def routes(self) -> dict[tuple[str, str], Slots]:
        """(app, phase) -> slots for every route this router manages."""

    def ping(self) -> bool:
        """Whether the router can be reached."""

    def ensure_server(self) -> None:
        """Install the base configuration if it is missing (idempotent)."""


class CaddyRouter:
    """Routes in one Caddy HTTP server of our own, managed through the admin API (JSON config).

    Route ids are f"{instance}.{app}.{phase}": a dot never occurs in a slug, so the id maps
    back to exactly one (app, phase), unlike a hyphen ("a-b" + "c" and "a" + "b-c").

    Installing or changing a route makes Caddy reload gracefully; that happens when a phase
    gets its slots, when its health path changes, and after Caddy lost its configuration,
    never for an ordinary deployment. (On Linux the reload rebinds the listener and closes
    idle keep-alive connections, so a request arriving at that instant can be reset.)
    """

    def __init__(
        self,
        admin_url: str,
        listen_port: int,
        url_template: str = "http://{app}-{phase}.localhost:{port}",
        instance: str = "rp",
        request_timeout: float = 10,
        health_interval: float = 0.25,
        health_timeout: float = 1.0,
        try_duration: float = 5.0,
        bind: str = "",
    ):
        self.admin_url = admin_url.rstrip("/")
        self.listen_port = listen_port
        #: The address the phase URLs are served on; "" or 0.0.0.0: every interface.
        self.bind = "" if bind in ("", "0.0.0.0", "::") else bind
        self.url_template = url_template
        self.instance = _slug(instance, "instance")
        self.server_name = f"release-pipeline-{self.instance}"
        self.request_timeout = request_timeout
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.try_duration = try_duration
        self._session = requests.Session()
        self._session.trust_env = False  # a proxy from the environment must not see the admin API
        # Caddy restarts its admin endpoint with every config change, closing idle connections:
        # a reused one can be reset under the next request.
        self._session.headers["Connection"] = "close"

    def url_for(self, app: str, phase: str, port: int | None = None) -> str:
        return self.url_template.format(
            app=_slug(app, "app"), phase=_slug(phase, "phase"), port=self.listen_port
        )

    def ensure_route(self, app: str, phase: str, slots: Slots, health_path: str) -> bool:
        route_id = self._route_id(app, phase)
        route = self._route(app, phase, slots, health_path)
        response = self._request("GET", f"/id/{route_id}", ok=(404,))
        if response.status_code != 404:
            if response.json() == route:
                return False  # the usual case: nothing to change, so Caddy does not reload
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

    def wait_serving(self, app: str, phase: str, port: int, timeout: float = 10) -> bool:
        """Ask Caddy, through the phase URL, which slot answers (PROBE_HEADER) until it is `port`.

        Slot A answers as soon as Caddy's check of it passed. While slot A serves, a healthy
        slot B cannot be seen answering; it is taken as ready once Caddy has had the time of one
        check interval (plus a margin) since the caller's own check passed.
        """
        route_id = self._route_id(app, phase)
        response = self._request("GET", f"/id/{route_id}", ok=(404,))
        if response.status_code == 404:
            raise RouterError(f"Caddy has no route for {app}/{phase}")
        slots, health_path = _route_slots(response.json())
        if slots is None or port not in slots.ports:
            raise RouterError(f"port {port} is not one of the slots Caddy routes {app}/{phase} to")
        host = urlsplit(self.url_for(app, phase)).hostname
        started = time.monotonic()
        # A ready container answers Caddy's next check in milliseconds, not in health_timeout;
        # should that check still be running, Caddy retries requests for `try_duration`.
        checked_since = started + self.health_interval + _CHECK_MARGIN
        deadline = started + timeout
        while True:
            serving, seen = self._probe(host, health_path)
            if serving == port:
                return True
            if port == slots.b and serving == slots.a and time.monotonic() >= checked_since:
                return False
            if time.monotonic() >= deadline:
                raise RouterError(
                    f"Caddy did not route {app}/{phase} to port {port} within {timeout:g}s "
                    f"(last answer: {seen})"
                )
            time.sleep(_PROBE_PAUSE)

    def remove(self, app: str, phase: str) -> None:
        self._request("DELETE", f"/id/{self._route_id(app, phase)}", ok=(404,))

    def routes(self) -> dict[tuple[str, str], Slots]:
        config = self._request("GET", "/config/").json() or {}
        server = config.get("apps", {}).get("http", {}).get("servers", {}).get(self.server_name)
        found = {}
        prefix = f"{self.instance}."
        for route in (server or {}).get("routes") or []:
            route_id = str(route.get("@id", ""))
            app, _, phase = route_id.removeprefix(prefix).partition(".")
            slots, _ = _route_slots(route)
            if route_id.startswith(prefix) and phase and slots is not None:
                found[(app, phase)] = slots
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

    def _route(self, app: str, phase: str, slots: Slots, health_path: str) -> dict:
        if not isinstance(health_path, str) or not _PATH.fullmatch(health_path):
            raise RouterError(f"health path {str(health_path)[:80]!r} is not a URL path starting with /")
        proxy = {
            "handler": "reverse_proxy",
            "upstreams": [{"dial": f"127.0.0.1:{port}"} for port in slots.ports],
            "load_balancing": {
                "selection_policy": {"policy": "first"},
                "try_duration": _duration(self.try_duration),
                "try_interval": "50ms",
            },
            "health_checks": {
                "active": {
                    "uri": health_path,
                    "interval": _duration(self.health_interval),
                    "timeout": _duration(self.health_timeout),
                },
                "passive": {"fail_duration": "1s", "max_fails": 1},
            },
        }
        # A probe (PROBE_HEADER) learns which slot answered; other clients never see the header.
        probe = {
            "match": [{"header": {PROBE_HEADER: ["1"]}}],
            "handle": [{
                "handler": "headers",
                "response": {"deferred": True,
                             "set": {UPSTREAM_HEADER: ["{http.reverse_proxy.upstream.hostport}"]}},
            }],
        }
        return {
            "@id": self._route_id(app, phase),
            "match": [{"host": [urlsplit(self.url_for(app, phase)).hostname]}],
            "handle": [{"handler": "subroute", "routes": [probe, {"handle": [proxy]}]}],
            "terminal": True,
        }

    def _probe(self, host: str, path: str) -> tuple[int | None, str]:
        """The slot port that answered `path` through the phase URL (2xx/3xx only), and what came back."""
        address = f"[{self.bind}]" if ":" in self.bind else self.bind or "127.0.0.1"
        url = f"http://{address}:{self.listen_port}{path}"
        try:
            with requests.Session() as session:
                session.trust_env = False
                with session.get(url, headers={"Host": host, PROBE_HEADER: "1"}, allow_redirects=False,
                                 timeout=self.try_duration + 2, stream=True) as response:
                    upstream = response.headers.get(UPSTREAM_HEADER, "")
                    seen = f"{response.status_code} from {upstream or 'Caddy'}"
                    if response.status_code >= 400:
                        return None, seen
        except requests.RequestException as exc:
            return None, _reason(exc)
        port = upstream.rpartition(":")[2]
        return (int(port) if port.isdigit() else None), seen

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
        self._routes: dict[tuple[str, str], Slots] = {}

    def url_for(self, app: str, phase: str, port: int | None = None) -> str:
        _slug(app, "app"), _slug(phase, "phase")
        if port is None:
            raise RouterError(f"without a proxy, the URL of {app}/{phase} is its serving container's port")
        return self.url_template.format(app=app, phase=phase, host="127.0.0.1", port=port)

    def ensure_route(self, app: str, phase: str, slots: Slots, health_path: str) -> bool:
        self._routes[(_slug(app, "app"), _slug(phase, "phase"))] = slots
        return False  # nothing outside this process changes

    def wait_serving(self, app: str, phase: str, port: int, timeout: float = 10) -> bool:
        return True  # the URL is the port itself

    def remove(self, app: str, phase: str) -> None:
        self._routes.pop((_slug(app, "app"), _slug(phase, "phase")), None)

    def routes(self) -> dict[tuple[str, str], Slots]:
        return dict(self._routes)

    def ping(self) -> bool:
        return True

    def ensure_server(self) -> None:
        """Nothing to install."""


def _route_slots(route: dict) -> tuple[Slots | None, str]:
    """The slots and health path of one of our routes (None for anything else)."""
    try:
        subroutes = route["handle"][0]["routes"]
        proxy = next(h for r in subroutes for h in r.get("handle", []) if h.get("handler") == "reverse_proxy")
        ports = [int(u["dial"].rpartition(":")[2]) for u in proxy["upstreams"]]
        return Slots(*ports), proxy["health_checks"]["active"]["uri"]
    except (KeyError, IndexError, TypeError, ValueError, StopIteration, AttributeError, RouterError):
        return None, "/"


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
