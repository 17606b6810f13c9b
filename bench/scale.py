"""5. Scale: N apps × 3 phases on one host through the real path; portal render times; RSS.

Every app is a busybox sample repository of its own. Demo: one signed push each (a build
each). Stage: one release tag push each (the Demo image, promoted). Live: one promotion
through the API each (the bench's pipeline copy lets Live go without a reviewed PR, since
there is no GitHub here). Meanwhile a sampler reads the RSS of every web and worker process.
"""

from __future__ import annotations

import re
import statistics
import threading
import time
from dataclasses import dataclass, field

import requests
from sqlalchemy import select

from bench.deliveries import Repo, Sender
from bench.env import BenchError, Env, Proc, children_of, rss_mib

FINISHED = ("succeeded", "failed", "refused", "superseded")


class RssSampler(threading.Thread):
    """Peak RSS (MiB) per role: the web server's main process and workers, RQ workers and their work horses."""

    def __init__(self, web: Proc, workers: list[Proc], interval: float = 0.2):
        super().__init__(daemon=True)
        self.web, self.workers, self.interval = web, workers, interval
        self.peak: dict[str, float] = {}
        self.samples = 0
        self._halt = threading.Event()

    def _note(self, role: str, value: float | None) -> None:
        if value is not None:
            self.peak[role] = max(self.peak.get(role, 0.0), value)

    def run(self) -> None:
        while not self._halt.is_set():
            self._note("web master", rss_mib(self.web.pid))
            for pid in children_of(self.web.pid):
                self._note("web worker", rss_mib(pid))
            for worker in self.workers:
                self._note("worker", rss_mib(worker.pid))
                for pid in children_of(worker.pid):  # the work horse RQ forks for each job
                    if _is_python(pid):
                        self._note("work horse", rss_mib(pid))
            self.samples += 1
            self._halt.wait(self.interval)

    def stop(self) -> dict[str, float]:
        self._halt.set()
        self.join(timeout=5)
        return dict(self.peak)


def _is_python(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"python" in f.read().split(b"\0")[0]
    except OSError:
        return False


@dataclass
class ScaleResults:
    apps: int
    workers: int
    deploy_seconds: dict[str, float] = field(default_factory=dict)
    deployments: int = 0
    failed: list[str] = field(default_factory=list)
    render: dict[str, list[float]] = field(default_factory=dict)
    rss: dict[str, float] = field(default_factory=dict)
    rss_samples: int = 0
    caddy_cpu_percent: float | None = None
    host_busy_percent: float | None = None
    containers: int = 0


def wait_all(env: Env, ctx, ids: list[int], timeout: float, what: str) -> list[str]:
    """Wait until every deployment finished; the failed ones, explained (not raised: the scale
    part goes on measuring with what did deploy)."""
    from app.models import Deployment

    deadline = time.monotonic() + timeout
    while True:
        env.check_alive()
        with ctx.db.session() as session:
            rows = session.execute(select(Deployment.id, Deployment.status, Deployment.reason)
                                   .where(Deployment.id.in_(ids))).all()
        done = [r for r in rows if r.status in FINISHED]
        if len(done) == len(ids):
            return [f"{what} {r.id} {r.status}: {r.reason}" for r in done if r.status != "succeeded"]
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: {len(ids) - len(done)} of {len(ids)} deployments unfinished "
                             f"after {timeout:g}s")
        time.sleep(0.25)


def sign_in(base: str, token: str) -> requests.Session:
    """The portal's own sign-in form with the admin token (session cookie + CSRF token)."""
    browser = requests.Session()
    browser.trust_env = False
    page = browser.get(f"{base}/signin", timeout=10)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    if match is None:
        raise BenchError(f"no CSRF token on {base}/signin ({page.status_code})")
    answer = browser.post(f"{base}/signin", data={"token": token, "csrf_token": match.group(1)},
                          allow_redirects=False, timeout=10)
    if answer.status_code not in (302, 303):
        raise BenchError(f"signing in with the admin token failed: {answer.status_code}")
    return browser


def time_get(session: requests.Session, url: str, runs: int, headers: dict | None = None,
             must_contain: str | None = None) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        response = session.get(url, timeout=30, headers=headers or {}, allow_redirects=False)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise BenchError(f"GET {url}: {response.status_code} {response.text[:200]}")
        if must_contain and must_contain not in response.text:
            raise BenchError(f"GET {url} does not show {must_contain!r}")
        times.append(elapsed)
    return times


