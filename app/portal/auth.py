"""Who is asking, and with which role: GitHub sign-in, the admin token, or development mode.

A person signs in once (GitHub OAuth web flow, or the admin token in a form); the cookie then
carries only the id of a server-side session (table `sessions`) holding their login and how
they signed in: signing out deletes it, and rotating ADMIN_TOKEN ends admin-token sessions. Their role on an app comes from the
repository's collaborator permission, asked through the GitHub App and cached in the session
for a few minutes, so a permission removed on GitHub stops working here soon after. API
clients send a bearer token instead: the admin token, or a personal API token a signed-in
user created (`app.api_tokens`), which acts as that user with their roles, cached in Redis.
Wrong tokens and failed sign-ins are throttled per client address (a Redis counter).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from redis.exceptions import RedisError

from app import api_tokens
from app.adapters.oauth import GitHubOAuth
from app.exceptions import GitHubError, OAuthFailed, TransientGitHubError
from app.models import App, UserSession, utcnow
from app.security import protect_forms
from app.portal.queries import aware, iso

log = logging.getLogger(__name__)
bp = Blueprint("auth", __name__)
bp.before_request(protect_forms)

#: How long a repository role read from GitHub is trusted before asking again.
ROLE_TTL_SECONDS = 300
#: Roles of at most this many repositories are kept in the (cookie) session.
ROLE_CACHE_SIZE = 40
#: Failed sign-ins and wrong bearer tokens allowed per client address in one window.
FAILURES_ALLOWED = 10
FAILURE_WINDOW_SECONDS = 60
#: How long the sign-in link `up` prints stays usable (once).
ONE_TIME_TTL_SECONDS = 24 * 3600


class Kind:
    GITHUB = "github"
    TOKEN = "token"
    DEV = "dev"
    #: The one-time sign-in link `release-pipeline up` prints.
    ONCE = "once"


@dataclass(frozen=True)
class User:
    login: str
    kind: str
    #: Set when the request came with one of the user's personal API tokens.
    token_id: int | None = None

    @property
    def is_admin_everywhere(self) -> bool:
        """The admin token and development sign-in act as repository admin on every app."""
        return self.kind in (Kind.TOKEN, Kind.DEV, Kind.ONCE)

    @property
    def description(self) -> str:
        return _DESCRIPTION[self.kind] + (" (personal API token)" if self.token_id is not None else "")


_DESCRIPTION = {Kind.GITHUB: "GitHub", Kind.TOKEN: "admin token", Kind.DEV: "development sign-in",
                Kind.ONCE: "one-time sign-in link"}


@dataclass(frozen=True)
class Methods:
    """The sign-in methods this installation offers."""

    github: bool
    token: bool
    dev: bool

    @property
    def any(self) -> bool:
        return self.github or self.token or self.dev


def _ctx():
    return current_app.extensions["release_pipeline"]


def methods() -> Methods:
    settings = _ctx().settings
    github = bool(settings.github_client_id and settings.github_client_secret)
    token = bool(settings.admin_token and settings.admin_token.get_secret_value())
    return Methods(github=github, token=token, dev=settings.pipeline_dev and not (github or token))


def _admin_token_matches(candidate: str) -> bool:
    token = _ctx().settings.admin_token
    if not token or not token.get_secret_value() or not candidate:
        return False
    return hmac.compare_digest(candidate.encode(), token.get_secret_value().encode())


def _admin_token_fingerprint() -> str | None:
    """Names the current ADMIN_TOKEN without revealing it (keyed with SECRET_KEY)."""
    settings = _ctx().settings
    if not settings.admin_token or not settings.secret_key:
        return None
    return hmac.new(settings.secret_key.get_secret_value().encode(),
                    settings.admin_token.get_secret_value().encode(), hashlib.sha256).hexdigest()


# --- throttling wrong credentials --------------------------------------------------------


def _failures_key() -> str:
    return f"rp:auth-failures:{request.remote_addr or 'unknown'}"


def refuse_if_throttled() -> None:
    """429 while this client has used up its failed attempts (also for a right token: guessing
    must not go on at full speed). Without Redis, nothing is throttled: sign-in keeps working."""
    try:
        failures = int(_ctx().redis.get(_failures_key()) or 0)
    except RedisError:
        log.warning("Redis unavailable: failed sign-ins are not throttled")
        return
    if failures >= FAILURES_ALLOWED:
        abort(429, description=f"too many failed sign-ins from this address; try again in "
                               f"{FAILURE_WINDOW_SECONDS} seconds")


def record_failure() -> None:
    try:
        with _ctx().redis.pipeline() as pipe:
            pipe.incr(_failures_key())
            pipe.expire(_failures_key(), FAILURE_WINDOW_SECONDS, nx=True)
            pipe.execute()
    except RedisError:
        log.warning("Redis unavailable: a failed sign-in was not counted")


# --- the current user --------------------------------------------------------------------


def bearer_token() -> str | None:
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    return credential.strip() if scheme.lower() == "bearer" else None


def user_from_bearer() -> User | None:
    """The API's token authentication; None when no bearer token was sent.

    A wrong token is a 401, never a silent fall-back to the session.
    """
    token = bearer_token()
    if token is None:
        return None
    refuse_if_throttled()
    if _admin_token_matches(token):
        return User(login="admin", kind=Kind.TOKEN)
    with _ctx().db.session() as db:
        row = api_tokens.find(db, token)
        if row is None:
            record_failure()
            abort(401, description="the bearer token is not the admin token or a personal API token")
        if row.revoked_at is not None:
            abort(401, description=f"the personal API token “{row.name}” was revoked at {iso(row.revoked_at)}")
        if not _offered(row.kind):
            abort(401, description=f"the personal API token “{row.name}” was made with {_DESCRIPTION[row.kind]}, "
                                   "which this installation no longer offers")
        api_tokens.mark_used(row)
        return User(login=row.login, kind=row.kind, token_id=row.id)


def _offered(kind: str) -> bool:
    """A session or personal token from a sign-in method since switched off (admin token
    removed, dev mode off, GitHub sign-in unconfigured) stops working."""
    offered = methods()
    return {Kind.GITHUB: offered.github, Kind.TOKEN: offered.token, Kind.DEV: offered.dev,
            Kind.ONCE: True}.get(kind, False)


def _session_key(raw: str) -> str:
    """Sessions are stored by a hash of their id: the table alone signs nobody in."""
    return hashlib.sha256(raw.encode()).hexdigest()


def user_from_session() -> User | None:
    raw = session.get("sid")
    if not isinstance(raw, str) or not raw:
        return None
    with _ctx().db.session() as db:
        row = db.get(UserSession, _session_key(raw))
        if row is None or aware(row.expires_at) <= utcnow():
            return None
        if row.kind == Kind.TOKEN and (row.credential is None or row.credential != _admin_token_fingerprint()):
            return None  # signed in with an admin token that has since changed
        login, kind = row.login, row.kind
    if kind not in (Kind.GITHUB, Kind.TOKEN, Kind.DEV, Kind.ONCE) or not _offered(kind):
        return None
    return User(login=login, kind=kind)


def current_user() -> User | None:
    if "user" not in g:
        g.user = user_from_session()
    return g.user


def role_for(app: App) -> str:
    """The signed-in user's repository role on `app` ("none" when unknown)."""
    user = current_user()
    if user is None:
        return "none"
    if user.is_admin_everywhere:
        return "admin"
    if user.token_id is not None:
        return _token_user_role(app, user.login)
    cache = session.get("roles") or {}
    cached = cache.get(app.full_name)
    now = time.time()
    if isinstance(cached, list) and len(cached) == 2 and cached[1] > now:
        return cached[0]
    role, cacheable = _github_role(app, user.login)
    if cacheable:
        fresh = {name: entry for name, entry in cache.items() if isinstance(entry, list) and entry[1] > now}
        fresh[app.full_name] = [role, now + ROLE_TTL_SECONDS]
        session["roles"] = dict(sorted(fresh.items(), key=lambda item: item[1][1])[-ROLE_CACHE_SIZE:])
    return role


