"""Secrets (issue 8, item 6): after exercising the main flows in-process, scan every log record,
every HTML and JSON response, every database row and every Redis value for the webhook secret,
the App's private key, the installation tokens GitHub issued, profile secret values and the other
credentials of the installation. Zero hits; stored secrets are Fernet ciphertext.

Flows exercised: signed deliveries (push, tag, comment, installation, ping — and forged ones),
reports sent to the GitHub stand-in (so installation tokens are minted, cached and used, also
through a 502 and a revoked token), slash-commands (roles read with a token), a profile secret
set through the API and read back (masked) through API and portal pages, and the rendered pages.
"""

from __future__ import annotations

import json
import logging
import re
import zlib

import pytest
from sqlalchemy import select, text

from app.context import Context
from app.models import Base, Profile, Report, ReportState
from app.web import create_app
from tests.conftest import SECRET_KEY, WEBHOOK_SECRET, delivery_headers, drain_inbox, load_payload
from tests.support.portal_data import ADMIN_TOKEN, StubEngine, sign_in_as

PROFILE_SECRET = "pr0file-secret-VALUE-5f2e9a"
SECOND_SECRET = "another-profile-secret-c81d"
CLIENT_SECRET = "oauth-client-secret-77aa31"
REPO = "Codertocat/Hello-World"
INSTALLATION = 77
FERNET = re.compile(r"^gAAAAA[A-Za-z0-9_=-]+$")
CREDENTIAL_SHAPES = {
    "a GitHub token": re.compile(r"\bgh[opsu]_[A-Za-z0-9]{20,}"),
    "a JWT": re.compile(r"\beyJ[\w-]{10,}\.eyJ[\w-]{10,}\.[\w-]{10,}"),
    "a PEM block": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "an Authorization header": re.compile(r"(?i)authorization['\"]?\s*[:=]\s*['\"]?(bearer|token|basic) [A-Za-z0-9]"),
}


class Seen:
    """Every response body the test fetched."""

    def __init__(self, client):
        self.client = client
        self.bodies: list[str] = []

    def open(self, path: str, method: str = "GET", **kwargs):
        response = self.client.open(path, method=method, **kwargs)
        self.bodies.append(f"{method} {path} {response.status_code}\n{response.get_data(as_text=True)}")
        return response


def secrets_of(github, ctx) -> dict[str, str]:
    """Every credential worth finding, by name (key material split into recognisable lines)."""
    found = {
        "webhook secret": WEBHOOK_SECRET,
        "SECRET_KEY": SECRET_KEY,
        "admin token": ADMIN_TOKEN,
        "OAuth client secret": CLIENT_SECRET,
        "profile secret": PROFILE_SECRET,
        "second profile secret": SECOND_SECRET,
        "Fernet key": ctx.settings.fernet_key.decode(),
    }
    pem_lines = [line for line in github.private_key_pem.splitlines() if len(line) >= 40 and "-----" not in line]
    found.update({f"private key line {i}": line for i, line in enumerate(pem_lines)})
    found.update({f"installation token {i}": token for i, token in enumerate(github.issued_tokens)})
    return found


def hits(haystack: str | bytes, secrets: dict[str, str], where: str) -> list[str]:
    if isinstance(haystack, bytes):
        texts = [haystack.decode("utf-8", "replace")]
        try:
            texts.append(zlib.decompress(haystack).decode("latin-1"))  # RQ job payloads are compressed
        except zlib.error:
            pass
    else:
        texts = [haystack]
    found = [f"{name} in {where}" for name, value in secrets.items() for t in texts if value and value in t]
    # Anything shaped like a credential, even one this test does not know about.
    found += [f"{kind} in {where}" for kind, pattern in CREDENTIAL_SHAPES.items() for t in texts if pattern.search(t)]
    return found


@pytest.fixture
def service(github, make_settings, database_url, redis_conn):
    ctx = Context.from_settings(make_settings(
        DATABASE_URL=database_url, ADMIN_TOKEN=ADMIN_TOKEN, GITHUB_CLIENT_ID="Iv1.client",
        GITHUB_CLIENT_SECRET=CLIENT_SECRET, **github.environ), engine=StubEngine())
    github.installations[REPO] = INSTALLATION
    github.permissions[(REPO, "ada")] = "admin"
    github.pulls[(REPO, 1)] = {"title": "Feature", "user": {"login": "alice", "id": 5, "type": "User"},
                               "head": {"ref": "feature", "sha": "e" * 40}, "base": {"ref": "main"}}
    return ctx, Seen(create_app(context=ctx).test_client())


