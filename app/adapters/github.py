"""The only module that talks to GitHub, so the rest of the code speaks the domain.

githubkit does the HTTP, but with its automatic retries switched off: a retried POST can
create a second comment or deployment, and its rate-limit retry sleeps inside the job. Our
RQ jobs retry instead, driven by `TransientGitHubError.retry_after`. Every githubkit error
is translated in `_github_errors`, into short messages that never carry a token.

Installation tokens live in Redis, encrypted, because RQ forks a process per job and every
process would otherwise mint its own token.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

import httpx
from cryptography.fernet import Fernet, InvalidToken
from githubkit import AppAuthStrategy, GitHub, TokenAuthStrategy, UnauthAuthStrategy
from githubkit.cache import MemCacheStrategy
from githubkit.exception import (
    RateLimitExceeded,
    RequestError,
    RequestFailed,
    RequestTimeout,
)
from redis import Redis

from app.exceptions import GitHubError, SettingsError, TransientGitHubError
from app.metrics import GITHUB_CALLS
from app.settings import Settings

TOKEN_CACHE_KEY = "rp:github:token:{installation_id}"
#: A cached token is dropped this long before GitHub expires it, so no job starts with a
#: token that dies halfway through.
TOKEN_EXPIRY_MARGIN_SECONDS = 5 * 60
REQUEST_TIMEOUT_SECONDS = 20.0
STATUS_DESCRIPTION_LIMIT = 140
PAGE_SIZE = 100
RATE_LIMIT_DEFAULT_WAIT = 60.0
#: `permission` collapses maintain→write and triage→read; `role_name` keeps them apart.
BASE_ROLES = ("admin", "maintain", "write", "triage", "read", "none")

_SECRET_PATTERNS = re.compile(
    r"gh[opsur]_[A-Za-z0-9_]+"  # GitHub tokens
    r"|eyJ[\w-]+\.[\w-]+\.[\w-]+"  # JWTs
)


def _scrub(text: str) -> str:
    return _SECRET_PATTERNS.sub("[redacted]", text)


def _github_message(response: httpx.Response) -> str:
    """GitHub's own `message`, shortened and scrubbed; empty for non-JSON bodies (HTML 502s)."""
    try:
        message = response.json().get("message", "")
    except (ValueError, AttributeError):
        return ""
    return _scrub(str(message))[:200]


def _where(request: httpx.Request) -> str:
    return f"GitHub {request.method} {request.url.path}"


@contextmanager
def _github_errors(on_unauthorized: Callable[[], None] | None = None) -> Iterator[None]:
    """Translate githubkit's errors into ours: transient ones are worth a job retry.

    `on_unauthorized`, when given, turns a 401 into a transient error after running it
    (used to forget a revoked installation token, so the retry fetches a fresh one).
    Exceptions are raised `from None`: the originals hold the request and its headers.
    """
    outcome = "error"
    try:
        yield
        outcome = "ok"
    except RateLimitExceeded as exc:
        outcome = "rate_limited"
        raise TransientGitHubError(
            f"{_where(exc.request)}: rate limited ({exc.response.status_code})",
            retry_after=exc.retry_after.total_seconds(),
        ) from None
    except RequestFailed as exc:
        response = exc.response.raw_response
        status, message = response.status_code, _github_message(response)
        summary = f"{_where(exc.request)}: {status} {message}".rstrip()
        if status == 401 and on_unauthorized is not None:
            on_unauthorized()
            raise TransientGitHubError(summary) from None
        outcome = "not_found" if status == 404 else "error"
        if status in (403, 429) and "rate limit" in message.lower():
            outcome = "rate_limited"
            # GitHub's advice when a limit comes without headers: wait at least a minute.
            raise TransientGitHubError(summary, retry_after=RATE_LIMIT_DEFAULT_WAIT) from None
        if status >= 500 or status == 429:
            raise TransientGitHubError(summary, retry_after=_retry_after_header(response)) from None
        raise GitHubError(summary) from None
    except RequestTimeout as exc:
        outcome = "unreachable"
        raise TransientGitHubError(f"{_where(exc.request)}: timed out") from None
    except RequestError as exc:
        outcome = "unreachable"
        reason = type(exc.exc).__name__
        if isinstance(exc.exc, httpx.TransportError):
            raise TransientGitHubError(f"GitHub unreachable ({reason})") from None
        raise GitHubError(f"GitHub request not sent ({reason})") from None
    finally:
        GITHUB_CALLS.labels(outcome=outcome).inc()


