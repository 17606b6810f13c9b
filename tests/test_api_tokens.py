"""Personal API tokens: made in the portal (shown once, stored hashed), accepted by /api/v1 as a
bearer token with the owner's GitHub role on each repository, last use visible, revocable."""

from __future__ import annotations

import hashlib
import re

import pytest
from rq import Queue
from sqlalchemy import select

from app.models import ApiToken, Deployment
from tests.support.portal_data import (
    sign_in_as,
    ADMIN_TOKEN,
    add_app,
    add_deployment,
    add_log,
    csrf_from,
)

NEW_TOKEN = re.compile(r'id="new-token">(rpt_[A-Za-z0-9_-]+)<')
GITHUB_SIGN_IN = {"GITHUB_CLIENT_ID": "Iv1.client", "GITHUB_CLIENT_SECRET": "s"}


@pytest.fixture
def portal(build, github):
    ctx, flask_app = build(ADMIN_TOKEN=ADMIN_TOKEN, **GITHUB_SIGN_IN, **github.environ)
    add_app(ctx)
    return ctx, flask_app


def signed_in(flask_app, login: str, kind: str = "github"):
    client = flask_app.test_client()
    sign_in_as(client, flask_app.extensions["release_pipeline"], login, kind)
    return client


def make_token(client, name: str = "laptop") -> str:
    page = client.get("/tokens")
    made = client.post("/tokens", data={"name": name, "csrf_token": csrf_from(page.text)})
    assert made.status_code == 201, made.text
    return NEW_TOKEN.search(made.text).group(1)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_a_token_is_shown_once_and_stored_only_as_a_hash(portal, github):
    ctx, flask_app = portal
    github.permissions[("acme/shop", "rita")] = "read"
    browser = signed_in(flask_app, "rita")
    token = make_token(browser, "  CI   runner ")
    with ctx.db.session() as session:
        [row] = session.scalars(select(ApiToken)).all()
        assert (row.login, row.kind, row.name) == ("rita", "github", "CI runner")
        assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
        assert token not in {str(value) for value in row.__dict__.values()}
    listing = browser.get("/tokens").text
    assert token not in listing and token[:12] in listing and "CI runner" in listing and "never" in listing
    empty = browser.post("/tokens", data={"name": " ", "csrf_token": csrf_from(listing)})
    assert empty.status_code == 400 and "Give the token a name" in empty.text


def test_a_token_acts_with_its_owners_github_role_and_its_use_is_shown(portal, github, redis_conn):
    ctx, flask_app = portal
    add_deployment(ctx, 1, "demo", "a1b2c3d")
    github.permissions[("acme/shop", "rita")] = "read"
    github.permissions[("acme/shop", "mo")] = "maintain"
    api = flask_app.test_client()
    rita, mo = make_token(signed_in(flask_app, "rita")), make_token(signed_in(flask_app, "mo"))

    assert api.get("/api/v1/me", headers=bearer(rita)).get_json() == {
        "login": "rita", "signed_in_with": "GitHub (personal API token)", "admin_everywhere": False}
    assert api.get("/api/v1/apps/shop", headers=bearer(rita)).get_json()["your_role"] == "read"
    refused = api.post("/api/v1/apps/shop/phases/stage/promote", json={}, headers=bearer(rita))
    assert refused.status_code == 403
    assert refused.get_json()["reason"] == "promote to stage needs the maintain role (you have read)"
    assert Queue("deploys", connection=redis_conn).job_ids == []

    accepted = api.post("/api/v1/apps/shop/phases/stage/promote", json={}, headers=bearer(mo))
    assert accepted.status_code == 202  # no CSRF token needed: a bearer token is not a cookie
    assert accepted.get_json()["deployment"]["actor"] == "mo"
    assert "just now" in signed_in(flask_app, "mo").get("/tokens").text.split("<tbody>")[1]

    # The role is asked once per repository and cached (GitHub's rate limit), not per request.
    asked = len(github.calls_to("GET", "/repos/acme/shop/collaborators/rita/permission"))
    api.get("/api/v1/apps/shop", headers=bearer(rita))
    assert len(github.calls_to("GET", "/repos/acme/shop/collaborators/rita/permission")) == asked == 1


