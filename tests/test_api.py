"""The JSON API: authentication, the same permission checks as the portal, profiles with
sources and masked secrets, actions, clear errors, and an OpenAPI document that covers it."""

from __future__ import annotations

import json
import re
import threading

import pytest
from rq import Queue
from sqlalchemy import select

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

SECRET = "api-plaintext-secret-9c1e"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def api_app(build):
    return build(ADMIN_TOKEN=ADMIN_TOKEN)


@pytest.fixture
def actx(api_app):
    return api_app[0]


class Api:
    """The test client with the admin token, remembering every body it received."""

    def __init__(self, client, headers=None):
        self.client = client
        self.headers = headers if headers is not None else AUTH
        self.bodies: list[str] = []

    def call(self, method: str, path: str, body=None, raw: bytes | None = None, headers=None):
        kwargs = {"headers": {**self.headers, **(headers or {})}}
        if raw is not None:
            kwargs["data"] = raw
            kwargs["headers"]["Content-Type"] = "application/json"
        elif body is not None:
            kwargs["json"] = body
        response = self.client.open(path, method=method, **kwargs)
        self.bodies.append(response.get_data(as_text=True))
        return response

    def get(self, path, **kw):
        return self.call("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.call("POST", path, body, **kw)

    def put(self, path, body=None, **kw):
        return self.call("PUT", path, body, **kw)

    def patch(self, path, body=None, **kw):
        return self.call("PATCH", path, body, **kw)


@pytest.fixture
def api(api_app):
    return Api(api_app[1].test_client())


def jobs(redis_conn) -> list[str]:
    return Queue("deploys", connection=redis_conn).job_ids


def error_of(response) -> tuple[int, str]:
    body = response.get_json()
    assert response.is_json and set(body) == {"error", "reason"}, response.get_data(as_text=True)
    return response.status_code, body["reason"]


# --- authentication -----------------------------------------------------------------------------


def test_authentication_is_required_and_a_wrong_token_is_refused(api_app, actx):
    add_app(actx)
    client = api_app[1].test_client()
    for path in ("/api/v1/apps", "/api/v1/apps/shop", "/api/v1/me", "/api/v1/apps/shop/phases/demo/profile"):
        status, reason = error_of(client.get(path))
        assert status == 401 and "Bearer" in reason
    status, reason = error_of(client.get("/api/v1/apps", headers={"Authorization": "Bearer wrong"}))
    assert status == 401 and "not the admin token" in reason
    status, _ = error_of(client.post("/api/v1/apps/shop/phases/stage/promote"))
    assert status == 401
    assert client.get("/api/v1/openapi.json").status_code == 200  # the description is public


def test_admin_token_works_everywhere(api, actx):
    add_app(actx)
    me = api.get("/api/v1/me").get_json()
    assert me == {"login": "admin", "signed_in_with": "admin token", "admin_everywhere": True}
    detail = api.get("/api/v1/apps/shop").get_json()
    assert detail["your_role"] == "admin"
    assert all(p["allowed"]["rollback"] and p["allowed"]["edit_profile"] for p in detail["phases"])


def test_a_signed_in_session_works_and_needs_the_csrf_header_to_act(api_app, actx, redis_conn):
    app_id = add_app(actx)
    add_deployment(actx, app_id, "demo", "a1b2c3d")
    client = api_app[1].test_client()
    page = client.get("/signin")
    client.post("/signin", data={"token": ADMIN_TOKEN, "csrf_token": csrf_from(page.text)})
    assert client.get("/api/v1/apps").status_code == 200
    status, reason = error_of(client.post("/api/v1/apps/shop/phases/stage/promote", json={}))
    assert status == 400 and "CSRF" in reason and jobs(redis_conn) == []
    token = client.get("/api/v1/me").get_json()["csrf_token"]
    response = client.post("/api/v1/apps/shop/phases/stage/promote", json={}, headers={"X-CSRFToken": token})
    assert response.status_code == 202


@pytest.fixture
def reader(build, github):
    ctx, flask_app = build(GITHUB_CLIENT_ID="Iv1.client", GITHUB_CLIENT_SECRET="s", ADMIN_TOKEN=ADMIN_TOKEN,
                           **github.environ)
    github.permissions[("acme/shop", "rita")] = "read"
    client = flask_app.test_client()
    sign_in_as(client, ctx, "rita")
    token = csrf_from(client.get("/").text)
    return ctx, Api(client, headers={"X-CSRFToken": token})


def test_a_reader_cannot_push_to_live_through_the_api(reader, redis_conn):
    ctx, api = reader
    app_id = add_app(ctx)
    add_deployment(ctx, app_id, "stage", "v1.3.0", "b", minutes_ago=90)
    add_deployment(ctx, app_id, "stage", "v1.4.0", "c")
    add_deployment(ctx, app_id, "live", "v1.3.0", "b", minutes_ago=80)
    add_deployment(ctx, app_id, "live", "v1.4.0", "c")
    detail = api.get("/api/v1/apps/shop").get_json()
    assert detail["your_role"] == "read"
    assert not any(p["allowed"]["promote_to_next"] or p["allowed"]["rollback"] for p in detail["phases"])
    cases = [
        ("POST", "/api/v1/apps/shop/phases/live/promote", {}, "promote to live needs the admin role (you have read)"),
        ("POST", "/api/v1/apps/shop/phases/live/rollback", {}, "roll back live needs the admin role (you have read)"),
        ("PATCH", "/api/v1/apps/shop/phases/stage/profile", {"memory": "1g"},
         "edit the stage profile needs the maintain role (you have read)"),
    ]
    for method, path, body, reason in cases:
        assert error_of(api.call(method, path, body)) == (403, reason)
    with ctx.db.session() as session:
        assert session.scalar(select(Deployment).where(Deployment.status == "queued")) is None
        assert session.scalars(select(AuditEntry)).all() == []
    assert jobs(redis_conn) == []


# --- reading ------------------------------------------------------------------------------------


def test_the_app_document_streams_live_as_deployments_move_on(api, actx, monkeypatch):
    monkeypatch.setattr(live_log, "WATCH_SECONDS", 0.05)
    monkeypatch.setattr(live_log, "STREAM_SECONDS", 1.0)
    app_id = add_app(actx)
    add_deployment(actx, app_id, "demo", "a1b2c3d", "a")
    timer = threading.Timer(0.3, lambda: add_deployment(actx, app_id, "demo", "b2c3d4e", "b", status="building"))
    timer.start()
    response = api.get("/api/v1/apps/shop/events")
    timer.join()
    assert response.mimetype == "text/event-stream"
    states = [json.loads(block.split("data: ", 1)[1]) for block in response.get_data(as_text=True).split("\n\n")
              if "event: state" in block]
    assert len(states) == 2 and states[0]["state"] != states[1]["state"]
    demo = [[p for p in state["phases"] if p["name"] == "demo"][0] for state in states]
    assert demo[0]["in_progress"] is None and demo[1]["in_progress"]["version"] == "b2c3d4e"
    assert demo[1]["current"]["version"] == "a1b2c3d"
    assert error_of(api.get("/api/v1/apps/nope/events"))[0] == 404


def test_apps_and_app_detail(api, actx, engine):
    app_id = add_app(actx)
    add_app(actx, name="docs", full_name="acme/docs")
    demo = add_deployment(actx, app_id, "demo", "a1b2c3d", "a")
    add_deployment(actx, app_id, "demo", "b2c3d4e", "b", status="deploying")
    engine.run("shop", "demo", demo)
    apps = api.get("/api/v1/apps").get_json()
    assert apps["phases"] == ["demo", "stage", "live"]
    shop = next(a for a in apps["apps"] if a["name"] == "shop")
    assert shop["repository"] == "acme/shop"
    assert shop["phases"]["demo"] == {"version": "a1b2c3d", "sha": "a" * 40, "url": "http://demo.example.test",
                                      "deployed_at": shop["phases"]["demo"]["deployed_at"],
                                      "in_progress": "b2c3d4e", "health": "healthy", "last_failure": None}
    assert shop["phases"]["live"]["version"] is None
    detail = api.get("/api/v1/apps/shop").get_json()
    demo_phase = detail["phases"][0]
    assert demo_phase["name"] == "demo" and demo_phase["next"] == "stage"
    assert demo_phase["current"]["version"] == "a1b2c3d" and demo_phase["in_progress"]["status"] == "deploying"
    assert demo_phase["health"] == {"state": "healthy", "label": "Running"}
    assert demo_phase["url"] == "http://demo.example.test"
    assert [p["name"] for p in detail["phases"]] == ["demo", "stage", "live"]


def test_deployments_list_and_detail_with_log(api, actx):
    app_id = add_app(actx)
    first = add_deployment(actx, app_id, "demo", "a1b2c3d", "a", minutes_ago=30)
    add_deployment(actx, app_id, "stage", "v1.0.0", "a", minutes_ago=20)
    failed = add_deployment(actx, app_id, "demo", "b2c3d4e", "b", status="failed", reason="health check failed",
                            evidence={"health": ["503 Service Unavailable"], "logs": ["boom"]})
    lines = add_log(actx, failed, "starting", "health check failed")
    everything = api.get("/api/v1/apps/shop/deployments").get_json()
    assert [d["id"] for d in everything["deployments"]] == [failed, failed - 1, first]
    demo = api.get("/api/v1/apps/shop/deployments?phase=demo&limit=1").get_json()
    assert [d["id"] for d in demo["deployments"]] == [failed] and demo["next_before"] == failed
    older = api.get(f"/api/v1/apps/shop/deployments?phase=demo&before={failed}").get_json()
    assert [d["id"] for d in older["deployments"]] == [first] and older["next_before"] is None
    detail = api.get(f"/api/v1/apps/shop/deployments/{failed}").get_json()
    assert detail["status"] == "failed" and detail["finished"] is True
    assert detail["evidence"] == {"health": ["503 Service Unavailable"], "logs": ["boom"]}
    assert [line["text"] for line in detail["log"]] == ["starting", "health check failed"]
    after = api.get(f"/api/v1/apps/shop/deployments/{failed}?after={lines[0]}").get_json()
    assert [line["id"] for line in after["log"]] == [lines[1]]


def test_compare_and_audit(api, actx):
    app_id = add_app(actx)
    add_deployment(actx, app_id, "stage", "v1.3.0", "b", minutes_ago=300)
    add_deployment(actx, app_id, "live", "v1.3.0", "b", minutes_ago=200)
    add_deployment(actx, app_id, "stage", "v1.4.0", "c", minutes_ago=100)
    set_profile(actx, app_id, "stage", env={"LOG_LEVEL": "info"})
    set_profile(actx, app_id, "live", env={"LOG_LEVEL": "warn"}, secrets={"TOKEN": SECRET})
    body = api.get("/api/v1/apps/shop/compare").get_json()
    assert body["from"]["current"]["version"] == "v1.4.0" and body["to"]["current"]["version"] == "v1.3.0"
    assert [p["version"] for p in body["pending"]] == ["v1.4.0"]
    assert {"name": "LOG_LEVEL", "kind": "env", "from": "info", "to": "warn"} in body["profile_differences"]
    assert {"name": "TOKEN", "kind": "secret", "from": "not set", "to": "set"} in body["profile_differences"]
    assert api.get("/api/v1/apps/shop/compare?from=demo&to=stage").status_code == 200
    assert api.get("/api/v1/apps/shop/audit").get_json() == {"entries": [], "next_before": None}
    assert SECRET not in "".join(api.bodies)


def test_audit_log_reads_page_by_page(api, actx):
    app_id = add_app(actx)
    with actx.db.session() as session:
        session.add_all([AuditEntry(actor=f"user{n}", app_id=app_id, phase="demo", action="promote",
                                    detail={"version": f"v1.0.{n}"}) for n in range(5)])
    seen, before, pages = [], None, 0
    while True:
        body = api.get("/api/v1/apps/shop/audit?limit=2" + (f"&before={before}" if before else "")).get_json()
        seen += [e["detail"]["version"] for e in body["entries"]]
        pages += 1
        before = body["next_before"]
        if before is None:
            break
    assert seen == [f"v1.0.{n}" for n in (4, 3, 2, 1, 0)] and pages == 3
    assert api.get("/api/v1/apps/shop/audit?before=zero").status_code == 400


# --- profiles -----------------------------------------------------------------------------------


def test_profile_get_shows_values_with_sources_and_masks_secrets(api, actx):
    app_id = add_app(actx)
    set_profile(actx, app_id, "demo", env={"LOG_LEVEL": "debug", "FEATURE_X": "on"}, secrets={"API_KEY": SECRET},
                memory="384m")
    set_profile(actx, app_id, "stage", env={"LOG_LEVEL": "info"}, cpus=1.5)
    stage = api.get("/api/v1/apps/shop/phases/stage/profile").get_json()
    assert stage["inherits_from"] == ["demo"] and stage["can_edit"] is True
    effective = stage["effective"]
    assert effective["env"] == {"FEATURE_X": {"value": "on", "source": "demo"},
                                "LOG_LEVEL": {"value": "info", "source": "stage"}}
    assert effective["secrets"] == {"API_KEY": {"value": "••••••••", "source": "demo"}}
    assert effective["sizing"] == {"memory": {"value": "384m", "source": "demo"},
                                   "cpus": {"value": 1.5, "source": "stage"},
                                   "replicas": {"value": 1, "source": "pipeline"}}
    assert stage["own"] == {"env": {"LOG_LEVEL": "info"}, "secrets": {}, "memory": None, "cpus": 1.5, "replicas": None,
                            "stop_timeout": None}
    live = api.get("/api/v1/apps/shop/phases/live/profile").get_json()
    assert live["effective"]["env"]["LOG_LEVEL"] == {"value": "info", "source": "stage"}
    assert live["own"]["env"] == {} and live["updated_by"] is None
    assert SECRET not in "".join(api.bodies)


def test_profile_put_and_patch_change_the_phase_and_write_the_audit(api, actx):
    app_id = add_app(actx)
    set_profile(actx, app_id, "demo", env={"LOG_LEVEL": "debug"})
    put = api.put("/api/v1/apps/shop/phases/stage/profile",
                  {"env": {"LOG_LEVEL": "info", "REGION": "eu"}, "secrets": {"DB_PASSWORD": SECRET},
                   "memory": "512m", "replicas": 2, "stop_timeout": 30})
    assert put.status_code == 200, put.get_json()
    body = put.get_json()
    assert body["changes"] == ["memory inherited → 512m", "replicas inherited → 2", "stop_timeout inherited → 30",
                               "env LOG_LEVEL=info added",
                               "env REGION=eu added", "secret DB_PASSWORD added"]
    assert body["profile"]["own"]["secrets"] == {"DB_PASSWORD": "••••••••"}
    assert body["profile"]["updated_by"] == "admin"

    patch = api.patch("/api/v1/apps/shop/phases/stage/profile",
                      {"env": {"REGION": None, "NEW": "1"}, "secrets": {"DB_PASSWORD": SECRET + "x"}, "cpus": 2})
    assert patch.get_json()["changes"] == ["cpus inherited → 2.0", "env NEW=1 added", "env REGION removed",
                                           "secret DB_PASSWORD changed"]
    after = patch.get_json()["profile"]
    assert after["own"]["env"] == {"LOG_LEVEL": "info", "NEW": "1"} and after["own"]["memory"] == "512m"

    # PUT replaces variables and sizing, but only touches the secrets it names.
    replaced = api.put("/api/v1/apps/shop/phases/stage/profile", {"env": {"ONLY": "me"}}).get_json()["profile"]
    assert replaced["own"]["env"] == {"ONLY": "me"} and replaced["own"]["memory"] is None
    assert replaced["own"]["secrets"] == {"DB_PASSWORD": "••••••••"}
    removed = api.patch("/api/v1/apps/shop/phases/stage/profile", {"secrets": {"DB_PASSWORD": None}}).get_json()
    assert removed["changes"] == ["secret DB_PASSWORD removed"] and removed["profile"]["own"]["secrets"] == {}

    with actx.db.session() as session:
        entries = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        assert [(e.actor, e.phase, e.action) for e in entries] == [("admin", "stage", "profile.update")] * 4
        assert not any(SECRET in json.dumps(e.detail) for e in entries)
        assert session.scalar(select(Profile).where(Profile.phase == "stage")).secrets == {}
    audit = api.get("/api/v1/apps/shop/audit?phase=stage").get_json()["entries"]
    assert len(audit) == 4 and audit[0]["detail"]["changes"] == ["secret DB_PASSWORD removed"]
    assert SECRET not in "".join(api.bodies)


def test_the_secret_is_used_encrypted_and_never_returned(api, actx):
    app_id = add_app(actx)
    add_deployment(actx, app_id, "demo", "a1b2c3d")
    api.patch("/api/v1/apps/shop/phases/demo/profile", {"secrets": {"STRIPE_KEY": SECRET}})
    with actx.db.session() as session:
        stored = session.scalar(select(Profile).where(Profile.phase == "demo")).secrets["STRIPE_KEY"]
    assert stored != SECRET and actx.box.open(stored) == SECRET
    for path in ("/api/v1/apps", "/api/v1/apps/shop", "/api/v1/apps/shop/deployments",
                 "/api/v1/apps/shop/phases/demo/profile", "/api/v1/apps/shop/phases/stage/profile",
                 "/api/v1/apps/shop/phases/live/profile", "/api/v1/apps/shop/audit",
                 "/api/v1/apps/shop/compare?from=demo&to=stage"):
        assert api.get(path).status_code == 200, path
    assert SECRET not in "".join(api.bodies)
    assert stored not in "".join(api.bodies)  # not even the ciphertext


@pytest.mark.parametrize("body, reason", [
    ({"memory": "lots"}, "sizing/memory: must be a number with a unit b, k, m or g (e.g. 512m)"),
    ({"cpus": "fast"}, "sizing/cpus: must be a number greater than 0 and at most 64"),
    ({"cpus": 100}, "sizing/cpus: must be a number greater than 0 and at most 64"),
    ({"replicas": 1.5}, "sizing/replicas: must be a whole number from 1 to 20"),
    ({"replicas": True}, "sizing/replicas: must be a whole number from 1 to 20"),
    ({"stop_timeout": 0}, "sizing/stop_timeout: must be a whole number of seconds from 1 to 600"),
    ({"stop_timeout": 601}, "sizing/stop_timeout: must be a whole number of seconds from 1 to 600"),
    ({"stop_timeout": "soon"}, "sizing/stop_timeout: must be a whole number of seconds from 1 to 600"),
    ({"stop_timeout": 2.5}, "sizing/stop_timeout: must be a whole number of seconds from 1 to 600"),
    ({"env": {"1BAD": "x"}}, "env: '1BAD' is not a valid name (letters, digits and _, not starting with a digit)"),
    ({"env": {"OK": 5}}, "env/OK: must be a string"),
    ({"env": ["A=1"]}, "env: must be an object of NAME: value"),
    ({"secrets": {"TOKEN": ""}}, "secrets/TOKEN: must not be empty (remove the secret instead)"),
    ({"secrets": {"TOKEN": 123}}, "secrets/TOKEN: must be a string"),
    ({"secrets": "x"}, "secrets: must be an object of NAME: value (null removes)"),
    ({"colour": "blue"}, "colour: not a known field (known: cpus, env, memory, replicas, secrets, stop_timeout)"),
    ([], "the body must be a JSON object"),
    ({}, "send a JSON object with env, secrets, memory, cpus, replicas, stop_timeout"),
])
def test_invalid_profile_changes_are_400_with_the_field_named(api, actx, body, reason):
    add_app(actx)
    assert error_of(api.patch("/api/v1/apps/shop/phases/stage/profile", body)) == (400, reason)


# --- actions ------------------------------------------------------------------------------------


def test_promote_schedules_enqueues_and_answers_202(api, actx, redis_conn):
    app_id = add_app(actx)
    source = add_deployment(actx, app_id, "demo", "a1b2c3d")
    response = api.post("/api/v1/apps/shop/phases/stage/promote", {"rename_to": "v2.0.0"})
    assert response.status_code == 202
    body = response.get_json()
    assert body["message"] == "promoting a1b2c3d (aaaaaaa) from demo to stage as v2.0.0"
    deployment = body["deployment"]
    assert (deployment["phase"], deployment["version"], deployment["status"], deployment["trigger"],
            deployment["actor"], deployment["source_deployment"]) == (
        "stage", "v2.0.0", "queued", "portal", "admin", source)
    assert jobs(redis_conn) == [f"deploy-{deployment['id']}"]
    again = api.post("/api/v1/apps/shop/phases/stage/promote", {"version": "a1b2c3d"})
    assert again.status_code == 202 and again.get_json()["deployment"]["version"] == "a1b2c3d"


def test_promote_to_a_phase_with_approvals_returns_the_promotion_needed(api, actx, redis_conn):
    app_id = add_app(actx)
    source = add_deployment(actx, app_id, "stage", "v1.4.0", "c")
    response = api.post("/api/v1/apps/shop/phases/live/promote")
    assert response.status_code == 200
    body = response.get_json()
    assert body["deployment"] is None
    assert body["promotion"] == {"phase": "live", "version": "v1.4.0", "sha": "c" * 40, "source_deployment": source,
                                 "head_branch": "promote/live/v1.4.0", "base_branch": "live",
                                 "title": "Promote v1.4.0 to Live"}
    assert jobs(redis_conn) == []


def test_rollback_preview_and_rollback(api, actx, redis_conn):
    app_id = add_app(actx)
    assert error_of(api.get("/api/v1/apps/shop/phases/live/rollback")) == (
        409, "live has no successful deployment to roll back from")
    old = add_deployment(actx, app_id, "live", "v1.3.0", "b", minutes_ago=60,
                         snapshot={"env": {"A": "1"}, "secrets": {}, "memory": "256m"})
    add_deployment(actx, app_id, "live", "v1.4.0", "c", snapshot={"env": {"A": "2"}, "secrets": {}, "memory": "256m"})
    preview = api.get("/api/v1/apps/shop/phases/live/rollback").get_json()
    assert preview["current"]["version"] == "v1.4.0" and preview["target"]["id"] == old
    assert preview["changes"]["version"] == ["v1.4.0", "v1.3.0"]
    assert preview["changes"]["profile"] == ["A 2 → 1"] and preview["allowed"] is True
    assert error_of(api.get("/api/v1/apps/shop/phases/live/rollback?to_version=v0.1.0")) == (
        409, "v0.1.0 was never deployed successfully to live")
    response = api.post("/api/v1/apps/shop/phases/live/rollback", {"to_version": "v1.3.0"})
    assert response.status_code == 202
    deployment = response.get_json()["deployment"]
    assert (deployment["version"], deployment["trigger"]) == ("v1.3.0", "rollback")
    assert deployment["source_deployment"] == old
    assert jobs(redis_conn) == [f"deploy-{deployment['id']}"]


NO_PHASE = "there is no phase '{}' (phases: demo, stage, live)"


@pytest.mark.parametrize("method, path, body, expected", [
    ("GET", "/api/v1/apps/nope", None, (404, "there is no app named 'nope'")),
    ("GET", "/api/v1/apps/shop/deployments/12345", None, (404, "shop has no deployment 12345")),
    ("GET", "/api/v1/apps/shop/deployments?phase=prod", None,
     (404, NO_PHASE.format("prod"))),
    ("GET", "/api/v1/apps/shop/deployments?limit=abc", None, (400, "limit: must be a whole number")),
    ("GET", "/api/v1/apps/shop/deployments?limit=0", None, (400, "limit: must be from 1 to 200")),
    ("GET", "/api/v1/apps/shop/phases/prod/profile", None, (404, NO_PHASE.format("prod"))),
    ("POST", "/api/v1/apps/shop/phases/stage/promote", None,
     (409, "nothing to promote: demo has no successful deployment yet")),
    ("POST", "/api/v1/apps/shop/phases/demo/promote", None,
     (409, "demo is the first phase: use /deploy to put a commit there")),
    ("POST", "/api/v1/apps/shop/phases/stage/promote", {"version": "v9.9.9"},
     (409, "no successful deployment of v9.9.9 to promote")),
    ("POST", "/api/v1/apps/shop/phases/stage/promote", {"rename_to": "-rf"}, (400, None)),
    ("POST", "/api/v1/apps/shop/phases/stage/promote", {"rename_to": 7}, (400, "rename_to: must be a string")),
    ("POST", "/api/v1/apps/shop/phases/stage/promote", {"force": True}, (400, "force: must be a string")),
    ("POST", "/api/v1/apps/shop/phases/stage/promote", {"force": " "},
     (400, "force: give the reason for overriding the freeze (it is recorded in the audit log)")),
    ("POST", "/api/v1/apps/shop/phases/stage/promote", {"sudo": 1},
     (400, "sudo: not a known field (known: force, rename_to, version)")),
    ("POST", "/api/v1/apps/shop/phases/stage/freeze", {"reason": 5}, (400, "reason: must be a string")),
    ("DELETE", "/api/v1/apps/shop/phases/stage/freeze", None, (409, "stage is not frozen")),
    ("POST", "/api/v1/apps/shop/deployments/999/retry", None, (404, None)),
    ("POST", "/api/v1/apps/shop/deployments/999/cancel", None, (404, None)),
    ("POST", "/api/v1/apps/shop/phases/nope/promote", None, (404, NO_PHASE.format("nope"))),
    ("POST", "/api/v1/apps/shop/phases/live/rollback", None,
     (409, "live has no successful deployment to roll back from")),
    ("DELETE", "/api/v1/apps/shop", None, (400, "confirm: deleting shop removes its containers, images, routes, "
                                                 "backing services and their data for good; confirm with “shop”")),
    ("PUT", "/api/v1/apps/shop", None, (405, None)),
    ("GET", "/api/v1/nothing-here", None, (404, None)),
])
def test_clear_json_errors(api, actx, method, path, body, expected):
    add_app(actx)
    status, reason = error_of(api.call(method, path, body))
    assert status == expected[0]
    if expected[1] is not None:
        assert reason == expected[1]


@pytest.mark.parametrize("raw", [b"{", b"null", b"\xff\xfe", b'"text"', b"[1, 2]", b"1e999", b'{"rename_to": null}',
                                 b'{"version": {"$gt": ""}}', b'{"rename_to": "' + b"x" * 5000 + b'"}'])
def test_bad_bodies_never_cause_a_500(api, actx, raw):
    add_app(actx)
    for method, path in (("POST", "/api/v1/apps/shop/phases/stage/promote"),
                         ("POST", "/api/v1/apps/shop/phases/live/rollback"),
                         ("PUT", "/api/v1/apps/shop/phases/stage/profile"),
                         ("PATCH", "/api/v1/apps/shop/phases/stage/profile")):
        response = api.call(method, path, raw=raw)
        assert response.status_code in (200, 400, 409), (method, path, raw[:20], response.get_data(as_text=True))
        assert response.is_json


# --- OpenAPI ------------------------------------------------------------------------------------


def test_openapi_documents_every_api_route(api_app):
    flask_app = api_app[1]
    document = flask_app.test_client().get("/api/v1/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    documented = {(path, method.upper()) for path, item in document["paths"].items() for method in item}
    served = set()
    for rule in flask_app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1/"):
            path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
            served |= {(path, method) for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented == served
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert operation["summary"] and operation["responses"], (path, method)
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    assert "{" + parameter["name"] + "}" in path, (path, parameter["name"])
