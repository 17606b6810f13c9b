"""Promote, roll back, deploy: the one implementation behind slash-commands and the portal.

Callers bring the actor's repository role (from GitHub's collaborator API, or the portal
session); every action checks it through `app.permissions` and schedules work through
`app.deployments.schedule`, exactly as git events do.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.deployments import schedule, version_taken, version_taken_reason
from app.exceptions import InvalidVersion
from app.freezes import ad_hoc_freeze, frozen
from app.models import App, AuditEntry, Deployment, DeploymentStatus, PhaseFreeze, utcnow
from app.permissions import Action, check
from app.pipeline import PipelineConfig
from app.profiles import SIZING
from app.plans import Deploy, Repo, Trigger
from app.versions import validate_version


@dataclass(frozen=True)
class Outcome:
    """What an action did, in words for the person who asked."""

    ok: bool
    message: str
    deployment_id: int | None = None
    #: Set when the target phase needs approvals: the caller opens a promotion PR instead.
    promotion: PromotionRequest | None = None
    #: The deployment ended here and then (a queued one cancelled): report its outcome now.
    finished: bool = False
    #: Refused for the actor's role (a portal caller answers 403, not 409).
    forbidden: bool = False


@dataclass(frozen=True)
class PromotionRequest:
    phase: str
    branch: str
    version: str
    sha: str
    source_id: int
    #: An admin's reason to merge into the frozen phase anyway (checked again at the merge).
    override: str | None = None

    @property
    def head_branch(self) -> str:
        return f"promote/{self.phase}/{self.version}"

    @property
    def title(self) -> str:
        return f"Promote {self.version} to {self.phase.capitalize()}"


def current(session: Session, app_id: int, phase: str) -> Deployment | None:
    """The deployment a phase serves now: its latest successful one."""
    return session.scalars(
        select(Deployment)
        .where(Deployment.app_id == app_id, Deployment.phase == phase,
               Deployment.status == DeploymentStatus.SUCCEEDED.value)
        .order_by(Deployment.id.desc())
    ).first()


def successful(session: Session, app_id: int, phase: str | None = None, version: str | None = None,
               before_id: int | None = None) -> Deployment | None:
    query = select(Deployment).where(Deployment.app_id == app_id,
                                     Deployment.status == DeploymentStatus.SUCCEEDED.value)
    if phase is not None:
        query = query.where(Deployment.phase == phase)
    if version is not None:
        query = query.where(Deployment.version == version)
    if before_id is not None:
        query = query.where(Deployment.id < before_id)
    return session.scalars(query.order_by(Deployment.id.desc())).first()


def _repo(app: App) -> Repo:
    return Repo(app.full_name, app.clone_url, app.default_branch, app.html_url, app.installation_id)


class Actions:
    def __init__(self, config: PipelineConfig):
        self.config = config

    def refusal(self, role: str, action: Action, phase: str | None) -> Outcome | None:
        """Why `role` may not do `action` on `phase`, or None: the one permission decision for
        every way in (commands, portal, API). Each action below asks it too."""
        decision = check(role, action, phase, self.config.roles, fork_role=self.config.previews.fork_role)
        return None if decision.allowed else Outcome(False, decision.reason, forbidden=True)

    def _unknown_phase(self, phase: str) -> Outcome | None:
        if phase in self.config.phases:
            return None
        return Outcome(False, f"there is no phase {phase!r} (phases: {', '.join(self.config.phase_names)})")

    def _frozen(self, session: Session, app: App, phase: str, *, role: str,
                force: str | None = None) -> tuple[Outcome | None, str | None]:
        """(refusal, override): a frozen phase refuses unless an admin forces it with a reason."""
        freeze = frozen(session, self.config, app.id, phase)
        if freeze is None:
            return None, None
        if force is None:
            return Outcome(False, f"{freeze.describe()}, so nothing was deployed (an admin may override once: "
                                  f"/promote {phase} --force <reason>)"), None
        refused = self.refusal(role, Action.OVERRIDE_FREEZE, phase)
        if refused:
            return replace(refused, message=f"{freeze.describe()}: {refused.message}"), None
        if not force.strip():
            return Outcome(False, "--force needs a reason, recorded in the audit log"), None
        return None, force.strip()[:300]

    def _way_in(self, session: Session, app: App, phase: str, role: str, action: Action) -> Outcome | None:
        """Why `action` into `phase` is refused (unknown phase, role, freeze), or None."""
        return (self._unknown_phase(phase) or self.refusal(role, action, phase)
                or self._frozen(session, app, phase, role=role)[0])

    def promote(self, session: Session, app: App, phase: str, *, actor: str, role: str, trigger: str,
                version: str | None = None, rename_to: str | None = None,
                pr_number: int | None = None, comment_id: int | None = None, force: str | None = None) -> Outcome:
        """Put an already-built version on `phase`: by default what the previous phase serves.

        `pr_number` and `comment_id` name the command that asked, so the deployment's outcome
        edits that command's reply. `force` (admins only) is the reason to override a freeze.
        """
        problem = self._unknown_phase(phase) or self.refusal(role, Action.PROMOTE, phase)
        if problem:
            return problem
        problem, override = self._frozen(session, app, phase, role=role, force=force)
        if problem:
            return problem
        previous = self.config.previous_phases(phase)
        if version is not None:
            source = successful(session, app.id, version=version)
            if source is None:
                return Outcome(False, f"no successful deployment of {version} to promote")
        elif not previous:
            return Outcome(False, f"{phase} is the first phase: use /deploy to put a commit there")
        else:
            source = current(session, app.id, previous[0])
            if source is None:
                return Outcome(False, f"nothing to promote: {previous[0]} has no successful deployment yet")
        try:
            new_version = validate_version(rename_to) if rename_to else source.version
        except InvalidVersion as exc:
            return Outcome(False, str(exc))
        other = version_taken(session, app.id, new_version, source.sha)
        if other is not None:
            return Outcome(False, version_taken_reason(new_version, other))
        settings = self.config.phase(phase)
        if settings.approvals > 0 and not settings.branch:
            # Approvals are counted on a promotion PR; without a branch to open one into, a
            # direct deployment would skip them.
            return Outcome(False, f"{phase} needs {settings.approvals} approval(s) but has no branch "
                                  "to open a promotion pull request into")
        if settings.approvals > 0:
            return Outcome(
                True,
                f"{phase} needs {settings.approvals} approval(s): opening a promotion pull request",
                promotion=PromotionRequest(phase, settings.branch, new_version, source.sha, source.id, override),
            )
        deployment = schedule(session, app, Deploy(
            repo=_repo(app), phase=phase, ref=source.sha, sha=source.sha, version=new_version,
            trigger=trigger, actor=actor), source_id=source.id)
        _answer_to(deployment, pr_number, comment_id)
        renamed = f" as {new_version}" if new_version != source.version else ""
        forced = ""
        if override:
            deployment.override = override
            session.flush()
            audit(session, actor, app, phase, "freeze.override",
                   {"deployment": deployment.id, "reason": override, "version": new_version})
            forced = f" (freeze overridden by @{actor}: {override})"
        return Outcome(True, f"promoting {_label(source)} from {source.phase} to {phase}{renamed}{forced}",
                       deployment.id)

    def rollback(self, session: Session, app: App, phase: str, *, actor: str, role: str, trigger: str,
                 to_version: str | None = None, pr_number: int | None = None,
                 comment_id: int | None = None) -> Outcome:
        """Redeploy an earlier successful deployment of `phase`: its image and its profile."""
        problem = self._way_in(session, app, phase, role, Action.ROLLBACK)
        if problem:
            return problem
        now, target = rollback_target(session, app.id, phase, to_version)
        refused = rollback_refusal(phase, now, target, to_version)
        if refused:
            return Outcome(False, refused)
        deployment = _again(session, app, target, trigger=Trigger.ROLLBACK, actor=actor, pr_number=pr_number,
                            comment_id=comment_id)
        return Outcome(True, f"rolling back {phase}: {describe_change(now, target)}", deployment.id)

    @staticmethod
    def _previous_distinct(session: Session, app_id: int, phase: str, now: Deployment) -> Deployment | None:
        """The last good deployment before `now` that runs something else (image or profile)."""
        candidate = successful(session, app_id, phase=phase, before_id=now.id)
        while candidate is not None and (candidate.image_id, candidate.profile_snapshot, candidate.version) == (
                now.image_id, now.profile_snapshot, now.version):
            candidate = successful(session, app_id, phase=phase, before_id=candidate.id)
        return candidate

    def deploy_commit(self, session: Session, app: App, phase: str | None, *, sha: str, actor: str, role: str,
                      trigger: str, pr_number: int | None = None, version: str | None = None,
                      comment_id: int | None = None) -> Outcome:
        """Deploy a commit (a PR's head, say) to a phase; the first phase when none is named."""
        phase = phase or self.config.phase_names[0]
        problem = self._way_in(session, app, phase, role, Action.DEPLOY)
        if problem:
            return problem
        if self.config.phase(phase).approvals > 0:
            return Outcome(False, f"{phase} needs approvals: use /promote {phase} to open a promotion PR")
        deployment = schedule(session, app, Deploy(
            repo=_repo(app), phase=phase, ref=sha, sha=sha, version=version or sha[:7], trigger=trigger,
            actor=actor, pr_number=pr_number))
        _answer_to(deployment, pr_number, comment_id)
        return Outcome(True, f"deploying {sha[:7]} to {phase}", deployment.id)


    def redeploy(self, session: Session, app: App, phase: str, *, actor: str, role: str, trigger: str,
                 pr_number: int | None = None, comment_id: int | None = None) -> Outcome:
        """Deploy again what `phase` serves, with the phase's profile as it is now (the way to
        apply an edited profile); the image is reused, the previous container serves meanwhile."""
        problem = self._way_in(session, app, phase, role, Action.REDEPLOY)
        if problem:
            return problem
        now = current(session, app.id, phase)
        if now is None:
            return Outcome(False, f"{phase} serves nothing yet, so there is nothing to redeploy")
        deployment = _again(session, app, now, trigger=Trigger.REDEPLOY, actor=actor, pr_number=pr_number,
                            comment_id=comment_id)
        return Outcome(True, f"redeploying {_label(now)} to {phase} with its current profile", deployment.id)

    def retry(self, session: Session, app: App, target: Deployment | None, *, actor: str, role: str,
              pr_number: int | None = None, comment_id: int | None = None) -> Outcome:
        """A failed (or cancelled) deployment, once more: same commit, version and source."""
        if target is None:
            return Outcome(False, "there is no failed deployment to retry")
        problem = self._way_in(session, app, target.phase, role, Action.RETRY)
        if problem:
            return problem
        if target.status not in (DeploymentStatus.FAILED.value, DeploymentStatus.CANCELLED.value):
            return Outcome(False, f"deployment {target.id} is {target.status}: only failed or cancelled "
                                  "deployments can be retried")
        # A rollback stays a rollback (it restores its profile); anything else is a retry.
        trigger = target.trigger if target.trigger in (Trigger.ROLLBACK, Trigger.RESTORE, Trigger.REDEPLOY) else Trigger.RETRY
        deployment = schedule(session, app, Deploy(
            repo=_repo(app), phase=target.phase, ref=target.ref or target.sha or "", sha=target.sha,
            version=target.version, trigger=trigger, actor=actor), source_id=target.source_id)
        _answer_to(deployment, pr_number, comment_id)
        return Outcome(True, f"retrying deployment {target.id} ({target.version} to {target.phase})",
                       deployment.id)

    def cancel(self, session: Session, app: App, target: Deployment | None, *, actor: str, role: str) -> Outcome:
        """Stop a queued deployment now, or a building one at its next step (before any switch)."""
        if target is None:
            return Outcome(False, "there is no queued or building deployment to cancel")
        problem = self.refusal(role, Action.CANCEL, target.phase)
        if problem:
            return problem
        if target.status == DeploymentStatus.QUEUED.value:
            target.status, target.finished_at = DeploymentStatus.CANCELLED.value, utcnow()
            target.reason = f"cancelled by @{actor} before it started"
            return Outcome(True, f"cancelled deployment {target.id} ({target.version} to {target.phase}) "
                                 "before it started", target.id, finished=True)
        if target.status in (DeploymentStatus.BUILDING.value, DeploymentStatus.DEPLOYING.value):
            target.cancel_requested_by = actor
            return Outcome(True, f"deployment {target.id} ({target.version} to {target.phase}) stops at its "
                                 f"next step; {target.phase} keeps serving what it serves", target.id)
        return Outcome(False, f"deployment {target.id} is {target.status}: only queued or building "
                              "deployments can be cancelled")

    def freeze(self, session: Session, app: App, phase: str, *, actor: str, role: str, reason: str) -> Outcome:
        problem = self._unknown_phase(phase) or self.refusal(role, Action.FREEZE, phase)
        if problem:
            return problem
        existing = ad_hoc_freeze(session, app.id, phase)
        if existing is not None:
            return Outcome(False, f"{phase} is already frozen by @{existing.author}"
                                  + (f" ({existing.reason})" if existing.reason else ""))
        session.add(PhaseFreeze(app_id=app.id, phase=phase, author=actor, reason=reason.strip()[:300]))
        audit(session, actor, app, phase, "freeze", {"reason": reason.strip()[:300]})
        return Outcome(True, f"froze {phase}" + (f" ({reason.strip()})" if reason.strip() else "")
                       + f": nothing deploys there until /unfreeze {phase}")

    def unfreeze(self, session: Session, app: App, phase: str, *, actor: str, role: str) -> Outcome:
        problem = self._unknown_phase(phase) or self.refusal(role, Action.UNFREEZE, phase)
        if problem:
            return problem
        existing = ad_hoc_freeze(session, app.id, phase)
        if existing is None:
            still = frozen(session, self.config, app.id, phase)
            if still is not None:
                return Outcome(False, f"{still.describe()}: a configured freeze ends by itself (or edit pipeline.yml)")
            return Outcome(False, f"{phase} is not frozen")
        session.delete(existing)
        audit(session, actor, app, phase, "unfreeze", {"was_frozen_by": existing.author, "reason": existing.reason})
        still = frozen(session, self.config, app.id, phase)
        return Outcome(True, f"unfroze {phase}" + (f"; but {still.describe()}" if still else ""))


def latest_in(session: Session, app_id: int, phase: str, statuses: tuple[str, ...]) -> Deployment | None:
    """The newest deployment of `phase` in one of `statuses` (what /retry and /cancel act on)."""
    return session.scalars(
        select(Deployment).where(Deployment.app_id == app_id, Deployment.phase == phase,
                                 Deployment.status.in_(statuses))
        .order_by(Deployment.id.desc())
    ).first()


def audit(session: Session, actor: str, app: App, phase: str, action: str, detail: dict) -> None:
    session.add(AuditEntry(actor=actor, app_id=app.id, phase=phase, action=action, detail=detail))


def _again(session: Session, app: App, source: Deployment, *, trigger: str, actor: str,
           pr_number: int | None, comment_id: int | None) -> Deployment:
    """Schedule `source`'s image (and version) on its phase once more."""
    deployment = schedule(session, app, Deploy(
        repo=_repo(app), phase=source.phase, ref=source.sha, sha=source.sha, version=source.version,
        trigger=trigger, actor=actor), source_id=source.id)
    _answer_to(deployment, pr_number, comment_id)
    return deployment


def _answer_to(deployment: Deployment, pr_number: int | None, comment_id: int | None) -> None:
    """Remember the PR (and command comment) that asked, for the outcome's reply."""
    if pr_number is not None:
        deployment.pr_number = pr_number
    if comment_id is not None:
        deployment.comment_id = comment_id


def describe_change(now: Deployment, target: Deployment) -> str:
    """What a rollback changes: version, image and profile differences (secrets by name only)."""
    parts = [f"{_label(now)} → {_label(target)}"]
    if now.image_id != target.image_id:
        parts.append(f"image {(now.image_id or '?')[7:19]} → {(target.image_id or '?')[7:19]}")
    parts.extend(profile_differences(now.profile_snapshot or {}, target.profile_snapshot or {}))
    return "; ".join(parts)


def _label(deployment: Deployment) -> str:
    """A version with its commit, once when the version is the short sha itself."""
    if deployment.version == deployment.short_sha:
        return deployment.version
    return f"{deployment.version} ({deployment.short_sha})"


def profile_differences(before: dict, after: dict) -> list[str]:
    changes = []
    for key in SIZING:
        if before.get(key) != after.get(key):
            changes.append(f"{key} {before.get(key)} → {after.get(key)}")
    for section, secret in (("env", False), ("secrets", True)):
        old, new = before.get(section) or {}, after.get(section) or {}
        for name in sorted(set(old) | set(new)):
            if name not in new:
                changes.append(f"{name} removed")
            elif name not in old:
                changes.append(f"{name} added" if secret else f"{name}={new[name]} added")
            elif old[name] != new[name]:
                changes.append(f"{name} changed" if secret else f"{name} {old[name]} → {new[name]}")
    return changes


def rollback_target(session: Session, app_id: int, phase: str,
                    to_version: str | None = None) -> tuple[Deployment | None, Deployment | None]:
    """(what `phase` serves now, what a rollback would restore): the portal's preview.

    Chooses exactly as `Actions.rollback` does, so the preview is what will happen.
    """
    now = current(session, app_id, phase)
    if now is None:
        return None, None
    if to_version is not None:
        return now, successful(session, app_id, phase=phase, version=to_version)
    return now, Actions._previous_distinct(session, app_id, phase, now)


def rollback_refusal(phase: str, now: Deployment | None, target: Deployment | None,
                     to_version: str | None) -> str | None:
    """Why there is nothing to roll back (`rollback_target`'s answer), or None."""
    if now is None:
        return f"{phase} has no successful deployment to roll back from"
    if target is None:
        return (f"{to_version} was never deployed successfully to {phase}" if to_version else
                f"{phase} has no earlier successful deployment to roll back to")
    return None
