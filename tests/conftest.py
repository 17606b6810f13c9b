"""Shared fixtures: real Redis (own DB number), real SQLite/PostgreSQL, signed deliveries."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
import secrets
import uuid
from pathlib import Path

import pytest
from redis import Redis
from sqlalchemy import create_engine, make_url, text

from app.context import Context
from app.db import Database
from app.models import Base
from app.settings import load_settings
from app.web import create_app
from tests.support.requires import Part, missing, used

#: Shared fixtures live beside their helpers; registered here once, never imported for effect.
pytest_plugins = ["tests.support.github_standin", "tests.support.requires", "tests.support.dockerkit",
                  "tests.support.portal_data", "tests.support.pipeline_e2e", "tests.support.receiver"]

FIXTURES = Path(__file__).parent / "fixtures" / "github-payloads"
WEBHOOK_SECRET = "test-webhook-secret-5b1d"
SECRET_KEY = "test-secret-key-for-fernet-and-sessions"
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def pytest_collection_modifyitems(config, items):
    """Measurements run only with RP_BENCH=1. Deselected, not skipped, otherwise: a skip in the
    summary must only ever mean a real part was missing (see tests/support/requires.py)."""
    if os.environ.get("RP_BENCH"):
        return
    measurements = [item for item in items if item.get_closest_marker("measurement")]
    if measurements:
        config.hook.pytest_deselected(items=measurements)
        items[:] = [item for item in items if not item.get_closest_marker("measurement")]


def load_payload(name: str) -> dict:
    """A recorded GitHub delivery, e.g. load_payload("push/with-installation")."""
    path = FIXTURES / (name if name.endswith(".json") else f"{name}.payload.json")
    if not path.exists():
        path = FIXTURES / f"{name}.json"
    return copy.deepcopy(json.loads(path.read_text()))


def sign(body: bytes, secret: str = WEBHOOK_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def delivery_headers(event: str, body: bytes, *, delivery: str | None = None, secret: str = WEBHOOK_SECRET) -> dict:
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(body, secret),
        "Content-Type": "application/json",
    }


@pytest.fixture(scope="session")
def instance() -> str:
    """Names this test run's Docker objects so cleanup removes only ours."""
    return "t" + secrets.token_hex(3)


@pytest.fixture
def redis_conn():
    conn = Redis.from_url(REDIS_URL)
    conn.flushdb()
    yield conn
    conn.flushdb()
    conn.close()


@pytest.fixture(scope="session")
def postgres_url():
    """A database of our own on the local PostgreSQL, dropped at the end."""
    name = f"rp_test_{secrets.token_hex(4)}"
    admin = create_engine(POSTGRES_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://"),
                          isolation_level="AUTOCOMMIT")
    shown = make_url(POSTGRES_ADMIN_URL).render_as_string(hide_password=True)
    try:
        with admin.connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar_one()
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        version, problem = None, str(exc).splitlines()[0]
    if version is None:  # outside the except: the failure shows its instruction, not a traceback
        admin.dispose()
        missing(Part.POSTGRES, f"PostgreSQL not reachable at {shown}: {problem}")
    used(Part.POSTGRES, f"{version} ({shown})")
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


_migrated: dict[str, Database] = {}


def _fresh_database(url: str) -> Database:
    """Migrated once per run, emptied before each test (faster than migrating every time)."""
    db = _migrated.get(url)
    if db is None:
        db = Database(url)
        db.migrate()
        _migrated[url] = db
    with db.engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    return db


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'state.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def any_database_url(request, sqlite_url):
    """For tests of state: run on SQLite and on PostgreSQL."""
    url = sqlite_url if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    _fresh_database(url)
    return url


@pytest.fixture
def database_url(sqlite_url):
    _fresh_database(sqlite_url)
    return sqlite_url


@pytest.fixture
def make_settings(tmp_path, instance):
    def make(**overrides):
        values = {
            "GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "SECRET_KEY": SECRET_KEY,
            "REDIS_URL": REDIS_URL,
            "PIPELINE_INSTANCE": instance,
            "PIPELINE_ALLOW_FILE_CLONES": "1",
            "ROUTER": "direct",
            "WORK_DIR": str(tmp_path / "work"),
            "PUBLIC_URL": "http://portal.test",
        }
        values.update({k.upper(): str(v) for k, v in overrides.items() if v is not None})
        return load_settings(values)

    return make


@pytest.fixture
def ctx(make_settings, database_url, redis_conn) -> Context:
    return Context.from_settings(make_settings(DATABASE_URL=database_url))


@pytest.fixture
def pipeline_extra_env() -> dict[str, str]:
    """More variables for tests.support.pipeline_e2e's `pipeline` service (modules override this)."""
    return {}


@pytest.fixture
def client(ctx):
    return create_app(context=ctx).test_client()


def drain_inbox(ctx: Context) -> list:
    """What `release-pipeline intake` does, in this process: record every delivery the endpoint
    accepted, in order, until the inbox is empty; the intake outcomes (raises Unavailable while
    the database or the queue is down)."""
    from workers.intake import drain

    ctx.inbox.ensure_group()
    outcomes = []
    while ctx.inbox.waiting():
        outcomes += drain(ctx)
    return outcomes


def recorded(ctx: Context, response):
    """The Delivery row the drainer recorded for an accepted delivery (its outcome and reason)."""
    from app.models import Delivery

    with ctx.db.session() as session:
        return session.get(Delivery, response.get_json()["delivery"])


@pytest.fixture
def post_delivery(client, ctx):
    """POST a payload as GitHub would, signed with the test secret; the intake drainer then
    records it, as it does at once in a running installation."""

    def post(event: str, payload, *, delivery: str | None = None, secret: str = WEBHOOK_SECRET, headers=None):
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        sent = delivery_headers(event, body, delivery=delivery, secret=secret)
        sent.update(headers or {})
        response = client.post("/api/github/webhooks", data=body, headers=sent)
        drain_inbox(ctx)
        return response

    return post
