"""The preview jobs: tear a pull request's preview down, and expire idle ones (README, Pull request previews).

`teardown` runs under the preview phase's deploy lock, so a build still running finishes
(or stops at its cancellation check) first; then the preview's containers, route, backing
services, volumes, network, slots and service passwords are removed, every GitHub Deployment
of it becomes `inactive`, and its comment says why. `expire` (from the scheduler, every
minute) starts that for previews idle longer than `previews.ttl_hours`.
"""

from __future__ import annotations

import logging

from sqlalchemy import delete, select

from app import previews, services
from app.context import Context
from app.jobs import PreviewTeardownJob, ReportJob, enqueue_committed
from app.locks import deploy_lock
from app.models import App, AuditEntry, PhaseSlots, Preview, PreviewState, Profile, utcnow
from app.pipeline import preview_phase
from workers import runtime

log = logging.getLogger(__name__)


def teardown(*, app_id: int, pr_number: int, generation: int, up_to: int, reason: str) -> str:
    """RQ entry point (enqueued by `app.jobs.Jobs.preview_teardown`)."""
    return remove(runtime.context(), app_id=app_id, pr_number=pr_number, generation=generation, up_to=up_to,
                  reason=reason)


def remove(ctx: Context, *, app_id: int, pr_number: int, generation: int, up_to: int, reason: str) -> str:
    phase = preview_phase(pr_number)
    with ctx.db.session() as session:
        app_name = session.get(App, app_id).name
    with deploy_lock(ctx.redis, app_name, phase, owner=f"preview teardown of #{pr_number}",
                     expires=ctx.settings.deploy_lock_seconds):
        with ctx.db.session() as session:
            preview = previews.find(session, app_id, pr_number)
            # Reopened (or pushed again) since: only what the torn-down generation started goes.
            revived = preview is not None and PreviewState(preview.state).running
            served = previews.served(session, app_id, phase, up_to)
            text = previews.removed_text(pr_number, served, reason)
        removed = []
        for instance in ctx.runtime.instances(app_name):
            if instance.phase != phase or (revived and (instance.deployment_id or 0) > up_to):
                continue
            ctx.runtime.remove(instance)
            removed.append(instance.name)
        if not revived:
            ctx.router.remove(app_name, phase)
            services.remove(ctx, app_name, app_id, phase)
            with ctx.db.session() as session:  # its service passwords and slot ports
                session.execute(delete(Profile).where(Profile.app_id == app_id, Profile.phase == phase))
                session.execute(delete(PhaseSlots).where(PhaseSlots.app_id == app_id, PhaseSlots.phase == phase))
    with ctx.db.session() as session:
        app = session.get(App, app_id)
        session.add(AuditEntry(actor=previews.ACTOR, app_id=app_id, phase=phase, action="preview.removed",
                               detail={"pr_number": pr_number, "reason": reason, "containers": removed}))
        reports = ctx.reports.preview_removed(session, app, pr_number, phase, text)
        pending = [r.id for r in reports if r.state == "pending"]
    enqueue_committed(ctx, [ReportJob(r) for r in pending])
    log.info("preview %s of %s removed (%s): %s", phase, app_name, reason, ", ".join(removed) or "no containers")
    return f"removed {phase}"


def expire() -> list[str]:
    """RQ entry point (periodic): tear down previews idle longer than `previews.ttl_hours`."""
    return sweep(runtime.context())


def sweep(ctx: Context) -> list[str]:
    ttl = ctx.config.previews.ttl_hours
    jobs: list[dict] = []
    reports: list[int] = []
    with ctx.db.session() as session:
        active = session.scalars(select(Preview).where(Preview.state == PreviewState.ACTIVE.value)).all()
        by_app: dict[int, list[Preview]] = {}
        for preview in active:
            by_app.setdefault(preview.app_id, []).append(preview)
        for app_id, rows in by_app.items():
            app = session.get(App, app_id)
            for number in previews.expired([(p.pr_number, p.active_at) for p in rows], utcnow(), ttl):
                preview = previews.find(session, app_id, number, lock=True)
                done = previews.begin_teardown(ctx, session, app, preview,
                                               f"no push for more than {ttl:g} hours (previews.ttl_hours); "
                                               "a push builds it again", closed=False)
                jobs += done.teardowns
                reports += done.reports
    enqueue_committed(ctx, [*(ReportJob(r) for r in reports), *(PreviewTeardownJob(**job) for job in jobs)])
    return [preview_phase(job["pr_number"]) for job in jobs]
