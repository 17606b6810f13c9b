"""Carrying out a plan at intake: record the delivery, record what it asks for, enqueue.

The intake drainer (workers/intake.py) calls this for each delivery the webhook endpoint
appended to the inbox. Only fast, local work happens here (database and Redis); everything
that talks to GitHub, git or Docker runs in workers. A redelivered id is recognised by the
delivery table, so an inbox entry read twice is recorded once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from app.context import Context
from app.deployments import schedule
from app import previews
from app.exceptions import QueueUnavailable
from app.jobs import CommandJob, DeployJob, Job, PreviewTeardownJob, ReportJob, SummaryJob, enqueue_committed
from app.models import Delivery, DeliveryOutcome
from app.plans import Deploy, Ignore, Invalid, Plan, PreviewEvent, Reply, RunCommand, SummarizePromotion, SyncInstallation
from app.registry import ensure_app, sync_installation

log = logging.getLogger(__name__)


@dataclass
class Receipt:
    """The answer to a delivery (its reason, the deployment it planned) and the jobs to enqueue
    once it is recorded; 503 while the database or the queue is down."""

    status: int
    body: dict
    enqueue: list[Job] = field(default_factory=list)


def accept(ctx: Context, delivery_id: str, event: str, plan: Plan, payload: dict) -> Receipt:
    """Record and enqueue; 503 when the database or the queue is down (the delivery is then
    forgotten, so its redelivery is accepted; what it planned is withdrawn, `enqueue_committed`)."""
    # Events that deploy nothing are recorded without their handler reading the payload: any
    # field may have any type here.
    repository = payload.get("repository")
    repository = repository.get("full_name") if isinstance(repository, dict) else None
    action = payload.get("action")
    try:
        with ctx.db.session() as session:
            delivery = Delivery(
                id=delivery_id,
                event=event,
                action=_column_text(action, 50),
                repository=_column_text(repository, 200),
                outcome=DeliveryOutcome.ACCEPTED.value,
            )
            try:
                with session.begin_nested():
                    session.add(delivery)
            except IntegrityError:
                return Receipt(202, {"ok": True, "reason": f"delivery {delivery_id} was already received"})
            receipt = _carry_out(ctx, session, plan, delivery)
            delivery.reason = _column_text(receipt.body.get("reason", ""), 300) or ""
            if receipt.status == 400:
                delivery.outcome = DeliveryOutcome.MALFORMED.value
            elif receipt.enqueue:
                delivery.job_id = ",".join(job.ident() or type(job).__name__ for job in receipt.enqueue)[:100]
            else:
                delivery.outcome = DeliveryOutcome.IGNORED.value
    except SQLAlchemyError:
        log.exception("database unavailable while recording delivery %s", delivery_id)
        return Receipt(503, {"error": "database unavailable", "reason": "try the delivery again later"})
    try:
        enqueue_committed(ctx, receipt.enqueue)
    except QueueUnavailable:
        log.error("queue unavailable; forgetting delivery %s so a redelivery is accepted", delivery_id)
        _forget(ctx, delivery_id)
        return Receipt(503, {"error": "queue unavailable", "reason": "try the delivery again later"})
    return receipt


def planned_deployment(delivery: Delivery) -> int | None:
    """The deployment a recorded delivery planned: its job ids list the deploy first."""
    if delivery.outcome != DeliveryOutcome.ACCEPTED.value or not delivery.reason.startswith("deploying"):
        return None
    return int(delivery.job_id.split(",")[0].removeprefix("deploy-"))


def _column_text(value, limit: int) -> str | None:
    """Payload text as a column can hold it: cut to size, lone surrogates and NUL (which
    PostgreSQL refuses in text) replaced; non-text is None."""
    if not isinstance(value, str):
        return None
    return value[:limit].encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


def _carry_out(ctx: Context, session, plan: Plan, delivery: Delivery) -> Receipt:
    if isinstance(plan, Invalid):
        return Receipt(400, {"error": "malformed delivery", "reason": plan.reason})
    if isinstance(plan, Ignore):
        return Receipt(202, {"ok": True, "reason": plan.reason})
    if isinstance(plan, SyncInstallation):
        sync_installation(session, plan)
        return Receipt(202, {"ok": True, "reason": f"installation {plan.action}: registry updated"})
    app = ensure_app(session, plan.repo)
    if app.deleted_at is not None:
        return Receipt(202, {"ok": True, "reason": f"{app.name} was deleted by {app.deleted_by}: nothing to do"})
    if isinstance(plan, Deploy):
        deployment = schedule(session, app, plan)
        if deployment is None:
            return Receipt(202, {"ok": True, "reason": f"{plan.version} to {plan.phase} is already planned"})
        session.flush()
        reports = ctx.reports.queued(session, app, deployment)
        return Receipt(
            202,
            {"ok": True, "reason": f"deploying {plan.version} to {plan.phase}", "deployment": deployment.id},
            [DeployJob(deployment.id), *(ReportJob(r.id) for r in reports if r.state == "pending")],
        )
    if isinstance(plan, RunCommand):
        return Receipt(
            202,
            {"ok": True, "reason": "command queued"},
            [CommandJob(app_id=app.id, pr_number=plan.pr_number, comment_id=plan.comment_id, actor=plan.actor,
                        body=plan.body, commented_at=plan.commented_at)],
        )
    if isinstance(plan, SummarizePromotion):
        return Receipt(202, {"ok": True, "reason": f"promotion PR #{plan.pr_number} to {plan.phase}: summary queued"},
                       [SummaryJob(app_id=app.id, pr_number=plan.pr_number, phase=plan.phase)])
    if isinstance(plan, PreviewEvent):
        recorded = previews.record(ctx, session, app, plan)
        jobs = [*([DeployJob(recorded.deployment_id)] if recorded.deployment_id else []),
                *(ReportJob(r) for r in recorded.reports or []),
                *(PreviewTeardownJob(**t) for t in recorded.teardowns or [])]
        body = {"ok": True, "reason": recorded.reason}
        if recorded.deployment_id:
            body["deployment"] = recorded.deployment_id
        return Receipt(202, body, jobs)
    if isinstance(plan, Reply):
        report = ctx.reports.comment(session, app, plan.pr_number, f"command-{plan.comment_id}", plan.message)
        jobs = [ReportJob(report.id)] if report.state == "pending" else []
        return Receipt(202, {"ok": True, "reason": "malformed command answered"}, jobs)
    raise TypeError(f"no executor for {type(plan).__name__}")


def _forget(ctx: Context, delivery_id: str) -> None:
    """GitHub's redelivery of this id must start afresh: the delivery is no longer known."""
    with ctx.db.session() as session:
        session.execute(delete(Delivery).where(Delivery.id == delivery_id))
