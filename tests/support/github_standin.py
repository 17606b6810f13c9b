"""A real local HTTP server standing in for api.github.com.

Tests talk to it over TCP through `GITHUB_API_URL`, so githubkit, httpx, JWT signing and our
error handling run exactly as in production. It checks credentials the way GitHub does
(app endpoints want a JWT signed with the app's key, repository endpoints an installation
token it issued), records every request, and can fail on demand.

Use the `github` fixture (register this module as a pytest plugin):

    def test_x(github, monkeypatch):
        for name, value in github.environ.items():
            monkeypatch.setenv(name, value)
        github.permissions[("acme/shop", "alice")] = "maintain"
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

WEB_URL = "https://github.com"
REACTIONS = {"+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes"}
#: GitHub's `permission` field collapses these roles.
LEGACY_PERMISSION = {"maintain": "write", "triage": "read"}
SECONDARY_RATE_LIMIT_MESSAGE = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
)


class Call(NamedTuple):
    method: str
    path: str  # with the query string, if any
    json: Any
    headers: dict[str, str]

    @property
    def query(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}


class Reply(NamedTuple):
    status: int
    body: Any = None
    headers: dict[str, str] = {}


def generate_private_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _not_found() -> Reply:
    return Reply(404, {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"})


def _user(login: str, user_id: int = 1, kind: str = "User") -> dict:
    return {
        "login": login,
        "id": user_id,
        "node_id": f"U_{user_id}",
        "type": kind,
        "site_admin": False,
        "avatar_url": f"https://avatars.githubusercontent.com/u/{user_id}",
        "url": f"https://api.github.com/users/{login}",
        "html_url": f"{WEB_URL}/{login}",
    }


BOT = _user("release-pipeline[bot]", 9000, "Bot")


class GitHubStandIn:
    """State, routes and fault injection; `serve()` puts it on a random local port."""

    def __init__(self, private_key_pem: str, app_id: int = 4242):
        self.app_id = app_id
        self.private_key_pem = private_key_pem
        self._public_key = serialization.load_pem_private_key(
            private_key_pem.encode(), password=None
        ).public_key()
        self.url = ""
        self.calls: list[Call] = []
        self.tokens_issued = 0
        #: every installation token handed out, for "never in a log" checks
        self.issued_tokens: list[str] = []
        #: manifest flow: one-time code -> the manifest GitHub was given (see `accept_manifest`)
        self.manifest_codes: dict[str, dict] = {}
        #: apps created from a manifest, with their secrets (what the conversion returned)
        self.registered_apps: list[dict] = []
        #: repo full name -> installation id, for GET /repos/{o}/{r}/installation
        self.installations: dict[str, int] = {}
        #: (repo, user) -> role: admin | maintain | write | triage | read
        self.permissions: dict[tuple[str, str], str] = {}
        #: (repo, pr) -> reviews, e.g. {"id": 1, "user": "bob", "state": "APPROVED"}; a str
        #: user becomes a user object and missing fields are filled in
        self.reviews: dict[tuple[str, int], list[dict]] = {}
        #: (repo, pr) -> pull request (GitHub JSON; missing fields are filled in)
        self.pulls: dict[tuple[str, int], dict] = {}
        #: (repo, "refs/heads/x") -> sha
        self.refs: dict[tuple[str, str], str] = {}
        #: (repo, sha) -> committer date (ISO 8601) for GET git/commits; others date from 2000
        self.commit_dates: dict[tuple[str, str], str] = {}
        #: (repo, sha) -> commit statuses in creation order
        self.statuses: dict[tuple[str, str], list[dict]] = {}
        #: deployment id -> deployment (with "repo" and "statuses")
        self.deployments: dict[int, dict] = {}
        #: comment id -> comment (with "repo" and "reactions")
        self.comments: dict[int, dict] = {}
        #: app webhook deliveries, newest first, as GET /app/hook/deliveries returns them
        self.deliveries: list[dict] = []
        #: what the app's webhook answers a redelivery with (recorded as a new attempt)
        self.redelivery_status_code = 202
        self._tokens: dict[str, tuple[int, float]] = {}  # token -> (installation, expiry)
        self._faults: list[tuple[Reply, str | None]] = []  # (reply, only for paths starting so)
        self._down = False
        self._ids = iter(range(1000, 10**9))
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None

    # --- configuration -----------------------------------------------------------------

    @property
    def environ(self) -> dict[str, str]:
        """Environment variables that point the app at this stand-in."""
        return {
            "GITHUB_APP_ID": str(self.app_id),
            "GITHUB_PRIVATE_KEY": self.private_key_pem,
            "GITHUB_API_URL": self.url,
        }

    def fail_next(
        self, n: int = 1, status: int = 502, message: str = "Server Error", path: str | None = None
    ) -> None:
        """The next `n` requests (only those whose path starts with `path`, if given) fail."""
        with self._lock:
            self._faults += [(Reply(status, {"message": message}), path)] * n

    def rate_limit_next(self, n: int = 1, retry_after: int = 1, primary: bool = False) -> None:
        """403s: secondary limits carry Retry-After, primary ones x-ratelimit-remaining: 0."""
        if primary:
            reset = str(int(time.time()) + retry_after)
            headers = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": reset}
            message = "API rate limit exceeded for installation."
        else:
            headers = {"Retry-After": str(retry_after), "x-ratelimit-remaining": "4000"}
            message = SECONDARY_RATE_LIMIT_MESSAGE
        with self._lock:
            self._faults += [(Reply(403, {"message": message}, headers), None)] * n

    def down(self, is_down: bool = True) -> None:
        """While down, every request gets an HTML 502, like GitHub's front end in an outage."""
        with self._lock:
            self._down = is_down

    def revoke_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()

    def calls_to(self, method: str, path_prefix: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method and c.path.startswith(path_prefix)]

    def accept_manifest(self, manifest: dict | str) -> str:
        """What github.com does when a user confirms a manifest form: a one-time code.

        The app is then created by `POST /app-manifests/{code}/conversions` (no credentials).
        """
        if isinstance(manifest, str):
            manifest = json.loads(manifest)
        if not manifest.get("url") or not (manifest.get("hook_attributes") or {}).get("url"):
            raise ValueError("a manifest needs url and hook_attributes.url")
        code = secrets.token_hex(10)
        with self._lock:
            self.manifest_codes[code] = manifest
        return code

    # --- server ------------------------------------------------------------------------

    def serve(self) -> None:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                reply = standin.handle(self.command, self.path, body, dict(self.headers.items()))
                self._send(reply)

            def _send(self, reply: Reply) -> None:
                if isinstance(reply.body, str):
                    payload, content_type = reply.body.encode(), "text/html"
                elif reply.body is None:
                    payload, content_type = b"", "application/json"
                else:
                    payload, content_type = json.dumps(reply.body).encode(), "application/json"
                self.send_response(reply.status)
                self.send_header("Content-Type", f"{content_type}; charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # --- request handling --------------------------------------------------------------

    def handle(self, method: str, path: str, body: Any, headers: dict[str, str]) -> Reply:
        with self._lock:
            self.calls.append(Call(method, path, body, headers))
            if self._down:
                return Reply(502, "<html><body><h1>Unicorn!</h1></body></html>")
            for index, (fault, prefix) in enumerate(self._faults):
                if prefix is None or path.startswith(prefix):
                    return self._faults.pop(index)[0]
            route = urlsplit(path)
            query = {k: v[-1] for k, v in parse_qs(route.query).items()}
            authorization = {k.lower(): v for k, v in headers.items()}.get("authorization", "")
            for pattern, route_method, handler, auth in ROUTES:
                match = re.fullmatch(pattern, route.path)
                if match and method == route_method:
                    if not auth(self, authorization):
                        return Reply(401, {"message": "Bad credentials"})
                    try:
                        return handler(self, *match.groups(), body=body, query=query)
                    except (KeyError, TypeError, ValueError):  # a body missing what GitHub needs
                        return Reply(422, {"message": "Validation Failed"})
            return _not_found()

    def _app_jwt_valid(self, authorization: str) -> bool:
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
        try:
            claims = jwt.decode(
                credential,
                self._public_key,
                algorithms=["RS256"],
                options={"require": ["iss", "exp", "iat"]},
            )
        except jwt.PyJWTError:
            return False
        return str(claims["iss"]) == str(self.app_id)

    def _installation_token_valid(self, authorization: str) -> bool:
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() not in ("token", "bearer") or credential not in self._tokens:
            return False
        _installation, expires = self._tokens[credential]
        return expires > time.time()

    def _next_id(self) -> int:
        return next(self._ids)

    # --- app endpoints -----------------------------------------------------------------

    def _get_app(self, *, body, query) -> Reply:
        return Reply(200, {
            "id": self.app_id,
            "slug": "release-pipeline",
            "name": "Release Pipeline",
            "owner": _user("acme", 2, "Organization"),
            "html_url": f"{WEB_URL}/apps/release-pipeline",
            "created_at": _now(),
            "updated_at": _now(),
            "permissions": {"statuses": "write", "deployments": "write"},
            "events": ["push", "pull_request", "issue_comment"],
        })

    def _create_token(self, installation_id: str, *, body, query) -> Reply:
        token = "ghs_" + secrets.token_urlsafe(27).replace("-", "a").replace("_", "b")
        expires = datetime.now(timezone.utc) + timedelta(hours=1)
        self._tokens[token] = (int(installation_id), expires.timestamp())
        self.tokens_issued += 1
        self.issued_tokens.append(token)
        return Reply(201, {
            "token": token,
            "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "permissions": {"statuses": "write", "deployments": "write", "contents": "write"},
            "repository_selection": "all",
        })

    def _get_installation(self, owner: str, repo: str, *, body, query) -> Reply:
        installation_id = self.installations.get(f"{owner}/{repo}")
        if installation_id is None:
            return _not_found()
        return Reply(200, {
            "id": installation_id,
            "account": _user(owner, 2, "Organization"),
            "app_id": self.app_id,
            "target_type": "Organization",
            "repository_selection": "all",
            "html_url": f"{WEB_URL}/organizations/{owner}/settings/installations/{installation_id}",
            "created_at": _now(),
            "updated_at": _now(),
        })

    def _convert_manifest(self, code: str, *, body, query) -> Reply:
        manifest = self.manifest_codes.pop(code, None)  # codes work once
        if manifest is None:
            return _not_found()
        app_id = self.app_id + 1 + len(self.registered_apps)
        slug = re.sub(r"[^a-z0-9]+", "-", manifest.get("name", "app").lower()).strip("-")
        created = {
            "id": app_id,
            "slug": slug,
            "node_id": f"A_{app_id}",
            "owner": _user("acme", 2, "Organization"),
            "name": manifest.get("name", slug),
            "description": manifest.get("description", ""),
            "external_url": manifest["url"],
            "html_url": f"{WEB_URL}/apps/{slug}",
            "created_at": _now(),
            "updated_at": _now(),
            "permissions": manifest.get("default_permissions", {}),
            "events": manifest.get("default_events", []),
            "installations_count": 0,
            "client_id": "Iv1." + secrets.token_hex(8),
            "client_secret": secrets.token_hex(20),
            "webhook_secret": secrets.token_hex(20),
            "pem": generate_private_key_pem(),
        }
        self.registered_apps.append({**created, "manifest": manifest})
        return Reply(201, created)

    def _list_deliveries(self, *, body, query) -> Reply:
        """Newest first, paged by an opaque cursor in the Link header, as GitHub does."""
        per_page = int(query.get("per_page", 30))
        start = int(query.get("cursor", "0").removeprefix("v1_") or 0)
        headers = {}
        if start + per_page < len(self.deliveries):
            next_url = f"{self.url}/app/hook/deliveries?per_page={per_page}&cursor=v1_{start + per_page}"
            headers["Link"] = f'<{next_url}>; rel="next"'
        return Reply(200, self.deliveries[start : start + per_page], headers)

    def _redeliver(self, delivery_id: str, *, body, query) -> Reply:
        original = next((d for d in self.deliveries if str(d.get("id")) == delivery_id), None)
        if original is None:
            return _not_found()
        code = self.redelivery_status_code
        self.deliveries.insert(0, {
            **original,
            "id": self._next_id(),
            "delivered_at": _now(),
            "redelivery": True,
            "status_code": code,
            "status": "OK" if 200 <= code < 300 else f"Invalid HTTP Response: {code}",
        })
        return Reply(202, {})

    # --- repository endpoints ----------------------------------------------------------

    def _create_status(self, owner: str, repo: str, sha: str, *, body, query) -> Reply:
        full_name = f"{owner}/{repo}"
        status = {
            "id": self._next_id(),
            "node_id": "SC_x",
            "url": f"{self.url}/repos/{full_name}/statuses/{sha}",
            "avatar_url": BOT["avatar_url"],
            "state": body["state"],
            "description": body.get("description"),
            "target_url": body.get("target_url"),
            "context": body.get("context", "default"),
            "created_at": _now(),
            "updated_at": _now(),
            "creator": BOT,
        }
        self.statuses.setdefault((full_name, sha), []).append(status)
        return Reply(201, status)

    def _create_deployment(self, owner: str, repo: str, *, body, query) -> Reply:
        full_name = f"{owner}/{repo}"
        ref = body["ref"]
        if "required_contexts" not in body:
            # GitHub requires every context on the ref to be green unless told otherwise.
            latest = {s["context"]: s["state"] for s in self.statuses.get((full_name, ref), [])}
            if any(state != "success" for state in latest.values()):
                return Reply(409, {"message": f"Conflict: Commit status checks failed for {ref}."})
        deployment_id = self._next_id()
        environment = body.get("environment", "production")
        deployment = {
            "id": deployment_id,
            "node_id": f"DE_{deployment_id}",
            "url": f"{self.url}/repos/{full_name}/deployments/{deployment_id}",
            "sha": ref,
            "ref": ref,
            "task": body.get("task", "deploy"),
            "payload": body.get("payload", {}),
            "original_environment": environment,
            "environment": environment,
            "description": body.get("description"),
            "creator": BOT,
            "created_at": _now(),
            "updated_at": _now(),
            "statuses_url": f"{self.url}/repos/{full_name}/deployments/{deployment_id}/statuses",
            "repository_url": f"{self.url}/repos/{full_name}",
            "transient_environment": body.get("transient_environment", False),
            "production_environment": body.get(
                "production_environment", environment == "production"
            ),
        }
        self.deployments[deployment_id] = {**deployment, "repo": full_name, "statuses": []}
        return Reply(201, deployment)

    def _create_deployment_status(
        self, owner: str, repo: str, deployment_id: str, *, body, query
    ) -> Reply:
        full_name = f"{owner}/{repo}"
        deployment = self.deployments.get(int(deployment_id))
        if deployment is None or deployment["repo"] != full_name:
            return _not_found()
        status = {
            "id": self._next_id(),
            "node_id": "DES_x",
            "url": f"{deployment['url']}/statuses",
            "state": body["state"],
            "creator": BOT,
            "description": body.get("description", ""),
            "environment": body.get("environment", deployment["environment"]),
            "target_url": body.get("target_url", ""),
            "log_url": body.get("log_url", ""),
            "environment_url": body.get("environment_url", ""),
            "created_at": _now(),
            "updated_at": _now(),
            "deployment_url": deployment["url"],
            "repository_url": deployment["repository_url"],
        }
        if body["state"] == "success" and body.get("auto_inactive", True):
            # GitHub marks earlier successful deployments of the environment inactive.
            for other in self.deployments.values():
                states = [s["state"] for s in other["statuses"]]
                if (other is not deployment and other["repo"] == full_name
                        and other["environment"] == deployment["environment"]
                        and not other.get("transient_environment")
                        and "success" in states and states[-1] != "inactive"):
                    other["statuses"].append({**status, "id": self._next_id(), "state": "inactive",
                                              "description": "", "deployment_url": other["url"]})
        deployment["statuses"].append(status)
        return Reply(201, status)

    def _comment_json(self, comment: dict) -> dict:
        full_name, number = comment["repo"], comment["issue_number"]
        return {
            "id": comment["id"],
            "node_id": f"IC_{comment['id']}",
            "url": f"{self.url}/repos/{full_name}/issues/comments/{comment['id']}",
            "html_url": f"{WEB_URL}/{full_name}/issues/{number}#issuecomment-{comment['id']}",
            "issue_url": f"{self.url}/repos/{full_name}/issues/{number}",
            "body": comment["body"],
            "user": BOT,
            "created_at": comment["created_at"],
            "updated_at": _now(),
            "author_association": "NONE",
        }

    def _create_comment(self, owner: str, repo: str, number: str, *, body, query) -> Reply:
        if not body or not body.get("body"):
            return Reply(422, {"message": "Validation Failed"})
        comment_id = self._next_id()
        self.comments[comment_id] = {
            "id": comment_id,
            "repo": f"{owner}/{repo}",
            "issue_number": int(number),
            "body": body["body"],
            "created_at": _now(),
            "reactions": [],
        }
        return Reply(201, self._comment_json(self.comments[comment_id]))

    def _update_comment(self, owner: str, repo: str, comment_id: str, *, body, query) -> Reply:
        comment = self.comments.get(int(comment_id))
        if comment is None or comment["repo"] != f"{owner}/{repo}":
            return _not_found()
        comment["body"] = body["body"]
        return Reply(200, self._comment_json(comment))

    def _add_reaction(self, owner: str, repo: str, comment_id: str, *, body, query) -> Reply:
        content = (body or {}).get("content")
        if content not in REACTIONS:
            return Reply(422, {"message": "Validation Failed"})
        # Comments written by people (seen in webhooks) are not in `self.comments`: accept any.
        comment = self.comments.get(int(comment_id))
        if comment is not None:
            comment["reactions"].append(content)
        return Reply(201, {
            "id": self._next_id(),
            "node_id": "REA_x",
            "user": BOT,
            "content": content,
            "created_at": _now(),
        })

    def _permission(self, owner: str, repo: str, username: str, *, body, query) -> Reply:
        role = self.permissions.get((f"{owner}/{repo}", username))
        if role is None:
            return _not_found()
        return Reply(200, {
            "permission": LEGACY_PERMISSION.get(role, role),
            "role_name": role,
            "user": _user(username, 100 + len(username)),
        })

    def _pull_json(self, full_name: str, number: int) -> dict:
        stored = self.pulls[(full_name, number)]
        return {
            "id": 500000 + number,
            "node_id": f"PR_{number}",
            "number": number,
            "state": "open",
            "title": f"Pull request {number}",
            "body": "",
            "draft": False,
            "merged": False,
            "user": _user("alice", 101),
            "html_url": f"{WEB_URL}/{full_name}/pull/{number}",
            "url": f"{self.url}/repos/{full_name}/pulls/{number}",
            "created_at": _now(),
            "updated_at": _now(),
            **stored,
            "head": {"ref": "feature", "sha": "0" * 40, **stored.get("head", {})},
            "base": {"ref": "main", "sha": "1" * 40, **stored.get("base", {})},
        }

    def _get_pull(self, owner: str, repo: str, number: str, *, body, query) -> Reply:
        if (f"{owner}/{repo}", int(number)) not in self.pulls:
            return _not_found()
        return Reply(200, self._pull_json(f"{owner}/{repo}", int(number)))

    def _list_reviews(self, owner: str, repo: str, number: str, *, body, query) -> Reply:
        full_name = f"{owner}/{repo}"
        per_page, page = int(query.get("per_page", 30)), int(query.get("page", 1))
        reviews = self.reviews.get((full_name, int(number)), [])
        page_items = reviews[(page - 1) * per_page : page * per_page]
        headers = {}
        if page * per_page < len(reviews):
            next_url = f"{self.url}/repos/{full_name}/pulls/{number}/reviews"
            headers["Link"] = f'<{next_url}?per_page={per_page}&page={page + 1}>; rel="next"'
        def user(login_or_user):
            return _user(login_or_user) if isinstance(login_or_user, str) else login_or_user

        return Reply(200, [
            {
                "id": 700000 + index,
                "node_id": "PRR_x",
                "submitted_at": _now(),
                "body": "",
                # GitHub records the head the review was given on; by default the PR's head now.
                "commit_id": ((self.pulls.get((full_name, int(number))) or {}).get("head") or {}).get("sha", "0" * 40),
                "author_association": "MEMBER",
                "html_url": f"{WEB_URL}/{full_name}/pull/{number}#pullrequestreview",
                "pull_request_url": f"{self.url}/repos/{full_name}/pulls/{number}",
                **review,
                "user": user(review["user"]),
            }
            for index, review in enumerate(page_items, start=(page - 1) * per_page)
        ], headers)

    def _get_commit(self, owner: str, repo: str, sha: str, *, body, query) -> Reply:
        date = self.commit_dates.get((f"{owner}/{repo}", sha), "2000-01-01T00:00:00Z")
        person = {"name": "Octo Cat", "email": "octocat@example.test", "date": date}
        return Reply(200, {"sha": sha, "node_id": "C_x", "url": f"{self.url}/repos/{owner}/{repo}/git/commits/{sha}",
                           "html_url": f"{WEB_URL}/{owner}/{repo}/commit/{sha}", "author": person,
                           "committer": person, "message": "commit", "tree": {"sha": "0" * 40, "url": ""},
                           "parents": [], "verification": {"verified": False, "reason": "unsigned",
                                                           "signature": None, "payload": None}})

    def _create_ref(self, owner: str, repo: str, *, body, query) -> Reply:
        full_name, ref = f"{owner}/{repo}", body.get("ref", "")
        if not ref.startswith("refs/") or ref.count("/") < 2:
            return Reply(422, {"message": f"'{ref}' is not a valid ref name."})
        if (full_name, ref) in self.refs:
            return Reply(422, {"message": "Reference already exists"})
        self.refs[(full_name, ref)] = body["sha"]
        return Reply(201, {
            "ref": ref,
            "node_id": "REF_x",
            "url": f"{self.url}/repos/{full_name}/git/{ref}",
            "object": {
                "sha": body["sha"],
                "type": "commit",
                "url": f"{self.url}/repos/{full_name}/git/commits/{body['sha']}",
            },
        })

    def _open_pulls(self, full_name: str) -> list[dict]:
        return [
            self._pull_json(full_name, number)
            for (repo, number) in sorted(self.pulls)
            if repo == full_name and self.pulls[(repo, number)].get("state", "open") == "open"
        ]

    def _create_pull(self, owner: str, repo: str, *, body, query) -> Reply:
        full_name = f"{owner}/{repo}"
        for pull in self._open_pulls(full_name):
            if pull["head"]["ref"] == body["head"] and pull["base"]["ref"] == body["base"]:
                message = f"A pull request already exists for {owner}:{body['head']}."
                errors = [{"message": message}]
                return Reply(422, {"message": "Validation Failed", "errors": errors})
        number = max([n for (r, n) in self.pulls if r == full_name], default=0) + 1
        self.pulls[(full_name, number)] = {
            "title": body["title"],
            "body": body.get("body", ""),
            "user": BOT,
            "head": {"ref": body["head"], "label": f"{owner}:{body['head']}"},
            "base": {"ref": body["base"], "label": f"{owner}:{body['base']}"},
        }
        return Reply(201, self._pull_json(full_name, number))

    def _list_pulls(self, owner: str, repo: str, *, body, query) -> Reply:
        full_name = f"{owner}/{repo}"
        pulls = self._open_pulls(full_name) if query.get("state", "open") == "open" else [
            self._pull_json(r, n) for (r, n) in sorted(self.pulls) if r == full_name
        ]
        if "head" in query:
            head_owner, _, head_ref = query["head"].rpartition(":")
            pulls = [
                p for p in pulls
                if p["head"]["ref"] == head_ref and head_owner in ("", owner)
            ]
        if "base" in query:
            pulls = [p for p in pulls if p["base"]["ref"] == query["base"]]
        return Reply(200, pulls)


def _routes() -> list[tuple[str, str, Any, Any]]:
    """(path pattern, method, handler, credential check) for every endpoint served."""
    S = GitHubStandIn
    app, token = S._app_jwt_valid, S._installation_token_valid
    name = r"([^/]+)"
    repo = rf"/repos/{name}/{name}"
    return [
        (r"/app", "GET", S._get_app, app),
        (r"/app/installations/(\d+)/access_tokens", "POST", S._create_token, app),
        (r"/app/hook/deliveries", "GET", S._list_deliveries, app),
        (r"/app/hook/deliveries/(\d+)/attempts", "POST", S._redeliver, app),
        (r"/app-manifests/([^/]+)/conversions", "POST", S._convert_manifest, lambda _s, _a: True),
        (rf"{repo}/installation", "GET", S._get_installation, app),
        (rf"{repo}/statuses/{name}", "POST", S._create_status, token),
        (rf"{repo}/deployments", "POST", S._create_deployment, token),
        (rf"{repo}/deployments/(\d+)/statuses", "POST", S._create_deployment_status, token),
        (rf"{repo}/issues/(\d+)/comments", "POST", S._create_comment, token),
        (rf"{repo}/issues/comments/(\d+)", "PATCH", S._update_comment, token),
        (rf"{repo}/issues/comments/(\d+)/reactions", "POST", S._add_reaction, token),
        (rf"{repo}/collaborators/{name}/permission", "GET", S._permission, token),
        (rf"{repo}/pulls/(\d+)", "GET", S._get_pull, token),
        (rf"{repo}/pulls/(\d+)/reviews", "GET", S._list_reviews, token),
        (rf"{repo}/git/refs", "POST", S._create_ref, token),
        (rf"{repo}/git/commits/([0-9a-f]{{40}})", "GET", S._get_commit, token),
        (rf"{repo}/pulls", "POST", S._create_pull, token),
        (rf"{repo}/pulls", "GET", S._list_pulls, token),
    ]


ROUTES = _routes()


@pytest.fixture(scope="session")
def github_app_private_key() -> str:
    """One RSA key per test session: generating one takes tens of milliseconds."""
    return generate_private_key_pem()


@pytest.fixture
def github(github_app_private_key: str):
    """A fresh GitHub stand-in on a random port, stopped after the test."""
    standin = GitHubStandIn(github_app_private_key)
    standin.serve()
    try:
        yield standin
    finally:
        standin.stop()
