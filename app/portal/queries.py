"""What the portal and the API show: apps, phase boards, history, comparisons, health.

Read-only; pages and the JSON API build on the same functions, so both always agree.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from sqlalchemy import func, select, union_all
from sqlalchemy.orm import Session, joinedload
from werkzeug.exceptions import NotFound
from werkzeug.routing import IntegerConverter

from app import shipped
from app.actions import current, rollback_target
from app.freezes import Freeze, frozen
from app.models import (  # noqa: F401 (aware, iso: re-exported for the views)
    IN_PROGRESS,
    App,
    AuditEntry,
    Deployment,
    DeploymentStatus,
    LogLine,
    Notification,
    NotificationAttempt,
    aware,
    iso,
)
from app.permissions import Action, Decision, check
from app.pipeline import NotificationTarget, PipelineConfig
from app.profiles import SIZING, ResolvedProfile, resolve
from app.runtime import Instance

log = logging.getLogger(__name__)

FAILED_STATES = (DeploymentStatus.FAILED.value, DeploymentStatus.REFUSED.value)
#: How many of the newest deployments the live pages watch for changes.
LIVE_ROWS = 50
#: Row ids are 64-bit integers: a larger number in a path or query is no row (never an OverflowError).
MAX_ROW_ID = 2**63 - 1


def row_id(text: str) -> int:
    """A row id from a query argument or header; ValueError (Werkzeug's "absent") beyond range."""
    value = int(text)
    if not 0 <= value <= MAX_ROW_ID:
        raise ValueError("not a row id")
    return value


class RowIdConverter(IntegerConverter):
    """`<id:...>` in routes: a row id, 404 when it cannot be one."""

    def __init__(self, url_map, *args, **kwargs):
        super().__init__(url_map, min=0, max=MAX_ROW_ID)




def is_finished(deployment: Deployment) -> bool:
    try:
        return DeploymentStatus(deployment.status).finished
    except ValueError:
        return True


# --- apps -------------------------------------------------------------------------------------


def list_apps(session: Session) -> list[App]:
    return list(session.scalars(select(App).where(App.active.is_(True)).order_by(App.name)))


def get_app(session: Session, name: str) -> App:
    app = session.scalar(select(App).where(App.name == name))
    if app is None:
        raise NotFound(f"there is no app named {name!r}")
    return app


def require_phase(config: PipelineConfig, phase: str) -> str:
    if phase not in config.phases:
        raise NotFound(f"there is no phase {phase!r} (phases: {', '.join(config.phase_names)})")
    return phase


def get_deployment(session: Session, app: App, deployment_id: int) -> Deployment:
    deployment = session.get(Deployment, deployment_id)
    if deployment is None or deployment.app_id != app.id:
        raise NotFound(f"{app.name} has no deployment {deployment_id}")
    return deployment


# --- health -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    #: healthy | unhealthy | stopped | missing | unknown | idle
    state: str
    label: str


Containers = dict[tuple[str, str], list[Instance]] | None


def containers(ctx, app_name: str | None = None) -> Containers:
    """Every app instance of this installation (or of one app), by (app, phase): from the
    index the engine's events keep (`Context.watch_containers`), else one call to the runtime
    (containers on docker, tasks on swarm).

    None when the runtime cannot be asked: the portal then says "unknown" rather than failing.
    """
    found = ctx.watched.instances(app_name) if ctx.watched is not None else None
    try:
        if found is None:
            found = ctx.runtime.instances(app=app_name)
    except Exception as exc:  # any engine trouble only makes health unknown
        log.warning("cannot list containers: %s", exc)
        return None
    index: dict[tuple[str, str], list[Instance]] = defaultdict(list)
    for instance in found:
        index[(instance.app, instance.phase)].append(instance)
    return index


def health_of(index: Containers, app_name: str, phase: str, serving: Deployment | Brief | None) -> Health:
    if serving is None:
        return Health("idle", "Not deployed")
    if index is None:
        return Health("unknown", "Health unknown")
    found = index.get((app_name, phase), [])
    mine = [i for i in found if i.id == serving.container_id or i.deployment_id == serving.id]
    candidates = mine or [i for i in found if i.running]
    if not candidates:
        return Health("missing", "Container missing")
    if any(i.running for i in candidates):
        return Health("healthy", "Running")
    state = candidates[0].state
    if state in ("restarting", "dead"):
        return Health("unhealthy", state.capitalize())
    return Health("stopped", state.capitalize() if state else "Stopped")


# --- the board --------------------------------------------------------------------------------


@dataclass
class PhaseView:
    name: str
    index: int
    role: str
    approvals: int
    previous: str | None
    next: str | None
    current: Deployment | None
    in_progress: Deployment | None
    last_failure: Deployment | None
    health: Health
    profile: ResolvedProfile
    #: May the user push what this phase serves into the next one?
    promote: Decision | None
    rollback: Decision
    edit_profile: Decision
    #: The deployment a rollback would restore (None: nothing to roll back to).
    rollback_to: Deployment | None = None
    #: What the serving deployment runs with (its snapshot), else the profile as it is now.
    running_profile: dict[str, Any] = field(default_factory=dict)
    #: The profile was edited since the serving deployment: the next deployment applies it.
    profile_pending: bool = False
    #: The freeze in force now, if any (shown at a glance on the board).
    freeze: Freeze | None = None
    #: May the user freeze / unfreeze, redeploy this phase?
    change_freeze: Decision | None = None
    redeploy: Decision | None = None


def phase_view(ctx, session: Session, app: App, phase: str, role: str, index: Containers) -> PhaseView:
    config: PipelineConfig = ctx.config
    names = config.phase_names
    position = names.index(phase)
    serving = current(session, app.id, phase)
    in_progress = session.scalars(
        select(Deployment).where(Deployment.app_id == app.id, Deployment.phase == phase,
                                 Deployment.status.in_(IN_PROGRESS)).order_by(Deployment.id.desc())
    ).first()
    failure_query = select(Deployment).where(
        Deployment.app_id == app.id, Deployment.phase == phase, Deployment.status == DeploymentStatus.FAILED.value)
    if serving is not None:
        failure_query = failure_query.where(Deployment.id > serving.id)
    last_failure = session.scalars(failure_query.order_by(Deployment.id.desc())).first()
    nxt = config.next_phase(phase)
    _, target = rollback_target(session, app.id, phase)
    profile = resolve(session, config, app.id, phase)
    running = serving.profile_snapshot if serving is not None and serving.profile_snapshot else None
    return PhaseView(
        name=phase,
        index=position,
        role=config.phase(phase).role,
        approvals=config.phase(phase).approvals,
        previous=names[position - 1] if position else None,
        next=nxt,
        current=serving,
        in_progress=in_progress,
        last_failure=last_failure,
        health=health_of(index, app.name, phase, serving),
        profile=profile,
        promote=check(role, Action.PROMOTE, nxt, config.roles) if nxt else None,
        rollback=check(role, Action.ROLLBACK, phase, config.roles),
        edit_profile=check(role, Action.EDIT_PROFILE, phase, config.roles),
        rollback_to=target,
        running_profile=running or profile.snapshot(),
        profile_pending=running is not None and running != profile.snapshot(),
        freeze=frozen(session, config, app.id, phase),
        change_freeze=check(role, Action.FREEZE, phase, config.roles),
        redeploy=check(role, Action.REDEPLOY, phase, config.roles),
    )


def board(ctx, session: Session, app: App, role: str, index: Containers) -> list[PhaseView]:
    return [phase_view(ctx, session, app, phase, role, index) for phase in ctx.config.phase_names]


class Kind(str, Enum):
    """What a deployment is to its phase on the apps list."""

    SERVING = "serving"  # the newest that succeeded
    MOVING = "moving"  # the newest still on its way
    SETTLED = "settled"  # the newest that ended (succeeded, failed or refused)
    LATEST = "latest"  # the app's newest, whatever its phase or status


_KIND_STATUSES = {
    Kind.SERVING: (DeploymentStatus.SUCCEEDED.value,),
    Kind.MOVING: IN_PROGRESS,
    Kind.SETTLED: FAILED_STATES + (DeploymentStatus.SUCCEEDED.value,),
}


@dataclass(frozen=True, slots=True)
class Brief:
    """The columns of a deployment the apps list shows (no JSON columns, no ORM object): at
    hundreds of phases, loading whole rows was most of the page's time."""

    id: int
    app_id: int
    phase: str
    status: str
    version: str
    sha: str | None
    url: str | None
    container_id: str | None
    queued_at: datetime | None
    finished_at: datetime | None


BRIEF_COLUMNS = tuple(getattr(Deployment, name) for name in Brief.__slots__)


@dataclass(frozen=True)
class AppSummary:
    app: App
    phases: list[tuple[str, Brief | None, Brief | None, Health]]
    last_activity: datetime | None
    #: phase -> its newest deployment, when that one failed (or was refused) after what it serves.
    failures: dict[str, Brief] = field(default_factory=dict)


def summaries(ctx, session: Session, apps: list[App], index: Containers) -> list[AppSummary]:
    """Per app and phase: what it serves, what is on its way, and whether it runs.

    One query for all the apps together, whatever their number: the newest deployment of each
    kind per phase, and each app's newest.
    """
    newest = _newest_briefs(session, [app.id for app in apps])
    result = []
    for app in apps:
        phases, failures = [], {}
        for phase in ctx.config.phase_names:
            found = newest.get((app.id, phase), {})
            now = found.get(Kind.SERVING)
            phases.append((phase, now, found.get(Kind.MOVING), health_of(index, app.name, phase, now)))
            settled = found.get(Kind.SETTLED)
            if settled is not None and settled.status in FAILED_STATES:
                failures[phase] = settled
        latest = newest.get((app.id, None), {}).get(Kind.LATEST)
        result.append(AppSummary(app, phases, aware(latest.queued_at) if latest else None, failures))
    return result


def _newest_briefs(session: Session, app_ids: list[int]) -> dict[tuple[int, str | None], dict[Kind, Brief]]:
    """(app id, phase) -> kind -> the newest deployment of that kind, and (app id, None) ->
    LATEST, from one query: each kind's newest ids in a subquery, the rows by id."""
    if not app_ids:
        return {}
    per_phase = [select(func.max(Deployment.id)).where(Deployment.app_id.in_(app_ids), Deployment.status.in_(statuses))
                 .group_by(Deployment.app_id, Deployment.phase) for statuses in _KIND_STATUSES.values()]
    per_app = select(func.max(Deployment.id)).where(Deployment.app_id.in_(app_ids)).group_by(Deployment.app_id)
    wanted = union_all(*per_phase, per_app).scalar_subquery()
    rows = [Brief(*row) for row in session.execute(select(*BRIEF_COLUMNS).where(Deployment.id.in_(wanted)))]
    found: dict[tuple[int, str | None], dict[Kind, Brief]] = defaultdict(dict)
    for row in sorted(rows, key=lambda r: r.id):  # the newest of each kind is written last
        for kind, statuses in _KIND_STATUSES.items():
            if row.status in statuses:
                found[(row.app_id, row.phase)][kind] = row
        found[(row.app_id, None)][Kind.LATEST] = row
    return found


def fingerprint(session: Session, app_ids: list[int], *, new_apps: bool = False) -> str:
    """Changes whenever what the apps list or a board shows of these apps does (a deployment
    queued, moving on or ending, a freeze, a profile edit) and, with `new_apps`, when an app is
    added: the live pages reload their parts then."""
    rows, audited = [], None
    if app_ids:
        rows = session.execute(
            select(Deployment.id, Deployment.status, Deployment.url, Deployment.started_at)
            .where(Deployment.app_id.in_(app_ids)).order_by(Deployment.id.desc()).limit(LIVE_ROWS)).all()
        audited = session.scalar(select(func.max(AuditEntry.id)).where(AuditEntry.app_id.in_(app_ids)))
    newest_app = session.scalar(select(func.max(App.id))) if new_apps else None
    text = repr((sorted(app_ids), [tuple(map(str, row)) for row in rows], audited, newest_app))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def queue_position(session: Session, deployment: Deployment) -> list[Deployment]:
    """The unfinished deployments a queued one waits behind (the deploy queue is first come,
    first served), oldest first."""
    if deployment.status != DeploymentStatus.QUEUED.value:
        return []
    return list(session.scalars(select(Deployment).options(joinedload(Deployment.app))
                                .where(Deployment.id < deployment.id, Deployment.status.in_(IN_PROGRESS))
                                .order_by(Deployment.id).limit(LIVE_ROWS)))


def history(session: Session, app: App, phase: str | None = None, limit: int = 50,
            before: int | None = None) -> list[Deployment]:
    query = select(Deployment).where(Deployment.app_id == app.id)
    if phase is not None:
        query = query.where(Deployment.phase == phase)
    if before is not None:
        query = query.where(Deployment.id < before)
    return list(session.scalars(query.order_by(Deployment.id.desc()).limit(limit)))


def log_lines(session: Session, deployment_id: int, after: int = 0, limit: int = 1000) -> list[LogLine]:
    return list(session.scalars(
        select(LogLine).where(LogLine.deployment_id == deployment_id, LogLine.id > after)
        .order_by(LogLine.id).limit(limit)))


def audit_log(session: Session, app: App, phase: str | None = None, limit: int = 100,
              before: int | None = None) -> list[AuditEntry]:
    """Newest first; `before` (an entry id) gives the page after the one that ended there."""
    query = select(AuditEntry).where(AuditEntry.app_id == app.id)
    if phase is not None:
        query = query.where(AuditEntry.phase == phase)
    if before is not None:
        query = query.where(AuditEntry.id < before)
    return list(session.scalars(query.order_by(AuditEntry.id.desc()).limit(limit)))


def next_page(rows: list, limit: int) -> int | None:
    """The `before` of the next page: the last row's id when the page is full."""
    return rows[-1].id if len(rows) == limit else None


# --- notifications ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    notification: Notification
    app_name: str | None
    attempts: list[NotificationAttempt]


@dataclass(frozen=True)
class TargetView:
    target: NotificationTarget
    shown_url: str
    recent: list[Sent]


def notification_targets(ctx, session: Session, visible_app_ids: set[int] | None, limit: int = 10) -> list[TargetView]:
    """Each configured target with its latest deliveries, of the apps the viewer may see (all
    when `visible_app_ids` is None) plus test events, each with every attempt."""
    from app.notifications import shown_url

    views = []
    for target in ctx.config.notifications:
        query = select(Notification, App.name).outerjoin(App, App.id == Notification.app_id).where(
            Notification.target == target.name)
        if visible_app_ids is not None:
            query = query.where((Notification.app_id.is_(None)) | (Notification.app_id.in_(visible_app_ids)))
        rows = session.execute(query.order_by(Notification.created_at.desc(), Notification.id).limit(limit)).all()
        attempts: dict[str, list[NotificationAttempt]] = defaultdict(list)
        if rows:
            for attempt in session.scalars(select(NotificationAttempt).where(
                    NotificationAttempt.notification_id.in_([n.id for n, _ in rows])).order_by(NotificationAttempt.id)):
                attempts[attempt.notification_id].append(attempt)
        views.append(TargetView(target, shown_url(target.url),
                                [Sent(n, name, attempts[n.id]) for n, name in rows]))
    return views


# --- comparing two phases ---------------------------------------------------------------------


@dataclass(frozen=True)
class Pending:
    deployment: Deployment
    #: The target phase ran this commit before (it was rolled back since).
    was_in_target: bool


@dataclass(frozen=True)
class ProfileDifference:
    name: str
    kind: str  # env | secret | sizing
    source: str
    target: str


@dataclass(frozen=True)
class Comparison:
    source: str
    target: str
    source_current: Deployment | None
    target_current: Deployment | None
    pending: list[Pending]
    profile: list[ProfileDifference]
    compare_url: str | None
    #: What promoting the source's version would ship: commits since what the target serves.
    commits: list[dict] = field(default_factory=list)


def compare(ctx, session: Session, app: App, source: str, target: str, limit: int = 50) -> Comparison:
    """Which versions the source phase ran since what the target phase serves now.

    Built from deployment records (no git): the source phase's successful deployments,
    newest first and one per commit, down to the commit the target phase serves.
    """
    source_now, target_now = current(session, app.id, source), current(session, app.id, target)
    in_target = set(session.scalars(select(Deployment.sha).where(
        Deployment.app_id == app.id, Deployment.phase == target,
        Deployment.status == DeploymentStatus.SUCCEEDED.value)))
    seen: set[str | None] = set()
    pending: list[Pending] = []
    rows = session.scalars(select(Deployment).where(
        Deployment.app_id == app.id, Deployment.phase == source,
        Deployment.status == DeploymentStatus.SUCCEEDED.value).order_by(Deployment.id.desc()).limit(500))
    for row in rows:
        if target_now is not None and row.sha == target_now.sha:
            break
        if row.sha in seen:
            continue
        seen.add(row.sha)
        pending.append(Pending(row, row.sha in in_target))
        if len(pending) >= limit:
            break
    compare_url = None
    if app.html_url and source_now and target_now and source_now.sha and target_now.sha \
            and source_now.sha != target_now.sha:
        compare_url = f"{app.html_url}/compare/{target_now.sha}...{source_now.sha}"
    commits = shipped.commits_between(
        ctx, clone_url=app.clone_url, installation_id=app.installation_id,
        base=target_now.sha if target_now else None, head=source_now.sha if source_now else None)
    return Comparison(source, target, source_now, target_now, pending,
                      profile_differences(resolve(session, ctx.config, app.id, source),
                                          resolve(session, ctx.config, app.id, target)),
                      compare_url, commits)


def profile_differences(source: ResolvedProfile, target: ResolvedProfile) -> list[ProfileDifference]:
    """Effective values that differ between two phases; secrets only as set or not set."""
    out = []
    for key in SIZING:
        a, b = source.sizing.get(key), target.sizing.get(key)
        if (a and a.value) != (b and b.value):
            out.append(ProfileDifference(key, "sizing", _shown(a), _shown(b)))
    for name in sorted(set(source.env) | set(target.env)):
        a, b = source.env.get(name), target.env.get(name)
        if (a and a.value) != (b and b.value):
            out.append(ProfileDifference(name, "env", _shown(a), _shown(b)))
    for name in sorted(set(source.secrets) ^ set(target.secrets)):
        out.append(ProfileDifference(name, "secret", "set" if name in source.secrets else "not set",
                                     "set" if name in target.secrets else "not set"))
    return out


def _shown(sourced) -> str:
    return "not set" if sourced is None else str(sourced.value)