def _token_user_role(app: App, login: str) -> str:
    """Token requests carry no session, so their roles are cached in Redis for as long."""
    ctx = _ctx()
    key = f"rp:{ctx.settings.pipeline_instance}:role:{login}:{app.full_name}"
    try:
        cached = ctx.redis.get(key)
    except RedisError:
        cached = None
    if cached is not None:
        return cached.decode()
    role, cacheable = _github_role(app, login)
    if cacheable:
        try:
            ctx.redis.set(key, role, ex=ROLE_TTL_SECONDS)
        except RedisError:
            log.warning("cannot cache %s's role on %s: Redis is unavailable", login, app.full_name)
    return role


def _github_role(app: App, login: str) -> tuple[str, bool]:
    """(role, whether to cache it): a GitHub outage must not be remembered as "none"."""
    github = _ctx().github
    if github is None or app.installation_id is None:
        return "none", True
    try:
        return github.repo(app.installation_id, app.full_name).collaborator_permission(login), True
    except TransientGitHubError as exc:
        log.warning("cannot read %s's permission on %s: %s", login, app.full_name, exc)
        return "none", False
    except GitHubError as exc:
        log.warning("cannot read %s's permission on %s: %s", login, app.full_name, exc)
        return "none", True


def open_session(ctx, user: User, *, credential: str | None = None, lifetime: timedelta) -> str:
    """Record a new server-side session; returns the id the cookie carries."""
    raw = secrets.token_urlsafe(32)
    now = utcnow()
    with ctx.db.session() as db:
        db.query(UserSession).filter(UserSession.expires_at <= now).delete()
        db.add(UserSession(id=_session_key(raw), login=user.login[:100], kind=user.kind, credential=credential,
                           created_at=now, expires_at=now + lifetime))
    return raw


