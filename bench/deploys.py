"""2–4. Push → URL beside a naive script, requests dropped during each deploy, promote → URL.

Runs alternate (ours, naive, ours, naive, …) in one process run. Each run's clock starts
when the push delivery is POSTed (ours) or the script starts (naive) and stops when the
URL first answers with the new commit's version text. Meanwhile two request loops, each on
a new connection every time, GET the URL and POST 512 bytes to the sample app's slow CGI
(200 ms an answer; a write no proxy may retry), and count every failure (connection error,
timeout, non-200), from just before the deploy until just after it is over.
"""

from __future__ import annotations

import http.client
import secrets
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from bench.deliveries import Repo, Sender
from bench.env import BenchError, Env, wait_until

NAIVE_SCRIPT = Path(__file__).with_name("naive_deploy.sh")
FINISHED = ("succeeded", "failed", "refused", "superseded")
DEPLOY_TIMEOUT = 180
#: The sample app's CGI that reads a request body and answers after 200 ms (tests/support/dockerkit).
POST_PATH = "/cgi-bin/slow"
POST_BODY = b"x" * 512


class Watcher(threading.Thread):
    """GET `path` on 127.0.0.1:`port` (Host: `host`) over and over, a new connection each time
    (`body`: POST it instead).

    `matched_at` is when the body first contained every one of `expect`; `failures` counts
    answers other than 200 and connection errors. Bounded: stops after `max_seconds`.
    """

    def __init__(self, port: int, host: str, path: str, expect: list[str], *, interval: float = 0.02,
                 timeout: float = 5, max_seconds: float = DEPLOY_TIMEOUT + 30, body: bytes | None = None):
        super().__init__(daemon=True)
        self.body = body
        self.port, self.host, self.path, self.expect = port, host, path, expect
        self.interval, self.timeout, self.max_seconds = interval, timeout, max_seconds
        self.matched_at: float | None = None
        self.requests = 0
        self.failures = 0
        self.samples: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._halt.is_set() and time.monotonic() < deadline:
            ok, body, problem = self._get()
            self.requests += 1
            if not ok:
                self.failures += 1
                if len(self.samples) < 5:
                    self.samples.append(problem)
            elif self.matched_at is None and all(e in body for e in self.expect):
                self.matched_at = time.monotonic()
            self._halt.wait(self.interval)

    def _get(self) -> tuple[bool, str, str]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            connection.request("GET" if self.body is None else "POST", self.path, body=self.body,
                               headers={"Host": self.host, "Connection": "close"})
            response = connection.getresponse()
            body = response.read().decode(errors="replace")
            if response.status != 200:
                return False, body, f"{response.status} {body[:60]!r}"
            return True, body, ""
        except (OSError, http.client.HTTPException) as exc:
            return False, "", f"{type(exc).__name__}: {exc}"[:100]
        finally:
            connection.close()

    def wait_match(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while self.matched_at is None and time.monotonic() < deadline and self.is_alive():
            time.sleep(0.005)
        if self.matched_at is None:
            raise BenchError(f"http://{self.host}:{self.port}{self.path} did not serve {self.expect} "
                             f"within {timeout:g}s (failures so far: {self.samples})")
        return self.matched_at

    def finish(self, linger: float = 0.5) -> None:
        time.sleep(linger)
        self._halt.set()
        self.join(timeout=10)


class Watch:
    """Loops on one URL: detectors that notice the new version as soon as it is served, and
    the GET and POST loops whose failures are counted (5 s timeout: slow is not failed).

    The detectors are 20 staggered threads starting a probe every 20 ms between them, so the
    few probes that connect to a container still starting (docker-proxy holds them for TCP's
    1 s SYN retry) do not delay the detection: the others go on probing meanwhile."""

    DETECTORS = 20
    PROBE_EVERY = 0.02

    def __init__(self, port: int, host: str, path: str, expect: list[str]):
        self.detectors = [Watcher(port, host, path, expect, interval=self.DETECTORS * self.PROBE_EVERY, timeout=2)
                          for _ in range(self.DETECTORS)]
        self.loop = Watcher(port, host, path, expect)
        self.posts = Watcher(port, host, POST_PATH, [], body=POST_BODY)
        for detector in self.detectors:  # staggered: together they start a probe every 20 ms
            detector.start()
            time.sleep(self.PROBE_EVERY)
        self.loop.start()
        self.posts.start()

    @property
    def matched_at(self) -> float | None:
        return min((d.matched_at for d in self.detectors if d.matched_at is not None), default=None)

    def wait_match(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while self.matched_at is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if self.matched_at is None:
            loop = self.loop
            raise BenchError(f"http://{loop.host}:{loop.port}{loop.path} did not serve {loop.expect} "
                             f"within {timeout:g}s (failures so far: {loop.samples})")
        return self.matched_at

    def finish(self, linger: float = 0.5) -> None:
        for detector in self.detectors:
            detector.finish(0)
        self.loop.finish(linger)
        self.posts.finish(0)

    def run(self, started: float, steps: dict[str, float]) -> Run:
        return Run(self.matched_at - started, self.loop.requests, self.loop.failures,
                   self.loop.samples + self.posts.samples, steps, self.posts.requests, self.posts.failures)


@dataclass
class Run:
    seconds: float
    requests: int
    failures: int
    samples: list[str] = field(default_factory=list)
    steps: dict[str, float] = field(default_factory=dict)
    posts: int = 0
    post_failures: int = 0


@dataclass
class DeployResults:
    ours: list[Run] = field(default_factory=list)
    naive: list[Run] = field(default_factory=list)
    promote: list[Run] = field(default_factory=list)
    rebuilt_on_promote: int = 0

    @staticmethod
    def median(runs: list[Run]) -> float:
        return statistics.median(r.seconds for r in runs)


class Ours:
    """The busybox sample app pushed through the real path: webhook → RQ worker → Docker → Caddy."""

    def __init__(self, env: Env, ctx, sender: Sender, repo: Repo):
        self.env, self.ctx, self.sender, self.repo = env, ctx, sender, repo
        from app.registry import slugify

        self.app = slugify(repo.name)

    def push(self, version: str, sha: str | None = None) -> int:
        """POST the push of `sha` (default: a new commit serving `version`); the deployment id."""
        sha = sha or self.repo.commit(version)
        answer = self.sender.deliver("push", self.repo.push_payload(sha))
        if "deployment" not in answer:
            raise BenchError(f"the push of {version} planned no deployment: {answer}")
        return answer["deployment"]

    def promote(self, tag: str, tagged: tuple[str, str] | None = None) -> int:
        """POST a release tag's push and create deliveries (default: tag HEAD now)."""
        tag_object, commit = tagged or self.repo.tag(tag)
        ids = []
        for event, payload in self.repo.tag_payloads(tag, tag_object, commit):
            answer = self.sender.deliver(event, payload)
            ids.append(answer.get("deployment"))
        deployment = next((i for i in ids if i), None)
        if deployment is None:
            raise BenchError(f"the tag {tag} planned no deployment: {ids}")
        return deployment

    def wait_finished(self, deployment_id: int, timeout: float = DEPLOY_TIMEOUT) -> str:
        from app.models import Deployment

        status = None

        def finished() -> bool:
            nonlocal status
            self.env.check_alive()
            with self.ctx.db.session() as session:
                status = session.scalar(select(Deployment.status).where(Deployment.id == deployment_id))
            return status in FINISHED

        wait_until(f"deployment {deployment_id} finishing", finished, timeout=timeout, interval=0.05)
        if status != "succeeded":
            raise BenchError(f"deployment {deployment_id} {status}: {self.describe(deployment_id)}")
        return status

    def describe(self, deployment_id: int) -> str:
        from app.models import Deployment, LogLine

        with self.ctx.db.session() as session:
            deployment = session.get(Deployment, deployment_id)
            lines = session.scalars(select(LogLine.text).where(LogLine.deployment_id == deployment_id)
                                    .order_by(LogLine.id)).all()
            return f"{deployment.reason}; log: " + " | ".join(lines[-12:])

    def steps(self, deployment_id: int, started: float, started_wall: float) -> dict[str, float]:
        """Seconds from the POST to each step, from the deployment's log (for profiling)."""
        from app.models import Deployment, LogLine
        from app.portal.queries import aware

        out: dict[str, float] = {}
        with self.ctx.db.session() as session:
            deployment = session.get(Deployment, deployment_id)
            if deployment.started_at:
                out["job started"] = aware(deployment.started_at).timestamp() - started_wall
            for line in session.scalars(select(LogLine).where(LogLine.deployment_id == deployment_id)
                                        .order_by(LogLine.id)):
                key = _step(line.text)
                if key and key not in out:
                    out[key] = aware(line.at).timestamp() - started_wall
            if deployment.finished_at:
                out["job finished"] = aware(deployment.finished_at).timestamp() - started_wall
        return out

    def builds(self) -> int:
        from app.models import Build

        with self.ctx.db.session() as session:
            return session.scalar(select(func.count()).select_from(Build))


def _step(text: str) -> str | None:
    for prefix, key in (("fetching", "clone"), ("fetched", "fetched"), ("building", "build"), ("built ", "built"),
                        ("reusing", "image reused"),
                        ("starting", "container start"), ("healthy", "healthy"),
                        ("the previous container gets", "old drains"), ("stopped the previous", "old stopped"),
                        ("the previous container ignored", "old killed")):
        if text.startswith(prefix):
            return key
    if " now serves " in text:
        return "url serves"
    return None


def run_ours(ours: Ours, router_port: int, run: int) -> Run:
    version = f"ours-{run}-{secrets.token_hex(3)}"
    sha = ours.repo.commit(version)  # the commit is there before the clock starts, as on GitHub
    watch = Watch(router_port, f"{ours.app}-demo.localhost", "/version", [version])
    started, started_wall = time.monotonic(), time.time()
    deployment = ours.push(version, sha)
    watch.wait_match(DEPLOY_TIMEOUT)
    ours.wait_finished(deployment)
    watch.finish()
    return watch.run(started, ours.steps(deployment, started, started_wall))


def run_promote(ours: Ours, router_port: int, tag: str) -> tuple[Run, bool]:
    """Tag what Demo serves; time until Stage serves that image under the tag's version."""
    version = ours.repo.path.joinpath("www", "version").read_text().strip()
    builds = ours.builds()
    tagged = ours.repo.tag(tag)
    watch = Watch(router_port, f"{ours.app}-stage.localhost", "/cgi-bin/info",
                  [f"APP_VERSION={tag}\n", f"BUILD={version}\n"])
    started, started_wall = time.monotonic(), time.time()
    deployment = ours.promote(tag, tagged)
    watch.wait_match(DEPLOY_TIMEOUT)
    ours.wait_finished(deployment)
    watch.finish()
    return watch.run(started, ours.steps(deployment, started, started_wall)), ours.builds() != builds


class Naive:
    def __init__(self, env: Env, repo: Repo, port: int):
        self.env, self.repo, self.port = env, repo, port
        self.name = f"{env.naive_instance}-app"
        self.label = f"release-pipeline.instance={env.naive_instance}"

    def commit(self, version: str) -> None:
        self.repo.commit(version)

    def deploy(self, version: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(
                ["bash", str(NAIVE_SCRIPT), self.repo.clone_url, "main", self.name, str(self.port), self.label,
                 version], capture_output=True, text=True, timeout=DEPLOY_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise BenchError(f"the naive script did not finish within {DEPLOY_TIMEOUT}s") from None


def run_naive(naive: Naive, run: int) -> Run:
    version = f"naive-{run}-{secrets.token_hex(3)}"
    naive.commit(version)
    watch = Watch(naive.port, "127.0.0.1", "/version", [version])
    started, started_wall = time.monotonic(), time.time()
    done = naive.deploy(version)
    if done.returncode != 0:
        watch.finish(0)
        raise BenchError(f"the naive script failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    watch.wait_match(10)
    watch.finish()
    steps = {}
    for line in done.stderr.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "step":
            steps[parts[1]] = float(parts[2]) - started_wall
    return watch.run(started, steps)


def run(env: Env, ctx, sender: Sender, *, runs: int, promote_runs: int, naive_port: int,
        log=print) -> DeployResults:
    results = DeployResults()
    ours = Ours(env, ctx, sender, Repo(env.home / "repos" / "shop", "bench/shop"))
    naive = Naive(env, Repo(env.home / "repos" / "naive-shop", "bench/naive-shop"), naive_port)

    # Warm-up, not measured: both sides get a first version serving (and ours its Demo and
    # Stage routes, created once per phase), so every measured run replaces a running one.
    first = ours.push(f"ours-warmup-{secrets.token_hex(3)}")
    ours.wait_finished(first)
    ours.wait_finished(ours.promote("v0.1.0"))
    warmup = f"naive-warmup-{secrets.token_hex(3)}"
    naive.commit(warmup)
    done = naive.deploy(warmup)
    if done.returncode != 0:
        raise BenchError(f"the naive script failed ({done.returncode}): {done.stderr.strip()[-400:]}")

    for i in range(runs):
        results.ours.append(run_ours(ours, env.router_port, i))
        results.naive.append(run_naive(naive, i))
        line = (f"  push→URL run {i + 1}/{runs}: ours {results.ours[-1].seconds:.2f}s "
                f"({_failed(results.ours[-1])}), naive {results.naive[-1].seconds:.2f}s "
                f"({_failed(results.naive[-1])})")
        if i < promote_runs:
            promoted, rebuilt = run_promote(ours, env.router_port, f"v1.0.{i}")
            results.promote.append(promoted)
            results.rebuilt_on_promote += int(rebuilt)
            line += f"; promote {promoted.seconds:.2f}s ({_failed(promoted)})"
        log(line)
    return results


def _failed(run: Run) -> str:
    return f"failed GETs {run.failures} of {run.requests}, POSTs {run.post_failures} of {run.posts}"
