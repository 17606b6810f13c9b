"""Registering the GitHub App with the manifest flow, against the GitHub stand-in over HTTP.

The browser's part is played by the Flask test client (it keeps the session cookie); the part
github.com plays (showing the manifest, sending the browser back with a code) by
`GitHubStandIn.accept_manifest`; the code is exchanged by the app over real HTTP.
"""

from __future__ import annotations

import html
import json
import logging
import re
import stat
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from app.context import Context
from app.github_setup import ENV_FILE_CONFIG, MANIFEST_PATH, load_env_file, read_env_file
from app.settings import load_settings
from app.web import create_app
from tests.conftest import SECRET_KEY, WEBHOOK_SECRET

PUBLIC = "https://deploy.example.test"


@pytest.fixture
def setup_client(make_settings, database_url, redis_conn, github, tmp_path):
    """A web app without GITHUB_APP_ID, pointed at the stand-in; its env file under tmp_path."""

    def make(**overrides):
        values = {"DATABASE_URL": database_url, "GITHUB_API_URL": github.url,
                  "GITHUB_URL": "https://github.example.test", "PUBLIC_URL": PUBLIC, **overrides}
        settings = make_settings(**values)
        flask_app = create_app(context=Context.from_settings(settings))
        flask_app.config[ENV_FILE_CONFIG] = str(tmp_path / "var" / "github-app.env")
        return flask_app.test_client()

    return make


def start(client, query: str = "") -> tuple[str, dict, str]:
    """GET /github/register; returns (form action, manifest, state) as the browser would post them."""
    response = client.get(f"/github/register{query}")
    assert response.status_code == 200, response.get_data(as_text=True)
    page = response.get_data(as_text=True)
    action = html.unescape(re.search(r'<form id="manifest" method="post" action="([^"]+)"', page).group(1))
    manifest = json.loads(html.unescape(re.search(r'name="manifest" value="([^"]+)"', page).group(1)))
    state = parse_qs(urlsplit(action).query)["state"][0]
    return action, manifest, state


def test_the_register_page_posts_the_manifest_with_this_installations_urls(setup_client):
    client = setup_client()
    response = client.get("/github/register")
    page = response.get_data(as_text=True)

    action, manifest, state = start(client)

    assert action.startswith("https://github.example.test/settings/apps/new?state=")
    assert len(state) >= 32
    assert "document.getElementById(\"manifest\").submit()" in page  # submits itself
    assert "form-action https://github.example.test" in response.headers["Content-Security-Policy"]
    assert manifest["hook_attributes"] == {"url": f"{PUBLIC}/api/github/webhooks", "active": True}
    assert manifest["redirect_url"] == f"{PUBLIC}/github/registered"
    assert manifest["url"] == PUBLIC
    assert manifest["callback_urls"] == [f"{PUBLIC}/signin/github/callback"]
    assert manifest["public"] is False
    assert manifest["default_permissions"] == {
        "contents": "write", "statuses": "write", "deployments": "write", "pull_requests": "write",
        "issues": "write", "metadata": "read",
    }
    assert manifest["default_events"] == [
        "push", "create", "delete", "pull_request", "pull_request_review", "issue_comment", "release",
    ]


def test_the_manifest_file_is_valid_for_github():
    manifest = json.loads(MANIFEST_PATH.read_text())
    assert set(manifest) >= {"name", "url", "hook_attributes", "redirect_url", "default_permissions",
                             "default_events"}
    assert len(manifest["name"]) <= 34
    # GitHub always sends installation events; it refuses them in default_events.
    assert "installation" not in manifest["default_events"]


def test_an_organization_and_a_name_can_be_chosen(setup_client):
    action, manifest, _ = start(setup_client(), "?org=acme-corp&name=Acme+Releases")
    assert action.startswith("https://github.example.test/organizations/acme-corp/settings/apps/new?state=")
    assert manifest["name"] == "Acme Releases"
    assert setup_client().get("/github/register?org=../../evil").status_code == 400