def sign_in(user: User) -> None:
    session.clear()  # a fresh session (and CSRF token) for the new identity
    session.permanent = True
    credential = _admin_token_fingerprint() if user.kind == Kind.TOKEN else None
    session["sid"] = open_session(_ctx(), user, credential=credential,
                                  lifetime=current_app.permanent_session_lifetime)
    g.user = user


def sign_out() -> None:
    raw = session.get("sid")
    if isinstance(raw, str) and raw:
        with _ctx().db.session() as db:
            db.query(UserSession).filter(UserSession.id == _session_key(raw)).delete()
    session.clear()
    g.pop("user", None)


def safe_next(target: str | None) -> str:
    """Only same-site paths: `next` must not turn sign-in into an open redirect."""
    # Control characters (CR, LF) cannot go into a Location header: no redirect there either.
    if (not target or not target.startswith("/") or target.startswith("//") or "\\" in target
            or not target.isprintable()):
        return url_for("portal.apps")
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else url_for("portal.apps")


# --- pages ---------------------------------------------------------------------------------


@bp.route("/signin", methods=["GET", "POST"])
def signin():
    if not current_app.secret_key:
        abort(503, description="Sign-in needs SECRET_KEY (it signs the session cookie); set it and restart.")
    offered = methods()
    next_url = safe_next(request.values.get("next"))
    if request.method == "POST":
        if not offered.token:
            abort(404)
        refuse_if_throttled()
        if _admin_token_matches(request.form.get("token", "")):
            sign_in(User(login="admin", kind=Kind.TOKEN))
            return redirect(next_url)
        record_failure()
        flash("That is not the admin token.", "error")
        return render_template("signin.html", methods=offered, next=next_url), 401
    if current_user() is not None:
        return redirect(next_url)
    return render_template("signin.html", methods=offered, next=next_url)