def _deliver(seen: Seen, event: str, payload: dict, secret: str = WEBHOOK_SECRET):
    body = json.dumps(payload).encode()
    response = seen.open("/api/github/webhooks", "POST", data=body, headers=delivery_headers(event, body, secret=secret))
    drain_inbox(seen.client.application.extensions["release_pipeline"])
    return response


def _send_pending_reports(ctx) -> int:
    from workers.report import Sender

    with ctx.db.session() as session:
        ids = session.scalars(select(Report.id).where(Report.state == ReportState.PENDING.value)
                              .order_by(Report.id)).all()
    sender = Sender(ctx)
    for report_id in ids:
        try:
            sender.send_up_to(report_id)
        except Exception as exc:  # transient failures are retried by RQ; here we only scan what they logged
            logging.getLogger("test").warning("report %s: %s", report_id, exc)
    return len(ids)


def _exercise(ctx, seen: Seen, github) -> None:
    from workers.command import CommandJob

    # Deliveries: a push to the default branch, a release tag, a command, an installation, a ping.
    push = load_payload("push/with-installation")
    push.update(ref="refs/heads/master", after="a" * 40, deleted=False, head_commit={"id": "a" * 40})
    push["installation"] = {"id": INSTALLATION}
    assert _deliver(seen, "push", push).status_code == 202
    tag = json.loads(json.dumps(push))
    tag["ref"] = "refs/tags/v1.0.0"
    assert _deliver(seen, "push", tag).status_code == 202
    comment = load_payload("issue_comment/created.with-installation")
    comment["issue"].update(number=1, pull_request={"url": "x"})
    comment["comment"].update(body="/status", user={**comment["comment"]["user"], "login": "ada", "type": "User"})
    comment["sender"]["login"] = "ada"
    comment["installation"] = {"id": INSTALLATION}
    assert _deliver(seen, "issue_comment", comment).status_code == 202
    assert _deliver(seen, "installation", load_payload("installation/created")).status_code == 202
    assert _deliver(seen, "ping", load_payload("ping/payload")).status_code == 200
    # Forged and malformed ones.
    assert _deliver(seen, "push", push, secret="not-the-secret").status_code == 401
    seen.open("/api/github/webhooks", "POST", data=b"{broken", headers=delivery_headers("push", b"{broken"))

    # Reports go to GitHub: a token is minted, cached (encrypted) and reused; a 502 and a revoked
    # token on the way make the error paths log too.
    github.fail_next(1, status=502)
    assert _send_pending_reports(ctx) > 0
    github.revoke_tokens()
    _send_pending_reports(ctx)
    # The command: the role is read with an installation token, the reply reported.
    with ctx.db.session() as session:
        from app.models import App

        app_id = session.scalar(select(App.id).where(App.full_name == REPO))
    for index, body in enumerate(("/status", "/deploy demo", "/promote stage", "/rollback live")):
        CommandJob(ctx, app_id=app_id, pr_number=1, comment_id=9000 + index, actor="ada", body=body).run()
    _send_pending_reports(ctx)
    assert github.issued_tokens, "no installation token was minted"

    # A profile secret through the API, then everything that shows profiles and apps.
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    app_name = seen.open("/api/v1/apps", headers=auth).get_json()["apps"][0]["name"]
    changed = seen.open(f"/api/v1/apps/{app_name}/phases/demo/profile", "PATCH", headers=auth,
                        json={"secrets": {"DB_PASSWORD": PROFILE_SECRET}, "env": {"GREETING": "hello"}})
    assert changed.status_code == 200, changed.get_json()
    changed = seen.open(f"/api/v1/apps/{app_name}/phases/live/profile", "PUT", headers=auth,
                        json={"secrets": {"API_KEY": SECOND_SECRET}, "env": {}})
    assert changed.status_code == 200, changed.get_json()
    # Directly too, as a worker would store a generated service credential.
    with ctx.db.session() as session:
        stage = Profile(app_id=app_id, phase="stage", env={}, secrets={"SERVICE_PASSWORD": ctx.box.seal(SECOND_SECRET)})
        session.add(stage)
    for path in ("/api/v1/me", "/api/v1/apps", f"/api/v1/apps/{app_name}", f"/api/v1/apps/{app_name}/deployments",
                 f"/api/v1/apps/{app_name}/phases/demo/profile", f"/api/v1/apps/{app_name}/phases/live/profile",
                 f"/api/v1/apps/{app_name}/phases/stage/profile", f"/api/v1/apps/{app_name}/audit",
                 "/api/v1/openapi.json", "/healthz"):
        seen.open(path, headers=auth)
    sign_in_as(seen.client, ctx, "admin", "token")
    for path in ("/", f"/apps/{app_name}", f"/apps/{app_name}/phases/demo", f"/apps/{app_name}/phases/demo/profile",
                 f"/apps/{app_name}/phases/live/profile", f"/apps/{app_name}/phases/stage/profile",
                 f"/apps/{app_name}/audit", f"/apps/{app_name}/compare", "/signin", "/nope"):
        seen.open(path)
    deployments = seen.open(f"/api/v1/apps/{app_name}/deployments", headers=auth).get_json()
    for d in (deployments.get("deployments") or deployments.get("items") or [])[:3]:
        seen.open(f"/apps/{app_name}/deployments/{d['id']}")
        seen.open(f"/api/v1/apps/{app_name}/deployments/{d['id']}", headers=auth)