def test_revoked_tokens_and_tokens_of_switched_off_sign_ins_are_refused(build, portal, github):
    ctx, flask_app = portal
    browser = signed_in(flask_app, "rita")
    token = make_token(browser)
    page = browser.get("/tokens").text
    token_id = re.search(r'data-token="(\d+)"', page).group(1)

    other = signed_in(flask_app, "mallory")
    stolen = other.post(f"/tokens/{token_id}/revoke", data={"csrf_token": csrf_from(other.get("/tokens").text)})
    assert stolen.status_code == 404
    assert flask_app.test_client().get("/api/v1/apps", headers=bearer(token)).status_code == 200

    browser.post(f"/tokens/{token_id}/revoke", data={"csrf_token": csrf_from(page)})
    refused = flask_app.test_client().get("/api/v1/apps", headers=bearer(token))
    assert refused.status_code == 401 and "“laptop” was revoked at" in refused.get_json()["reason"]
    assert "revoked" in browser.get("/tokens").text

    # Development sign-in acts as admin: its tokens end with development mode.
    _, dev_app = build(PIPELINE_DEV="1")
    dev_token = make_token(signed_in(dev_app, "developer", kind="dev"))
    assert dev_app.test_client().get("/api/v1/apps", headers=bearer(dev_token)).status_code == 200
    _, production = build(ADMIN_TOKEN=ADMIN_TOKEN)
    gone = production.test_client().get("/api/v1/apps", headers=bearer(dev_token))
    assert gone.status_code == 401 and "no longer offers" in gone.get_json()["reason"]


def test_the_admin_token_session_is_told_to_use_the_admin_token(portal):
    _, flask_app = portal
    admin = signed_in(flask_app, "admin", kind="token")
    page = admin.get("/tokens")
    assert page.status_code == 200 and "Scripts can send that token itself" in page.text
    assert 'action="/tokens"' not in page.text
    refused = admin.post("/tokens", data={"name": "x", "csrf_token": csrf_from(page.text)})
    assert refused.status_code == 400
    assert flask_app.test_client().get("/tokens").status_code == 302  # signed out: to the sign-in page


def test_deploy_a_commit_and_read_a_deployment_by_id_with_its_live_log(portal, github, redis_conn):
    ctx, flask_app = portal
    github.permissions[("acme/shop", "wes")] = "write"
    github.permissions[("acme/shop", "rita")] = "read"
    api = flask_app.test_client()
    wes, rita = make_token(signed_in(flask_app, "wes")), make_token(signed_in(flask_app, "rita"))

    bad = api.post("/api/v1/apps/shop/phases/demo/deploy", json={"sha": "HEAD"}, headers=bearer(wes))
    assert bad.status_code == 400 and bad.get_json()["reason"].startswith("sha: must be a full 40-character")
    reader = api.post("/api/v1/apps/shop/phases/demo/deploy", json={"sha": "c" * 40}, headers=bearer(rita))
    assert reader.status_code == 403 and "needs the write role (you have read)" in reader.get_json()["reason"]
    stage = api.post("/api/v1/apps/shop/phases/stage/deploy", json={"sha": "c" * 40}, headers=bearer(wes))
    assert stage.status_code == 403
    queued = api.post("/api/v1/apps/shop/phases/demo/deploy", json={"sha": "c" * 40}, headers=bearer(wes))
    assert queued.status_code == 202
    deployment = queued.get_json()["deployment"]
    assert (deployment["phase"], deployment["sha"], deployment["version"], deployment["actor"]) == (
        "demo", "c" * 40, "ccccccc", "wes")
    assert Queue("deploys", connection=redis_conn).job_ids != []

    done = add_deployment(ctx, 1, "demo", "a1b2c3d")
    add_log(ctx, done, "fetching a1b2c3d", "succeeded")
    by_id = api.get(f"/api/v1/deployments/{done}", headers=bearer(rita)).get_json()
    assert by_id["app"] == "shop" and [line["text"] for line in by_id["log"]] == ["fetching a1b2c3d", "succeeded"]
    events = api.get(f"/api/v1/deployments/{done}/events", headers=bearer(rita))
    assert events.mimetype == "text/event-stream"
    kinds = re.findall(r"^event: (\w+)$", events.get_data(as_text=True), re.MULTILINE)
    assert kinds == ["line", "line", "status", "done"]
    assert api.get("/api/v1/deployments/999999", headers=bearer(rita)).status_code == 404
    github.permissions.pop(("acme/shop", "rita"))
    ctx.redis.flushdb()  # forget the cached role: rita is no collaborator any more
    assert api.get(f"/api/v1/deployments/{done}/events", headers=bearer(rita)).status_code == 403
    with ctx.db.session() as session:
        assert session.scalar(select(Deployment.actor).where(Deployment.id == deployment["id"])) == "wes"
