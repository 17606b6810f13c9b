"""1. Intake: one signed push delivery fired with wrk at our endpoint and at adnanh/webhook.

The body and its signature stay the same; a Lua script gives each request its own
X-GitHub-Delivery id, so our delivery dedup never short-circuits the work (record the
delivery, plan, record the deployment and its reports, enqueue on Redis).
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import requests
from sqlalchemy import func, select

from bench.deliveries import intake_push, sign
from bench.env import BenchError, Env, free_port, wait_until
from bench.scale import host_cpu

LUA = r"""
-- Constant body and signature; a distinct X-GitHub-Delivery per request.
local prefix = "%(prefix)s"
local counter = 0
local threads = {}
local next_id = 0
local statuses = {}

wrk.method = "POST"
wrk.body = io.open("%(body)s", "rb"):read("*a")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-GitHub-Event"] = "push"
wrk.headers["X-Hub-Signature-256"] = "%(signature)s"
wrk.headers["User-Agent"] = "GitHub-Hookshot/bench"

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  ok, other = 0, 0
end

function request()
  counter = counter + 1
  wrk.headers["X-GitHub-Delivery"] = prefix .. "-" .. tid .. "-" .. counter
  return wrk.format()
end

function response(status, headers, body)
  if status == %(expected)d then ok = ok + 1 else other = other + 1 end
end

