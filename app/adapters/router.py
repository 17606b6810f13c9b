"""Give every app+phase a stable URL and point it at whichever container currently serves it.

`CaddyRouter` switches a phase URL to a new container atomically through Caddy's admin API,
which is what makes deployments zero-downtime. `DirectRouter` is the no-proxy fallback: the
phase URL is the container's own published port, so it changes with every deployment and
cannot be switched without downtime.
"""

from __future__ import annotations

import re
import time
from typing import Protocol, runtime_checkable
from urllib.parse import quote, urlsplit

import requests

from app.exceptions import RouterError

_ADMIN_ATTEMPTS = 4
_ADMIN_RETRY_PAUSE = 0.05
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_UPSTREAM = re.compile(r"^(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\]):(?P<port>[0-9]{1,5})$")


@runtime_checkable
class Router(Protocol):
    def url_for(self, app: str, phase: str) -> str:
        """The public URL of the app in that phase."""

    def switch(self, app: str, phase: str, upstream: str) -> None:
        """Send the phase URL's traffic to `upstream` ("127.0.0.1:PORT"); creates the route."""

    def remove(self, app: str, phase: str) -> None:
        """Forget the route; removing an unknown route is not an error."""

    def routes(self) -> dict[tuple[str, str], str]:
        """(app, phase) -> upstream for every route this router manages."""

    def ping(self) -> bool:
        """Whether the router can be reached."""

    def ensure_server(self) -> None:
        """Install the base configuration if it is missing (idempotent)."""


class CaddyRouter:
    """Routes in one Caddy HTTP server of our own, managed through the admin API (JSON config).

    Route ids are f"{instance}.{app}.{phase}": a dot never occurs in a slug, so the id maps
    back to exactly one (app, phase), unlike a hyphen ("a-b" + "c" and "a" + "b-c").

    Caddy applies every change by a graceful reload: requests in flight finish, and later ones
    go to the new upstream. On Linux the reload rebinds the listener (SO_REUSEPORT) and closes
    idle keep-alive connections, so a request arriving at that instant can be reset unanswered
    (browsers retry these); `sysctl net.ipv4.tcp_migrate_req=1` hands the closing listener's
    queued connections to the new one instead.
    """

    def __init__(
        self,
        admin_url: str,
        listen_port: int,
        url_template: str = "http://{app}-{phase}.localhost:{port}",
        instance: str = "rp",
        request_timeout: float = 10,
    ):
        self.admin_url = admin_url.rstrip("/")
        self.listen_port = listen_port
        self.url_template = url_template
        self.instance = _slug(instance, "instance")
        self.server_name = f"release-pipeline-{self.instance}"
        self.request_timeout = request_timeout
        self._session = requests.Session()
        self._session.trust_env = False  # a proxy from the environment must not see the admin API
        # Caddy restarts its admin endpoint with every config change, closing idle connections:
        # a reused one can be reset under the next request.
        self._session.headers["Connection"] = "close"

    def url_for(self, app: str, phase: str) -> str:
        return self.url_template.format(
            app=_slug(app, "app"), phase=_slug(phase, "phase"), port=self.listen_port
        )

    def switch(self, app: str, phase: str, upstream: str) -> None:
        upstreams = [{"dial": _upstream(upstream)}]
        route_id = self._route_id(app, phase)
        response = self._request(
            "PATCH", f"/id/{route_id}/handle/0/upstreams", upstreams, ok=(404,)
        )
        if response.status_code != 404:
            return
        route = {
            "@id": route_id,
            "match": [{"host": [urlsplit(self.url_for(app, phase)).hostname]}],
            "handle": [{"handler": "reverse_proxy", "upstreams": upstreams}],
            "terminal": True,
        }
        self.ensure_server()  # Caddy may have restarted without its config since start-up
        routes_path = f"{self._server_path()}/routes"
        existing = self._request("GET", routes_path).json() or []
        catch_all = next((i for i, r in enumerate(existing) if not r.get("match")), None)
        if catch_all is None:
            self._request("POST", routes_path, route)
        else:
            self._request("PUT", f"{routes_path}/{catch_all}", route)

    def remove(self, app: str, phase: str) -> None:
        self._request("DELETE", f"/id/{self._route_id(app, phase)}", ok=(404,))

    def routes(self) -> dict[tuple[str, str], str]:
        config = self._request("GET", "/config/").json() or {}
        server = config.get("apps", {}).get("http", {}).get("servers", {}).get(self.server_name)
        found = {}
        prefix = f"{self.instance}."
        for route in (server or {}).get("routes") or []:
            route_id = str(route.get("@id", ""))
            app, _, phase = route_id.removeprefix(prefix).partition(".")
            upstreams = (route.get("handle") or [{}])[0].get("upstreams") or []
            if route_id.startswith(prefix) and phase and upstreams:
                found[(app, phase)] = upstreams[0].get("dial", "")
        return found

    def ping(self) -> bool:
        try:
            self._request("GET", "/config/")
        except RouterError:
            return False
        return True

    def ensure_server(self) -> None:
        """Add our server, merging into whatever Caddy already serves; an existing one is kept."""
        listen = [f":{self.listen_port}"]
        server = {"listen": listen, "routes": [], "automatic_https": {"disable": True}}
        nested = {"apps": {"http": {"servers": {self.server_name: server}}}}
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
    """No proxy: a phase URL is the serving container's own port on this host.

    It cannot be zero-downtime: the URL changes with each deployment, and clients holding the
    old one fail once the old container stops. Routes live in this process's memory only.
    """

    def __init__(self, url_template: str = "http://127.0.0.1:{port}"):
        self.url_template = url_template
        self._routes: dict[tuple[str, str], str] = {}

    def url_for(self, app: str, phase: str) -> str:
        key = (_slug(app, "app"), _slug(phase, "phase"))
        if key not in self._routes:
            raise RouterError(f"no container has been routed for {app}/{phase} yet")
        host, _, port = self._routes[key].rpartition(":")
        return self.url_template.format(app=app, phase=phase, host=host, port=port)

    def switch(self, app: str, phase: str, upstream: str) -> None:
        self._routes[(_slug(app, "app"), _slug(phase, "phase"))] = _upstream(upstream)

    def remove(self, app: str, phase: str) -> None:
        self._routes.pop((_slug(app, "app"), _slug(phase, "phase")), None)

    def routes(self) -> dict[tuple[str, str], str]:
        return dict(self._routes)

    def ping(self) -> bool:
        return True

    def ensure_server(self) -> None:
        """Nothing to install."""


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
    if not isinstance(value, str) or not _SLUG.match(value):
        raise RouterError(f"{what} {value!r} is not a slug ([a-z0-9-], up to 63 characters)")
    return value


def _upstream(upstream: str) -> str:
    match = _UPSTREAM.match(upstream) if isinstance(upstream, str) else None
    if not match or not 0 < int(match["port"]) < 65536:
        raise RouterError(f"upstream {upstream!r} is not host:port")
    return upstream
