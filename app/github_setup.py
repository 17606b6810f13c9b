"""Registering the GitHub App with GitHub's manifest flow, for an installation without one.

  GET /github/register     a form that posts config/github-app-manifest.json (with this
                           installation's URLs) to GitHub, which shows it for confirmation
  GET /github/registered   GitHub sends the browser back with a one-time `code`; it is traded
                           (POST /app-manifests/{code}/conversions) for the new App's id, key
                           and secrets, which are written to var/github-app.env (mode 0600)

Only allowed while GITHUB_APP_ID is unset and no var/github-app.env exists, so a running
installation can never be re-pointed at another App. The flow is bound to the browser that
started it (a `state` kept in the session). Secrets are written to the file, never shown.
`release-pipeline up` loads the file on its next start.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import secrets
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from flask import Blueprint, abort, current_app, render_template_string, request, session

from app.exceptions import GitHubError
from app.settings import PROJECT_ROOT

log = logging.getLogger(__name__)
bp = Blueprint("github_setup", __name__)

MANIFEST_PATH = PROJECT_ROOT / "config" / "github-app-manifest.json"
ENV_FILE = PROJECT_ROOT / "var" / "github-app.env"
#: Flask config key that overrides ENV_FILE (tests).
ENV_FILE_CONFIG = "GITHUB_APP_ENV_FILE"
STATE_KEY = "github_manifest_state"
_ORG = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$")
#: What may appear inside a double-quoted value of the env file (PEM newlines become "\n").
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9 ._:/+=@-]*$")
#: GitHub's answer -> the setting it becomes.
_CREDENTIALS = {
    "id": "GITHUB_APP_ID",
    "pem": "GITHUB_PRIVATE_KEY",
    "webhook_secret": "GITHUB_WEBHOOK_SECRET",
    "client_id": "GITHUB_CLIENT_ID",
    "client_secret": "GITHUB_CLIENT_SECRET",
}


def _ctx():
    return current_app.extensions["release_pipeline"]


def env_file() -> Path:
    return Path(current_app.config.get(ENV_FILE_CONFIG) or ENV_FILE)


def manifest_for(settings, name: str | None = None) -> dict:
    """The manifest file with this installation's URLs (webhook, return address, sign-in)."""
    manifest = json.loads(MANIFEST_PATH.read_text())
    public = settings.public_url.rstrip("/")
    manifest["url"] = public
    manifest["hook_attributes"] = {**manifest.get("hook_attributes", {}), "url": f"{public}/api/github/webhooks"}
    manifest["redirect_url"] = f"{public}/github/registered"
    manifest["callback_urls"] = [f"{public}/signin/github/callback"]
    if name:
        manifest["name"] = name[:34]  # GitHub's limit for App names
    return manifest


def _refuse_if_configured() -> None:
    settings = _ctx().settings
    if settings.github_app_id is not None:
        abort(409, "GITHUB_APP_ID is set: this installation already has its GitHub App.")
    if env_file().exists():
        abort(409, f"{env_file()} already exists: restart Release Pipeline to use it "
                   "(or delete the file to register another App).")


def _page(title: str, body: str, *, status: int = 200, nonce: str = "", form_action: str = "'none'", **values):
    html = render_template_string(_LAYOUT.replace("{body}", body), title=title, nonce=nonce, **values)
    response = current_app.make_response((html, status))
    script = f"'nonce-{nonce}'" if nonce else "'none'"
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; style-src 'unsafe-inline'; script-src {script}; form-action {form_action}; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("/github/register")
def register():
    _refuse_if_configured()
    settings = _ctx().settings
    if not current_app.secret_key:
        abort(503, "SECRET_KEY is not set; the registration needs a session.")
    org = request.args.get("org", "").strip()
    if org and not _ORG.fullmatch(org):
        abort(400, "org: not a GitHub organization name")
    state = secrets.token_urlsafe(24)
    session[STATE_KEY] = state
    where = f"/organizations/{quote(org)}/settings/apps/new" if org else "/settings/apps/new"
    action = f"{settings.github_url}{where}?state={quote(state)}"
    manifest = manifest_for(settings, request.args.get("name", "").strip() or None)
    return _page(
        "Register the GitHub App",
        _REGISTER,
        nonce=secrets.token_urlsafe(16),
        form_action=settings.github_url,
        action=action,
        manifest=json.dumps(manifest),
        hook_url=manifest["hook_attributes"]["url"],
        owner=org or "your personal account",
    )


