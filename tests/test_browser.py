"""End to end in a real browser: Debian's Chromium, driven by Playwright, against the portal
served on a local port. A person signs in, follows an app from Demo to Live, watches the log
arrive, edits the Stage profile and sees what Live inherits, and rolls Live back.

The deploy worker is played by the test: it writes log lines and outcomes into the database
as the real job does (the real job has its own Docker end-to-end tests). Every page is also
opened at 1280 and 390 px wide: nothing may overflow the window or overlap in the header, every
table column must be reachable, and a screenshot of each goes to var/screenshots/<width>/.
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

from app.context import Context
from app.models import Deployment, LogLine, Preview, PreviewState, Profile, utcnow
from app.profiles import resolve
from app.web import create_app
from tests.support.portal_data import (
    ADMIN_TOKEN,
    StubEngine,
    add_app,
    add_deployment,
    add_log,
    on_socket,
    set_profile,
)
from tests.support.requires import Part, missing, used

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parent.parent / "var" / "screenshots"
WIDTHS = (1280, 390)
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
                                              PIPELINE_CONFIG=str(pipeline)), engine=(engine := StubEngine()))
    with on_socket(create_app(context=ctx)) as url:
        yield ctx, engine, url


@pytest.fixture
def open_page(browser):
    """A new browser tab `width` px wide (a phone is 390)."""
    contexts = []

    def make(width: int = 1280):
        context = browser.new_context(viewport={"width": width, "height": 900 if width > 600 else 844})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(10_000)
        return page

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def page(open_page):
    return open_page(1280)


def shot(page, name: str) -> None:
    width = page.viewport_size["width"]
    folder = SCREENSHOTS / str(width)
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


#: What a reader at this width could not use: the page wider than the window, header items on
#: top of each other, a table wider than its box that does not scroll. Empty when all is well.
LAYOUT_PROBLEMS = """() => {
  const problems = [];
  const doc = document.documentElement;
  if (doc.scrollWidth > window.innerWidth) problems.push(`page is ${doc.scrollWidth} px wide in ${window.innerWidth}`);
  const items = [...document.querySelectorAll('.topbar .brand, .topbar .crumbs > *, .topbar .who > *')]
    .filter(n => n.getClientRects().length && getComputedStyle(n).visibility !== 'hidden')
    .map(n => [n, n.getBoundingClientRect()]).filter(([, r]) => r.width > 0 && r.height > 0);
  for (let i = 0; i < items.length; i++) for (let j = i + 1; j < items.length; j++) {
    const [a, ra] = items[i], [b, rb] = items[j];
    if (a.contains(b) || b.contains(a)) continue;
    const overlap = Math.min(ra.right, rb.right) - Math.max(ra.left, rb.left) > 1 &&
                    Math.min(ra.bottom, rb.bottom) - Math.max(ra.top, rb.top) > 1;
    if (overlap) problems.push(`header: "${a.textContent.trim()}" overlaps "${b.textContent.trim()}"`);
  }
  for (const table of document.querySelectorAll('main table')) {
    const box = table.parentElement;
    const scrolls = ['auto', 'scroll'].includes(getComputedStyle(box).overflowX);
    if (table.scrollWidth > box.clientWidth + 1 && !scrolls)
      problems.push(`table of ${table.scrollWidth} px clipped in ${box.clientWidth} px`);
    // Every column can be scrolled to: the last header cell ends within the scrollable width.
    const cells = table.querySelectorAll('tr:first-child > *');
    if (cells.length) {
      const last = cells[cells.length - 1].getBoundingClientRect(), start = box.getBoundingClientRect().left;
      if (last.right - start + box.scrollLeft > box.scrollWidth + 1) problems.push('a table column cannot be reached');
    }
  }
  return problems;
}"""


def check_layout(page, name: str) -> None:
    """The overflow and overlap checks, then a screenshot for reviewers."""
    page.wait_for_load_state("load")
    problems = page.evaluate(LAYOUT_PROBLEMS)
    shot(page, name)
    assert problems == [], f"{name} at {page.viewport_size['width']} px: {problems}"


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

    # Push Demo to Stage as v1.4.0: the confirmation page says what changes first.
    demo_column.locator('input[name="rename_to"]').fill("v1.4.0")
    demo_column.locator("button.push").click()
    page.wait_for_url(f"{base}/apps/shop/phases/stage/promote?rename_to=v1.4.0")
    assert "v1.3.0 → v1.4.0" in page.locator("#promote-preview").inner_text()
    assert queued(ctx, "stage") is None
    page.click("#confirm-push")
    page.wait_for_url(f"{base}/apps/shop/deployments/*")
    to_stage = queued(ctx, "stage")
    assert to_stage is not None and to_stage.version == "v1.4.0" and to_stage.trigger == "portal"
    assert f"deploy-{to_stage.id}" in Queue("deploys", connection=redis_conn).job_ids
    page.wait_for_selector("text=Promoting a1b2c3d")
    page.evaluate("window.notReloaded = true")

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
    page.wait_for_selector("text=Open Stage ↗")  # its parts refreshed once finished: succeeded, with its URL
    assert page.locator("h1 .badge").inner_text().lower() == "succeeded"
    assert page.locator("#log li").count() == 5
    assert page.evaluate("window.notReloaded") is True  # no reload: the log kept its place
    assert "not yet" not in page.locator("#deployment-facts").inner_text()  # started, finished: filled in live
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
    page.click("#confirm-push")
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


def seed(ctx, engine) -> dict[str, int]:
    """An app a reviewer would recognise: every phase serving, a failed deploy, logs, a profile."""
    app_id = add_app(ctx)
    snapshot = {"env": {"LOG_LEVEL": "info"}, "secrets": {}, "memory": "256m", "cpus": 0.5, "replicas": 1}
    ids = {
        "stage_old": add_deployment(ctx, app_id, "stage", "v1.2.0", "1", minutes_ago=60 * 30, actor="bob",
                                    trigger="tag", snapshot=snapshot),
        "live": add_deployment(ctx, app_id, "live", "v1.2.0", "1", minutes_ago=60 * 24, actor="carol",
                               trigger="pull_request", snapshot=snapshot),
        "stage": add_deployment(ctx, app_id, "stage", "v1.3.0", "2", minutes_ago=60 * 2, actor="bob", trigger="tag",
                                snapshot=snapshot),
        "demo": add_deployment(ctx, app_id, "demo", "a1b2c3d", "a", minutes_ago=40, actor="alice-with-a-long-name"),
        "failed": add_deployment(ctx, app_id, "demo", "b2c3d4e", "b", status="failed", minutes_ago=5, actor="alice",
                                 reason="health check failed: 500 Internal Server Error on /healthz after 30s",
                                 evidence={"health": ["connection refused", "500 Internal Server Error"],
                                           "logs": ["Traceback (most recent call last):",
                                                    "KeyError: 'DATABASE_URL' " + "x" * 120]}),
    }
    add_log(ctx, ids["demo"], "fetching a1b2c3d", "building Dockerfile (tree 9f8e7d6)",
            "waiting for /healthz: 2 s of 30, last answer: connection refused",
            "healthy: 200 OK on /healthz after 3 attempt(s) (2.4s)",
            "http://shop-demo.localhost:8088 now serves a1b2c3d (slot port 20001) and this line is long " + "y" * 80)
    add_log(ctx, ids["failed"], "fetching b2c3d4e", "waiting for /healthz: 2 s of 30, last answer: 500 Internal "
            "Server Error", "failed: health check failed: 500 Internal Server Error on /healthz after 30s")
    for phase in ("demo", "stage", "live"):
        engine.run("shop", phase, ids[phase])
    now = time.time()
    engine.written[f"c{ids['demo']}"] = [(now - 60 + n, f"GET /healthz 200 in {n} ms " + "z" * (n * 9))
                                         for n in range(12)]
    set_profile(ctx, app_id, "demo", env={"LOG_LEVEL": "debug", "FEATURE_CHECKOUT": "on"}, secrets={"API_KEY": SECRET})
    with ctx.db.session() as session:  # a fork's pull request, waiting for a maintainer's consent
        session.add(Preview(app_id=app_id, pr_number=42, state=PreviewState.AWAITING_APPROVAL.value, head_sha="e" * 40,
                            head_repo="someone/shop-fork", fork=True,
                            reason="a fork's pull request runs only after /deploy preview by a maintainer"))
    ids["app"] = app_id
    return ids


def sign_in(page, base: str) -> None:
    page.goto(f"{base}/signin")
    page.fill("#token", ADMIN_TOKEN)
    page.click("text=Sign in with the admin token")
    page.wait_for_url(f"{base}/")


@pytest.mark.parametrize("width", WIDTHS)
def test_every_page_fits_the_window_at_desktop_and_phone_width(served, open_page, width):
    ctx, engine, base = served
    ids = seed(ctx, engine)
    page = open_page(width)
    page.goto(f"{base}/signin")
    check_layout(page, "00-sign-in")
    sign_in(page, base)
    pages = {
        "01-apps": "/",
        "02-board": "/apps/shop",
        "03-history": "/apps/shop/phases/demo",
        "04-deployment": f"/apps/shop/deployments/{ids['demo']}",
        "05-deployment-failed": f"/apps/shop/deployments/{ids['failed']}",
        "06-promote-confirm": "/apps/shop/phases/stage/promote?rename_to=v1.4.0",
        "07-rollback": "/apps/shop/phases/live/rollback",
        "08-compare": "/apps/shop/compare?from=demo&to=stage",
        "09-profile": "/apps/shop/phases/stage/profile",
        "10-audit": "/apps/shop/audit",
        "11-notifications": "/notifications",
        "12-tokens": "/tokens",
        "13-runtime-logs": "/apps/shop/phases/demo/logs",
        "15-previews": "/apps/shop/previews",
    }
    for name, path in pages.items():
        page.goto(base + path)
        check_layout(page, name)
        assert SECRET not in page.content()
    # The things the issue found missing: a skip link, the log as a live region, local times.
    page.goto(f"{base}/apps/shop/deployments/{ids['demo']}")
    assert page.locator("a.skip-link").get_attribute("href") == "#main"
    log = page.locator("#log")
    assert (log.get_attribute("role"), log.get_attribute("aria-live")) == ("log", "polite")
    assert page.locator("#log time").first.get_attribute("title").endswith(" UTC")
    # A refused profile field is explained next to it by the server, not by the browser's pattern.
    page.goto(f"{base}/apps/shop/phases/stage/profile")
    page.fill("#f-memory", "lots")
    page.click("text=Save Stage profile")
    page.wait_for_selector("#error-sizing-memory")
    assert page.locator("#f-memory").input_value() == "lots"
    assert page.locator("#error-sizing-memory").inner_text().startswith("Must be a number with a unit")
    check_layout(page, "14-profile-field-error")
    # "Why it failed" keeps its health evidence.
    page.goto(f"{base}/apps/shop/deployments/{ids['failed']}")
    assert "500 Internal Server Error" in page.locator(".evidence").inner_text()


@pytest.mark.parametrize("width", WIDTHS)
def test_the_board_and_the_apps_list_change_without_a_reload_while_a_deploy_runs(served, open_page, width):
    ctx, engine, base = served
    ids = seed(ctx, engine)
    page = open_page(width)
    sign_in(page, base)

    # The apps list: a deploy that fails while it is open shows up, marked, with no reload.
    page.evaluate("window.notReloaded = true")
    assert page.locator('[data-app="shop"] [data-phase="demo"] .failed-mark').count() == 1  # the seeded failure
    fixed = add_deployment(ctx, ids["app"], "demo", "c3d4e5f", "c", minutes_ago=0)
    page.wait_for_selector('[data-app="shop"] [data-phase="demo"] .failed-mark', state="detached")
    assert page.locator('[data-app="shop"] [data-phase="demo"] .v').inner_text() == "c3d4e5f"
    broken = add_deployment(ctx, ids["app"], "stage", "v1.4.0", "d", status="failed", minutes_ago=0,
                            reason="health check failed: connection refused on / after 30s")
    page.wait_for_selector('[data-app="shop"] [data-phase="stage"] .failed-mark >> text=v1.4.0 failed')
    assert page.locator('[data-app="shop"].has-failure').count() == 1
    assert page.evaluate("window.notReloaded") is True
    shot(page, "20-apps-live-failure")
    page.click('[data-app="shop"] [data-phase="stage"] .failed-mark')
    page.wait_for_url(f"{base}/apps/shop/deployments/{broken}")
    assert "Why it failed" in page.content()

    # The board follows a deploy from queued to serving; a keyboard user's focus stays where it was.
    page.goto(f"{base}/apps/shop")
    page.evaluate("window.notReloaded = true")
    stage = page.locator('[data-phase="stage"]')
    assert stage.locator(".version").inner_text() == "v1.3.0"
    stage.locator(".links >> text=History").focus()
    to_stage = add_deployment(ctx, ids["app"], "stage", "c3d4e5f", "c", status="queued", minutes_ago=0,
                              trigger="portal", source_id=fixed)
    page.wait_for_selector('[data-phase="stage"] .in-progress >> text=queued')
    assert page.evaluate("document.activeElement.textContent.trim()") == "History"
    assert page.evaluate("document.activeElement.closest('[data-phase]').dataset.phase") == "stage"
    worker = play_worker(ctx, engine, to_stage, ["starting c3d4e5f", "healthy: 200 OK on / after 1 attempt(s)"],
                         pause=0.8)
    page.wait_for_selector('[data-phase="stage"] .in-progress >> text=deploying')
    shot(page, "21-board-deploying")
    worker.join()
    page.wait_for_selector('[data-phase="stage"] .version >> text=c3d4e5f')
    assert page.locator('[data-phase="stage"] .in-progress').count() == 0
    assert page.evaluate("window.notReloaded") is True
    shot(page, "22-board-after-deploy")


@pytest.mark.parametrize("width", WIDTHS)
def test_promote_with_its_confirmation_by_keyboard_alone(served, open_page, redis_conn, width):
    ctx, engine, base = served
    seed(ctx, engine)
    page = open_page(width)
    sign_in(page, base)
    page.goto(f"{base}/apps/shop")

    # The first Tab stop is the skip link; it takes focus past the header.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip-link"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"

    def tab_to(selector: str, limit: int = 80) -> None:
        for _ in range(limit):
            page.keyboard.press("Tab")
            if page.evaluate("(s) => document.activeElement.matches(s)", selector):
                return
        raise AssertionError(f"Tab never reached {selector}")

    tab_to('[data-phase="demo"] input[name="rename_to"]')
    page.keyboard.type("v1.4.0")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.matches('[data-phase=\"demo\"] button.push')")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/apps/shop/phases/stage/promote?rename_to=v1.4.0")
    assert "v1.3.0 → v1.4.0" in page.locator("#promote-preview").inner_text()
    assert queued(ctx, "stage") is None  # nothing happens before the confirmation
    check_layout(page, "30-promote-confirm-keyboard")

    def confirm_as(name: str) -> None:
        tab_to("#rename_to")
        page.keyboard.press("Control+A")
        page.keyboard.type(name)
        tab_to("#confirm-push")
        page.keyboard.press("Enter")

    # A bad name is explained next to its field, by the server.
    confirm_as("../etc")
    page.wait_for_selector("#rename_to-error")
    assert page.locator("#rename_to").get_attribute("aria-invalid") == "true"
    assert page.locator("#rename_to-error").inner_text().startswith("A version must be semver")
    shot(page, "31-promote-field-error")

    confirm_as("v1.4.0")
    page.wait_for_url(f"{base}/apps/shop/deployments/*")
    to_stage = queued(ctx, "stage")
    assert (to_stage.version, to_stage.trigger) == ("v1.4.0", "portal")
    assert f"deploy-{to_stage.id}" in Queue("deploys", connection=redis_conn).job_ids
