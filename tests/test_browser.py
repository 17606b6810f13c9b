"""End to end in a real browser: Debian's Chromium, driven by Playwright, against the portal
served on a local port. A person signs in, follows an app from Demo to Live, watches the log
arrive, edits the Stage profile and sees what Live inherits, and rolls Live back.

The deploy worker is played by the test: it writes log lines and outcomes into the database
as the real job does (the real job has its own Docker end-to-end tests). Screenshots go to
test-artifacts/ for people to look at.
"""

from __future__ import annotations

import importlib.util
import shutil
import threading
import time
from pathlib import Path

import pytest
from rq import Queue
from sqlalchemy import select
from werkzeug.serving import make_server

from app.context import Context
from app.models import Deployment, LogLine, Profile, utcnow
from app.profiles import resolve
from app.web import create_app
from tests.support.portal_data import ADMIN_TOKEN, StubEngine, add_app, add_deployment, add_log, set_profile
from tests.support.requires import Part, missing, used

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
SECRET = "browser-secret-4d8e-never-visible"
# Live without approvals, so the whole way from Demo to Live can be clicked through here
# (the promotion pull request path is covered in test_portal and the command tests).
PIPELINE = """
defaults:
  url: "http://{app}-{phase}.localhost:{port}"
  profile: {memory: 256m, cpus: 0.5, replicas: 1}
phases:
  demo: {trigger: push, role: write}
  stage: {trigger: tag, role: maintain}
  live: {trigger: pull_request, branch: live, role: admin, approvals: 0}
"""


@pytest.fixture(scope="module")
def browser():
    if shutil.which(CHROMIUM) is None:
        missing(Part.BROWSER, f"Debian's chromium is not installed ({CHROMIUM})")
    if importlib.util.find_spec("playwright") is None:
        missing(Part.BROWSER, "the playwright package is not installed")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )
        used(Part.BROWSER, f"{browser.version} (playwright)")
        yield browser
        browser.close()


@pytest.fixture
def served(make_settings, database_url, redis_conn, tmp_path):
    """The real app on 127.0.0.1:<free port>, in a thread."""
    pipeline = tmp_path / "pipeline.yml"
    pipeline.write_text(PIPELINE)
    ctx = Context.from_settings(make_settings(DATABASE_URL=database_url, ADMIN_TOKEN=ADMIN_TOKEN,
                                              PIPELINE_CONFIG=str(pipeline)))
    engine = StubEngine()
    ctx.__dict__["engine"] = engine
    server = make_server("127.0.0.1", 0, create_app(context=ctx), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield ctx, engine, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=5)


@pytest.fixture
def page(browser):
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    context.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def queued(ctx, phase: str) -> Deployment:
    with ctx.db.session() as session:
        return session.scalars(select(Deployment).where(Deployment.phase == phase, Deployment.status == "queued")
                               .order_by(Deployment.id.desc())).first()


