"""Enqueueing work on RQ with deterministic job ids, so a repeated request never queues twice.

Job functions are named by import path: the web process never imports Docker or git code.
"""

from __future__ import annotations

import re

from redis import Redis
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError

DEPLOYS = "deploys"
REPORTS = "reports"
COMMANDS = "commands"
#: Outbound notifications have their own queue (and, in the Procfile, their own worker), so a
#: slow target never holds up a deploy.
NOTIFICATIONS = "notifications"
QUEUES = (DEPLOYS, COMMANDS, REPORTS, NOTIFICATIONS)

#: Builds can be slow; RQ's default of 180 s is not enough.
DEPLOY_TIMEOUT = 30 * 60
#: Reporting retries with backoff; GitHub outages are waited out, never fail a deployment.
REPORT_RETRY = Retry(max=8, interval=[5, 15, 30, 60, 120, 300, 600, 900])
#: A notification is tried 7 times over about 10 minutes, the first retry after 3 seconds.
NOTIFY_RETRY = Retry(max=6, interval=[3, 15, 45, 90, 180, 270])


def job_id(*parts: object) -> str:
    """RQ ids allow letters, digits, '_' and '-' only."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", "-".join(str(p) for p in parts))[:200]


class Jobs:
    def __init__(self, redis: Redis):
        self.redis = redis
        self.queues = {name: Queue(name, connection=redis) for name in QUEUES}

    def _enqueue(self, queue: str, func: str, ident: str, kwargs: dict, **options) -> str:
        try:
            self.queues[queue].enqueue_call(func, kwargs=kwargs, job_id=ident, unique=True, **options)
        except DuplicateJobError:
            pass  # already queued or done: the repeat is harmless by design
        return ident

    def deploy(self, deployment_id: int) -> str:
        return self._enqueue(
            DEPLOYS,
            "workers.deploy.run",
            job_id("deploy", deployment_id),
            {"deployment_id": deployment_id},
            timeout=DEPLOY_TIMEOUT,
            result_ttl=3600,
            failure_ttl=7 * 24 * 3600,
        )

    def command(self, *, app_id: int, pr_number: int, comment_id: int, actor: str, body: str,
                commented_at: str | None = None) -> str:
        return self._enqueue(
            COMMANDS,
            "workers.command.run",
            job_id("command", comment_id),
            {"app_id": app_id, "pr_number": pr_number, "comment_id": comment_id, "actor": actor, "body": body,
             "commented_at": commented_at},
            timeout=600,
        )

    def promotion(self, *, app_id: int, phase: str, branch: str, version: str, sha: str, source_id: int,
                  actor: str, override: str | None = None) -> str:
        """Open the promotion pull request a portal user asked for (a phase that needs approvals)."""
        return self._enqueue(
            COMMANDS,
            "workers.command.open_promotion_pr",
            job_id("promotion", app_id, phase, version),
            {"app_id": app_id, "phase": phase, "branch": branch, "version": version, "sha": sha,
             "source_id": source_id, "actor": actor, "override": override},
            timeout=300,
        )

    def summary(self, *, app_id: int, pr_number: int, phase: str) -> str:
        """Refresh a promotion PR's summary comment and status. Not unique: every delivery
        (a new review, a push) must be read again."""
        self.queues[COMMANDS].enqueue_call("workers.promotion.summarize", kwargs={
            "app_id": app_id, "pr_number": pr_number, "phase": phase}, timeout=300)
        return f"summary-{app_id}-{pr_number}"

    def preview_teardown(self, *, app_id: int, pr_number: int, generation: int, up_to: int, reason: str) -> str:
        """Remove what a preview runs (containers, route, services, volumes); once per generation."""
        return self._enqueue(
            DEPLOYS,
            "workers.preview.teardown",
            job_id("preview-teardown", app_id, pr_number, generation),
            {"app_id": app_id, "pr_number": pr_number, "generation": generation, "up_to": up_to, "reason": reason},
            timeout=600,
        )

    def report(self, report_id: int) -> str:
        return self._enqueue(
            REPORTS,
            "workers.report.send",
            job_id("report", report_id),
            {"report_id": report_id},
            timeout=120,
            retry=REPORT_RETRY,
            failure_ttl=7 * 24 * 3600,
        )

    def notify(self, notification_id: str) -> str:
        return self._enqueue(
            NOTIFICATIONS,
            "workers.notify.send",
            job_id("notify", notification_id),
            {"notification_id": notification_id},
            timeout=60,
            retry=NOTIFY_RETRY,
            failure_ttl=24 * 3600,
        )

    def ping(self) -> bool:
        try:
            return bool(self.redis.ping())
        except Exception:
            return False
