"""Outbound notifications (README, Notifications): what an event says, per target format, and its outbox.

`Notifier.notify(session, event, ...)` is the one entry point: it writes one `Notification`
row per target that wants the event, in the caller's transaction, and queues their sending
once that transaction commits. Sending (`workers.notify`) happens on its own queue with
retries, so a dead or slow target never fails, delays or blocks the change that caused it.
The functions below it decide what is sent and are pure.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from urllib.parse import urlparse

from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session

from app.models import App, Deployment, DeploymentStatus, Notification, iso
from app.plans import Trigger
from app.pipeline import EVENTS, NotificationTarget, is_preview

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Release-Pipeline-Signature-256"
EVENT_HEADER = "X-Release-Pipeline-Event"
DELIVERY_HEADER = "X-Release-Pipeline-Delivery"
#: The event the portal's "send a test event" action sends; no target subscribes to it.
TEST_EVENT = "test"


class Event(str, enum.Enum):
    DEPLOYMENT_STARTED = "deployment.started"
    DEPLOYMENT_SUCCEEDED = "deployment.succeeded"
    DEPLOYMENT_FAILED = "deployment.failed"
    DEPLOYMENT_ROLLED_BACK = "deployment.rolled_back"
    DEPLOYMENT_SUPERSEDED = "deployment.superseded"
    PROMOTION_REQUESTED = "promotion.requested"
    FREEZE_CHANGED = "freeze.changed"
    PREVIEW_READY = "preview.ready"
    PREVIEW_REMOVED = "preview.removed"


assert tuple(e.value for e in Event) == EVENTS, "pipeline.EVENTS and Event must list the same events"


def finished_event(deployment: Deployment) -> Event:
    """The event a finished deployment is announced as.

    A refused deployment (e.g. missing approvals) did not ship: it is a failure to the team.
    """
    status = DeploymentStatus(deployment.status)
    if status is DeploymentStatus.SUCCEEDED and is_preview(deployment.phase):
        return Event.PREVIEW_READY
    if status is DeploymentStatus.SUCCEEDED:
        return Event.DEPLOYMENT_ROLLED_BACK if deployment.trigger == Trigger.ROLLBACK else Event.DEPLOYMENT_SUCCEEDED
    if status is DeploymentStatus.SUPERSEDED:
        return Event.DEPLOYMENT_SUPERSEDED
    return Event.DEPLOYMENT_FAILED


def deployment_fields(app: App, deployment: Deployment, portal_url: str) -> dict:
    """What every deployment event carries (the README's json body, without delivered_at)."""
    return {
        "app": app.full_name,
        "phase": deployment.phase,
        "version": deployment.version,
        "sha": deployment.sha,
        "url": deployment.url,
        "deployment_id": deployment.id,
        "status": deployment.status,
        "trigger": deployment.trigger,
        "actor": deployment.actor or None,
        "reason": deployment.reason or None,
        "log_url": f"{portal_url}/apps/{app.name}/deployments/{deployment.id}",
    }


def json_body(event: str, fields: dict, delivered_at: datetime) -> dict:
    return {"event": event, **fields, "delivered_at": iso(delivered_at)}


def signature(secret: str, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 of the exact body bytes, as GitHub signs its deliveries."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def headers(event: str, delivery_id: str, body: bytes, secret: str | None) -> dict[str, str]:
    sent = {"Content-Type": "application/json", "User-Agent": "Release-Pipeline-Notifier",
            EVENT_HEADER: event, DELIVERY_HEADER: delivery_id}
    if secret is not None:
        sent[SIGNATURE_HEADER] = signature(secret, body)
    return sent


# -- Slack -------------------------------------------------------------------------------------

#: Slack's documented Block Kit limits (api.slack.com/reference/block-kit): a section's text and
#: the message's fallback `text`, a field of a section, a button's label.
SECTION_TEXT_LIMIT = 3000
FIELD_LIMIT = 2000
BUTTON_TEXT_LIMIT = 75
MAX_FIELDS = 10

_HEADLINES = {
    Event.DEPLOYMENT_STARTED: ":hourglass_flowing_sand: deploying {version} to {phase}",
    Event.DEPLOYMENT_SUCCEEDED: ":white_check_mark: {version} is live on {phase}",
    Event.DEPLOYMENT_FAILED: ":x: {version} was not deployed to {phase}",
    Event.DEPLOYMENT_ROLLED_BACK: ":rewind: {phase} rolled back to {version}",
    Event.DEPLOYMENT_SUPERSEDED: ":fast_forward: {version} to {phase} was superseded",
    Event.PROMOTION_REQUESTED: ":raising_hand: promotion of {version} to {phase} requested",
    Event.FREEZE_CHANGED: ":snowflake: {phase} freeze changed",
    Event.PREVIEW_READY: ":eyes: preview {phase} is ready",
    Event.PREVIEW_REMOVED: ":wastebasket: preview {phase} was removed",
}


def _escape(text: object) -> str:
    """Slack's mrkdwn treats &, < and > as control characters: they must be escaped."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def headline(event: str, fields: dict) -> str:
    """One line, plain text (no markup): Slack's notification text and the message's title."""
    template = _HEADLINES.get(event, "Release Pipeline test event" if event == TEST_EVENT else event)
    words = {"version": fields.get("version") or "?", "phase": fields.get("phase") or "?"}
    app = fields.get("app")
    return (f"{app}: " if app else "") + template.format(**words)


def slack_message(event: str, fields: dict) -> dict:
    """An incoming-webhook message: `text` (the notification and fallback) plus `blocks`."""
    title = _escape(headline(event, fields))
    lines = [f"*{title}*"]
    if fields.get("reason"):
        lines.append(_escape(fields["reason"]))
    fact_names = (("Version", "version"), ("Phase", "phase"), ("Commit", "sha"), ("By", "actor"),
                  ("Trigger", "trigger"))
    facts = [{"type": "mrkdwn", "text": _cut(f"*{label}*\n{_escape(str(fields[key])[:7] if key == 'sha' else fields[key])}",
                                             FIELD_LIMIT)}
             for label, key in fact_names if fields.get(key)][:MAX_FIELDS]
    section: dict = {"type": "section", "text": {"type": "mrkdwn", "text": _cut("\n".join(lines), SECTION_TEXT_LIMIT)}}
    if facts:
        section["fields"] = facts
    blocks: list[dict] = [section]
    buttons = [(label, fields[key]) for label, key in (("Open the app", "url"), ("Deployment log", "log_url"))
               if fields.get(key)]
    if buttons:
        blocks.append({"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": _cut(label, BUTTON_TEXT_LIMIT)}, "url": url}
            for label, url in buttons]})
    return {"text": _cut(headline(event, fields), SECTION_TEXT_LIMIT), "blocks": blocks}


def render(target: NotificationTarget, event: str, delivery_id: str, fields: dict, delivered_at: datetime,
           secret: str | None) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one attempt for `target` (pure: the caller reads the secret)."""
    message = slack_message(event, fields) if target.format == "slack" else json_body(event, fields, delivered_at)
    body = json.dumps(message, separators=(",", ":"), sort_keys=True).encode()
    return body, headers(event, delivery_id, body, secret if target.format == "json" else None)


def shown_url(url: str) -> str:
    """A target's URL as the portal and API show it: scheme and host only (a Slack webhook URL's
    path is its secret)."""
    parsed = urlparse(url)
    return f"{parsed.scheme}://{parsed.netloc}/…" if parsed.path not in ("", "/") else f"{parsed.scheme}://{parsed.netloc}/"


def missing_secrets(targets: list[NotificationTarget], environ: dict[str, str]) -> list[str]:
    """Problems a sending process must refuse to start with: a target whose secret is unset."""
    return [f"notifications/{target.name}/secret_env: {target.secret_env} is not set (its signing secret)"
            for target in targets if target.secret_env and not environ.get(target.secret_env)]


# -- the outbox --------------------------------------------------------------------------------


class Notifier:
    """Records events for the targets that want them; `enqueue` sends one (after commit)."""

    def __init__(self, targets: list[NotificationTarget], *, portal_url: str, enqueue: Callable[[str], object]):
        self.targets = targets
        self.portal_url = portal_url.rstrip("/")
        self.enqueue = enqueue

    def notify(self, session: Session, event: Event | str, *, app: App | None = None,
               deployment: Deployment | None = None, **fields) -> list[Notification]:
        """Announce `event` to every target subscribed to it.

        `fields` are added to the body (e.g. `phase`, `version`, `reason`, `actor`); a
        deployment's own fields come from `deployment`. Written in `session`'s transaction,
        queued once it commits, never raising for a queue outage (the scheduler's catch-up
        sends what was left pending).
        """
        name = Event(event).value
        wanted = [t for t in self.targets if name in t.events]
        if not wanted:
            return []
        body = deployment_fields(app, deployment, self.portal_url) if deployment is not None else (
            {"app": app.full_name} if app is not None else {})
        body.update(fields)
        return self.record(session, name, wanted, body, app=app, deployment=deployment)

    def test(self, session: Session, target: NotificationTarget, actor: str) -> Notification:
        """The portal's "send a test event": a sample deployment-like body to one target."""
        body = {"app": "example/app", "phase": "demo", "version": "v0.0.0-test", "sha": "0" * 40,
                "url": None, "deployment_id": None, "reason": None, "actor": actor,
                "message": f"a test event sent by {actor} from the Release Pipeline portal"}
        return self.record(session, TEST_EVENT, [target], body)[0]

    def record(self, session: Session, event: str, targets: list[NotificationTarget], body: dict, *,
               app: App | None = None, deployment: Deployment | None = None) -> list[Notification]:
        rows = [Notification(id=str(uuid.uuid4()), target=t.name, event=event, body=body,
                             app_id=app.id if app is not None else None,
                             deployment_id=deployment.id if deployment is not None else None)
                for t in targets]
        session.add_all(rows)
        ids = [row.id for row in rows]
        sa_event.listen(session, "after_commit", lambda _session: self._enqueue_all(ids), once=True)
        return rows

    def _enqueue_all(self, ids: list[str]) -> None:
        for notification_id in ids:
            try:
                self.enqueue(notification_id)
            except Exception as exc:  # a queue outage must not undo or fail what was committed
                log.warning("notification %s stays pending (queue unavailable: %s); catch-up sends it",
                            notification_id, type(exc).__name__)
