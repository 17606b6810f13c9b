"""What the portal and the API change: pushes, rollbacks and profile edits.

Pages and API handlers call these functions and nothing else to act, so both go the same
way: permission check (`app.permissions`), scheduling (`app.actions`, shared with git
events and slash-commands), commit, then enqueue (`ctx.jobs`) and an audit entry. Problems
surface as HTTP errors (400/403/404/409/503) that each caller renders its own way.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from redis.exceptions import RedisError
from sqlalchemy import select
from werkzeug.exceptions import BadRequest, Conflict, Forbidden, NotFound, ServiceUnavailable

from app import previews
from app.actions import Actions, Outcome, audit
from app.exceptions import InvalidVersion, QueueUnavailable
from app.jobs import DeployJob, Job, PreviewTeardownJob, PromotionJob, ReportJob, enqueue_committed
from app.models import App, AuditEntry, Deployment, DeploymentStatus, Profile, utcnow
from app.plans import Trigger
from app.permissions import Action, check
from app.pipeline import ENV_NAME, MAX_STOP_TIMEOUT
from app.pipeline import Profile as PipelineProfile
from app.profiles import SIZING
from app.portal.queries import get_app, require_phase
from app.profiles import resolve
from app.versions import validate_version

log = logging.getLogger(__name__)

FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
MAX_VALUE_LENGTH = 8192
MAX_VARIABLES = 200
TRIGGER = Trigger.PORTAL

RoleOf = Callable[[App], str]


def _require(role: str, action: Action, phase: str | None, config) -> None:
    """403 unless `Actions` allows `role` to do `action` on `phase`."""
    refused = Actions(config).refusal(role, action, phase)
    if refused:
        raise Forbidden(refused.message)


def _version(value: str | None, field_name: str) -> str | None:
    if value is None or not str(value).strip():
        return None
    try:
        return validate_version(str(value).strip())
    except InvalidVersion as exc:
        raise BadRequest(f"{field_name}: {exc}") from None


def _scheduled(ctx, app_name: str, phase: str, actor: str, role_of: RoleOf, action: Action, audit_action: str,
               run: Callable[[Any, App, str], Outcome]) -> Outcome:
    """Check, schedule and record in one transaction; enqueue only once it is committed. The
    actor's role is read once (it may be a GitHub call) and handed to the action."""
    with ctx.db.session() as session:
        app = get_app(session, app_name)
        require_phase(ctx.config, phase)
        role = role_of(app)
        _require(role, action, phase, ctx.config)
        outcome = run(session, app, role)
        if not outcome.ok:
            raise (Forbidden if outcome.forbidden else Conflict)(outcome.message)
        jobs: list[Job] = []
        stops = action == Action.CANCEL  # acts on an existing deployment: nothing to run
        if stops:
            if outcome.finished:  # cancelled before it started: its outcome goes to GitHub now
                deployment = session.get(Deployment, outcome.deployment_id)
                jobs = [ReportJob(r.id) for r in ctx.reports.finished(session, app, deployment) if r.state == "pending"]
            audit(session, actor, app, phase, audit_action, {"deployment": outcome.deployment_id,
                                                             "message": outcome.message})
        elif outcome.deployment_id is not None:
            session.flush()
            deployment = session.get(Deployment, outcome.deployment_id)
            jobs = [DeployJob(deployment.id),
                    *(ReportJob(r.id) for r in ctx.reports.queued(session, app, deployment) if r.state == "pending")]
            audit(session, actor, app, phase, audit_action,
                   {"deployment": deployment.id, "version": deployment.version, "sha": deployment.sha,
                    "message": outcome.message})
        elif outcome.promotion is not None:
            p = outcome.promotion
            audit(session, actor, app, phase, f"{audit_action}.requested",
                   {"version": p.version, "sha": p.sha, "message": outcome.message})
    try:
        enqueue_committed(ctx, jobs)
    except QueueUnavailable:
        if stops:  # the cancel itself stands; only GitHub's copy of its outcome is lost
            log.warning("deployment %s was cancelled; its outcome was not reported (queue unavailable)",
                        outcome.deployment_id)
            return outcome
        raise ServiceUnavailable("the job queue is unavailable; nothing was deployed, try again") from None
    return outcome


