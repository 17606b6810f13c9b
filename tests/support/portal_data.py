"""Seeding the database for portal and API tests, plus a stand-in Docker engine for health.

Deployments are written as rows (the deploy job has its own end-to-end tests); the portal
only reads them, so tests describe exactly the state they need.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest

from app.adapters.docker import LABEL_APP, LABEL_DEPLOYMENT, LABEL_PHASE, ContainerInfo, ServiceContainer
from app.context import Context
from app.models import App, Deployment, LogLine, Profile, utcnow
from app.web import create_app
from werkzeug.serving import make_server

ADMIN_TOKEN = "admin-token-for-portal-tests-7f3a"
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


class StubEngine:
    """Answers `list_containers` from a list; `broken` makes it fail like an unreachable engine."""

    LABEL_SERVICE = "release-pipeline.service"

    def __init__(self):
        self.containers: list[ContainerInfo] = []
        self.broken = False
        self.calls = 0
        #: container id -> what it wrote, as the adapter's `output` answers: (unix time, text)
        self.written: dict[str, list[tuple[float, str]]] = {}
        self.services: list[ServiceContainer] = []

    def run(self, app: str, phase: str, deployment_id: int, status: str = "running") -> None:
        self.containers.append(ContainerInfo(
            id=f"c{deployment_id}", name=f"{app}-{phase}-{deployment_id}",
            labels={LABEL_APP: app, LABEL_PHASE: phase, LABEL_DEPLOYMENT: str(deployment_id)},
            status=status, host_port=32000 + deployment_id))

    def list_containers(self, app: str | None = None, phase: str | None = None) -> list[ContainerInfo]:
        self.calls += 1
        if self.broken:
            raise ConnectionError("engine unreachable")
        return [c for c in self.containers
                if (app is None or c.labels[LABEL_APP] == app) and (phase is None or c.labels[LABEL_PHASE] == phase)]

    def ping(self) -> bool:
        return not self.broken

    def service_containers(self, app: str, phase: str | None = None) -> list[ServiceContainer]:
        if self.broken:
            raise ConnectionError("engine unreachable")
        return [c for c in self.services if c.labels["app"] == app and phase in (None, c.labels["phase"])]

    def add_service(self, app: str, phase: str, name: str) -> str:
        """A running backing-service container of `app`'s `phase`; its id."""
        container_id = f"svc-{app}-{phase}-{name}"
        self.services.append(ServiceContainer(id=container_id, name=f"rp-{app}.{phase}.{name}", state="running",
                                              labels={"app": app, "phase": phase, self.LABEL_SERVICE: name},
                                              health="healthy", image_id=None))
        return container_id

    def output(self, container_id: str, *, tail: int = 100, since: float | None = None) -> list[tuple[float, str]]:
        lines = [line for line in self.written.get(container_id, []) if since is None or line[0] > since]
        return lines[-tail:]


def add_app(ctx, name: str = "shop", full_name: str = "acme/shop", installation_id: int | None = 77) -> int:
    with ctx.db.session() as session:
        app = App(full_name=full_name, name=name, installation_id=installation_id,
                  html_url=f"https://github.com/{full_name}",
                  clone_url=f"https://github.com/{full_name}.git")
        session.add(app)
        session.flush()
        return app.id


def add_deployment(ctx, app_id: int, phase: str, version: str, sha_char: str = "a", *, status: str = "succeeded",
                   minutes_ago: int = 10, actor: str = "alice", trigger: str = "push", image: str | None = None,
                   snapshot: dict | None = None, **fields) -> int:
    now = utcnow()
    finished = status in ("succeeded", "failed", "superseded", "refused")
    with ctx.db.session() as session:
        deployment = Deployment(
            app_id=app_id, phase=phase, version=version, sha=sha_char * 40, ref=sha_char * 40,
            trigger=trigger, actor=actor, status=status,
            image_id=image or f"sha256:{(sha_char * 64)[:64]}",
            url=f"http://{phase}.example.test" if status == "succeeded" else None,
            profile_snapshot=snapshot or {"env": {}, "secrets": {}, "memory": "256m", "cpus": 0.5, "replicas": 1},
            queued_at=now - timedelta(minutes=minutes_ago + 1),
            started_at=now - timedelta(minutes=minutes_ago + 1),
            finished_at=now - timedelta(minutes=minutes_ago) if finished else None,
            **fields)
        session.add(deployment)
        session.flush()
        return deployment.id


def add_log(ctx, deployment_id: int, *texts: str, stream: str = "deploy") -> list[int]:
    with ctx.db.session() as session:
        rows = [LogLine(deployment_id=deployment_id, stream=stream, text=text) for text in texts]
        session.add_all(rows)
        session.flush()
        return [row.id for row in rows]


def set_profile(ctx, app_id: int, phase: str, *, env: dict | None = None, secrets: dict | None = None,
                **sizing) -> None:
    with ctx.db.session() as session:
        session.add(Profile(app_id=app_id, phase=phase, env=env or {},
                            secrets={k: ctx.box.seal(v) for k, v in (secrets or {}).items()}, **sizing))


def csrf_from(html: str) -> str:
    match = CSRF_INPUT.search(html)
    assert match, "no CSRF token on the page"
    return match.group(1)


@pytest.fixture
def engine() -> StubEngine:
    return StubEngine()


@pytest.fixture
def build(make_settings, database_url, redis_conn, engine):
    """A portal app for the given settings, on this test's database, Redis DB and engine stub."""

    def make(**overrides):
        ctx = Context.from_settings(make_settings(DATABASE_URL=database_url, **overrides), engine=engine)
        return ctx, create_app(context=ctx)

    return make


def sign_in_as(client, ctx, login: str, kind: str = "github") -> None:
    """Sign `client` in as `login` the way the portal does: a server-side session, its id in the cookie."""
    from datetime import timedelta

    from app.portal import auth

    credential = None
    if kind == auth.Kind.TOKEN:
        with client.application.test_request_context():
            credential = auth._admin_token_fingerprint()
    raw = auth.open_session(ctx, auth.User(login=login, kind=kind), credential=credential, lifetime=timedelta(hours=1))
    with client.session_transaction() as session:
        session["sid"] = raw


@contextmanager
def on_socket(wsgi_app) -> Iterator[str]:
    """`wsgi_app` served on 127.0.0.1:<free port> in a thread (for browsers and the command line)."""
    server = make_server("127.0.0.1", 0, wsgi_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
