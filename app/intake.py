"""Carrying out a plan at intake: record the delivery, record what it asks for, enqueue.

The intake drainer (workers/intake.py) calls this for each batch of deliveries the webhook
endpoint appended to the inbox. Only fast, local work happens here (database and Redis);
everything that talks to GitHub, git or Docker runs in workers. A redelivered id is recognised
by the delivery table, so an inbox entry read twice is recorded once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import delete, select
from sqlalchemy.exc import SQLAlchemyError

from app.context import Context
from app.deployments import schedule
from app import previews
from app.exceptions import QueueUnavailable
from app.inbox import Entry
from app.jobs import CommandJob, DeployJob, Job, PreviewTeardownJob, ReportJob, SummaryJob, enqueue_committed
from app.logs import log_context
from app.models import App, Delivery, DeliveryOutcome
from app.planner import plan
from app.plans import (Deploy, Ignore, Invalid, Plan, PreviewEvent, Reply, Repo, RunCommand, SummarizePromotion,
                       SyncInstallation)
from app.registry import ensure_app, sync_installation

log = logging.getLogger(__name__)


@dataclass
class Receipt:
    """The answer to a delivery (its reason, the deployment it planned) and the jobs to enqueue
    once it is recorded; 503 while the database or the queue is down, 500 when recording it
    broke (a bug: it is set aside, the deliveries around it are recorded)."""

    status: int
    body: dict
    enqueue: list[Job] = field(default_factory=list)
    #: This pass wrote the delivery's row (not: seen before, set aside, or nothing written).
    new: bool = False


def accept_many(ctx: Context, entries: Sequence[Entry]) -> list[Receipt]:
    """Plan and record deliveries in order, all in one transaction, then queue all their jobs:
    a receipt for each. A batch costs one commit, not one per delivery.

    503 for all when the database or the queue is down: nothing of the batch is kept (the
    deliveries are forgotten, so their next reading records them afresh; what they planned is
    withdrawn, `enqueue_committed`). When one delivery breaks the planner or intake (a bug),
    the batch is undone and each is recorded alone, so only that one gets 500 (set aside)."""
    try:
        with ctx.db.session() as session:
            # Read once for the batch, not a savepoint per delivery. Only the drainer holding
            # the inbox writes deliveries; should a second one race it, the flush's
            # IntegrityError undoes the batch (503), and its next reading finds them known.
            known = set(session.scalars(select(Delivery.id).where(Delivery.id.in_([e.delivery_id for e in entries]))))
            apps: dict[Repo, App] = {}
            receipts = []
            for entry in entries:
                with log_context(delivery_id=entry.delivery_id):
                    receipts.append(_accept(ctx, session, entry, known, apps))
    except SQLAlchemyError:
        log.exception("database unavailable while recording deliveries %s", _ids(entries))
        return [_unavailable("database") for _ in entries]
    except Exception as exc:  # noqa: BLE001 - a bug must not stop the deliveries around it
        if len(entries) > 1:
            return _one_by_one(ctx, entries)
        log.exception("delivery %s %s could not be recorded; set aside", entries[0].delivery_id, entries[0].event)
        return [Receipt(500, {"error": "could not be recorded", "reason": f"{type(exc).__name__}: {exc}"})]
    try:
        enqueue_committed(ctx, [job for receipt in receipts for job in receipt.enqueue])
    except QueueUnavailable:
        recorded = [entry.delivery_id for entry, receipt in zip(entries, receipts) if receipt.new]
        log.error("queue unavailable; forgetting deliveries %s so they are recorded again", ", ".join(recorded))
        _forget(ctx, recorded)
        return [_unavailable("queue") for _ in entries]
    for entry, receipt in zip(entries, receipts):
        log.info("delivery %s %s: %s %s", entry.delivery_id, entry.event, receipt.status,
                 receipt.body.get("reason", ""),
                 extra={"delivery_id": entry.delivery_id, "deployment_id": receipt.body.get("deployment")})
    return receipts


def _one_by_one(ctx: Context, entries: Sequence[Entry]) -> list[Receipt]:
    """Each delivery in a transaction of its own, in order, up to the first that must wait."""
    receipts: list[Receipt] = []
    for entry in entries:
        receipts += accept_many(ctx, [entry])
        if receipts[-1].status == 503:
            break
    return receipts


def _unavailable(what: str) -> Receipt:
    return Receipt(503, {"error": f"{what} unavailable", "reason": "try the delivery again later"})


def _ids(entries: Sequence[Entry]) -> str:
    return ", ".join(entry.delivery_id for entry in entries)


def _accept(ctx: Context, session, entry: Entry, known: set[str], apps: dict[Repo, App]) -> Receipt:
    """Plan (the request checked the signature, headers and JSON), record the delivery and
    what it asks for; `known`: the delivery ids recorded before (this one is added); `apps`:
    the apps this batch has looked up, by the repository fields that looked them up."""
    if entry.delivery_id in known:
        return Receipt(202, {"ok": True, "reason": f"delivery {entry.delivery_id} was already received"})
    known.add(entry.delivery_id)
    payload = json.loads(entry.body)
    decided = plan(entry.event, payload, ctx.config)
    # Events that deploy nothing are recorded without their handler reading the payload: any
    # field may have any type here.
    payload = payload if isinstance(payload, dict) else {}
    repository = payload.get("repository")
    repository = repository.get("full_name") if isinstance(repository, dict) else None
    receipt = _carry_out(ctx, session, decided, apps)
    receipt.new = True
    outcome = DeliveryOutcome.ACCEPTED
    if receipt.status == 400:
        outcome = DeliveryOutcome.MALFORMED
    elif not receipt.enqueue:
        outcome = DeliveryOutcome.IGNORED
    # Added complete, after what it asks for: one INSERT (batched with the others at the
    # commit), no UPDATE.
    session.add(Delivery(
        id=entry.delivery_id,
        event=entry.event,
        action=_column_text(payload.get("action"), 50),
        repository=_column_text(repository, 200),
        outcome=outcome.value,
        reason=_column_text(receipt.body.get("reason", ""), 300) or "",
        job_id=",".join(job.ident() or type(job).__name__ for job in receipt.enqueue)[:100] or None,
    ))
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


def _carry_out(ctx: Context, session, plan: Plan, apps: dict[Repo, App]) -> Receipt:
    if isinstance(plan, Invalid):
        return Receipt(400, {"error": "malformed delivery", "reason": plan.reason})
    if isinstance(plan, Ignore):
        return Receipt(202, {"ok": True, "reason": plan.reason})
    if isinstance(plan, SyncInstallation):
        sync_installation(session, plan)
        apps.clear()  # it may have changed them
        return Receipt(202, {"ok": True, "reason": f"installation {plan.action}: registry updated"})
    # The same repository fields again (a burst of pushes to one repository): the same app, as
    # `ensure_app` left it, without its query and flush (a third of a delivery's cost).
    app = apps.get(plan.repo)
    if app is None:
        app = apps[plan.repo] = ensure_app(session, plan.repo)
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


def _forget(ctx: Context, delivery_ids: list[str]) -> None:
    """These deliveries must be recorded afresh when read again: they are no longer known."""
    if delivery_ids:
        with ctx.db.session() as session:
            session.execute(delete(Delivery).where(Delivery.id.in_(delivery_ids)))