def test_the_code_becomes_a_private_env_file_and_no_secret_is_shown(setup_client, github, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    client = setup_client()
    _, manifest, state = start(client)
    code = github.accept_manifest(manifest)  # the user confirmed on github.com

    response = client.get(f"/github/registered?code={code}&state={state}")

    page = response.get_data(as_text=True)
    assert response.status_code == 200, page
    (created,) = github.registered_apps
    (conversion,) = github.calls_to("POST", f"/app-manifests/{code}/conversions")
    assert "authorization" not in {name.lower() for name in conversion.headers}
    assert created["manifest"] == manifest
    assert f"app id <code>{created['id']}</code>" in page
    assert "Restart Release Pipeline" in page
    assert f'{created["html_url"]}/installations/new' in page
    pem_body = "".join(created["pem"].strip().splitlines()[1:-1])
    for secret in (created["webhook_secret"], created["client_secret"], pem_body[:40], pem_body[-40:]):
        assert secret not in page
        assert secret not in caplog.text
    assert response.headers["Cache-Control"] == "no-store"

    path = tmp_path / "var" / "github-app.env"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    values = read_env_file(path)
    assert values["GITHUB_APP_ID"] == str(created["id"])
    assert values["GITHUB_WEBHOOK_SECRET"] == created["webhook_secret"]
    assert values["GITHUB_CLIENT_ID"] == created["client_id"]
    assert values["GITHUB_CLIENT_SECRET"] == created["client_secret"]
    assert values["GITHUB_URL"] == "https://github.example.test"
    # The file is what the next start reads: the settings take the key as GitHub issued it.
    settings = load_settings({**values, "SECRET_KEY": SECRET_KEY})
    assert settings.github_app_id == created["id"]
    assert settings.private_key.strip() == created["pem"].strip()
    assert settings.webhook_secret == created["webhook_secret"]

    # Registered once: the flow is closed now (the file exists), and the code worked once.
    assert client.get("/github/register").status_code == 409
    assert client.get(f"/github/registered?code={code}&state={state}").status_code == 409


def test_a_return_not_started_by_this_browser_is_refused(setup_client, github, tmp_path):
    client = setup_client()
    _, manifest, state = start(client)
    code = github.accept_manifest(manifest)
    stranger = setup_client()

    assert stranger.get(f"/github/registered?code={code}&state={state}").status_code == 400
    assert client.get(f"/github/registered?code={code}&state=wrong").status_code == 400
    # A refused return also spends the state: the flow has to start again.
    assert client.get(f"/github/registered?code={code}&state={state}").status_code == 400
    assert github.calls_to("POST", "/app-manifests/") == []
    assert not (tmp_path / "var" / "github-app.env").exists()


def test_a_code_github_does_not_know_is_explained_and_nothing_is_written(setup_client, github, tmp_path):
    client = setup_client()
    _, _, state = start(client)

    response = client.get(f"/github/registered?code=expired123&state={state}")

    assert response.status_code == 502
    assert "Start again" in response.get_data(as_text=True)
    assert len(github.calls_to("POST", "/app-manifests/expired123/conversions")) == 1
    assert not (tmp_path / "var" / "github-app.env").exists()


def test_registration_is_closed_when_an_app_is_configured(setup_client, github):
    client = setup_client(**github.environ)

    assert client.get("/github/register").status_code == 409
    assert client.get("/github/registered?code=abc&state=x").status_code == 409
    assert github.calls == []


def test_up_loads_the_env_file_without_overriding_set_variables(tmp_path):
    path = tmp_path / "github-app.env"
    path.write_text("# comment\nGITHUB_APP_ID=\"123\"\n"
                    "GITHUB_PRIVATE_KEY=\"-----BEGIN KEY-----\\nabc\\n-----END KEY-----\"\n"
                    "GITHUB_WEBHOOK_SECRET='from-file'\n")
    environ = {"GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET}

    assert load_env_file(path, environ) == ["GITHUB_APP_ID", "GITHUB_PRIVATE_KEY"]

    assert environ == {"GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET, "GITHUB_APP_ID": "123",
                       "GITHUB_PRIVATE_KEY": "-----BEGIN KEY-----\\nabc\\n-----END KEY-----"}
    assert load_env_file(Path(tmp_path / "missing.env"), environ) == []
