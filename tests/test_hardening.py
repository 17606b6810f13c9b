"""Issue 21's findings that need no container: each test failed on the code as it was.

Real Flask app, real Redis (throttle, queue), real SQLite/PostgreSQL (sessions, upserts), a real
tmpfs for a full WORK_DIR, the web server that `serve` runs.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.approvals import count_approvals
from app.context import Context
from app.exceptions import CloneFailed, SettingsError
from app.models import App, Delivery, Report
from app.plans import Repo
from app.registry import ensure_app
from app.web import create_app
from tests.conftest import REDIS_URL, SECRET_KEY, delivery_headers, load_payload
from tests.support.portal_data import ADMIN_TOKEN, add_app, add_deployment, csrf_from
from tests.support.requires import Part, missing, used

ROOT = Path(__file__).resolve().parent.parent


def _push() -> dict:
    payload = load_payload("push/with-installation")
    payload.update(ref="refs/heads/master", after="a" * 40, deleted=False)
    payload["head_commit"] = {"id": "a" * 40}
    return payload


# --- High 1: an empty webhook secret --------------------------------------------------------------


@pytest.mark.parametrize("secret", ["", "   "])
@pytest.mark.parametrize("dev", ["0", "1"])
def test_an_empty_webhook_secret_is_refused_not_read_as_none(make_settings, secret, dev):
    with pytest.raises(SettingsError, match="GITHUB_WEBHOOK_SECRET is empty"):
        make_settings(GITHUB_WEBHOOK_SECRET=secret, PIPELINE_DEV=dev)


def test_serve_with_an_empty_webhook_secret_stops_at_start_with_one_line(tmp_path, database_url):
    env = {**os.environ, "GITHUB_WEBHOOK_SECRET": "", "SECRET_KEY": SECRET_KEY, "DATABASE_URL": database_url,
           "REDIS_URL": REDIS_URL, "HOME": str(tmp_path)}
    started = subprocess.run([str(ROOT / ".venv" / "bin" / "release-pipeline"), "serve", "--port", "33121"],
                             env=env, capture_output=True, text=True, timeout=60)
    assert started.returncode != 0
    [line] = started.stderr.strip().splitlines()
    assert "GITHUB_WEBHOOK_SECRET is empty" in line


def test_serve_on_a_port_already_taken_stops_at_start_with_one_line(tmp_path, database_url):
    """The web server binds with SO_REUSEPORT: a second `serve` (a leftover, a second `up`)
    would share the port with the first, each getting some of the deliveries, without a word."""
    from tests.conftest import WEBHOOK_SECRET
    from tests.support.dockerkit import free_port

    port = free_port()
    env = {**os.environ, "GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET, "SECRET_KEY": SECRET_KEY,
           "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "HOME": str(tmp_path)}
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen()
        started = subprocess.run([str(ROOT / ".venv" / "bin" / "release-pipeline"), "serve", "--host", "127.0.0.1",
                                  "--port", str(port)], env=env, capture_output=True, text=True, timeout=60)
    assert started.returncode == 1
    [line] = started.stderr.strip().splitlines()
    assert line == f"Error: PORT: cannot listen on 127.0.0.1:{port} (Address already in use)"


def test_outside_development_mode_every_delivery_needs_a_signature(ctx, client, redis_conn):
    body = json.dumps(_push()).encode()
    unsigned = client.post("/api/github/webhooks", data=body, headers={
        "X-GitHub-Event": "push", "X-GitHub-Delivery": "d-1", "Content-Type": "application/json"})
    assert unsigned.status_code == 401
    with ctx.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Delivery)) == 0


# --- Minor: the receiver ---------------------------------------------------------------------------


@pytest.mark.parametrize("signature", ["sha256=é" + "0" * 63, "sha256=" + "\u00ff" * 64, "sha256=☃"])
def test_a_non_ascii_signature_is_a_401_not_a_500(client, signature):
    body = json.dumps(_push()).encode()
    headers = {**delivery_headers("push", body), "X-Hub-Signature-256": signature}
    response = client.post("/api/github/webhooks", data=body, headers=headers)
    assert response.status_code == 401 and "signature" in response.get_json()["reason"]


def test_a_chunked_body_over_the_cap_is_a_413_not_a_truncated_401(make_settings, database_url, redis_conn):
    ctx = Context.from_settings(make_settings(DATABASE_URL=database_url, MAX_BODY_BYTES=1000))
    client = create_app(context=ctx).test_client()
    body = json.dumps({**_push(), "pad": "x" * 2000}).encode()
    response = client.post("/api/github/webhooks", input_stream=io.BytesIO(body),
                           headers={**delivery_headers("push", body), "Transfer-Encoding": "chunked"},
                           environ_overrides={"wsgi.input_terminated": True})
    assert response.status_code == 413 and "MAX_BODY_BYTES" in response.get_json()["reason"]
    small = json.dumps(_push()).encode()
    ok = Context.from_settings(make_settings(DATABASE_URL=database_url, MAX_BODY_BYTES=len(small) + 10))
    fits = create_app(context=ok).test_client().post(
        "/api/github/webhooks", input_stream=io.BytesIO(small),
        headers={**delivery_headers("push", small), "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True})
    assert fits.status_code == 202, fits.get_json()


def test_concurrent_first_deliveries_for_a_new_repository_create_one_app(any_database_url, make_settings,
                                                                         redis_conn):
    ctx = Context.from_settings(make_settings(DATABASE_URL=any_database_url))
    repo = Repo(full_name="acme/new-one", clone_url=None, default_branch="main")
    barrier = threading.Barrier(6)
    errors: list[Exception] = []

    def first_sight():
        try:
            with ctx.db.session() as session:
                barrier.wait(timeout=10)
                ensure_app(session, repo)
                time.sleep(0.05)  # hold the transaction open while the others insert
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    threads = [threading.Thread(target=first_sight) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with ctx.db.session() as session:
        assert session.scalars(select(App.name).where(App.full_name == "acme/new-one")).all() == ["new-one"]


def test_a_reply_left_by_a_redis_failure_at_intake_is_never_posted(make_settings, database_url, redis_conn, github):
    ctx = Context.from_settings(make_settings(DATABASE_URL=database_url, REDIS_URL="redis://127.0.0.1:1/0",
                                              **github.environ))
    payload = load_payload("issue_comment/created.with-installation")
    payload["issue"]["pull_request"] = {"url": "https://api.github.com/repos/x/y/pulls/1"}
    payload["comment"]["body"] = "/promote nowhere"  # malformed: answered at intake
    body = json.dumps(payload).encode()
    response = create_app(context=ctx).test_client().post(
        "/api/github/webhooks", data=body, headers=delivery_headers("issue_comment", body, delivery="c-1"))
    assert response.status_code == 503
    with ctx.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Report)) == 0
        assert session.scalar(select(func.count()).select_from(Delivery)) == 0


# --- Minor: ids, next= ------------------------------------------------------------------------------


BIG = "9" * 30


def test_thirty_digit_ids_are_404_or_400_never_500(build):
    ctx, flask_app = build(ADMIN_TOKEN=ADMIN_TOKEN)
    app_id = add_app(ctx)
    add_deployment(ctx, app_id, "demo", "v1.0.0")
    client = flask_app.test_client()
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert client.get(f"/api/v1/apps/shop/deployments/{BIG}", headers=bearer).status_code == 404
    assert client.get(f"/api/v1/apps/shop/deployments?before={BIG}", headers=bearer).status_code == 400
    assert client.get(f"/api/v1/apps/shop/deployments/1/log?after={BIG}", headers=bearer).status_code in (400, 404)
    page = client.get("/signin")
    client.post("/signin", data={"token": ADMIN_TOKEN, "csrf_token": csrf_from(page.text)})
    assert client.get(f"/apps/shop/deployments/{BIG}").status_code == 404
    assert client.get(f"/apps/shop/deployments/{BIG}/events").status_code == 404
    assert client.get(f"/apps/shop/phases/demo?before={BIG}").status_code == 200
    events = client.get("/apps/shop/deployments/1/events", headers={"Last-Event-ID": BIG}, buffered=False)
    assert events.status_code == 200
    events.close()


@pytest.mark.parametrize("target", ["/apps\r\nSet-Cookie: x=1", "/apps\nx", "/%0d%0a\r"])
def test_a_next_with_cr_or_lf_falls_back_to_the_apps_list(build, target):
    _, flask_app = build(ADMIN_TOKEN=ADMIN_TOKEN)
    client = flask_app.test_client()
    page = client.get("/signin", query_string={"next": target})
    assert page.status_code == 200
    signed = client.post("/signin", data={"token": ADMIN_TOKEN, "csrf_token": csrf_from(page.text), "next": target})
    assert signed.status_code == 302 and signed.location == "/"


# --- Medium 6: sessions -----------------------------------------------------------------------------


def _token_sign_in(client, token=ADMIN_TOKEN):
    page = client.get("/signin")
    return client.post("/signin", data={"token": token, "csrf_token": csrf_from(page.text)})


def _cookie(client) -> str:
    return client.get_cookie("release_pipeline_session").value


def test_a_saved_cookie_stops_working_after_sign_out(build):
    ctx, flask_app = build(ADMIN_TOKEN=ADMIN_TOKEN)
    add_app(ctx)
    client = flask_app.test_client()
    assert _token_sign_in(client).status_code == 302
    saved = _cookie(client)
    home = client.get("/")
    assert home.status_code == 200
    client.post("/signout", data={"csrf_token": csrf_from(home.text)})
    replay = flask_app.test_client()
    replay.set_cookie("release_pipeline_session", saved)
    assert replay.get("/").status_code == 302  # to the sign-in page
    assert replay.get("/api/v1/apps").status_code == 401


def test_rotating_the_admin_token_ends_its_sessions(build):
    ctx, flask_app = build(ADMIN_TOKEN=ADMIN_TOKEN)
    add_app(ctx)
    client = flask_app.test_client()
    _token_sign_in(client)
    saved = _cookie(client)
    assert client.get("/").status_code == 200
    _, rotated = build(ADMIN_TOKEN="a-new-admin-token-after-rotation")
    replay = rotated.test_client()
    replay.set_cookie("release_pipeline_session", saved)
    assert replay.get("/").status_code == 302
    same = build(ADMIN_TOKEN=ADMIN_TOKEN)[1].test_client()  # the same token: the session still stands
    same.set_cookie("release_pipeline_session", saved)
    assert same.get("/").status_code == 200


# --- Minor: throttling wrong tokens ---------------------------------------------------------------


def test_wrong_bearer_tokens_are_throttled_per_client(build, redis_conn):
    from app.portal.auth import FAILURES_ALLOWED

    _, flask_app = build(ADMIN_TOKEN=ADMIN_TOKEN)
    client = flask_app.test_client()
    wrong = {"Authorization": "Bearer guess"}
    answers = [client.get("/api/v1/apps", headers=wrong).status_code for _ in range(FAILURES_ALLOWED + 5)]
    assert answers == [401] * FAILURES_ALLOWED + [429] * 5
    # while throttled even the right token waits; another address is not affected
    assert client.get("/api/v1/apps", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 429
    other = client.get("/api/v1/apps", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                       environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert other.status_code == 200
    page = client.get("/signin")
    assert client.post("/signin", data={"token": ADMIN_TOKEN, "csrf_token": csrf_from(page.text)}).status_code == 429


# --- Medium 7: framing ------------------------------------------------------------------------------


def test_every_portal_response_forbids_framing(build):
    ctx, flask_app = build(ADMIN_TOKEN=ADMIN_TOKEN)
    app_id = add_app(ctx)
    deployment_id = add_deployment(ctx, app_id, "demo", "v1.0.0")
    client = flask_app.test_client()
    _token_sign_in(client)
    for path in ("/", "/signin", "/apps/shop", "/apps/shop/phases/demo", f"/apps/shop/deployments/{deployment_id}",
                 "/apps/shop/phases/demo/profile", "/apps/shop/phases/demo/rollback", "/nowhere", "/api/v1/apps",
                 "/healthz"):
        response = client.get(path)
        assert response.headers.get("X-Frame-Options") == "DENY", path
        csp = response.headers.get("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, (path, csp)
        assert "unsafe-inline" not in csp
        # the policy allows no inline script or style: the pages have none
        text = response.get_data(as_text=True)
        assert "<script>" not in text and " style=" not in text and "<style" not in text, path


# --- Medium 5: approvals of an earlier head -------------------------------------------------------


def test_an_approval_of_an_earlier_head_does_not_count_and_is_named():
    reviews = [{"user": "bob", "state": "APPROVED", "commit_id": "a" * 40, "id": 1},
               {"user": "carol", "state": "APPROVED", "commit_id": "b" * 40, "id": 2},
               {"user": "dave", "state": "APPROVED", "id": 3}]
    counted = count_approvals(reviews, author="alice", needed=2, head="b" * 40)
    assert counted.approvers == ("carol",) and not counted.enough
    assert counted.explain() == ("1 of 2 required approvals (@carol); not counted, given to an earlier head: "
                                 "@bob (approved aaaaaaa), @dave (approved an unknown commit)")


# --- Minor: no space left in WORK_DIR --------------------------------------------------------------


@pytest.fixture
def full_dir(tmp_path):
    mount = tmp_path / "full"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)]).returncode != 0:
        missing(Part.ROOT, "cannot mount a tmpfs here")
    used(Part.ROOT, "mount -t tmpfs")
    try:
        with open(mount / "filler", "wb") as filler:
            with pytest.raises(OSError):
                filler.write(b"\0" * 65536)
                filler.flush()
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_work_dir_says_so(full_dir, tmp_path):
    from app.adapters import git
    from tests.support.dockerkit import make_sample_repo

    clone_url, sha = make_sample_repo(tmp_path / "repo", version_text="1.0.0")
    with pytest.raises(CloneFailed, match="^no space left in WORK_DIR$"):
        git.fetch_commit(clone_url, sha, full_dir / "src", allowed_host="github.com", allow_file=True)
