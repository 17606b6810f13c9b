"""The apps list and the API's list of apps ask the database the same number of questions for
12 apps as for 2 (a count of statements, not a time), on SQLite and PostgreSQL, and still show
what each phase serves, what is on its way and what failed."""

from __future__ import annotations

import pytest
from sqlalchemy import event

from app.context import Context
from app.web import create_app
from tests.support.portal_data import ADMIN_TOKEN, add_app, add_deployment, csrf_from

API = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def site(make_settings, any_database_url, redis_conn, engine):
    ctx = Context.from_settings(make_settings(DATABASE_URL=any_database_url, ADMIN_TOKEN=ADMIN_TOKEN), engine=engine)
    client = create_app(context=ctx).test_client()
    page = client.get("/signin")
    assert client.post("/signin", data={"token": ADMIN_TOKEN, "csrf_token": csrf_from(page.text)}).status_code == 302
    return ctx, client


def add_apps(ctx, engine, first: int, count: int) -> None:
    """Apps serving on every phase, one with a newer failure on stage and a deployment on its way."""
    for i in range(first, first + count):
        app_id = add_app(ctx, f"app-{i:02d}", f"acme/app-{i:02d}")
        for phase in ("demo", "stage", "live"):
            engine.run(f"app-{i:02d}", phase, add_deployment(ctx, app_id, phase, f"1.{i}.0"))
        add_deployment(ctx, app_id, "stage", f"1.{i}.1", status="failed", minutes_ago=5)
        add_deployment(ctx, app_id, "demo", f"1.{i}.2", status="building", minutes_ago=1)


def statements(ctx, client, path: str, **kwargs) -> tuple[int, str]:
    seen = []

    def count(*_args):
        seen.append(1)

    event.listen(ctx.db.engine, "before_cursor_execute", count)
    try:
        response = client.get(path, **kwargs)
    finally:
        event.remove(ctx.db.engine, "before_cursor_execute", count)
    assert response.status_code == 200, response.text[:300]
    return len(seen), response.text


def test_apps_list_asks_as_many_queries_for_12_apps_as_for_2(site, engine):
    ctx, client = site
    add_apps(ctx, engine, 0, 2)
    few, _ = statements(ctx, client, "/")
    add_apps(ctx, engine, 2, 10)
    many, page = statements(ctx, client, "/")
    assert many == few
    row = page.split('data-app="app-11"', 1)[1].split('class="app-row', 1)[0]
    assert "1.11.0" in row and "1.11.2" in row  # serving, and the one on its way to demo
    assert "1.11.1 failed" in row


def test_api_apps_asks_as_many_queries_for_12_apps_as_for_2(site, engine):
    ctx, client = site
    add_apps(ctx, engine, 0, 2)
    few, _ = statements(ctx, client, "/api/v1/apps", headers=API)
    add_apps(ctx, engine, 2, 10)
    many, _ = statements(ctx, client, "/api/v1/apps", headers=API)
    assert many == few
    apps = {a["name"]: a for a in client.get("/api/v1/apps", headers=API).get_json()["apps"]}
    assert len(apps) == 12
    phases = apps["app-07"]["phases"]
    assert phases["demo"]["version"] == "1.7.0" and phases["demo"]["in_progress"] == "1.7.2"
    assert phases["stage"]["version"] == "1.7.0" and phases["stage"]["last_failure"]["version"] == "1.7.1"
    assert phases["live"]["health"] == "healthy" and phases["live"]["last_failure"] is None