function done(summary, latency, requests)
  local ok_total, other_total = 0, 0
  for _, thread in ipairs(threads) do
    ok_total = ok_total + thread:get("ok")
    other_total = other_total + thread:get("other")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH-JSON {"requests":%%d,"duration_us":%%d,"expected_status":%%d,"other_status":%%d,' ..
    '"connect":%%d,"read":%%d,"write":%%d,"timeout":%%d,"status_errors":%%d,' ..
    '"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"max_us":%%d}\n',
    summary.requests, summary.duration, ok_total, other_total,
    e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


@dataclass
class WrkResult:
    requests: int
    seconds: float
    expected: int
    other_status: int
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    raw: str
    #: CPU seconds during the round of each process that shares the cores: the server (its
    #: processes), wrk, and what the caller names (our drainer, Redis); "host" is all CPU time
    #: on the machine.
    cpu_split: dict[str, float] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def errors(self) -> int:
        return self.other_status + self.socket_errors

    @property
    def cpu_seconds(self) -> float:
        """CPU time of the server's processes during the round."""
        return self.cpu_split.get("server", 0.0)

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.cpu_seconds / max(1, self.requests)


def process_cpu(pid: int, children: bool = True) -> float:
    """CPU seconds of `pid` (with its reaped children), plus its live children's when asked."""
    def own(p: int) -> float:
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime

    from bench.env import children_of

    return own(pid) + (sum(own(c) for c in children_of(pid)) if children else 0.0)


def run_wrk(env: Env, url: str, body_file: Path, signature: str, expected: int, *, threads: int,
            connections: int, seconds: int, tag: str, server_pid: int | None = None,
            beside: dict[str, int] | None = None) -> WrkResult:
    script = env.home / f"wrk-{tag}.lua"
    script.write_text(LUA % {"prefix": f"{tag}-{secrets.token_hex(4)}", "body": body_file,
                             "signature": signature, "expected": expected})
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "--latency",
            "-s", str(script), url]
    watched = {**({"server": server_pid} if server_pid else {}), **(beside or {})}
    split_before = _cpu_split(watched)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk against {url} did not finish") from None
    split = {key: value - split_before[key] for key, value in _cpu_split(watched).items()}
    (env.logs / f"wrk-{tag}.txt").write_text(done.stdout + done.stderr)
    line = next((l for l in done.stdout.splitlines() if l.startswith("BENCH-JSON ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed against {url}: {done.stderr.strip() or done.stdout[-500:]}")
    data = json.loads(line.removeprefix("BENCH-JSON "))
    socket_errors = data["connect"] + data["read"] + data["write"] + data["timeout"]
    return WrkResult(
        requests=data["requests"], seconds=data["duration_us"] / 1e6, expected=data["expected_status"],
        other_status=data["other_status"], socket_errors=socket_errors,
        p50_ms=data["p50_us"] / 1000, p90_ms=data["p90_us"] / 1000, p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000, raw=done.stdout,
        cpu_split=split,
    )


def _cpu_split(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process, of wrk (this process's reaped children) and
    of the whole host."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy, _ = host_cpu()
    return {**{name: process_cpu(pid) for name, pid in pids.items()},
            "wrk": children.ru_utime + children.ru_stime, "host": busy / os.sysconf("SC_CLK_TCK")}


def redis_server_pid(redis_url: str) -> int | None:
    """The local redis-server serving `redis_url`'s port, if it runs on this host."""
    port = urlparse(redis_url).port or 6379
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "comm").read_text().strip() == "redis-server" and \
                    f":{port}" in (proc / "cmdline").read_bytes().decode(errors="replace"):
                return int(proc.name)
        except OSError:
            continue
    return None


def start_peer(env: Env, port: int):
    """adnanh/webhook with a payload-hmac-sha256 rule on X-Hub-Signature-256 running /bin/true."""
    hooks = env.home / "hooks.json"
    hooks.write_text(json.dumps([{
        "id": "deploy",
        "execute-command": "/bin/true",
        "command-working-directory": str(env.home),
        "response-message": "accepted",
        "trigger-rule": {"match": {
            "type": "payload-hmac-sha256",
            "secret": env.webhook_secret,
            "parameter": {"source": "header", "name": "X-Hub-Signature-256"},
        }},
    }]))
    proc = env.start("webhook", ["webhook", "-hooks", str(hooks), "-ip", "127.0.0.1", "-port", str(port)])
    wait_until("adnanh/webhook answering", lambda: requests.get(f"http://127.0.0.1:{port}/", timeout=1) is not None,
               timeout=15, process=proc)
    return proc


def combine(rounds: list[WrkResult]) -> WrkResult:
    """Several wrk rounds as one: throughput over all of them, the median round's p50 and the
    worst round's p99 and max (percentiles cannot be merged exactly from wrk's summaries)."""
    if len(rounds) == 1:
        return rounds[0]
    return WrkResult(
        requests=sum(r.requests for r in rounds), seconds=sum(r.seconds for r in rounds),
        expected=sum(r.expected for r in rounds), other_status=sum(r.other_status for r in rounds),
        socket_errors=sum(r.socket_errors for r in rounds),
        cpu_split={key: sum(r.cpu_split.get(key, 0.0) for r in rounds) for key in rounds[0].cpu_split},
        p50_ms=statistics.median(r.p50_ms for r in rounds), p90_ms=max(r.p90_ms for r in rounds),
        p99_ms=max(r.p99_ms for r in rounds), max_ms=max(r.max_ms for r in rounds),
        raw="\n".join(r.raw for r in rounds),
    )


def run(env: Env, *, seconds: int, connections: int, threads: int, rounds: int, database: str = "sqlite",
        burst: int = 1000, profile_dir: Path | None = None, log=print) -> dict:
    """Rounds alternate peer, ours, ours, peer, … so drifting load on the machine hits both alike.
    Ours runs as the Procfile runs it: the web server and the intake drainer side by side (no RQ
    worker, so the deploy jobs pile up); the drainer records its backlog before a peer round."""
    body = intake_push()
    body_file = env.home / "intake-push.json"
    body_file.write_bytes(body)
    signature = sign(body, env.webhook_secret)

    peer_port = free_port()
    peer = start_peer(env, peer_port)
    peer_url = f"http://127.0.0.1:{peer_port}/hooks/deploy"
    probe = requests.post(peer_url, data=body, timeout=5, headers={"X-Hub-Signature-256": signature,
                                                                    "Content-Type": "application/json"})
    if probe.status_code != 200:
        raise BenchError(f"adnanh/webhook refused the signed delivery: {probe.status_code} {probe.text[:200]}")

    web_port = free_port()
    settings = env.settings_env(env.database_url(f"intake_{database}", database), web_port)
    ctx = env.context(settings)
    ctx.db.migrate()
    web = env.start_web(settings, web_port, name=f"web-intake-{database}")
    drainer = env.start_intake(settings, name=f"intake-{database}")
    url = f"http://127.0.0.1:{web_port}/api/github/webhooks"
    probe = requests.post(url, data=body, timeout=5, headers={
        "X-Hub-Signature-256": signature, "Content-Type": "application/json", "X-GitHub-Event": "push",
        "X-GitHub-Delivery": "bench-probe-" + secrets.token_hex(4)})
    if probe.status_code != 202 or "accepted" not in probe.text:
        raise BenchError(f"our endpoint did not accept the signed push: {probe.status_code} {probe.text[:200]}")
    wait_until("the probe delivery recorded", lambda: ctx.inbox.waiting() == 0, timeout=30, process=drainer)

    counts_before = _counts(env, ctx)
    ours_rounds, peer_rounds = [], []
    order = [("peer", "ours"), ("ours", "peer")]
    recording = None
    if profile_dir is not None:
        from bench.profiling import Recording

        recording = Recording(web.pid, profile_dir / f"profile-intake-{database}.txt")
    drainer_cpu = process_cpu(drainer.pid)
    redis_pid = redis_server_pid(env.redis_url)
    beside = {"drainer": drainer.pid, **({"redis": redis_pid} if redis_pid else {})}
    drained, last = None, None

    def catch_up() -> float:
        """Wait until the drainer has recorded every 202 so far: the seconds it took."""
        return _drained(ctx, drainer, counts_before["deliveries"] + sum(r.expected for r in ours_rounds),
                        timeout=300 + sum(r.expected for r in ours_rounds) / 20)

    for index in range(rounds):
        for side in order[index % 2]:
            if side == "ours":
                ours_rounds.append(run_wrk(env, url, body_file, signature, 202, threads=threads,
                                           connections=connections, seconds=seconds, tag=f"ours{index}-{database}",
                                           server_pid=web.pid, beside=beside))
            else:
                # The peer's rounds never share the cores with our drainer's backlog.
                if last == "ours":
                    drained = catch_up()
                peer_rounds.append(run_wrk(env, peer_url, body_file, signature, 200, threads=threads,
                                           connections=connections, seconds=seconds, tag=f"peer{index}-{database}",
                                           server_pid=peer.pid, beside=beside))
            last = side
        log(f"  intake round {index + 1}/{rounds} ({database}): ours {ours_rounds[-1].rps:,.0f} req/s "
            f"p99 {ours_rounds[-1].p99_ms:.0f} ms, peer {peer_rounds[-1].rps:,.0f} req/s "
            f"p99 {peer_rounds[-1].p99_ms:.0f} ms; CPU seconds in ours: {split_text(ours_rounds[-1])}; "
            f"in the peer's: {split_text(peer_rounds[-1])}")
    if recording is not None:
        recording.stop()
    ours = combine(ours_rounds)
    if last == "ours":
        drained = catch_up()
    drainer_cpu = process_cpu(drainer.pid) - drainer_cpu
    counts = {k: v - counts_before[k] for k, v in _counts(env, ctx).items()}
    env.stop(peer)
    burst_result = run_burst(ctx, url, body, signature, drainer, burst) if burst else None
    env.stop(drainer)
    env.stop(web)
    env.flush_redis()
    return {"ours": ours, "peer": combine(peer_rounds), "counts": counts, "web_log": web.log,
            "database": database, "drain_seconds": drained, "drainer_cpu_ms": 1000 * drainer_cpu / max(1, ours.expected),
            "burst": burst_result}


def split_text(result: WrkResult) -> str:
    """Where the cores went during a round: "server 8.6, drainer 0.5, …, the rest of the host 7.6"."""
    split = dict(result.cpu_split)
    host = split.pop("host", 0.0)
    others = host - sum(split.values())
    parts = [f"{name} {seconds:.1f}" for name, seconds in split.items()]
    return ", ".join([*parts, f"the rest of the host {max(others, 0.0):.1f}"])


def _drained(ctx, drainer, deliveries: int, timeout: float, prefix: str = "") -> float:
    """Seconds after the last answer until the drainer had recorded `deliveries` (those whose
    id starts with `prefix`)."""
    from app.models import Delivery

    started = time.monotonic()

    def recorded() -> bool:
        # Rows are committed before their batch's jobs are queued and its entries acknowledged:
        # done means recorded and the inbox empty, or the counts catch a batch in between.
        with ctx.db.session() as session:
            rows = session.scalar(select(func.count()).select_from(Delivery).where(Delivery.id.like(f"{prefix}%")))
        return rows >= deliveries and ctx.inbox.waiting() == 0

    wait_until(f"{deliveries} deliveries recorded by the intake drainer", recorded, timeout=timeout,
               interval=0.1, process=drainer)
    return time.monotonic() - started


@dataclass
class BurstResult:
    deliveries: int
    answered_202: int
    slowest_ms: float
    p99_ms: float
    seconds: float
    recorded: int
    recorded_after_s: float

    @property
    def met(self) -> bool:
        return self.answered_202 == self.deliveries == self.recorded and self.slowest_ms < 1000


def run_burst(ctx, url: str, body: bytes, signature: str, drainer, deliveries: int, clients: int = 64) -> BurstResult:
    """`deliveries` distinct deliveries at once from `clients` connections (each a keep-alive
    session); every answer timed, then the wait until the drainer recorded them all."""
    import http.client
    import threading
    from urllib.parse import urlsplit

    from app.models import Delivery

    parts = urlsplit(url)
    prefix = "burst-" + secrets.token_hex(4)
    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()
    ids = iter(range(deliveries))
    gate = threading.Barrier(clients)

    def client() -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        gate.wait()
        while True:
            with lock:
                number = next(ids, None)
            if number is None:
                break
            headers = {"Content-Type": "application/json", "X-GitHub-Event": "push",
                       "X-GitHub-Delivery": f"{prefix}-{number}", "X-Hub-Signature-256": signature}
            sent = time.monotonic()
            try:
                connection.request("POST", parts.path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status = 0
                connection.close()
                connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
            with lock:
                latencies.append(time.monotonic() - sent)
                statuses.append(status)
        connection.close()

    workers = [threading.Thread(target=client) for _ in range(clients)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    seconds = time.monotonic() - started
    recorded_after = _drained(ctx, drainer, deliveries, timeout=300, prefix=f"{prefix}-")
    with ctx.db.session() as session:
        recorded = session.scalar(select(func.count()).select_from(Delivery)
                                  .where(Delivery.id.like(f"{prefix}-%")))
    ordered = sorted(latencies)
    return BurstResult(deliveries=deliveries, answered_202=statuses.count(202), slowest_ms=1000 * ordered[-1],
                       p99_ms=1000 * ordered[int(0.99 * (len(ordered) - 1))], seconds=seconds,
                       recorded=recorded, recorded_after_s=recorded_after)


def _counts(env: Env, ctx) -> dict:
    from rq import Queue

    from app.jobs import DEPLOYS
    from app.models import Delivery, Deployment

    # One statement, so one snapshot on PostgreSQL too: the drainer commits up to 50 deliveries
    # at a time, and two counts a commit apart read as deployments without their delivery
    # (seen: 16,712 deliveries, 16,737 queued deployments).
    with ctx.db.session() as session:
        deliveries, deployments = session.execute(select(
            select(func.count()).select_from(Delivery).scalar_subquery(),
            select(func.count()).select_from(Deployment).where(Deployment.status == "queued").scalar_subquery(),
        )).one()
    return {"deliveries": deliveries, "deployments": deployments,
            "jobs": Queue(DEPLOYS, connection=env.redis).count, "set_aside": ctx.inbox.set_aside_count()}