def test_no_secret_appears_in_logs_responses_database_or_redis(service, github, redis_conn, caplog):
    ctx, seen = service
    caplog.set_level(logging.DEBUG)
    _exercise(ctx, seen, github)
    secrets = secrets_of(github, ctx)
    found: list[str] = []

    # Logs: every record, formatted with its traceback.
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    for record in caplog.records:
        found += hits(formatter.format(record), secrets, f"log record {record.name}")
    found += hits(caplog.text, secrets, "captured log text")

    # Every response fetched.
    assert len(seen.bodies) > 30
    for body in seen.bodies:
        found += hits(body, secrets, f"response {body.splitlines()[0]}")

    # Every row of every table.
    with ctx.db.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for row in conn.execute(select(table)):
                found += hits(repr(tuple(row)), secrets, f"table {table.name}")
        profiles = conn.execute(text("SELECT phase, secrets FROM profiles")).all()
    stored = {phase: json.loads(value) if isinstance(value, str) else value for phase, value in profiles}
    assert set(stored) >= {"demo", "live", "stage"}
    ciphertexts = [v for phase_secrets in stored.values() for v in phase_secrets.values()]
    assert ciphertexts and all(FERNET.match(v) for v in ciphertexts), stored
    assert sorted(ctx.box.open(v) for v in ciphertexts) == sorted([PROFILE_SECRET, SECOND_SECRET, SECOND_SECRET])

    # Every Redis value (RQ jobs, locks, the token cache).
    keys = list(redis_conn.scan_iter(count=1000))
    assert any(key.startswith(b"rp:github:token:") for key in keys), keys
    for key in keys:
        kind = redis_conn.type(key)
        if kind == b"string":
            values = [redis_conn.get(key)]
        elif kind == b"hash":
            values = [k + b"=" + v for k, v in redis_conn.hgetall(key).items()]
            values += [v for v in redis_conn.hgetall(key).values()]
        elif kind == b"list":
            values = redis_conn.lrange(key, 0, -1)
        elif kind == b"set":
            values = list(redis_conn.smembers(key))
        elif kind == b"zset":
            values = redis_conn.zrange(key, 0, -1)
        else:
            values = []
        for value in values:
            found += hits(value or b"", secrets, f"redis {key.decode()}")
        if key.startswith(b"rp:github:token:"):
            assert FERNET.match(redis_conn.get(key).decode())

    assert not found, "\n".join(sorted(set(found)))
    # The scan looked at real traffic: tokens were minted and used, commands queued, reports sent.
    assert len(github.issued_tokens) >= 2
    assert len(github.calls_to("POST", "/repos/")) >= 3
