"""State on SQLite and PostgreSQL: migrations from empty, registry, scheduling and dedup."""

from __future__ import annotations

from sqlalchemy import inspect, select

from app.db import Database
from app.deployments import schedule
from app.models import App, Deployment
from app.plans import Deploy, Repo
from app.registry import ensure_app

REPO = Repo("octo/Shop-Front", "https://github.com/octo/Shop-Front.git", "main", None, 42)


def plan(**overrides) -> Deploy:
    values = dict(repo=REPO, phase="stage", ref="refs/tags/v1.0.0", sha=None, version="v1.0.0",
                  trigger="tag", actor="octo", dedup_key="tag:octo/Shop-Front:stage:v1.0.0")
    values.update(overrides)
    return Deploy(**values)


def test_migrations_create_every_table(any_database_url):
    tables = set(inspect(Database(any_database_url).engine).get_table_names())
    assert {"apps", "deliveries", "builds", "deployments", "profiles", "reports", "log_lines",
            "audit_log", "services", "alembic_version"} <= tables


def test_registry_and_dedup(any_database_url):
    db = Database(any_database_url)
    with db.session() as session:
        app = ensure_app(session, REPO)
        assert app.name == "shop-front" and app.installation_id == 42
        assert ensure_app(session, REPO).id == app.id
        other = ensure_app(session, Repo("someone/shop-front", None, "main"))
        assert other.name == "someone-shop-front"
        first = schedule(session, app, plan())
        assert first is not None and first.status == "queued"
        assert schedule(session, app, plan()) is None  # the same tag, reported again
        assert schedule(session, app, plan(dedup_key=None, phase="demo")) is not None
    with db.session() as session:
        assert len(session.scalars(select(Deployment)).all()) == 2
        assert len(session.scalars(select(App)).all()) == 2