def promote(ctx, app_name: str, phase: str, *, actor: str, role_of: RoleOf, version: str | None = None,
            rename_to: str | None = None, force: str | None = None) -> Outcome:
    """Push to `phase` what the previous phase serves (or `version`), optionally renamed;
    `force` is an admin's reason to go through a freeze."""
    version, rename_to = _version(version, "version"), _version(rename_to, "rename_to")
    if force is not None and not str(force).strip():
        raise BadRequest("force: give the reason for overriding the freeze (it is recorded in the audit log)")
    result = _scheduled(ctx, app_name, phase, actor, role_of, Action.PROMOTE, "promote",
                        lambda session, app, role: Actions(ctx.config).promote(
                            session, app, phase, actor=actor, role=role, trigger=TRIGGER,
                            version=version, rename_to=rename_to, force=force))
    if result.promotion is not None:
        p = result.promotion
        needed = ctx.config.phase(phase).approvals
        approvals = f"{needed} approval{'s' if needed != 1 else ''}"
        if ctx.github is None:
            command = (f"/promote {phase}" + (f" {version}" if version else "")
                       + (f" as {rename_to}" if rename_to else ""))
            return Outcome(
                True,
                f"{phase.capitalize()} needs {approvals}, so {p.version} goes there through a promotion pull "
                f"request ({p.head_branch} → {p.branch}). GitHub is not configured here: comment “{command}” "
                f"on a pull request once it is; merging it once approved deploys {p.version}.",
                promotion=p)
        with ctx.db.session() as session:
            app_id = get_app(session, app_name).id
        try:
            enqueue_committed(ctx, [PromotionJob(app_id=app_id, phase=p.phase, branch=p.branch, version=p.version,
                                                 sha=p.sha, source_id=p.source_id, actor=actor, override=p.override)])
        except QueueUnavailable:
            raise ServiceUnavailable("the job queue is unavailable; no pull request was opened, try again") from None
        return Outcome(
            True,
            f"{phase.capitalize()} needs {approvals}, so a promotion pull request for {p.version} "
            f"({p.head_branch} → {p.branch}) is being opened on GitHub; its link appears in the audit log. "
            f"Merging it once approved deploys {p.version}.",
            promotion=p)
    return result


def deploy(ctx, app_name: str, phase: str, *, sha: str | None, actor: str, role_of: RoleOf) -> Outcome:
    """Build (or reuse the image of) a commit and put it on `phase`, as `/deploy` does for a PR."""
    if not isinstance(sha, str) or not FULL_SHA.fullmatch(sha):
        raise BadRequest("sha: must be a full 40-character commit sha (git rev-parse <ref>)")
    return _scheduled(ctx, app_name, phase, actor, role_of, Action.DEPLOY, "deploy",
                      lambda session, app, role: Actions(ctx.config).deploy_commit(
                          session, app, phase, sha=sha, actor=actor, role=role, trigger=TRIGGER))


def rollback(ctx, app_name: str, phase: str, *, actor: str, role_of: RoleOf, to_version: str | None = None) -> Outcome:
    to_version = _version(to_version, "to_version")
    return _scheduled(ctx, app_name, phase, actor, role_of, Action.ROLLBACK, "rollback",
                      lambda session, app, role: Actions(ctx.config).rollback(
                          session, app, phase, actor=actor, role=role, trigger=TRIGGER,
                          to_version=to_version))


def redeploy(ctx, app_name: str, phase: str, *, actor: str, role_of: RoleOf) -> Outcome:
    """Deploy what `phase` serves again with its current profile (applies an edited profile)."""
    return _scheduled(ctx, app_name, phase, actor, role_of, Action.REDEPLOY, "redeploy",
                      lambda session, app, role: Actions(ctx.config).redeploy(
                          session, app, phase, actor=actor, role=role, trigger=TRIGGER))


def _deployment_phase(ctx, app_name: str, deployment_id: int) -> str:
    from werkzeug.exceptions import NotFound

    with ctx.db.session() as session:
        app = get_app(session, app_name)
        deployment = session.get(Deployment, deployment_id)
        if deployment is None or deployment.app_id != app.id:
            raise NotFound(f"{app_name} has no deployment {deployment_id}")
        return deployment.phase