def _retry_after_header(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def _next_cursor(link_header: str) -> str | None:
    """The `cursor` of the rel="next" link, if there is one."""
    match = re.search(r'<([^>]+)>\s*;\s*rel="next"', link_header)
    if match is None:
        return None
    values = parse_qs(urlsplit(match.group(1)).query).get("cursor")
    return values[0] if values else None


def _parse_time(value: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _split_repo(full_name: str) -> tuple[str, str]:
    owner, _, repo = full_name.partition("/")
    if not owner or not repo or "/" in repo:
        raise GitHubError(f"not a repository name: {full_name!r}")
    return owner, repo


def convert_manifest_code(api_url: str, code: str) -> dict:
    """The manifest flow's last step: trade the one-time `code` for the new App's credentials.

    Returns GitHub's answer: id, slug, html_url, pem, webhook_secret, client_id,
    client_secret, … — secrets the caller stores and never shows.
    """
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,100}", code or ""):
        raise GitHubError("not a manifest code")
    client = GitHub(
        UnauthAuthStrategy(),
        base_url=api_url,
        auto_retry=False,
        http_cache=False,
        timeout=REQUEST_TIMEOUT_SECONDS,
        user_agent="release-pipeline",
    )
    with _github_errors():
        response = client.rest.apps.create_from_manifest(code)
    return response.json()


@dataclass(frozen=True)
class PullRequest:
    """The fields of a pull request the workers read, taken once from GitHub's JSON."""

    number: int
    title: str
    author: str | None
    head_sha: str | None
    head_ref: str
    base_ref: str
    html_url: str | None
    #: The head's repository (`owner/name`): another one than the base's is a fork.
    head_repo: str | None = None
    state: str = "open"
    draft: bool = False
    updated_at: str = ""

    @classmethod
    def from_json(cls, body: dict) -> PullRequest:
        head, base = body.get("head") or {}, body.get("base") or {}
        return cls(number=body.get("number"), title=body.get("title") or "",
                   author=(body.get("user") or {}).get("login"), head_sha=head.get("sha"),
                   head_ref=head.get("ref") or "", base_ref=base.get("ref") or "", html_url=body.get("html_url"),
                   head_repo=(head.get("repo") or {}).get("full_name"), state=body.get("state") or "",
                   draft=bool(body.get("draft")), updated_at=body.get("updated_at") or "")


class GitHubApp:
    """The app's identity: a JWT for app endpoints, installation tokens for repositories."""

    def __init__(self, settings: Settings, redis: Redis):
        if settings.github_app_id is None or settings.private_key is None:
            raise SettingsError("GITHUB_APP_ID and a private key are needed to talk to GitHub")
        self._settings = settings
        self._redis = redis
        self._fernet = Fernet(settings.fernet_key)
        # githubkit opens a new httpx client per request; loading CA certificates for
        # each one costs ~50 ms, so they share one context.
        self._ssl_context = httpx.create_ssl_context()
        self._app_client = self._client(
            AppAuthStrategy(str(settings.github_app_id), settings.private_key),
            # githubkit's default cache is process-global and keyed by app id only; a
            # private one keeps a JWT signed with one key from serving another instance.
            cache_strategy=MemCacheStrategy(),
        )

    def _client(self, auth, **options) -> GitHub:
        return GitHub(
            auth,
            base_url=self._settings.github_api_url,
            auto_retry=False,
            http_cache=False,
            timeout=REQUEST_TIMEOUT_SECONDS,
            ssl_verify=self._ssl_context,
            user_agent="release-pipeline",
            **options,
        )

    def whoami(self) -> dict:
        """The app as GitHub sees it (GET /app): proves the app id, key and API URL agree."""
        with _github_errors():
            return self._app_client.rest.apps.get_authenticated().json()

    def installation_token(self, installation_id: int) -> str:
        """A token for the installation, shared by all workers through Redis (encrypted)."""
        key = TOKEN_CACHE_KEY.format(installation_id=installation_id)
        cached = self._redis.get(key)
        if cached is not None:
            try:
                return self._fernet.decrypt(cached).decode()
            except InvalidToken:  # SECRET_KEY changed: mint a new token below
                pass
        with _github_errors():
            response = self._app_client.rest.apps.create_installation_access_token(
                installation_id
            )
        body = response.json()
        token = body["token"]
        expires_at = datetime.fromisoformat(body["expires_at"])
        ttl = (expires_at - datetime.now(timezone.utc)).total_seconds()
        ttl -= TOKEN_EXPIRY_MARGIN_SECONDS
        if ttl >= 1:
            self._redis.set(key, self._fernet.encrypt(token.encode()), ex=int(ttl))
        return token

    def _forget_installation_token(self, installation_id: int) -> None:
        self._redis.delete(TOKEN_CACHE_KEY.format(installation_id=installation_id))

    def installation_for_repo(self, full_name: str) -> int:
        owner, repo = _split_repo(full_name)
        with _github_errors():
            response = self._app_client.rest.apps.get_repo_installation(owner, repo)
        return int(response.json()["id"])

    def list_hook_deliveries(
        self, since: datetime | None = None, per_page: int = PAGE_SIZE, max_pages: int = 50
    ) -> list[dict]:
        """The app's webhook deliveries, newest first, back to `since` (else one page).

        GitHub pages this list with a cursor (`Link: <…?cursor=…>; rel="next"`); after a long
        outage of this service there are more than a page of them.
        """
        deliveries: list[dict] = []
        cursor: str | None = None
        for _ in range(max_pages):
            options = {"per_page": per_page} | ({"cursor": cursor} if cursor else {})
            with _github_errors():
                response = self._app_client.rest.apps.list_webhook_deliveries(**options)
            page = response.json()
            deliveries.extend(page)
            cursor = _next_cursor(response.headers.get("link", ""))
            if since is None or not page or cursor is None:
                break
            oldest = _parse_time(page[-1].get("delivered_at"))
            if oldest is not None and oldest < since:
                break
        return deliveries

    def redeliver(self, delivery_id: int) -> None:
        with _github_errors():
            self._app_client.rest.apps.redeliver_webhook_delivery(delivery_id)

    def repo(self, installation_id: int, full_name: str) -> RepoClient:
        return RepoClient(self, installation_id, full_name)

    def _installation_client(self, installation_id: int) -> GitHub:
        return self._client(TokenAuthStrategy(self.installation_token(installation_id)))


class RepoClient:
    """One repository, seen through its installation's token."""

    def __init__(self, app: GitHubApp, installation_id: int, full_name: str):
        self.owner, self.name = _split_repo(full_name)
        self.full_name = full_name
        self._app = app
        self._installation_id = installation_id

    @contextmanager
    def _github(self) -> Iterator[GitHub]:
        """A client on the installation token, errors translated; a 401 forgets the token."""
        with _github_errors(
            on_unauthorized=lambda: self._app._forget_installation_token(self._installation_id)
        ):
            yield self._app._installation_client(self._installation_id)

    def create_status(
        self,
        sha: str,
        *,
        state: str,
        context: str,
        description: str | None = None,
        target_url: str | None = None,
    ) -> None:
        fields = {"state": state, "context": context}
        if description is not None:
            fields["description"] = description[:STATUS_DESCRIPTION_LIMIT]
        if target_url is not None:
            fields["target_url"] = target_url
        with self._github() as github:
            github.rest.repos.create_commit_status(self.owner, self.name, sha, **fields)

    def create_deployment(
        self,
        *,
        ref: str,
        environment: str,
        payload: dict,
        description: str,
        production_environment: bool,
        transient_environment: bool = False,
    ) -> int:
        """Create a deployment; never auto-merges and never waits for other status checks."""
        with self._github() as github:
            response = github.rest.repos.create_deployment(
                self.owner,
                self.name,
                ref=ref,
                environment=environment,
                payload=payload,
                description=description,
                production_environment=production_environment,
                transient_environment=transient_environment,
                auto_merge=False,
                required_contexts=[],
            )
        body = response.json()
        if response.status_code != 201 or "id" not in body:
            message = _scrub(str(body.get("message", "")))[:200]
            raise GitHubError(
                f"GitHub did not create the deployment ({response.status_code}) {message}".rstrip()
            )
        return int(body["id"])

    def create_deployment_status(
        self,
        deployment_id: int,
        *,
        state: str,
        environment_url: str | None = None,
        log_url: str | None = None,
        description: str | None = None,
        auto_inactive: bool = True,
    ) -> None:
        fields = {"state": state, "auto_inactive": auto_inactive}
        optional = {"environment_url": environment_url, "log_url": log_url}
        if description is not None:
            optional["description"] = description[:STATUS_DESCRIPTION_LIMIT]
        fields.update({name: value for name, value in optional.items() if value is not None})
        with self._github() as github:
            github.rest.repos.create_deployment_status(
                self.owner, self.name, deployment_id, **fields
            )

    def create_comment(self, issue_number: int, body: str) -> int:
        with self._github() as github:
            response = github.rest.issues.create_comment(
                self.owner, self.name, issue_number, body=body
            )
        return int(response.json()["id"])

    def update_comment(self, comment_id: int, body: str) -> None:
        with self._github() as github:
            github.rest.issues.update_comment(self.owner, self.name, comment_id, body=body)

    def add_reaction(self, comment_id: int, content: str) -> None:
        """React to an issue or pull-request comment ("+1", "-1", "rocket", "eyes", ...)."""
        with self._github() as github:
            github.rest.reactions.create_for_issue_comment(
                self.owner, self.name, comment_id, content=content
            )

    def collaborator_permission(self, username: str) -> str:
        """The user's base role on the repository; "none" when GitHub does not know them."""
        with self._github() as github:
            try:
                response = github.rest.repos.get_collaborator_permission_level(
                    self.owner, self.name, username
                )
            except RequestFailed as exc:
                if exc.response.status_code == 404:
                    return "none"
                raise
        body = response.json()
        role = body.get("role_name")
        return role if role in BASE_ROLES else body.get("permission") or "none"

    def list_reviews(self, pr_number: int) -> list[dict]:
        """Every review of the pull request, oldest first: id, user (login), state, submitted_at and
        the commit_id it reviewed (an approval counts for that commit only)."""
        reviews: list[dict] = []
        page = 1
        while True:
            with self._github() as github:
                response = github.rest.pulls.list_reviews(
                    self.owner, self.name, pr_number, per_page=PAGE_SIZE, page=page
                )
            batch = response.json()
            reviews.extend(
                {
                    "id": review["id"],
                    "user": (review.get("user") or {}).get("login"),
                    "state": review["state"],
                    "submitted_at": review.get("submitted_at"),
                    "commit_id": review.get("commit_id"),
                }
                for review in batch
            )
            if len(batch) < PAGE_SIZE:
                return reviews
            page += 1

    def get_pull(self, pr_number: int) -> PullRequest:
        with self._github() as github:
            return PullRequest.from_json(github.rest.pulls.get(self.owner, self.name, pr_number).json())

    def commit_date(self, sha: str) -> str | None:
        """When `sha` was committed (the committer's date, as GitHub's git data API reports it)."""
        with self._github() as github:
            body = github.rest.git.get_commit(self.owner, self.name, sha).json()
        return ((body.get("committer") or {}).get("date")) if isinstance(body, dict) else None

    def create_ref(self, ref: str, sha: str) -> None:
        """Create a git reference; `ref` is fully qualified, e.g. "refs/heads/release-1.2"."""
        with self._github() as github:
            github.rest.git.create_ref(self.owner, self.name, ref=ref, sha=sha)

    def create_pull(self, *, title: str, head: str, base: str, body: str) -> tuple[int, str]:
        with self._github() as github:
            response = github.rest.pulls.create(
                self.owner, self.name, title=title, head=head, base=base, body=body
            )
        pull = response.json()
        return int(pull["number"]), pull["html_url"]

    def find_open_pull(self, head: str, base: str) -> tuple[int, str] | None:
        """The open pull request from `head` into `base`, if any.

        `head` is a branch of this repository or "owner:branch"; GitHub's filter expects the
        qualified form, so it is always sent that way.
        """
        label = head if ":" in head else f"{self.owner}:{head}"
        branch = label.partition(":")[2]
        with self._github() as github:
            response = github.rest.pulls.list(
                self.owner, self.name, state="open", head=label, base=base, per_page=PAGE_SIZE
            )
        for pull in response.json():
            if pull["head"]["ref"] == branch and pull["base"]["ref"] == base:
                return int(pull["number"]), pull["html_url"]
        return None