def cpu_seconds(pid: int) -> float:
    import os

    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def host_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole host, from /proc/stat."""
    values = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def run(env: Env, ctx, sender: Sender, web: Proc, web_port: int, workers: list[Proc], *, apps: int,
        render_runs: int, profile_dir=None, log=print) -> ScaleResults:
    results = ScaleResults(apps=apps, workers=len(workers))
    repos = [Repo(env.home / "repos" / f"app-{i:02d}", f"bench/app-{i:02d}") for i in range(apps)]
    api = requests.Session()
    api.trust_env = False
    api.headers["Authorization"] = f"Bearer {env.admin_token}"
    base = f"http://127.0.0.1:{web_port}"
    per_deploy = 30 * apps / max(1, len(workers)) + 120  # generous bound; a stuck deploy fails clearly

    sampler = RssSampler(web, workers)
    sampler.start()
    try:
        started = time.monotonic()
        ids = []
        for i, repo in enumerate(repos):
            ids.append(sender.deliver("push", repo.push_payload(repo.commit(f"app-{i:02d} 1.0.0")))["deployment"])
        results.failed += wait_all(env, ctx, ids, per_deploy, "demo deployment")
        results.deploy_seconds["demo (push, build)"] = time.monotonic() - started
        log(f"  demo: {len(ids)} apps in {results.deploy_seconds['demo (push, build)']:.1f}s")

        started = time.monotonic()
        stage = []
        for repo in repos:
            tag_object, commit = repo.tag("v1.0.0")
            answers = [sender.deliver(event, payload) for event, payload in repo.tag_payloads("v1.0.0", tag_object,
                                                                                              commit)]
            stage.append(next(a["deployment"] for a in answers if a.get("deployment")))
        results.failed += wait_all(env, ctx, stage, per_deploy, "stage deployment")
        results.deploy_seconds["stage (tag, promoted)"] = time.monotonic() - started
        log(f"  stage: {len(stage)} apps in {results.deploy_seconds['stage (tag, promoted)']:.1f}s")

        started = time.monotonic()
        live = []
        for repo in repos:
            answer = api.post(f"{base}/api/v1/apps/{repo.name}/phases/live/promote", json={}, timeout=30)
            if answer.status_code != 202:
                results.failed.append(f"promote {repo.name} to live: {answer.status_code} {answer.text[:200]}")
                continue
            live.append(answer.json()["deployment"]["id"])
        results.failed += wait_all(env, ctx, live, per_deploy, "live deployment")
        results.deploy_seconds["live (API promote)"] = time.monotonic() - started
        log(f"  live: {len(live)} apps in {results.deploy_seconds['live (API promote)']:.1f}s")
        results.deployments = len(ids) + len(stage) + len(live)
    finally:
        results.rss = sampler.stop()
        results.rss_samples = sampler.samples

    results.containers = sum(1 for c in ctx.engine.list_containers() if c.status == "running")
    caddy = next((p for p in env.processes if p.name == "caddy"), None)
    if caddy is not None:  # nothing deploys now: what do the phases cost at rest?
        before, host_before, t0 = cpu_seconds(caddy.pid), host_cpu(), time.monotonic()
        time.sleep(5)
        elapsed = time.monotonic() - t0
        results.caddy_cpu_percent = 100 * (cpu_seconds(caddy.pid) - before) / elapsed
        busy, total = (after - first for after, first in zip(host_cpu(), host_before))
        results.host_busy_percent = 100 * busy / max(total, 1)

    # Rendering, each page warmed once, then timed on a kept-alive connection.
    browser = sign_in(base, env.admin_token)
    board_app = _fully_deployed(ctx, [repo.name for repo in repos])
    pages = {
        f"apps list / ({apps} apps)": (browser, f"{base}/", repos[-1].name),
        f"board /apps/{board_app}": (browser, f"{base}/apps/{board_app}", "v1.0.0"),
        f"API /api/v1/apps ({apps} apps)": (api, f"{base}/api/v1/apps", repos[-1].name),
    }
    sampler = RssSampler(web, workers)
    sampler.start()
    recording = None
    if profile_dir is not None:
        from bench.profiling import Recording

        recording = Recording(web.pid, profile_dir / "profile-render.txt")
    try:
        for label, (session, url, text) in pages.items():
            time_get(session, url, 2, must_contain=text)
            results.render[label] = time_get(session, url, render_runs, must_contain=text)
    finally:
        if recording is not None:
            recording.stop()
        for role, value in sampler.stop().items():
            results.rss[role] = max(results.rss.get(role, 0.0), value)
    return results


def _fully_deployed(ctx, names: list[str]) -> str:
    """An app from the middle of the list serving on all three phases (the board to time)."""
    from app.models import App, Deployment

    with ctx.db.session() as session:
        rows = session.execute(select(App.name, Deployment.phase).join(Deployment, Deployment.app_id == App.id)
                               .where(Deployment.status == "succeeded")).all()
    phases: dict[str, set[str]] = {}
    for name, phase in rows:
        phases.setdefault(name, set()).add(phase)
    complete = [name for name in names if len(phases.get(name, ())) >= 3]
    if not complete:
        raise BenchError("no app got deployed to all three phases")
    return complete[len(complete) // 2]


def summary(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95