def retry(ctx, app_name: str, deployment_id: int, *, actor: str, role_of: RoleOf) -> Outcome:
    phase = _deployment_phase(ctx, app_name, deployment_id)
    return _scheduled(ctx, app_name, phase, actor, role_of, Action.RETRY, "retry",
                      lambda session, app, role: Actions(ctx.config).retry(
                          session, app, session.get(Deployment, deployment_id), actor=actor, role=role))


def cancel(ctx, app_name: str, deployment_id: int, *, actor: str, role_of: RoleOf) -> Outcome:
    phase = _deployment_phase(ctx, app_name, deployment_id)
    return _scheduled(ctx, app_name, phase, actor, role_of, Action.CANCEL, "cancel",
                      lambda session, app, role: Actions(ctx.config).cancel(
                          session, app, session.get(Deployment, deployment_id), actor=actor, role=role))


def freeze(ctx, app_name: str, phase: str, *, actor: str, role_of: RoleOf, reason: str) -> Outcome:
    return _scheduled(ctx, app_name, phase, actor, role_of, Action.FREEZE, "freeze",
                      lambda session, app, role: Actions(ctx.config).freeze(
                          session, app, phase, actor=actor, role=role, reason=reason))


def unfreeze(ctx, app_name: str, phase: str, *, actor: str, role_of: RoleOf) -> Outcome:
    return _scheduled(ctx, app_name, phase, actor, role_of, Action.UNFREEZE, "unfreeze",
                      lambda session, app, role: Actions(ctx.config).unfreeze(
                          session, app, phase, actor=actor, role=role))


# --- profiles ---------------------------------------------------------------------------------


@dataclass
class ProfileChange:
    """An edit of one phase's own profile. Absent parts stay as they are."""

    #: Replaces the phase's own variables entirely (None: keep, then apply env_set/env_remove).
    env: dict[str, str] | None = None
    env_set: dict[str, str] = field(default_factory=dict)
    env_remove: set[str] = field(default_factory=set)
    #: Plaintext only on the way in: sealed at once, never stored, logged or returned.
    secrets_set: dict[str, str] = field(default_factory=dict)
    secrets_remove: set[str] = field(default_factory=set)
    #: memory / cpus / replicas / stop_timeout → value, or None to inherit again.
    sizing: dict[str, Any] = field(default_factory=dict)


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not re.fullmatch(ENV_NAME, name):
        raise BadRequest(f"{where}: {str(name)[:60]!r} is not a valid name "
                         "(letters, digits and _, not starting with a digit)")
    return name