@bp.get("/github/registered")
def registered():
    _refuse_if_configured()
    expected = session.pop(STATE_KEY, None)
    state = request.args.get("state", "")
    if not expected or not hmac.compare_digest(expected.encode(), state.encode()):
        abort(400, "This registration was not started from this browser (or was already completed): "
                   "start again at /github/register.")
    code = request.args.get("code", "")
    if not code:
        abort(400, "GitHub did not send a code: start again at /github/register.")
    from app.adapters.github import convert_manifest_code

    try:
        created = convert_manifest_code(_ctx().settings.github_api_url, code)
        path = write_env_file(env_file(), created, _ctx().settings)
    except GitHubError as exc:
        log.warning("GitHub App manifest conversion failed: %s", exc)
        return _page("Registration failed", _FAILED, status=502, reason=str(exc))
    log.info("registered the GitHub App %s (id %s); credentials written to %s",
             created.get("slug"), created.get("id"), path)
    return _page(
        "GitHub App registered",
        _DONE,
        name=created.get("name") or created.get("slug"),
        app_id=created.get("id"),
        html_url=created.get("html_url", ""),
        install_url=f"{created.get('html_url', '').rstrip('/')}/installations/new",
        path=str(path),
    )


def write_env_file(path: Path, created: dict, settings) -> Path:
    """The new App's settings as KEY="value" lines, readable by this user only."""
    values = {}
    for field, name in _CREDENTIALS.items():
        value = created.get(field)
        if value in (None, ""):
            if field in ("id", "pem", "webhook_secret"):
                raise GitHubError(f"GitHub's answer has no {field}")
            continue
        text = str(value).strip().replace("\r\n", "\n").replace("\n", "\\n")
        if not _SAFE_VALUE.fullmatch(text.replace("\\n", "")):
            raise GitHubError(f"GitHub's {field} has unexpected characters")
        values[name] = text
    if settings.github_url != "https://github.com":
        values["GITHUB_URL"] = settings.github_url
    if settings.github_api_url != "https://api.github.com":
        values["GITHUB_API_URL"] = settings.github_api_url
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# The GitHub App {created.get('slug', '')} ({created.get('html_url', '')}), registered {stamp}.",
        "# Secrets: keep this file private. `release-pipeline up` loads it (set variables win).",
        *(f'{name}="{value}"' for name, value in values.items()),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines (values optionally quoted; `\\n` kept as written); comments skipped."""
    values = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.partition("=")
        name, value = name.strip().removeprefix("export ").strip(), value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        if re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
            values[name] = value
    return values


def load_env_file(path: Path = ENV_FILE, environ: dict | None = None) -> list[str]:
    """Put the file's variables into `environ` (default os.environ) where they are unset."""
    environ = os.environ if environ is None else environ
    if not Path(path).exists():
        return []
    loaded = []
    for name, value in read_env_file(path).items():
        if not environ.get(name):
            environ[name] = value
            loaded.append(name)
    return loaded


_LAYOUT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }} · Release Pipeline</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:42rem;margin:3rem auto;padding:0 1rem;color:#1f2328}
code{background:#f6f8fa;padding:.1rem .3rem;border-radius:4px}button{font:inherit;padding:.4rem 1rem}</style>
</head><body><h1>{{ title }}</h1>
{body}
</body></html>"""

_REGISTER = """<p>Sending you to GitHub to create the App for {{ owner }}. GitHub shows its name, permissions
and events for you to confirm (you may change the name there), then sends you back here.</p>
<p>Webhooks will go to <code>{{ hook_url }}</code>.</p>
<form id="manifest" method="post" action="{{ action }}">
<input type="hidden" name="manifest" value="{{ manifest }}">
<button type="submit">Continue to GitHub</button>
</form>
<script nonce="{{ nonce }}">document.getElementById("manifest").submit();</script>"""

_DONE = """<p>GitHub created the App <a href="{{ html_url }}">{{ name }}</a> (app id <code>{{ app_id }}</code>).
Its private key, webhook secret and OAuth credentials are in <code>{{ path }}</code>,
readable only by the user running Release Pipeline; they are not shown here.</p>
<ol>
<li><strong>Restart Release Pipeline</strong> (stop <code>release-pipeline up</code> and start it again): it loads
the file and starts reporting to GitHub.</li>
<li><a href="{{ install_url }}">Install the App</a> on the repositories it should deploy.</li>
</ol>"""

_FAILED = """<p>GitHub did not complete the registration: {{ reason }}.</p>
<p>The code GitHub sends back works once and for an hour. <a href="/github/register">Start again</a>.</p>"""