def _one_time_key(instance: str, token: str) -> str:
    """Only a digest of the token is stored: reading Redis does not give a sign-in."""
    return f"release-pipeline:{instance}:signin-once:{hashlib.sha256(token.encode()).hexdigest()}"


def _one_time_keys(instance: str) -> str:
    return f"release-pipeline:{instance}:signin-once:*"


def issue_one_time_token(redis, instance: str) -> str:
    """A token that signs one browser in as admin, once, within ONE_TIME_TTL_SECONDS (for `up`)."""
    token = secrets.token_urlsafe(24)
    redis.set(_one_time_key(instance, token), "1", ex=ONE_TIME_TTL_SECONDS)
    return token


def one_time_tokens_waiting(redis, instance: str) -> int:
    """How many sign-in links `up` printed that are still unused."""
    return sum(1 for _ in redis.scan_iter(match=_one_time_keys(instance), count=100))


@bp.route("/signin/once", methods=["GET", "POST"])
def signin_once():
    """The link `up` prints: a page with one button (a GET must not spend the token: link
    previews fetch URLs), whose POST spends it and signs in as admin."""
    if not current_app.secret_key:
        abort(503, description="Sign-in needs SECRET_KEY (it signs the session cookie); set it and restart.")
    token = (request.values.get("token") or "")[:100]
    ctx = _ctx()
    key = _one_time_key(ctx.settings.pipeline_instance, token)
    if request.method == "POST":
        if token and ctx.redis.delete(key) == 1:
            log.info("signed in with the one-time sign-in link")
            sign_in(User(login="admin", kind=Kind.ONCE))
            return redirect(url_for("portal.apps"))
        return render_template("signin_once.html", usable=False), 401
    usable = bool(token) and bool(ctx.redis.exists(key))
    return render_template("signin_once.html", usable=usable, token=token), 200 if usable else 401


@bp.post("/signin/dev")
def signin_dev():
    if not methods().dev:
        abort(404)
    login = (request.form.get("login") or "developer").strip()[:39] or "developer"
    sign_in(User(login=login, kind=Kind.DEV))
    return redirect(safe_next(request.form.get("next")))


@bp.post("/signout")
def signout():
    sign_out()
    flash("Signed out.", "info")
    return redirect(url_for("auth.signin"))


def _oauth() -> GitHubOAuth:
    settings = _ctx().settings
    return GitHubOAuth(web_url=settings.github_url, api_url=settings.github_api_url,
                       client_id=settings.github_client_id,
                       client_secret=settings.github_client_secret.get_secret_value())


def _callback_url() -> str:
    return f"{_ctx().settings.public_url}{url_for('auth.github_callback')}"


@bp.get("/signin/github")
def github_start():
    if not methods().github:
        abort(404)
    state = secrets.token_urlsafe(24)
    session["oauth_state"] = state
    session["oauth_next"] = safe_next(request.args.get("next"))
    return redirect(_oauth().authorize_url(redirect_uri=_callback_url(), state=state))


@bp.get("/signin/github/callback")
def github_callback():
    if not methods().github:
        abort(404)
    expected = session.pop("oauth_state", None)
    next_url = session.pop("oauth_next", None) or url_for("portal.apps")
    state = request.args.get("state", "")
    if not expected or not hmac.compare_digest(expected.encode(), state.encode()):
        flash("The sign-in link expired or was not started here. Please try again.", "error")
        return redirect(url_for("auth.signin"))
    if request.args.get("error"):
        flash(f"GitHub did not sign you in: {request.args.get('error_description') or request.args['error']}"[:200],
              "error")
        return redirect(url_for("auth.signin"))
    code = request.args.get("code", "")
    try:
        login = _oauth().login_for(code, redirect_uri=_callback_url())
    except OAuthFailed as exc:
        log.warning("GitHub sign-in failed: %s", exc)
        flash(f"GitHub sign-in failed: {exc}", "error")
        return redirect(url_for("auth.signin"))
    sign_in(User(login=login, kind=Kind.GITHUB))
    return redirect(safe_next(next_url))