def play_worker(ctx, engine, deployment_id: int, steps: list[str], *, pause: float = 0.35) -> threading.Thread:
    """Do what the deploy job does to the rows, slowly enough to watch it stream."""

    def run():
        with ctx.db.session() as session:
            deployment = session.get(Deployment, deployment_id)
            deployment.status, deployment.started_at = "deploying", utcnow()
            app_name, phase = deployment.app.name, deployment.phase
        for text in steps:
            time.sleep(pause)
            with ctx.db.session() as session:
                session.add(LogLine(deployment_id=deployment_id, stream="deploy", text=text))
        time.sleep(pause)
        with ctx.db.session() as session:
            deployment = session.get(Deployment, deployment_id)
            deployment.status, deployment.finished_at = "succeeded", utcnow()
            deployment.url = f"http://{app_name}-{phase}.localhost:8088"
            deployment.container_id = f"c{deployment_id}"
            source = session.get(Deployment, deployment.source_id) if deployment.source_id else None
            if source is not None:
                deployment.image_id = source.image_id
            # As the job does: a rollback restores its source's profile, anything else runs
            # with the phase's profile as it is now.
            deployment.profile_snapshot = source.profile_snapshot if deployment.trigger == "rollback" else \
                resolve(session, ctx.config, deployment.app_id, phase).snapshot()
        engine.run(app_name, phase, deployment_id)
        with ctx.db.session() as session:
            session.add(LogLine(deployment_id=deployment_id, stream="deploy", text="succeeded"))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_follow_an_app_from_demo_to_live_edit_stage_and_roll_back_live(served, page, redis_conn):
    ctx, engine, base = served
    app_id = add_app(ctx)
    add_deployment(ctx, app_id, "stage", "v1.2.0", "1", minutes_ago=60 * 24 * 9, actor="bob", trigger="tag")
    add_deployment(ctx, app_id, "live", "v1.2.0", "1", minutes_ago=60 * 24 * 8, actor="carol", trigger="pull_request",
                   snapshot={"env": {"LOG_LEVEL": "info"}, "secrets": {}, "memory": "256m", "cpus": 0.5, "replicas": 1})
    add_deployment(ctx, app_id, "stage", "v1.3.0", "2", minutes_ago=60 * 24 * 2, actor="bob", trigger="tag")
    live_now = add_deployment(ctx, app_id, "live", "v1.3.0", "2", minutes_ago=60 * 24, actor="carol",
                              trigger="pull_request",
                              snapshot={"env": {"LOG_LEVEL": "warn"}, "secrets": {}, "memory": "512m", "cpus": 0.5,
                                        "replicas": 1})
    demo = add_deployment(ctx, app_id, "demo", "a1b2c3d", "a", minutes_ago=25, actor="alice")
    add_log(ctx, demo, "fetching a1b2c3d", "building Dockerfile (tree 9f8e7d6)",
            "healthy: 200 OK on / after 3 attempt(s)")
    for deployment_id, phase in ((demo, "demo"), (live_now, "live")):
        engine.run("shop", phase, deployment_id)
    with ctx.db.session() as session:  # Stage v1.3.0 serves too
        engine.run("shop", "stage", session.scalar(select(Deployment.id).where(Deployment.version == "v1.3.0",
                                                                               Deployment.phase == "stage")))
    set_profile(ctx, app_id, "demo", env={"LOG_LEVEL": "debug", "FEATURE_CHECKOUT": "on"}, secrets={"API_KEY": SECRET})

    # Sign in with the admin token.
    page.goto(f"{base}/apps/shop")
    assert "/signin" in page.url
    shot(page, "01-sign-in")
    page.fill("#token", ADMIN_TOKEN)
    page.click("text=Sign in with the admin token")
    page.wait_for_url(f"{base}/apps/shop")

    # The board: a real deployment in Demo, with health.
    demo_column = page.locator('[data-phase="demo"]')
    assert demo_column.locator(".version").inner_text() == "a1b2c3d"
    assert "Running" in demo_column.inner_text()
    assert page.locator('[data-phase="live"] .version').inner_text() == "v1.3.0"
    shot(page, "02-board")

    # Push Demo to Stage as v1.4.0.
    demo_column.locator('input[name="rename_to"]').fill("v1.4.0")
    demo_column.locator("button.push").click()
    page.wait_for_url(f"{base}/apps/shop/deployments/*")
    to_stage = queued(ctx, "stage")
    assert to_stage is not None and to_stage.version == "v1.4.0" and to_stage.trigger == "portal"
    assert f"deploy-{to_stage.id}" in Queue("deploys", connection=redis_conn).job_ids
    page.wait_for_selector("text=Promoting a1b2c3d")

    # Watch the log arrive over server-sent events while the "worker" runs.
    worker = play_worker(ctx, engine, to_stage.id, [
        f"reusing the image of deployment {demo} (a1b2c3d, aaaaaaa)",
        "starting v1.4.0 (sha256:aaaaaaaaaaaa)",
        "healthy: 200 OK on / after 2 attempt(s) (1.4s)",
        "http://shop-stage.localhost:8088 now serves v1.4.0",
    ])
    page.wait_for_selector("#log li >> text=starting v1.4.0")
    assert page.locator("#live-indicator").is_visible()
    shot(page, "03-deployment-streaming")
    page.wait_for_selector("#log li >> text=now serves v1.4.0")
    worker.join()
    page.wait_for_selector("text=Open Stage ↗")  # reloaded once finished: succeeded, with its URL
    assert page.locator("h1 .badge").inner_text().lower() == "succeeded"
    assert page.locator("#log li").count() == 5
    shot(page, "04-deployment-succeeded")

    # Stage now serves v1.4.0.
    page.goto(f"{base}/apps/shop")
    assert page.locator('[data-phase="stage"] .version').inner_text() == "v1.4.0"

    # Edit the Stage profile: inherited values are shown as such, an override becomes "set here".
    page.goto(f"{base}/apps/shop/phases/stage/profile")
    assert "inherited from Demo" in page.locator('tr[data-env="LOG_LEVEL"]').inner_text()
    assert "inherited from Demo" in page.locator('tr[data-secret="API_KEY"]').inner_text()
    page.locator('tr[data-env="LOG_LEVEL"] button[data-override]').click()
    page.locator('#env-rows tr.new-row').last.locator('input[name="env_value"]').fill("info")
    page.fill("#f-memory", "1g")
    page.locator('#secret-rows tr.new-row').first.locator('input[name="secret_name"]').fill("DB_PASSWORD")
    page.locator('#secret-rows tr.new-row').first.locator('input[name="secret_value"]').fill(SECRET)
    shot(page, "05-stage-profile-editing")
    page.click("text=Save Stage profile")
    page.wait_for_selector(".flash-success >> text=Saved the stage profile")
    assert "set here" in page.locator('tr[data-env="LOG_LEVEL"]').inner_text()
    assert "inherited from Demo" in page.locator('tr[data-env="FEATURE_CHECKOUT"]').inner_text()
    assert page.locator('[data-effective="memory"]').inner_text() == "1g"
    shot(page, "06-stage-profile-saved")
    page.click("nav.tabs >> text=Live")
    assert "inherited from Stage" in page.locator('tr[data-env="LOG_LEVEL"]').inner_text()
    assert "inherited from Demo" in page.locator('tr[data-env="FEATURE_CHECKOUT"]').inner_text()
    assert "inherited from Stage" in page.locator('tr[data-secret="DB_PASSWORD"]').inner_text()
    assert SECRET not in page.content()
    shot(page, "07-live-profile-inherits")
    with ctx.db.session() as session:
        stage_profile = session.scalar(select(Profile).where(Profile.phase == "stage"))
        assert ctx.box.open(stage_profile.secrets["DB_PASSWORD"]) == SECRET

    # Push Stage to Live and see the new version live.
    page.goto(f"{base}/apps/shop")
    page.locator('[data-phase="stage"] button.push').click()
    page.wait_for_url(f"{base}/apps/shop/deployments/*")
    to_live = queued(ctx, "live")
    assert to_live.version == "v1.4.0" and f"deploy-{to_live.id}" in Queue("deploys", connection=redis_conn).job_ids
    play_worker(ctx, engine, to_live.id, ["starting v1.4.0", "http://shop-live.localhost:8088 now serves v1.4.0"],
                pause=0.2).join()
    page.wait_for_selector("text=Open Live ↗")
    page.goto(f"{base}/apps/shop")
    assert page.locator('[data-phase="live"] .version').inner_text() == "v1.4.0"
    shot(page, "08-board-v1.4.0-live")

    # Roll Live back, after looking at what would change.
    page.locator('[data-phase="live"] >> text=Roll back to v1.3.0').click()
    page.wait_for_url(f"{base}/apps/shop/phases/live/rollback")
    preview = page.locator("#rollback-preview").inner_text()
    for change in ("v1.4.0 → v1.3.0", "memory 1g → 512m", "LOG_LEVEL info → warn", "DB_PASSWORD removed"):
        assert change in preview, change
    assert SECRET not in page.content()
    shot(page, "09-rollback-preview")
    page.click("text=Roll back Live to v1.3.0")
    page.wait_for_url(f"{base}/apps/shop/deployments/*")
    rollback = queued(ctx, "live")
    assert (rollback.version, rollback.trigger, rollback.source_id) == ("v1.3.0", "rollback", live_now)
    assert f"deploy-{rollback.id}" in Queue("deploys", connection=redis_conn).job_ids
    play_worker(ctx, engine, rollback.id, ["reusing the image of deployment", "healthy"], pause=0.2).join()
    page.wait_for_selector("text=Open Live ↗")
    page.goto(f"{base}/apps/shop")
    assert page.locator('[data-phase="live"] .version').inner_text() == "v1.3.0"
    shot(page, "10-board-after-rollback")
    page.goto(f"{base}/")
    shot(page, "11-apps")
    assert SECRET not in page.content()