def _check_value(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{where}: must be a string")
    if len(value) > MAX_VALUE_LENGTH or "\x00" in value:
        raise BadRequest(f"{where}: must be at most {MAX_VALUE_LENGTH} characters, without NUL")
    return value


#: What a form or API client is told when a sizing value does not fit the `Profile` model.
SIZING_RULES = {
    "memory": "must be a number with a unit b, k, m or g (e.g. 512m)",
    "cpus": "must be a number greater than 0 and at most 64",
    "replicas": "must be a whole number from 1 to 20",
    "stop_timeout": f"must be a whole number of seconds from 1 to {MAX_STOP_TIMEOUT}",
}


def parse_sizing(key: str, value: Any) -> Any:
    """One sizing value from a form or JSON, read by the pipeline's `Profile` model (the one
    place its limits are written); None (or blank) means inherit."""
    if key not in SIZING_RULES:
        raise BadRequest(f"sizing/{key}: not a setting ({', '.join(SIZING)})")
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        value = value.strip().lower()
    whole = key in ("replicas", "stop_timeout")
    if isinstance(value, bool) or (whole and isinstance(value, float)):
        raise BadRequest(f"sizing/{key}: {SIZING_RULES[key]}")
    try:
        return getattr(PipelineProfile.model_validate({key: value}), key)
    except ValidationError:
        raise BadRequest(f"sizing/{key}: {SIZING_RULES[key]}") from None


def validate(change: ProfileChange) -> ProfileChange:
    if change.env is not None:
        for name, value in change.env.items():
            _check_value(value, f"env/{_check_name(name, 'env')}")
    for name, value in change.env_set.items():
        _check_value(value, f"env/{_check_name(name, 'env')}")
    for name in change.env_remove:
        _check_name(name, "env")
    for name, value in change.secrets_set.items():
        _check_name(name, "secrets")
        _check_value(value, f"secrets/{name}")
        if not value:
            raise BadRequest(f"secrets/{name}: must not be empty (remove the secret instead)")
    for name in change.secrets_remove:
        _check_name(name, "secrets")
    change.sizing = {key: parse_sizing(key, value) for key, value in change.sizing.items()}
    return change


def update_profile(ctx, app_name: str, phase: str, change: ProfileChange, *, actor: str,
                   role_of: RoleOf) -> list[str]:
    """Apply `change` to the phase's own profile; returns what changed (as the audit says it)."""
    validate(change)
    with ctx.db.session() as session:
        app = get_app(session, app_name)
        require_phase(ctx.config, phase)
        role = role_of(app)
        _require(role, Action.EDIT_PROFILE, phase, ctx.config)
        profile = session.scalar(select(Profile).where(Profile.app_id == app.id, Profile.phase == phase))
        if profile is None:
            profile = Profile(app_id=app.id, phase=phase, env={}, secrets={})
            session.add(profile)
        old_env, old_secrets = dict(profile.env or {}), dict(profile.secrets or {})
        env = dict(change.env) if change.env is not None else dict(old_env)
        env.update(change.env_set)
        for name in change.env_remove:
            env.pop(name, None)
        secrets = dict(old_secrets)
        for name in change.secrets_remove:
            secrets.pop(name, None)
        for name, plaintext in change.secrets_set.items():
            secrets[name] = ctx.box.seal(plaintext)
        if len(env) > MAX_VARIABLES or len(secrets) > MAX_VARIABLES:
            raise BadRequest(f"at most {MAX_VARIABLES} variables and {MAX_VARIABLES} secrets per phase")
        described = _describe(old_env, env, old_secrets, secrets, set(change.secrets_set),
                              {k: getattr(profile, k) for k in change.sizing}, change.sizing)
        if not described:
            session.rollback()
            return []
        later = ctx.config.phase_names[ctx.config.phase_names.index(phase) + 1:]
        inherited_before = {name: resolve(session, ctx.config, app.id, name).snapshot() for name in later}
        profile.env, profile.secrets = env, secrets
        for key, value in change.sizing.items():
            setattr(profile, key, value)
        profile.updated_by = actor
        session.flush()
        _require_inheritors(role, phase, [
            name for name in later if resolve(session, ctx.config, app.id, name).snapshot() != inherited_before[name]
        ], ctx.config)
        audit(session, actor, app, phase, "profile.update", {"changes": described})
    log.info("%s changed the %s profile of %s: %d change(s)", actor, phase, app_name, len(described))
    return described


def _require_inheritors(role: str, phase: str, reached: list[str], config) -> None:
    """A phase without a value of its own inherits it (README, Who may put what on a phase), so an edit that changes what a
    later phase runs with needs that phase's role too: a writer's Demo edit must not reach Live."""
    for name in reached:
        refused = Actions(config).refusal(role, Action.EDIT_PROFILE, name)
        if refused:
            raise Forbidden(f"{name} inherits this from the {phase} profile, so the change needs {name}'s "
                            f"role too: {refused.message}")


def _describe(old_env: dict, env: dict, old_secrets: dict, secrets: dict, resealed: set[str],
              old_sizing: dict, sizing: dict) -> list[str]:
    """The audit's words for a change: variable values, secret names only ("changed")."""
    changes = []
    for key, value in sizing.items():
        before = old_sizing.get(key)
        if before != value:
            changes.append(f"{key} {_or_inherited(before)} → {_or_inherited(value)}")
    for name in sorted(set(old_env) | set(env)):
        if name not in env:
            changes.append(f"env {name} removed")
        elif name not in old_env:
            changes.append(f"env {name}={env[name]} added")
        elif old_env[name] != env[name]:
            changes.append(f"env {name} {old_env[name]} → {env[name]}")
    for name in sorted(set(old_secrets) | set(secrets)):
        if name not in secrets:
            changes.append(f"secret {name} removed")
        elif name not in old_secrets:
            changes.append(f"secret {name} added")
        elif name in resealed:
            changes.append(f"secret {name} changed")
    return changes


def _or_inherited(value: Any) -> str:
    return "inherited" if value is None else str(value)


# --- backing services -------------------------------------------------------------------------


def remove_services(ctx, app_name: str, phase: str, *, confirm: str | None, actor: str,
                    role_of: RoleOf) -> list[str]:
    """Delete a phase's backing services *and their data*: permission, typed confirmation
    (`<app>/<phase>`), never during a deployment of that phase, audited. Returns the names."""
    from app import services
    from app.exceptions import LockHeld, ReleasePipelineError
    from app.locks import deploy_lock
    from app.models import ServiceInstance

    with ctx.db.session() as session:
        app = get_app(session, app_name)
        require_phase(ctx.config, phase)
        _require(role_of(app), Action.REMOVE_SERVICES, phase, ctx.config)
        app_id = app.id
        recorded = session.scalar(select(ServiceInstance.id).where(
            ServiceInstance.app_id == app_id, ServiceInstance.phase == phase).limit(1))
    expected = f"{app_name}/{phase}"
    if confirm != expected:
        raise BadRequest(f"confirm: removing the {phase} services deletes their data for good; "
                         f"confirm with “{expected}”")
    try:
        if recorded is None and not (ctx.engine.service_containers(app_name, phase)
                                     or ctx.engine.service_volumes(app_name, phase)):
            raise Conflict(f"{phase} has no backing services to remove")
        with deploy_lock(ctx.redis, app_name, phase, owner=f"{actor}: removing services", wait=0):
            removed = services.remove(ctx, app_name, app_id, phase)
    except LockHeld:
        raise Conflict(f"{app_name}/{phase} is being deployed; remove its services once that finishes") from None
    except RedisError:
        raise ServiceUnavailable("the job queue (Redis) is unavailable; nothing was removed") from None
    except ReleasePipelineError as exc:
        log.error("removing the %s services of %s failed: %s", phase, app_name, exc)
        raise ServiceUnavailable("the Docker engine did not complete the removal; try again") from None
    with ctx.db.session() as session:
        audit(session, actor, session.get(App, app_id), phase, "services.remove", {"removed": removed})
    log.info("%s removed the %s services of %s: %s", actor, phase, app_name, ", ".join(removed) or "none")
    return removed


def delete_app(ctx, app_name: str, *, confirm: str | None, actor: str, role_of: RoleOf) -> dict[str, Any]:
    """Delete an app: admin only, confirmed by typing its name, never while one of its phases deploys.

    Its containers, images, routes, backing services and their volumes go; its deployments, logs
    and audit log stay readable, the app marked deleted (deliveries for it then deploy nothing).
    Queued deployments are superseded first, under every phase's deploy lock, so none starts.
    Deleting again retries the removal of whatever is left.
    """
    from contextlib import ExitStack

    from app.exceptions import LockHeld, ReleasePipelineError
    from app.locks import deploy_lock

    with ctx.db.session() as session:
        app = get_app(session, app_name)
        _require(role_of(app), Action.DELETE_APP, None, ctx.config)
        app_id = app.id
        phases = sorted(set(ctx.config.phase_names) | set(session.scalars(
            select(Deployment.phase).where(Deployment.app_id == app_id).distinct()).all()))
    if confirm != app_name:
        raise BadRequest(f"confirm: deleting {app_name} removes its containers, images, routes, backing services "
                         f"and their data for good; confirm with “{app_name}”")
    try:
        with ExitStack() as locks:
            for phase in phases:
                locks.enter_context(deploy_lock(ctx.redis, app_name, phase, owner=f"{actor}: deleting the app",
                                                wait=0))
            with ctx.db.session() as session:
                app = session.get(App, app_id)
                app.deleted_at, app.deleted_by, app.active = app.deleted_at or utcnow(), app.deleted_by or actor, False
                for deployment in session.scalars(select(Deployment).where(
                        Deployment.app_id == app_id, Deployment.status == DeploymentStatus.QUEUED.value)):
                    deployment.status = DeploymentStatus.SUPERSEDED.value
                    deployment.reason, deployment.finished_at = f"the app was deleted by {actor}", utcnow()
            removed = _remove_app_objects(ctx, app_name, app_id, phases)
    except LockHeld:
        raise Conflict(f"{app_name} is being deployed; delete it once that finishes") from None
    except RedisError:
        raise ServiceUnavailable("the job queue (Redis) is unavailable; nothing was deleted") from None
    except ReleasePipelineError as exc:
        log.error("deleting %s failed: %s", app_name, exc)
        raise ServiceUnavailable("the Docker engine or the router did not complete the removal; "
                                 "delete the app again to finish it") from None
    with ctx.db.session() as session:
        audit(session, actor, session.get(App, app_id), None, "app.delete", removed)
    log.info("%s deleted %s: %s", actor, app_name, removed)
    return removed


def _remove_app_objects(ctx, app_name: str, app_id: int, phases: list[str]) -> dict[str, Any]:
    """App containers first (they hold the services' networks), then services, routes, images, slots."""
    from sqlalchemy import delete

    from app import services
    from app.models import PhaseSlots, ServiceInstance

    engine = ctx.engine
    containers = ctx.runtime.instances(app_name)  # containers, or Swarm tasks (their services go)
    for container in containers:
        ctx.runtime.remove(container)
    with ctx.db.session() as session:
        service_images = {i for i in session.scalars(select(ServiceInstance.image_id).where(
            ServiceInstance.app_id == app_id)).all() if i}
    removed_services = {phase: names for phase in phases if (names := services.remove(ctx, app_name, app_id, phase))}
    for phase in phases:
        ctx.router.remove(app_name, phase)
    images = engine.prune_images(app_name, keep_ids=set(), keep_last=0)
    images += [image for image in sorted(service_images) if engine.remove_service_image(image)]
    with ctx.db.session() as session:
        session.execute(delete(PhaseSlots).where(PhaseSlots.app_id == app_id))
    return {"containers": len(containers), "services": removed_services, "routes": phases, "images": len(images)}


def remove_preview(ctx, app_name: str, pr_number: int, *, actor: str, role_of: RoleOf, channel: str) -> Outcome:
    """Tear down a pull request's preview now (it comes back with the PR's next push)."""
    with ctx.db.session() as session:
        app = get_app(session, app_name)
        _require(role_of(app), Action.REMOVE_PREVIEW, None, ctx.config)
        done = previews.remove_by_hand(ctx, session, app, pr_number, actor, channel)
        if done is None:
            raise Conflict(f"#{pr_number} has no running preview")
        session.add(AuditEntry(actor=actor, app_id=app.id, phase=f"pr-{pr_number}", action="preview.remove",
                               detail={"pr_number": pr_number, "channel": channel}))
    try:
        enqueue_committed(ctx, [*(PreviewTeardownJob(**job) for job in done.teardowns),
                                *(ReportJob(r) for r in done.reports)])
    except QueueUnavailable:  # its containers go at the next reconcile, which stops what no preview runs
        raise ServiceUnavailable("the job queue (Redis) is unavailable: the preview is marked removed and its "
                                 "containers go at the next reconcile") from None
    return Outcome(True, f"removing the preview of #{pr_number}")


def notification_access(ctx, session, *, admin_everywhere: bool, role_of: RoleOf) -> tuple[set[int] | None, bool]:
    """Which apps' notifications a user sees (None: all), and whether they may send a test
    event: targets are the installation's, so testing one takes the admin role on some app."""
    if admin_everywhere:
        return None, True
    roles = {app.id: role_of(app) for app in session.scalars(select(App).where(App.active))}
    visible = {app_id for app_id, role in roles.items() if check(role, Action.VIEW, None, ctx.config.roles).allowed}
    return visible, any(role == "admin" for role in roles.values())


def send_test_notification(ctx, target_name: str, *, actor: str, admin_everywhere: bool, role_of: RoleOf) -> str:
    """Queue a test event to one target (the portal's "send a test event"); its id."""
    target = ctx.config.notification_target(target_name)
    if target is None:
        raise NotFound(f"no notification target named {target_name!r} in pipeline.yml")
    with ctx.db.session() as session:
        _, may_test = notification_access(ctx, session, admin_everywhere=admin_everywhere, role_of=role_of)
        if not may_test:
            raise Forbidden("sending a test event needs the admin role on an app (or the admin token)")
        notification = ctx.notifier.test(session, target, actor)
        session.add(AuditEntry(actor=actor, app_id=None, phase=None, action="notification.test",
                               detail={"target": target.name, "notification": notification.id}))
        return notification.id
