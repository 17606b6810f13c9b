"""Make Docker, the router and the database agree again after a crash or restart.

Runs when a worker starts and periodically: deployments left half-done by a killed worker
are marked failed, containers no deployment expects are removed, routes are restored from
the database (after a router restart), and a phase whose container vanished is redeployed
from its last good deployment.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field

from rq.job import Job
from sqlalchemy import select

from app import previews
from app.actions import current
from app.context import Context
from app.deployments import schedule
from app.jobs import DEPLOY_TIMEOUT, DeployJob, ReportJob, enqueue_committed, job_id
from app.locks import holder
from app.models import IN_PROGRESS, TAKEN_UP, App, Build, BuildStatus, Deployment, DeploymentStatus, LogLine, utcnow
from app.plans import Deploy, Repo, Trigger
from app.runtime import PhaseRef
from workers import runtime

#: Scratch directories in WORK_DIR that deploys used to clone into, before each app kept its
#: repository in WORK_DIR/repos; a worker killed meanwhile left them behind.
SCRATCH_PREFIXES = ("clone-", "services-")

log = logging.getLogger(__name__)



@dataclass
class Findings:
    failed: list[int] = field(default_factory=list)
    requeued: list[int] = field(default_factory=list)
    removed_containers: list[str] = field(default_factory=list)
    restored_routes: list[str] = field(default_factory=list)
    redeployed: list[int] = field(default_factory=list)
    interrupted_builds: list[int] = field(default_factory=list)
    removed_work_dirs: list[str] = field(default_factory=list)


def run() -> dict:
    """RQ entry point (periodic)."""
    return reconcile(runtime.context()).__dict__


def on_worker_start(ctx: Context) -> None:
    try:
        findings = reconcile(ctx)
    except Exception as exc:  # e.g. Docker still starting: the worker runs anyway (reports, commands),
        log.error("reconcile on start failed: %s", exc)  # the periodic reconcile catches up later
        return
    log.info("reconciled on start: %s", findings)


def reconcile(ctx: Context) -> Findings:
    findings = Findings()
    _settle_interrupted(ctx, findings)
    _settle_builds(ctx, findings)
    _sweep_work_dir(ctx, findings)
    _requeue_lost(ctx, findings)
    _converge_containers(ctx, findings)
    return findings


def _settle_interrupted(ctx: Context, findings: Findings) -> None:
    """A deployment in progress whose lock is gone was interrupted (worker killed)."""
    pending: list[int] = []
    with ctx.db.session() as session:
        stuck = session.scalars(select(Deployment).where(Deployment.status.in_(TAKEN_UP))).all()
        instances = ctx.runtime.instances() if stuck else []
        for deployment in stuck:
            if holder(ctx.redis, deployment.app.name, deployment.phase) is not None:
                continue  # still being deployed by a live worker
            deployment.status = DeploymentStatus.FAILED.value
            deployment.reason = "the worker stopped during the deploy; the previous version kept serving"
            deployment.finished_at = utcnow()
            session.add(LogLine(deployment_id=deployment.id, stream="deploy", text=f"failed: {deployment.reason}"))
            for instance in instances:  # started, never switched to: the previous version serves on
                if instance.deployment_id == deployment.id:
                    ctx.runtime.remove(instance)
            deployment.container_id = None
            reports = ctx.reports.finished(session, deployment.app, deployment)
            findings.failed.append(deployment.id)
            pending += [r.id for r in reports if r.state == "pending"]
    for report_id in pending:
        ctx.jobs.enqueue(ReportJob(report_id))


def _settle_builds(ctx: Context, findings: Findings) -> None:
    """A build left "building" while no deployment of its app is in progress was interrupted."""
    with ctx.db.session() as session:
        busy_apps = set(session.scalars(select(Deployment.app_id).where(Deployment.status.in_(TAKEN_UP))).all())
        for build in session.scalars(select(Build).where(Build.status == BuildStatus.BUILDING.value)).all():
            if build.app_id in busy_apps:
                continue
            build.status, build.reason, build.finished_at = BuildStatus.FAILED.value, "the build was interrupted", utcnow()
            findings.interrupted_builds.append(build.id)


def _sweep_work_dir(ctx: Context, findings: Findings) -> None:
    """Scratch clones left behind by a killed worker (SCRATCH_PREFIXES); old enough that no
    running deploy still uses them."""
    work_dir = ctx.settings.work_dir
    if not work_dir.is_dir():
        return
    cutoff = time.time() - DEPLOY_TIMEOUT
    for path in work_dir.iterdir():
        if path.is_dir() and path.name.startswith(SCRATCH_PREFIXES) and path.stat().st_mtime < cutoff:
            shutil.rmtree(path, ignore_errors=True)
            findings.removed_work_dirs.append(path.name)


def _requeue_lost(ctx: Context, findings: Findings) -> None:
    """A queued deployment whose job is gone from Redis (flushed, expired) is queued again."""
    with ctx.db.session() as session:
        queued = session.scalars(select(Deployment.id).where(Deployment.status == DeploymentStatus.QUEUED.value)).all()
    for deployment_id in queued:
        if Job.exists(job_id("deploy", deployment_id), connection=ctx.redis):
            continue
        ctx.jobs.enqueue(DeployJob(deployment_id))
        findings.requeued.append(deployment_id)


def _converge_containers(ctx: Context, findings: Findings) -> None:
    runtime = ctx.runtime
    instances = runtime.instances()
    expected: set[str] = set()
    redeploy: list[tuple[App, Deployment]] = []
    with ctx.db.session() as session:
        # A deployment in progress may have started its instances before recording them.
        taken_up = set(session.scalars(select(Deployment.id).where(Deployment.status.in_(TAKEN_UP))).all())
        expected.update(i.id for i in instances if i.deployment_id in taken_up)
        for app in session.scalars(select(App).where(App.active.is_(True))).all():
            for phase in previews.running_phases(ctx.config, session, app.id):
                serving = current(session, app.id, phase)
                if serving is None:
                    continue
                mine = [i for i in instances if i.app == app.name and i.phase == phase
                        and (i.id == serving.container_id or i.deployment_id == serving.id)]
                first = next((i for i in mine if i.id == serving.container_id), None)
                if first is None:
                    if _restore_pending(session, app.id, phase):
                        continue
                    redeploy.append((app, serving))
                    continue
                expected.update(i.id for i in mine)
                if first.port and first.port != serving.host_port:
                    serving.host_port = first.port  # the engine re-published it on restart
                # A no-op unless the router lost the route (e.g. Caddy restarted), prefers the
                # other slot (a worker died between its switch and its record), or a replica was
                # re-published on another port.
                ordered = [first, *(i for i in mine if i is not first and i.running)]
                if runtime.restore_route(PhaseRef(app.id, app.name, phase), ordered):
                    findings.restored_routes.append(f"{app.name}/{phase}")
        for app, serving in redeploy:
            deployment = schedule(session, app, Deploy(
                repo=Repo(app.full_name, app.clone_url, app.default_branch), phase=serving.phase,
                ref=serving.sha, sha=serving.sha, version=serving.version, trigger=Trigger.RESTORE,
                actor="release-pipeline"), source_id=serving.id)
            session.flush()
            findings.redeployed.append(deployment.id)
    for instance in instances:
        if instance.id not in expected:
            runtime.remove(instance)
            findings.removed_containers.append(instance.name)
    enqueue_committed(ctx, [DeployJob(deployment_id) for deployment_id in findings.redeployed])


def _restore_pending(session, app_id: int, phase: str) -> bool:
    return session.scalar(select(Deployment.id).where(
        Deployment.app_id == app_id, Deployment.phase == phase,
        Deployment.status.in_(IN_PROGRESS))) is not None
