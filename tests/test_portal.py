"""The Apps Portal's pages through the Flask test client: sign-in, CSRF, permissions, board,
profiles with inheritance, actions, the live log, and that secrets never come back."""

from __future__ import annotations

import json
import re
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from rq import Queue
from sqlalchemy import select
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from app.models import AuditEntry, Deployment, Profile
from app.portal import live_log
from tests.support.portal_data import (
    sign_in_as,
    ADMIN_TOKEN,
    add_app,
    add_deployment,
    add_log,
    csrf_from,
    set_profile,
)

SECRET = "pl41ntext-secret-value-never-shown"


@pytest.fixture
def pctx_app(build):
    return build(ADMIN_TOKEN=ADMIN_TOKEN)


@pytest.fixture
def pctx(pctx_app):
    return pctx_app[0]


@pytest.fixture
def web(pctx_app):
    return pctx_app[1].test_client()


def sign_in(client, token: str = ADMIN_TOKEN):
    page = client.get("/signin")
    return client.post("/signin", data={"token": token, "csrf_token": csrf_from(page.text)})


@pytest.fixture
def admin(web):
    response = sign_in(web)
    assert response.status_code == 302
    return web


def token_of(client, path: str) -> str:
    return csrf_from(client.get(path).text)


def deployments(ctx, **where) -> list[Deployment]:
    with ctx.db.session() as session:
        query = select(Deployment)
        for key, value in where.items():
            query = query.where(getattr(Deployment, key) == value)
        return list(session.scalars(query.order_by(Deployment.id)))


def audit_entries(ctx) -> list[AuditEntry]:
    with ctx.db.session() as session:
        return list(session.scalars(select(AuditEntry).order_by(AuditEntry.id)))


def deploy_jobs(redis_conn) -> list[str]:
    return Queue("deploys", connection=redis_conn).job_ids


# --- sign-in ----------------------------------------------------------------------------------


def test_every_page_requires_sign_in(web, pctx):
    add_app(pctx)
    for path in ("/", "/apps/shop", "/apps/shop/phases/demo", "/apps/shop/phases/stage/profile",
                 "/apps/shop/compare", "/apps/shop/audit", "/apps/shop/phases/live/rollback"):
        response = web.get(path)
        assert response.status_code == 302, path
        assert response.location.startswith("/signin?next="), path
    events = web.get("/apps/shop/deployments/1/events")
    assert events.status_code == 401 and events.get_json()["error"] == "unauthorized"


def test_admin_token_signs_in_and_a_wrong_one_does_not(web, pctx):
    add_app(pctx)
    wrong = sign_in(web, "not-the-token")
    assert wrong.status_code == 401 and "That is not the admin token." in wrong.text
    assert web.get("/").status_code == 302

    right = sign_in(web)
    assert right.status_code == 302 and right.location == "/"
    home = web.get("/")
    assert home.status_code == 200 and "shop" in home.text and "admin token" in home.text

    signout = web.post("/signout", data={"csrf_token": csrf_from(home.text)})
    assert signout.status_code == 302 and web.get("/").status_code == 302


def test_sign_in_returns_to_the_page_asked_for_but_never_off_site(web, pctx):
    add_app(pctx)
    page = web.get("/signin?next=/apps/shop")
    response = web.post("/signin", data={"token": ADMIN_TOKEN, "next": "/apps/shop",
                                         "csrf_token": csrf_from(page.text)})
    assert response.location == "/apps/shop"
    web.post("/signout", data={"csrf_token": token_of(web, "/")})
    for evil in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        page = web.get("/signin")
        response = web.post("/signin", data={"token": ADMIN_TOKEN, "next": evil, "csrf_token": csrf_from(page.text)})
        assert response.location == "/", evil
        web.post("/signout", data={"csrf_token": token_of(web, "/")})


def test_session_cookie_is_http_only_and_lax_and_secure_behind_https(build):
    _, flask_app = build(ADMIN_TOKEN=ADMIN_TOKEN)
    response = sign_in(flask_app.test_client())
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie

    _, secure_app = build(ADMIN_TOKEN=ADMIN_TOKEN, PUBLIC_URL="https://pipeline.example.com")
    client = secure_app.test_client()
    page = client.get("/signin", base_url="https://pipeline.example.com")
    response = client.post("/signin", base_url="https://pipeline.example.com",
                           headers={"Referer": "https://pipeline.example.com/signin"},
                           data={"token": ADMIN_TOKEN, "csrf_token": csrf_from(page.text)})
    assert response.status_code == 302
    assert "Secure" in response.headers["Set-Cookie"]


def test_dev_sign_in_only_without_other_methods_and_says_so(build):
    ctx, flask_app = build(PIPELINE_DEV="1")
    add_app(ctx)
    client = flask_app.test_client()
    page = client.get("/signin")
    assert "Development mode" in page.text and 'name="token"' not in page.text
    response = client.post("/signin/dev", data={"login": "dana", "csrf_token": csrf_from(page.text)})
    assert response.status_code == 302
    board = client.get("/apps/shop")
    assert board.status_code == 200 and "Development sign-in." in board.text and "dana" in board.text

    # With an admin token configured, the dev door is closed.
    _, with_token = build(PIPELINE_DEV="1", ADMIN_TOKEN=ADMIN_TOKEN)
    other = with_token.test_client()
    page = other.get("/signin")
    assert "Development mode" not in page.text
    assert other.post("/signin/dev", data={"csrf_token": csrf_from(page.text)}).status_code == 404


