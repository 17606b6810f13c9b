"""The notify job: one attempt at delivering a notification to its target, recorded.

A failed attempt raises, so RQ's `Retry` (app.jobs.NOTIFY_RETRY) tries again with backoff;
the last failed attempt marks the notification failed. Nothing here touches a deployment.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

from rq import get_current_job
from sqlalchemy import select

from app import metrics
from app.adapters import webhook
from app.exceptions import ReleasePipelineError
from app.jobs import NotifyJob
from app.logs import log_context
from app.models import Notification, NotificationAttempt, NotificationState, utcnow
from app.notifications import render
from workers import runtime

log = logging.getLogger(__name__)

#: Pending this long without having been tried: its enqueue was lost (Redis was down).
CATCH_UP_AFTER = timedelta(minutes=2)


class NotDelivered(ReleasePipelineError):
    """This attempt failed; RQ retries the job while it has retries left."""


def send(*, notification_id: str) -> str:
    ctx = runtime.context()
    with ctx.db.session() as session:
        notification = session.get(Notification, notification_id)
        if notification is None or notification.state in (NotificationState.SENT.value,
                                                           NotificationState.FAILED.value):
            return "nothing to do"
        event, target_name, fields = notification.event, notification.target, dict(notification.body)
    with log_context(deployment_id=fields.get("deployment_id")):
        return _deliver(ctx, notification_id, event, target_name, fields)


def _deliver(ctx, notification_id: str, event: str, target_name: str, fields: dict) -> str:
    target = ctx.config.notification_target(target_name)
    secret = os.environ.get(target.secret_env) if target is not None and target.secret_env else None
    if target is None or (target.secret_env and not secret):
        error = (f"target {target_name} is no longer in pipeline.yml" if target is None
                 else f"{target.secret_env} is not set")
        _record(ctx, notification_id, webhook.Answer("not_sent", None, error, 0), last=True)
        return "failed"
    body, headers = render(target, event, notification_id, fields, utcnow(), secret)
    answer = webhook.post(target.url, body, headers, timeout=target.timeout)
    job = get_current_job()
    last = job is None or not job.retries_left
    _record(ctx, notification_id, answer, last=last)
    metrics.NOTIFICATIONS.labels(target=target_name, outcome=answer.outcome).inc()
    if not answer.ok:
        log.info("notification %s (%s) to %s: %s%s", notification_id, event, target_name, answer.error,
                 "" if last else "; will retry")
        if not last:
            raise NotDelivered(f"{target_name}: {answer.error}")
        return "failed"
    return "sent"


def _record(ctx, notification_id: str, answer: webhook.Answer, *, last: bool) -> None:
    with ctx.db.session() as session:
        notification = session.get(Notification, notification_id)
        now = utcnow()
        session.add(NotificationAttempt(notification_id=notification_id, at=now, outcome=answer.outcome,
                                        status_code=answer.status_code, error=answer.error[:300],
                                        duration_ms=answer.duration_ms))
        notification.attempts += 1
        notification.last_attempt_at = now
        if answer.ok:
            notification.state = NotificationState.SENT.value
        else:
            notification.state = (NotificationState.FAILED if last else NotificationState.RETRYING).value


def catch_up() -> int:
    """Queue notifications whose enqueue was lost (periodic, from the scheduler)."""
    ctx = runtime.context()
    with ctx.db.session() as session:
        lost = session.scalars(select(Notification.id).where(
            Notification.state == NotificationState.PENDING.value, Notification.attempts == 0,
            Notification.created_at < utcnow() - CATCH_UP_AFTER)).all()
    for notification_id in lost:
        ctx.jobs.enqueue(NotifyJob(notification_id))
    return len(lost)
