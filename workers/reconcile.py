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

from app.actions import current
from app.adapters.docker import LABEL_DEPLOYMENT
from app.context import Context
from app.deployments import schedule
from app.jobs import DEPLOY_TIMEOUT, job_id
from app.locks import holder
from app.models import IN_PROGRESS, TAKEN_UP, App, Build, BuildStatus, Deployment, DeploymentStatus, LogLine, utcnow
from app.plans import Deploy, Repo, Trigger
from app.slots import find_slots
from workers import runtime
from workers.deploy import SCRATCH_PREFIXES

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
        for deployment in stuck:
            if holder(ctx.redis, deployment.app.name, deployment.phase) is not None:
                continue  # still being deployed by a live worker
            deployment.status = DeploymentStatus.FAILED.value
            deployment.reason = "the worker stopped during the deploy; the previous version kept serving"
            deployment.finished_at = utcnow()
            session.add(LogLine(deployment_id=deployment.id, stream="deploy", text=f"failed: {deployment.reason}"))
            if deployment.container_id:
                ctx.engine.stop_and_remove(deployment.container_id, timeout=1)
                deployment.container_id = None
            reports = ctx.reports.finished(session, deployment.app, deployment)
            findings.failed.append(deployment.id)
            pending += [r.id for r in reports if r.state == "pending"]
    for report_id in pending:
        ctx.jobs.report(report_id)


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
    """Clones left behind by a killed worker; old enough that no running deploy still uses them."""
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
        ctx.jobs.deploy(deployment_id)
        findings.requeued.append(deployment_id)


def _converge_containers(ctx: Context, findings: Findings) -> None:
    engine, router = ctx.engine, ctx.router
    containers = engine.list_containers()
    by_id = {c.id: c for c in containers}
    expected: set[str] = set()
    redeploy: list[tuple[App, Deployment]] = []
    with ctx.db.session() as session:
        # A deployment in progress may have started its container before recording it.
        in_progress = {str(i) for i in session.scalars(
            select(Deployment.id).where(Deployment.status.in_(TAKEN_UP))).all()}
        expected.update(c.id for c in containers if c.labels.get(LABEL_DEPLOYMENT) in in_progress)
        for app in session.scalars(select(App).where(App.active.is_(True))).all():
            for phase in ctx.config.phase_names:
                serving = current(session, app.id, phase)
                if serving is None:
                    continue
                container = by_id.get(serving.container_id or "")
                if container is None:
                    if _restore_pending(session, app.id, phase):
                        continue
                    redeploy.append((app, serving))
                    continue
                expected.add(container.id)
                if container.host_port and container.host_port != serving.host_port:
                    serving.host_port = container.host_port  # the engine re-published it on restart
                slots = find_slots(session, app.id, phase)
                if slots is not None and container.host_port in slots.ports:
                    # A no-op unless the router lost the route (e.g. Caddy restarted) or prefers
                    # the other slot (a worker died between its switch and its record).
                    if router.ensure_route(app.name, phase, slots, serving=container.host_port):
                        findings.restored_routes.append(f"{app.name}/{phase}")
        for app, serving in redeploy:
            deployment = schedule(session, app, Deploy(
                repo=Repo(app.full_name, app.clone_url, app.default_branch), phase=serving.phase,
                ref=serving.sha, sha=serving.sha, version=serving.version, trigger=Trigger.RESTORE,
                actor="release-pipeline"), source_id=serving.id)
            session.flush()
            findings.redeployed.append(deployment.id)
    for container in containers:
        if container.id not in expected:
            engine.stop_and_remove(container.id, timeout=2)
            findings.removed_containers.append(container.name)
    for deployment_id in findings.redeployed:
        ctx.jobs.deploy(deployment_id)


def _restore_pending(session, app_id: int, phase: str) -> bool:
    return session.scalar(select(Deployment.id).where(
        Deployment.app_id == app_id, Deployment.phase == phase,
        Deployment.status.in_(IN_PROGRESS))) is not None