def test_without_any_sign_in_method_the_page_says_how_to_configure_one(build):
    _, flask_app = build()
    page = flask_app.test_client().get("/signin")
    assert "No sign-in is configured" in page.text and "ADMIN_TOKEN" in page.text


class FakeOAuth:
    """GitHub's OAuth endpoints and GET /user, on a real local port."""

    def __init__(self):
        self.codes = {"good-code": "gho_user_token_1"}
        self.exchanges: list[dict] = []
        self.server = make_server("127.0.0.1", 0, self.wsgi, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @Request.application
    def wsgi(self, request: Request) -> Response:
        if request.path == "/login/oauth/access_token" and request.method == "POST":
            self.exchanges.append(dict(request.form))
            token = self.codes.get(request.form.get("code"))
            body = {"access_token": token, "token_type": "bearer"} if token else {"error": "bad_verification_code"}
            return Response(json.dumps(body), content_type="application/json")
        if request.path == "/user":
            if request.headers.get("Authorization") == "Bearer gho_user_token_1":
                return Response('{"login": "octocat", "id": 1}', content_type="application/json")
            return Response('{"message": "Bad credentials"}', status=401, content_type="application/json")
        return Response("not found", status=404)

    def stop(self):
        self.server.shutdown()


@pytest.fixture
def oauth():
    fake = FakeOAuth()
    yield fake
    fake.stop()


def test_github_oauth_web_flow(build, oauth):
    _, flask_app = build(GITHUB_CLIENT_ID="Iv1.client", GITHUB_CLIENT_SECRET="client-secret-xyz",
                         GITHUB_URL=oauth.url, GITHUB_API_URL=oauth.url)
    client = flask_app.test_client()
    assert "Sign in with GitHub" in client.get("/signin").text

    start = client.get("/signin/github?next=/apps/shop")
    assert start.status_code == 302
    target = urlsplit(start.location)
    query = {k: v[0] for k, v in parse_qs(target.query).items()}
    assert f"{target.scheme}://{target.netloc}{target.path}" == f"{oauth.url}/login/oauth/authorize"
    assert query["client_id"] == "Iv1.client"
    assert query["redirect_uri"] == "http://portal.test/signin/github/callback"

    forged = client.get(f"/signin/github/callback?code=good-code&state=forged")
    assert forged.status_code == 302 and forged.location == "/signin"
    assert oauth.exchanges == []  # a forged state never reaches GitHub

    start = client.get("/signin/github?next=/apps/shop")
    state = parse_qs(urlsplit(start.location).query)["state"][0]
    done = client.get(f"/signin/github/callback?code=good-code&state={state}")
    assert done.status_code == 302 and done.location == "/apps/shop"
    assert oauth.exchanges[-1]["client_secret"] == "client-secret-xyz"
    home = client.get("/")
    assert "octocat" in home.text and "GitHub" in home.text

    # A bad code is refused with a message, not an error page.
    client.post("/signout", data={"csrf_token": csrf_from(home.text)})
    start = client.get("/signin/github")
    state = parse_qs(urlsplit(start.location).query)["state"][0]
    refused = client.get(f"/signin/github/callback?code=bad&state={state}", follow_redirects=True)
    assert "GitHub sign-in failed" in refused.text and "bad_verification_code" in refused.text


# --- CSRF -------------------------------------------------------------------------------------


def test_csrf_is_enforced_on_every_form(web, pctx, redis_conn):
    app_id = add_app(pctx)
    add_deployment(pctx, app_id, "demo", "a1b2c3d")
    page = web.get("/signin")
    assert web.post("/signin", data={"token": ADMIN_TOKEN}).status_code == 400
    assert web.post("/signin", data={"token": ADMIN_TOKEN, "csrf_token": "forged"}).status_code == 400
    web.post("/signin", data={"token": ADMIN_TOKEN, "csrf_token": csrf_from(page.text)})

    for path, data in [
        ("/apps/shop/phases/stage/promote", {"rename_to": ""}),
        ("/apps/shop/phases/demo/rollback", {}),
        ("/apps/shop/phases/stage/profile", {"memory": "1g"}),
        ("/signout", {}),
    ]:
        response = web.post(path, data=data)
        assert response.status_code == 400, path
        assert "CSRF" in response.text, path
    assert len(deployments(pctx)) == 1 and deploy_jobs(redis_conn) == []
    assert audit_entries(pctx) == []


def test_webhook_endpoint_is_not_subject_to_csrf(post_delivery):
    response = post_delivery("ping", {"zen": "Keep it logically awesome.", "hook_id": 1})
    assert response.status_code == 200


# --- board and permissions ----------------------------------------------------------------------


def test_board_shows_each_phase_with_version_url_health_who_and_actions(admin, pctx, engine):
    app_id = add_app(pctx)
    demo = add_deployment(pctx, app_id, "demo", "a1b2c3d", "a", actor="alice")
    stage = add_deployment(pctx, app_id, "stage", "v1.4.0", "b", actor="bob", trigger="tag")
    engine.run("shop", "demo", demo)
    engine.run("shop", "stage", stage, status="exited")
    page = admin.get("/apps/shop")
    html = page.text
    assert page.status_code == 200
    assert "a1b2c3d" in html and "v1.4.0" in html
    assert 'href="http://demo.example.test"' in html and 'href="http://stage.example.test"' in html
    assert "Running" in html and "Exited" in html and "Not deployed" not in html.split('data-phase="live"')[0]
    assert "alice" in html and "bob" in html
    assert "Push to Stage" in html and "Request to Live" in html
    assert engine.calls == 1  # one engine call per page


def test_unknown_health_when_the_engine_is_unreachable(admin, pctx, engine):
    app_id = add_app(pctx)
    add_deployment(pctx, app_id, "demo", "a1b2c3d")
    engine.broken = True
    page = admin.get("/apps/shop")
    assert page.status_code == 200 and "Health unknown" in page.text and "cannot be reached" in page.text
    assert admin.get("/").status_code == 200


@pytest.fixture
def as_github_user(build, github):
    """A portal whose users sign in with GitHub; their role comes from the stand-in."""

    def make(login: str, role: str | None):
        ctx, flask_app = build(GITHUB_CLIENT_ID="Iv1.client", GITHUB_CLIENT_SECRET="s", **github.environ)
        if role is not None:
            github.permissions[("acme/shop", login)] = role
        client = flask_app.test_client()
        sign_in_as(client, ctx, login)
        return ctx, client

    return make


def test_a_reader_cannot_push_or_roll_back(as_github_user, github, redis_conn):
    ctx, client = as_github_user("rita", "read")
    app_id = add_app(ctx)
    add_deployment(ctx, app_id, "demo", "a1b2c3d", "a")
    add_deployment(ctx, app_id, "stage", "v1.3.0", "b", minutes_ago=60)
    add_deployment(ctx, app_id, "stage", "v1.4.0", "c")
    add_deployment(ctx, app_id, "live", "v1.3.0", "b", minutes_ago=50)
    add_deployment(ctx, app_id, "live", "v1.4.0", "c")

    board = client.get("/apps/shop")
    assert board.status_code == 200 and "rita" in board.text
    # Why each action is not offered, in words on the page (not only in a tooltip).
    assert "Promote to stage needs the maintain role (you have read)." in board.text
    assert "Promote to live needs the admin role (you have read)." in board.text
    assert "Roll back: needs the admin role" in board.text and "Redeploy: needs the maintain role" in board.text

    token = csrf_from(board.text)
    for path in ("/apps/shop/phases/live/promote", "/apps/shop/phases/stage/promote",
                 "/apps/shop/phases/live/rollback"):
        response = client.post(path, data={"csrf_token": token}, follow_redirects=True)
        assert response.status_code == 200
        assert "needs the" in response.text and "(you have read)" in response.text, path
    profile = client.post("/apps/shop/phases/live/profile", data={"csrf_token": token, "memory": "1g"},
                          follow_redirects=True)
    assert "edit the live profile needs the admin role (you have read)" in profile.text
    assert len(deployments(ctx)) == 5 and deploy_jobs(redis_conn) == []
    # The role was asked from GitHub once, then cached in the session.
    assert len(github.calls_to("GET", "/repos/acme/shop/collaborators/rita/permission")) == 1


def test_a_maintainer_pushes_to_stage_but_not_to_live(as_github_user, redis_conn):
    ctx, client = as_github_user("mia", "maintain")
    app_id = add_app(ctx)
    add_deployment(ctx, app_id, "demo", "a1b2c3d", "a")
    add_deployment(ctx, app_id, "stage", "v1.4.0", "c")
    token = csrf_from(client.get("/apps/shop").text)
    pushed = client.post("/apps/shop/phases/stage/promote", data={"csrf_token": token, "rename_to": "v1.5.0"})
    assert pushed.status_code == 303
    live = client.post("/apps/shop/phases/live/promote", data={"csrf_token": token}, follow_redirects=True)
    assert "promote to live needs the admin role (you have maintain)" in live.text
    assert [d.version for d in deployments(ctx, status="queued")] == ["v1.5.0"]


def test_without_access_an_app_is_hidden_and_forbidden(as_github_user):
    ctx, client = as_github_user("nobody", None)  # the stand-in answers 404: not a collaborator
    add_app(ctx)
    home = client.get("/")
    assert home.status_code == 200 and "/apps/shop" not in home.text and "No apps yet" in home.text
    page = client.get("/apps/shop")
    assert page.status_code == 403 and "You cannot see acme/shop" in page.text
    assert "text/html" in page.content_type


# --- actions ------------------------------------------------------------------------------------


def test_push_to_next_phase_schedules_one_deployment_and_enqueues_it(admin, pctx, redis_conn):
    app_id = add_app(pctx)
    source = add_deployment(pctx, app_id, "demo", "a1b2c3d", "a")
    token = token_of(admin, "/apps/shop")
    response = admin.post("/apps/shop/phases/stage/promote", data={"csrf_token": token, "rename_to": "v1.4.0"})
    assert response.status_code == 303
    [queued] = deployments(pctx, phase="stage")
    assert (queued.status, queued.version, queued.sha, queued.trigger, queued.actor, queued.source_id) == (
        "queued", "v1.4.0", "a" * 40, "portal", "admin", source)
    assert response.location == f"/apps/shop/deployments/{queued.id}"
    assert deploy_jobs(redis_conn) == [f"deploy-{queued.id}"]
    [entry] = audit_entries(pctx)
    assert (entry.actor, entry.phase, entry.action, entry.detail["version"]) == ("admin", "stage", "promote", "v1.4.0")
    page = admin.get(response.location)
    assert "Promoting a1b2c3d" in page.text and "as v1.4.0" in page.text


def test_push_to_a_phase_is_confirmed_on_a_page_that_shows_what_changes(admin, pctx, redis_conn):
    app_id = add_app(pctx)
    add_deployment(pctx, app_id, "stage", "v1.3.0", "b", minutes_ago=60,
                   snapshot={"env": {}, "secrets": {}, "memory": "256m", "cpus": 0.5, "replicas": 1})
    add_deployment(pctx, app_id, "demo", "a1b2c3d", "a")
    set_profile(pctx, app_id, "stage", memory="1g")
    board = admin.get("/apps/shop")
    # The board's button leads to the confirmation step; it changes nothing by itself.
    assert re.search(r'<form class="push-form" method="get" action="/apps/shop/phases/stage/promote">', board.text)
    page = admin.get("/apps/shop/phases/stage/promote?rename_to=v1.4.0")
    assert page.status_code == 200
    changes_list = re.search(r'<ul class="changes" id="promote-preview">(.*?)</ul>', page.text, re.S).group(1)
    text = re.sub(r"<[^>]+>", "", changes_list)
    assert "v1.3.0 → v1.4.0" in text and "(renamed from a1b2c3d)" in text
    assert "bbbbbbb → aaaaaaa" in text and "memory 256m → 1g" in text
    assert "Push v1.4.0 to Stage" in page.text
    assert deployments(pctx, phase="stage")[-1].version == "v1.3.0" and deploy_jobs(redis_conn) == []


def test_commit_titles_and_authors_show_on_deployments_history_and_the_board_and_travel_with_a_push(
        admin, pctx, redis_conn):
    app_id = add_app(pctx)
    demo = add_deployment(pctx, app_id, "demo", "a1b2c3d", "a", commit_title="Fix the <checkout> total",
                          commit_author="ada")
    for path in (f"/apps/shop/deployments/{demo}", "/apps/shop/phases/demo", "/apps/shop"):
        page = admin.get(path).text
        assert '<span class="commit-title" title="Fix the &lt;checkout&gt; total">Fix the &lt;checkout&gt; total</span>' \
            in page and '<span class="muted small commit-author">ada</span>' in page, path
    response = admin.post("/apps/shop/phases/stage/promote", data={"csrf_token": token_of(admin, "/apps/shop")})
    assert response.status_code == 303
    [to_stage] = deployments(pctx, phase="stage")
    assert (to_stage.commit_title, to_stage.commit_author) == ("Fix the <checkout> total", "ada")
    body = admin.get(f"/api/v1/deployments/{to_stage.id}").get_json()
    assert (body["commit_title"], body["commit_author"]) == ("Fix the <checkout> total", "ada")
    # Without a recorded title, the commit it shipped (read from git by the worker) gives it.
    other = add_deployment(pctx, app_id, "live", "v1.0.0", "b",
                           commits=[{"sha": "b" * 40, "title": "Add search", "author": "bo"}])
    assert "Add search" in admin.get(f"/apps/shop/deployments/{other}").text


def test_push_with_an_invalid_name_or_nothing_to_push_is_explained(admin, pctx, redis_conn):
    app_id = add_app(pctx)
    token = token_of(admin, "/apps/shop")
    empty = admin.post("/apps/shop/phases/stage/promote", data={"csrf_token": token}, follow_redirects=True)
    assert "nothing to promote: demo has no successful deployment yet" in empty.text
    add_deployment(pctx, app_id, "demo", "a1b2c3d")
    bad = admin.post("/apps/shop/phases/stage/promote", data={"csrf_token": token, "rename_to": "../etc"},
                     follow_redirects=True)
    # The server's message, next to the field it is about, on the confirmation page (not a bare
    # "Please match the requested format").
    assert bad.status_code == 422
    error = re.search(r'<p class="field-error" id="rename_to-error" role="alert">([^<]*)</p>', bad.text)
    assert error and error.group(1).startswith("A version must be semver")
    assert 'aria-describedby="rename_to-error"' in bad.text and 'value="../etc"' in bad.text
    preview = admin.get("/apps/shop/phases/stage/promote?rename_to=..%2Fetc")
    assert preview.status_code == 422 and 'id="rename_to-error"' in preview.text
    assert admin.post("/apps/shop/phases/nope/promote", data={"csrf_token": token}).status_code == 404
    assert deployments(pctx, phase="stage") == [] and deploy_jobs(redis_conn) == []


def test_pushing_to_a_phase_with_approvals_says_a_promotion_pull_request_is_needed(admin, pctx, redis_conn):
    app_id = add_app(pctx)
    add_deployment(pctx, app_id, "stage", "v1.4.0", "c")
    token = token_of(admin, "/apps/shop")
    response = admin.post("/apps/shop/phases/live/promote", data={"csrf_token": token}, follow_redirects=True)
    assert "Live needs 1 approval" in response.text and "promote/live/v1.4.0" in response.text
    assert "/promote live" in response.text
    assert deployments(pctx, phase="live") == [] and deploy_jobs(redis_conn) == []
    assert [e.action for e in audit_entries(pctx)] == ["promote.requested"]


def test_rollback_preview_shows_what_changes_and_rollback_schedules_it(admin, pctx, redis_conn):
    app_id = add_app(pctx)
    old = add_deployment(pctx, app_id, "live", "v1.3.0", "b", minutes_ago=120, image="sha256:" + "1" * 64,
                         snapshot={"env": {"LOG_LEVEL": "info"}, "secrets": {"TOKEN": "x"}, "memory": "256m"})
    add_deployment(pctx, app_id, "live", "v1.4.0", "c", image="sha256:" + "2" * 64,
                   snapshot={"env": {"LOG_LEVEL": "warn", "NEW_FLAG": "on"}, "secrets": {"TOKEN": "y"},
                             "memory": "512m"})
    preview = admin.get("/apps/shop/phases/live/rollback")
    html = preview.text
    assert preview.status_code == 200
    assert "v1.4.0" in html and "v1.3.0" in html and "Roll back Live to v1.3.0" in html
    for change in ("memory 512m → 256m", "LOG_LEVEL warn → info", "NEW_FLAG removed", "TOKEN changed",
                   "222222222222", "111111111111"):
        assert change in html, change
    response = admin.post("/apps/shop/phases/live/rollback", data={"csrf_token": csrf_from(html)})
    assert response.status_code == 303
    [queued] = deployments(pctx, status="queued")
    assert (queued.phase, queued.version, queued.trigger, queued.source_id) == ("live", "v1.3.0", "rollback", old)
    assert deploy_jobs(redis_conn) == [f"deploy-{queued.id}"]
    assert audit_entries(pctx)[-1].action == "rollback"


def test_rollback_with_nothing_earlier_is_explained(admin, pctx):
    app_id = add_app(pctx)
    add_deployment(pctx, app_id, "live", "v1.4.0", "c")
    page = admin.get("/apps/shop/phases/live/rollback")
    assert "Nothing to roll back to" in page.text
    response = admin.post("/apps/shop/phases/live/rollback", data={"csrf_token": csrf_from(page.text)},
                          follow_redirects=True)
    assert "live has no earlier successful deployment to roll back to" in response.text


# --- profiles -----------------------------------------------------------------------------------


def test_profile_pages_show_where_each_value_comes_from(admin, pctx):
    app_id = add_app(pctx)
    set_profile(pctx, app_id, "demo", env={"LOG_LEVEL": "debug", "FEATURE_X": "on"}, secrets={"API_KEY": SECRET},
                memory="384m")
    set_profile(pctx, app_id, "stage", env={"LOG_LEVEL": "info"}, cpus=1.5)
    stage = admin.get("/apps/shop/phases/stage/profile").text
    row = lambda html, name: html.split(f'data-env="{name}"')[1].split("</tr>")[0]  # noqa: E731
    assert "inherited from Demo" in row(stage, "FEATURE_X")
    assert "set here" in row(stage, "LOG_LEVEL") and 'value="info"' in row(stage, "LOG_LEVEL")
    assert "inherited from Demo" in stage.split('data-secret="API_KEY"')[1].split("</tr>")[0]
    assert 'data-effective="memory">384m</strong> <span class="src src-inherited">inherited from Demo' in stage
    assert 'data-effective="cpus">1.5</strong> <span class="src src-here">set here' in stage
    assert 'data-effective="replicas">1</strong> <span class="src src-pipeline">pipeline default' in stage
    assert 'for="f-stop_timeout">Stop timeout</label>' in stage
    live = admin.get("/apps/shop/phases/live/profile").text
    assert "inherited from Stage" in row(live, "LOG_LEVEL") and "inherited from Demo" in row(live, "FEATURE_X")
    assert SECRET not in stage + live


def test_editing_a_profile_saves_it_encrypts_secrets_and_writes_the_audit(admin, pctx):
    app_id = add_app(pctx)
    set_profile(pctx, app_id, "demo", env={"LOG_LEVEL": "debug"})
    token = token_of(admin, "/apps/shop/phases/stage/profile")
    response = admin.post("/apps/shop/phases/stage/profile", data={
        "csrf_token": token,
        "env_name": ["LOG_LEVEL", ""], "env_value": ["info", ""],
        "secret_name": ["DB_PASSWORD"], "secret_value": [SECRET],
        "memory": "1G", "cpus": "", "replicas": "2", "stop_timeout": "25",
    })
    assert response.status_code == 303
    page = admin.get(response.location)
    assert "Saved the stage profile" in page.text and "secret DB_PASSWORD added" in page.text
    with pctx.db.session() as session:
        profile = session.scalar(select(Profile).where(Profile.phase == "stage"))
        assert profile.env == {"LOG_LEVEL": "info"}
        assert (profile.memory, profile.cpus, profile.replicas, profile.stop_timeout) == ("1g", None, 2, 25)
        assert SECRET not in profile.secrets["DB_PASSWORD"] and pctx.box.open(profile.secrets["DB_PASSWORD"]) == SECRET
        assert profile.updated_by == "admin"
    [entry] = audit_entries(pctx)
    assert (entry.actor, entry.app_id, entry.phase, entry.action) == ("admin", app_id, "stage", "profile.update")
    assert entry.detail["changes"] == ["memory inherited → 1g", "replicas inherited → 2",
                                       "stop_timeout inherited → 25", "env LOG_LEVEL=info added",
                                       "secret DB_PASSWORD added"]

    # Changing the secret and removing a variable: the audit says "changed", never the value.
    token = csrf_from(page.text)
    admin.post("/apps/shop/phases/stage/profile", data={
        "csrf_token": token, "env_name": ["LOG_LEVEL"], "env_value": ["info"], "env_remove": ["LOG_LEVEL"],
        "secret_update_name": ["DB_PASSWORD"], "secret_update_value": [SECRET + "-2"],
        "memory": "1g", "replicas": "2", "stop_timeout": "25"})
    last = audit_entries(pctx)[-1]
    assert last.detail["changes"] == ["env LOG_LEVEL removed", "secret DB_PASSWORD changed"]
    # Nothing changed: no audit entry.
    admin.post("/apps/shop/phases/stage/profile", data={"csrf_token": token, "memory": "1g", "replicas": "2", "stop_timeout": "25",
                                                         "secret_update_name": ["DB_PASSWORD"],
                                                         "secret_update_value": [""]})
    assert len(audit_entries(pctx)) == 2

    for path in ("/", "/apps/shop", "/apps/shop/phases/stage/profile", "/apps/shop/phases/live/profile",
                 "/apps/shop/audit", "/apps/shop/phases/stage", "/apps/shop/compare?from=stage&to=live",
                 "/api/v1/apps/shop/phases/stage/profile", "/api/v1/apps/shop/audit"):
        body = admin.get(path).get_data(as_text=True)
        assert SECRET not in body, path


def test_invalid_profile_input_is_refused_with_the_field_named(admin, pctx):
    add_app(pctx)
    token = token_of(admin, "/apps/shop/phases/stage/profile")
    cases = [
        ({"memory": "lots"}, "sizing/memory: must be a number with a unit"),
        ({"cpus": "0"}, "sizing/cpus: must be a number greater than 0"),
        ({"replicas": "99"}, "sizing/replicas: must be a whole number from 1 to 20"),
        ({"stop_timeout": "0"}, "sizing/stop_timeout: must be a whole number of seconds from 1 to 600"),
        ({"env_name": ["1BAD"], "env_value": ["x"]}, "is not a valid name"),
        ({"env_name": ["A", "A"], "env_value": ["1", "2"]}, "env/A: given twice"),
        ({"secret_name": ["TOKEN"], "secret_value": [""]}, "secrets/TOKEN: needs a value"),
    ]
    for data, message in cases:
        response = admin.post("/apps/shop/phases/stage/profile", data={"csrf_token": token, **data},
                              follow_redirects=True)
        assert response.status_code == 422 and message in response.text, message
    assert audit_entries(pctx) == []


def test_a_refused_profile_field_is_explained_next_to_it_and_what_was_typed_is_kept(admin, pctx):
    add_app(pctx)
    token = token_of(admin, "/apps/shop/phases/stage/profile")
    page = admin.post("/apps/shop/phases/stage/profile", data={
        "csrf_token": token, "memory": "lots", "replicas": "3", "env_name": ["GREETING"], "env_value": ["hi"],
        "secret_name": ["TOKEN"], "secret_value": ["s3cr3t-typed-value"]})
    assert page.status_code == 422
    html = page.text
    field = re.search(r'<input class="input" id="f-memory" name="memory" value="([^"]*)"[^>]*>', html)
    assert field and field.group(1) == "lots"
    assert 'aria-invalid="true" aria-describedby="error-sizing-memory"' in field.group(0)
    note = re.search(r'<p class="field-error" id="error-sizing-memory">([^<]*)</p>', html)
    assert note and note.group(1).startswith("Must be a number with a unit")
    assert 'id="f-replicas" name="replicas" value="3"' in html
    assert 'data-typed-env="GREETING"' in html and 'value="hi"' in html and 'data-typed-secret="TOKEN"' in html
    assert "s3cr3t-typed-value" not in html  # a secret value is never sent back
    assert 'pattern="' not in html  # the browser's "Please match the requested format" gives way to these
    missing = admin.post("/apps/shop/phases/stage/profile", data={
        "csrf_token": token, "secret_name": ["TOKEN"], "secret_value": [""]}).text
    assert re.search(r'<p class="field-error" id="error-secrets-TOKEN">Needs a value</p>', missing)


# --- deployment page and the live log -----------------------------------------------------------


def test_deployment_page_escapes_log_text_and_shows_failure_evidence(admin, pctx):
    app_id = add_app(pctx)
    failed = add_deployment(pctx, app_id, "demo", "a1b2c3d", status="failed",
                            reason="health check failed: 500 Internal Server Error on /healthz after 30s",
                            evidence={"health": ["connection refused", "500 Internal Server Error"],
                                      "logs": ["KeyError: 'DATABASE_URL'", "<b>not bold</b>"]})
    add_log(pctx, failed, "starting a1b2c3d", "<script>alert(1)</script>")
    page = admin.get(f"/apps/shop/deployments/{failed}")
    html = page.text
    assert page.status_code == 200 and "Why it failed" in html
    assert "500 Internal Server Error on /healthz" in html and "connection refused" in html
    assert "KeyError: &#39;DATABASE_URL&#39;" in html and "&lt;b&gt;not bold&lt;/b&gt;" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert(1)" not in html
    assert 'data-live="0"' in html
    assert admin.get("/apps/shop/deployments/999").status_code == 404
    other = add_app(pctx, name="other", full_name="acme/other")
    foreign = add_deployment(pctx, other, "demo", "zzz")
    assert admin.get(f"/apps/shop/deployments/{foreign}").status_code == 404


def _events(body: str) -> list[tuple[str, str]]:
    out = []
    for block in body.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            out.append((fields["event"], fields.get("data", "")))
    return out


def test_log_stream_sends_lines_after_the_last_id_and_ends_when_finished(admin, pctx):
    app_id = add_app(pctx)
    done = add_deployment(pctx, app_id, "demo", "a1b2c3d")
    first, second = add_log(pctx, done, "fetching a1b2c3d", "healthy: 200 OK")
    response = admin.get(f"/apps/shop/deployments/{done}/events")
    assert response.mimetype == "text/event-stream" and response.headers["Cache-Control"] == "no-cache"
    events = _events(response.get_data(as_text=True))
    assert [kind for kind, _ in events] == ["line", "line", "status", "done"]
    assert "fetching a1b2c3d" in events[0][1]
    resumed = admin.get(f"/apps/shop/deployments/{done}/events", headers={"Last-Event-ID": str(first)})
    assert [kind for kind, _ in _events(resumed.get_data(as_text=True))] == ["line", "status", "done"]


def test_log_stream_follows_a_running_deployment(admin, pctx, monkeypatch):
    monkeypatch.setattr(live_log, "POLL_SECONDS", 0.05)
    app_id = add_app(pctx)
    running = add_deployment(pctx, app_id, "demo", "a1b2c3d", status="building")

    def work():
        time.sleep(0.2)
        add_log(pctx, running, "Step 1/3 : FROM python:3.12-slim", stream="build")
        time.sleep(0.2)
        with pctx.db.session() as session:
            session.get(Deployment, running).status = "succeeded"
        add_log(pctx, running, "succeeded")

    worker = threading.Thread(target=work)
    worker.start()
    response = admin.get(f"/apps/shop/deployments/{running}/events")
    body = response.get_data(as_text=True)
    worker.join()
    events = _events(body)
    # The stream followed the deployment to its end, each line before the status it led to
    # (whether the first poll came before the first line depends on the machine's load: not asserted).
    statuses = [data for kind, data in events if kind == "status"]
    assert '"status": "succeeded"' in statuses[-1]
    assert events[-1][0] == "done"
    step = next(i for i, (kind, data) in enumerate(events) if kind == "line" and "Step 1/3" in data)
    assert step < next(i for i, (kind, data) in enumerate(events) if kind == "status" and "succeeded" in data)


def test_a_failed_last_deploy_shows_on_the_apps_list_until_a_deploy_succeeds(admin, pctx):
    app_id = add_app(pctx)
    add_deployment(pctx, app_id, "demo", "a1b2c3d", "a", minutes_ago=30)
    failed = add_deployment(pctx, app_id, "demo", "b2c3d4e", "b", status="failed", minutes_ago=5)
    page = admin.get("/").text
    row = page.split('data-app="shop"')[1].split('<div class="app-when')[0]
    assert "has-failure" in page.split('data-app="shop"')[0][-40:]
    demo = row.split('data-phase="demo"')[1].split('data-phase="stage"')[0]
    assert f'href="/apps/shop/deployments/{failed}"' in demo and "b2c3d4e failed" in demo
    assert "a1b2c3d" in demo  # what still serves
    assert admin.get("/api/v1/apps").get_json()["apps"][0]["phases"]["demo"]["last_failure"] == {
        "id": failed, "version": "b2c3d4e", "status": "failed"}
    add_deployment(pctx, app_id, "demo", "c3d4e5f", "c", minutes_ago=1)
    assert "failed-mark" not in admin.get("/").text
    assert admin.get("/api/v1/apps").get_json()["apps"][0]["phases"]["demo"]["last_failure"] is None


def test_live_pages_get_a_new_state_when_what_they_show_changes(admin, pctx, monkeypatch):
    monkeypatch.setattr(live_log, "WATCH_SECONDS", 0.05)
    monkeypatch.setattr(live_log, "STREAM_SECONDS", 1.0)
    app_id = add_app(pctx)
    add_deployment(pctx, app_id, "demo", "a1b2c3d", "a")
    for page, stream in (("/", "/events"), ("/apps/shop", "/apps/shop/events")):
        html = admin.get(page).text
        shown = re.search(r'data-live-stream="([^"]+)" data-live-state="([^"]+)"', html)
        assert shown and shown.group(1) == stream
        queued = []
        timer = threading.Timer(0.3, lambda: queued.append(add_deployment(pctx, app_id, "stage", "a1b2c3d", "a",
                                                                         status="queued")))
        timer.start()
        body = admin.get(stream).get_data(as_text=True)
        timer.join()
        states = [json.loads(data)["state"] for kind, data in _events(body) if kind == "state"]
        assert states[0] == shown.group(2) and len(states) == 2 and states[1] != states[0], (page, states)
        with pctx.db.session() as session:
            session.get(Deployment, queued[0]).status = "cancelled"
    assert admin.get("/apps/nope/events").status_code == 404
    # A new app changes the apps list's state (not a board's).
    before = {page: re.search(r'data-live-state="([^"]+)"', admin.get(page).text).group(1) for page in ("/", "/apps/shop")}
    add_app(pctx, name="docs", full_name="acme/docs")
    after = {page: re.search(r'data-live-state="([^"]+)"', admin.get(page).text).group(1) for page in ("/", "/apps/shop")}
    assert before["/"] != after["/"] and before["/apps/shop"] == after["/apps/shop"]


def test_with_every_held_stream_taken_a_live_page_gets_one_answer_and_comes_back(admin, pctx, engine, monkeypatch):
    """Open streams hold server threads: beyond HELD_STREAMS, the answer is immediate, so the
    webhook and other pages always find a free thread."""
    monkeypatch.setattr(live_log, "_held", threading.BoundedSemaphore(1))
    live_log._held.acquire()  # the one place is taken
    app_id = add_app(pctx)
    demo = add_deployment(pctx, app_id, "demo", "a1b2c3d", "a")
    body = admin.get("/apps/shop/events").get_data(as_text=True)
    assert body.startswith(f"retry: {live_log.SHORT_RETRY_MS}") and [k for k, _ in _events(body)] == ["state"]
    engine.run("shop", "demo", demo)
    engine.written[f"c{demo}"] = [(100.0, "old line"), (200.0, "new line")]
    tail = admin.get("/apps/shop/phases/demo/logs/events?since=150").get_data(as_text=True)
    assert [json.loads(data)["text"] for kind, data in _events(tail) if kind == "line"] == ["new line"]
    again = admin.get("/apps/shop/phases/demo/logs/events", headers={"Last-Event-ID": "200.0"}).get_data(as_text=True)
    assert _events(again) == [] and "id: 200.0" in again  # nothing new; the next answer goes on from there
    live_log._held.release()


def test_a_queued_deployment_says_what_it_waits_behind(admin, pctx):
    app_id = add_app(pctx)
    other = add_app(pctx, name="other", full_name="acme/other")
    building = add_deployment(pctx, other, "demo", "f0f0f0f", "f", status="building")
    waiting = add_deployment(pctx, app_id, "demo", "a1b2c3d", "a", status="queued")
    page = admin.get(f"/apps/shop/deployments/{waiting}").text
    assert "Waiting behind 1 unfinished deployment" in page and f"#{building} other/demo (building)" in page
    with pctx.db.session() as session:  # the stream ends once it is done, after saying so
        session.get(Deployment, waiting).status = "cancelled"
        session.get(Deployment, building).status = "succeeded"
    events = _events(admin.get(f"/apps/shop/deployments/{waiting}/events").get_data(as_text=True))
    assert json.loads(events[0][1])["waiting_behind"] == []


def test_runtime_logs_say_when_nothing_runs_or_the_engine_cannot_be_asked(admin, pctx, engine):
    app_id = add_app(pctx)
    empty = admin.get("/apps/shop/phases/demo/logs")
    assert empty.status_code == 200 and "Nothing runs on Demo" in empty.text
    assert admin.get("/apps/shop/phases/nope/logs").status_code == 404
    demo = add_deployment(pctx, app_id, "demo", "a1b2c3d", "a")
    engine.run("shop", "demo", demo)
    engine.written[f"c{demo}"] = [(1_700_000_000.5, "listening on :8080")]
    page = admin.get("/apps/shop/phases/demo/logs").text
    assert "listening on :8080" in page and 'datetime="2023-11-14T22:13:20.500000Z"' in page
    # A backing service's output too, its password (a phase secret) masked.
    set_profile(pctx, app_id, "demo", secrets={"DB_PASSWORD": "pw-5f2e-never-shown"})
    db = engine.add_service("shop", "demo", "db")
    engine.written[db] = [(1_700_000_001.0, "FATAL: password authentication failed for pw-5f2e-never-shown")]
    page = admin.get("/apps/shop/phases/demo/logs").text
    assert 'data-source="db"' in page and "service db" in page
    assert "password authentication failed for ••••••••" in page and "pw-5f2e-never-shown" not in page
    engine.broken = True
    broken = admin.get("/apps/shop/phases/demo/logs")
    assert broken.status_code == 200 and "The output cannot be read: the Docker engine cannot be asked" in broken.text
    for path in ("/api/v1/apps/shop/phases/demo/logs", "/api/v1/apps/shop/phases/demo/logs/events",
                 "/apps/shop/phases/demo/logs/events"):
        answer = admin.get(path)
        assert answer.status_code == 503 and "the Docker engine cannot be asked" in answer.get_json()["reason"], path


# --- history, compare, errors -------------------------------------------------------------------


def test_history_and_compare(admin, pctx):
    app_id = add_app(pctx)
    add_deployment(pctx, app_id, "stage", "v1.3.0", "b", minutes_ago=300)
    add_deployment(pctx, app_id, "live", "v1.3.0", "b", minutes_ago=200)
    add_deployment(pctx, app_id, "stage", "v1.4.0", "c", minutes_ago=100)
    add_deployment(pctx, app_id, "stage", "v1.5.0", "d", minutes_ago=50)
    add_deployment(pctx, app_id, "stage", "v1.5.1", "e", status="failed", minutes_ago=10)
    history = admin.get("/apps/shop/phases/stage").text
    assert history.count("<tr") == 5 and "serving" in history and "v1.5.1" in history
    compare = admin.get("/apps/shop/compare").text
    pending = compare.split('class="pending"')[1].split("</ol>")[0]
    assert "v1.5.0" in pending and "v1.4.0" in pending and "v1.3.0" not in pending and "v1.5.1" not in pending
    assert "2 versions in Stage, not in Live" in compare
    assert "https://github.com/acme/shop/compare/" + "b" * 40 + "..." + "d" * 40 in compare
    assert admin.get("/apps/shop/compare?from=nope").status_code == 404


def test_pages_get_html_errors_and_the_webhook_keeps_json(admin, client):
    missing = admin.get("/apps/nope")
    assert missing.status_code == 404 and "text/html" in missing.content_type and "no app named" in missing.text
    api = admin.get("/api/v1/apps/nope")
    assert api.status_code == 404 and api.get_json()["error"] == "not found"
    hook = client.post("/api/github/webhooks", data=b"{}", headers={"X-GitHub-Event": "push"})
    assert hook.status_code == 401 and hook.is_json
    wants_json = admin.get("/apps/nope", headers={"Accept": "application/json"})
    assert wants_json.is_json and wants_json.status_code == 404


def test_audit_page_shows_fifty_entries_then_older_ones(admin, pctx):
    app_id = add_app(pctx)
    with pctx.db.session() as session:
        session.add_all([AuditEntry(actor="alice", app_id=app_id, phase="demo", action="promote",
                                    detail={"version": f"v1.0.{n}"}) for n in range(51)])
    first = admin.get("/apps/shop/audit").get_data(as_text=True)
    assert "v1.0.50" in first and "v1.0.1<" in first and "v1.0.0<" not in first
    older = re.search(r'href="(/apps/shop/audit\?before=\d+)"', first).group(1)
    second = admin.get(older).get_data(as_text=True)
    assert "v1.0.0<" in second and "v1.0.1<" not in second and "Older entries" not in second
