"""Part 6: push → URL with a notification target that never answers, beside the same without.

The target is a loopback socket that takes connections and never reads or answers: a dead
receiver whose TCP stack still works, the slowest kind (each attempt waits its timeout).
Runs alternate between pipeline.yml with the target and without it; work horses read the
file per job, so the switch needs no restart. Workers run as the Procfile runs them: the
deploy worker and the notifier each with their own queues.
"""

from __future__ import annotations

import secrets
import socket
import statistics
from dataclasses import dataclass, field

import yaml
from sqlalchemy import func, select

from bench import deploys
from bench.deliveries import Repo

SECRET_ENV = "BENCH_NOTIFY_SECRET"
EVENTS = ["deployment.started", "deployment.succeeded", "deployment.failed", "deployment.superseded"]


@dataclass
class NotifyResults:
    with_target: list[deploys.Run] = field(default_factory=list)
    without: list[deploys.Run] = field(default_factory=list)
    notifications: int = 0
    delivered: int = 0
    timeout: float = 10

    @property
    def ratio(self) -> float:
        return statistics.median(r.seconds for r in self.with_target) / statistics.median(
            r.seconds for r in self.without)


def run(env, ctx, sender, *, runs: int, log=print) -> NotifyResults:
    from app.models import Notification, NotificationAttempt

    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead.listen(64)  # never accepted: connections complete in the kernel, nothing ever answers
    plain = env.pipeline_config.read_text()
    config = yaml.safe_load(plain)
    config["notifications"] = [{"name": "dead", "url": f"http://127.0.0.1:{dead.getsockname()[1]}/hook",
                                "format": "json", "secret_env": SECRET_ENV, "events": EVENTS}]
    with_target = yaml.safe_dump(config, sort_keys=False)
    results = NotifyResults()
    ours = deploys.Ours(env, ctx, sender, Repo(env.home / "repos" / "notify-shop", "bench/notify-shop"))
    try:
        ours.wait_finished(ours.push(f"notify-warmup-{secrets.token_hex(3)}"))
        for i in range(runs):
            for side in ("without", "with"):
                env.pipeline_config.write_text(with_target if side == "with" else plain)
                measured = deploys.run_ours(ours, env.router_port, i)
                (results.with_target if side == "with" else results.without).append(measured)
            log(f"  notify run {i + 1}/{runs}: with a dead target {results.with_target[-1].seconds:.2f}s, "
                f"without {results.without[-1].seconds:.2f}s")
    finally:
        env.pipeline_config.write_text(plain)
        dead.close()
    with ctx.db.session() as session:
        results.notifications = session.scalar(select(func.count()).select_from(Notification))
        results.delivered = session.scalar(select(func.count()).select_from(NotificationAttempt)
                                           .where(NotificationAttempt.outcome == "delivered"))
    return results
