"""7. RUNTIME=swarm beside RUNTIME=docker: push → URL, promote → URL, failed requests during the
rolling updates, on a two-node swarm made for the run (tests/support/swarm: private engines in
network namespaces, a registry on the manager's address).

The installation is the bench's own second one: the docker part's web server, drainer and
workers are stopped first (they share the bench's Redis database), then a web server, an
intake drainer and a worker with
RUNTIME=swarm, DOCKER_HOST on the manager and REGISTRY_URL on its registry serve the same
sample app with `replicas: 2` and `health_timeout: 5` on every phase, so each deploy is a
start-first rolling update of two tasks across both nodes, done 13 s (the monitor window)
after its last task turned healthy. The measurements are the docker part's (bench.deploys).
"""

from __future__ import annotations

import secrets
import statistics
from dataclasses import dataclass, field

import yaml

from bench.deliveries import Repo, Sender
from bench.deploys import Ours, Run, run_ours, run_promote
from bench.env import BenchError, Env, free_port
from bench.report import _failed, _spread, _yes

REPLICAS = 2
HEALTH_TIMEOUT = 5


@dataclass
class SwarmResults:
    push: list[Run] = field(default_factory=list)
    promote: list[Run] = field(default_factory=list)
    rebuilt_on_promote: int = 0
    nodes: int = 0


def run(env: Env, *, runs: int, promote_runs: int, log=print) -> SwarmResults:
    from tests.support.swarm import SwarmUnavailable, TwoNodeSwarm

    for proc in [p for p in env.processes if p.name != "caddy"]:
        env.stop(proc)  # one Redis database: the docker installation's workers must not take these jobs
    env.flush_redis()
    if not any(p.name == "caddy" for p in env.processes):
        env.start_caddy()
    label = "b" + secrets.token_hex(3)  # short: network interface names are ≤ 15 characters
    try:
        cluster = TwoNodeSwarm(label)
    except SwarmUnavailable as exc:
        raise BenchError(f"no swarm: {exc}") from None
    try:
        cluster.start()
        log(f"  swarm {label}: manager {cluster.manager.address}, worker {cluster.workers[0].address}, "
            f"registry {cluster.registry}")
        config = yaml.safe_load(env.pipeline_config.read_text())
        config.setdefault("defaults", {}).setdefault("profile", {})["replicas"] = REPLICAS
        for phase in config["phases"].values():
            # Swarm calls an update done only once its monitor window (longer than the health
            # timeout) has passed after the last task: a short timeout keeps the runs short.
            phase["health_timeout"] = HEALTH_TIMEOUT
        pipeline = env.home / "pipeline-swarm.yml"
        pipeline.write_text(yaml.safe_dump(config, sort_keys=False))
        web_port, router_port = free_port(), free_port()
        settings = {**env.settings_env(env.database_url("swarm"), web_port), "RUNTIME": "swarm",
                    "DOCKER_HOST": cluster.manager.socket, "REGISTRY_URL": cluster.registry,
                    "PIPELINE_INSTANCE": label, "PIPELINE_CONFIG": str(pipeline), "ROUTER_PORT": str(router_port)}
        ctx = env.context(settings)
        ctx.db.migrate()
        ctx.router.ensure_server()
        env.start_web(settings, web_port, name="swarm-web")
        env.start_intake(settings, name="swarm-intake")
        env.start_worker(settings, "swarm-worker")
        ours = Ours(env, ctx, Sender(f"http://127.0.0.1:{web_port}/api/github/webhooks", env.webhook_secret, ctx),
                    Repo(env.home / "repos" / "swarm-shop", "bench/shop"))
        # Warm-up, not measured: Demo and Stage each get a first service.
        ours.wait_finished(ours.push(f"swarm-warmup-{secrets.token_hex(3)}"))
        ours.wait_finished(ours.promote("v0.1.0"))
        results = SwarmResults(nodes=len(cluster.nodes))
        for i in range(runs):
            results.push.append(run_ours(ours, router_port, i))
            line = f"  swarm push→URL run {i + 1}/{runs}: {results.push[-1].seconds:.2f}s ({_failed([results.push[-1]])})"
            if i < promote_runs:
                promoted, rebuilt = run_promote(ours, router_port, f"v1.0.{i}")
                results.promote.append(promoted)
                results.rebuilt_on_promote += int(rebuilt)
                line += f"; promote {promoted.seconds:.2f}s ({_failed([promoted])})"
            log(line)
        return results
    finally:
        for proc in [p for p in env.processes if p.name.startswith("swarm-")]:
            env.stop(proc)
        cluster.close()


def rows(table, result: SwarmResults, docker=None) -> None:
    """Rows 7 beside rows 2–4 (`docker`: the docker part's DeployResults of the same run, if it ran)."""
    push = [r.seconds for r in result.push]
    beside = f"{_spread([r.seconds for r in docker.ours])} (RUNTIME=docker)" if docker and docker.ours else ""
    ratio = f"{statistics.median(push) / statistics.median([r.seconds for r in docker.ours]):.2f}×" if beside else ""
    table.add("7", f"swarm: push → URL serves the new commit ({REPLICAS} replicas on {result.nodes} nodes, "
              f"start-first rolling update, health_timeout {HEALTH_TIMEOUT} s), median of {len(push)} (min–max)", _spread(push), beside, ratio,
              "(measured)")
    if result.promote:
        promote = [r.seconds for r in result.promote]
        beside = f"{_spread([r.seconds for r in docker.promote])} (RUNTIME=docker)" if docker and docker.promote else ""
        table.add("7", f"swarm: promote → URL (release tag → Stage serves the Demo image), median of {len(promote)}",
                  _spread(promote), beside, "", "no rebuild", _yes(result.rebuilt_on_promote == 0))
    runs = result.push + result.promote
    table.add("7", "swarm: failed GETs / POSTs during those rolling updates (two loops, a new connection each)",
              _failed(runs), "", "", "0 / 0", _yes(sum(r.failures + r.post_failures for r in runs) == 0))
