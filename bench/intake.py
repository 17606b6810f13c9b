"""1. Intake: one signed push delivery fired with wrk at our endpoint and at adnanh/webhook.

The body and its signature stay the same; a Lua script gives each request its own
X-GitHub-Delivery id, so our delivery dedup never short-circuits the work (record the
delivery, plan, record the deployment and its reports, enqueue on Redis).
"""

from __future__ import annotations

import json
import secrets
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from sqlalchemy import func, select

from bench.deliveries import intake_push, sign
from bench.env import BenchError, Env, free_port, wait_until

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
    cpu_seconds: float = 0.0  # CPU time of the server's processes during the round

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def errors(self) -> int:
        return self.other_status + self.socket_errors

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.cpu_seconds / max(1, self.requests)


def process_cpu(pid: int, children: bool = True) -> float:
    """CPU seconds of `pid` (with its reaped children), plus its live children's when asked."""
    import os

    def own(p: int) -> float:
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime

    from bench.env import children_of

    return own(pid) + (sum(own(c) for c in children_of(pid)) if children else 0.0)


def run_wrk(env: Env, url: str, body_file: Path, signature: str, expected: int, *, threads: int,
            connections: int, seconds: int, tag: str, server_pid: int | None = None) -> WrkResult:
    script = env.home / f"wrk-{tag}.lua"
    script.write_text(LUA % {"prefix": f"{tag}-{secrets.token_hex(4)}", "body": body_file,
                             "signature": signature, "expected": expected})
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "--latency",
            "-s", str(script), url]
    cpu_before = process_cpu(server_pid) if server_pid else 0.0
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk against {url} did not finish") from None
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
        cpu_seconds=(process_cpu(server_pid) - cpu_before) if server_pid else 0.0,
    )


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
        p50_ms=statistics.median(r.p50_ms for r in rounds), p90_ms=max(r.p90_ms for r in rounds),
        p99_ms=max(r.p99_ms for r in rounds), max_ms=max(r.max_ms for r in rounds),
        raw="\n".join(r.raw for r in rounds), cpu_seconds=sum(r.cpu_seconds for r in rounds),
    )


def run(env: Env, *, seconds: int, connections: int, threads: int, rounds: int, profile_dir: Path | None = None,
        log=print) -> dict:
    """Rounds alternate peer, ours, ours, peer, … so drifting load on the machine hits both alike."""
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

    # Ours, served the way the Procfile serves it; no worker, so the deploy jobs pile up.
    web_port = free_port()
    settings = env.settings_env(env.database_url("intake"), web_port)
    ctx = env.context(settings)
    ctx.db.migrate()
    web = env.start_web(settings, web_port, name="web-intake")
    url = f"http://127.0.0.1:{web_port}/api/github/webhooks"
    probe = requests.post(url, data=body, timeout=5, headers={
        "X-Hub-Signature-256": signature, "Content-Type": "application/json", "X-GitHub-Event": "push",
        "X-GitHub-Delivery": "bench-probe-" + secrets.token_hex(4)})
    if probe.status_code != 202 or "deploying" not in probe.text:
        raise BenchError(f"our endpoint did not accept the signed push: {probe.status_code} {probe.text[:200]}")

    counts_before = _counts(env, ctx)
    ours_rounds, peer_rounds = [], []
    order = [("peer", "ours"), ("ours", "peer")]
    recording = None
    if profile_dir is not None:
        from bench.profiling import Recording

        recording = Recording(web.pid, profile_dir / "profile-intake.txt")
    for index in range(rounds):
        for side in order[index % 2]:
            if side == "ours":
                ours_rounds.append(run_wrk(env, url, body_file, signature, 202, threads=threads,
                                           connections=connections, seconds=seconds, tag=f"ours{index}",
                                           server_pid=web.pid))
            else:
                peer_rounds.append(run_wrk(env, peer_url, body_file, signature, 200, threads=threads,
                                           connections=connections, seconds=seconds, tag=f"peer{index}",
                                           server_pid=peer.pid))
        log(f"  intake round {index + 1}/{rounds}: ours {ours_rounds[-1].rps:,.0f} req/s "
            f"p99 {ours_rounds[-1].p99_ms:.0f} ms, peer {peer_rounds[-1].rps:,.0f} req/s "
            f"p99 {peer_rounds[-1].p99_ms:.0f} ms")
    if recording is not None:
        recording.stop()
    time.sleep(1)  # requests wrk gave up on at the end of a round finish on the server
    counts = {k: v - counts_before[k] for k, v in _counts(env, ctx).items()}
    env.stop(web)
    env.stop(peer)
    env.flush_redis()
    return {"ours": combine(ours_rounds), "peer": combine(peer_rounds), "counts": counts, "web_log": web.log}


def _counts(env: Env, ctx) -> dict:
    from rq import Queue

    from app.jobs import DEPLOYS
    from app.models import Delivery, Deployment

    with ctx.db.session() as session:
        deliveries = session.scalar(select(func.count()).select_from(Delivery))
        deployments = session.scalar(select(func.count()).select_from(Deployment)
                                     .where(Deployment.status == "queued"))
    return {"deliveries": deliveries, "deployments": deployments,
            "jobs": Queue(DEPLOYS, connection=env.redis).count}
