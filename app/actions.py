"""Promote, roll back, deploy: the one implementation behind slash-commands and the portal.

Callers bring the actor's repository role (from GitHub's collaborator API, or the portal
session); every action checks it through `app.permissions` and schedules work through
`app.deployments.schedule`, exactly as git events do.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.deployments import schedule
from app.exceptions import InvalidVersion
from app.models import App, Deployment, DeploymentStatus
from app.permissions import Action, check
from app.pipeline import PipelineConfig
from app.profiles import SIZING
from app.plans import Deploy, Repo
from app.versions import validate_version


@dataclass(frozen=True)
class Outcome:
    """What an action did, in words for the person who asked."""

    ok: bool
    message: str
    deployment_id: int | None = None
    #: Set when the target phase needs approvals: the caller opens a promotion PR instead.
    promotion: PromotionRequest | None = None


@dataclass(frozen=True)
class PromotionRequest:
    phase: str
    branch: str
    version: str
    sha: str
    source_id: int

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

    def _refusal(self, role: str, action: Action, phase: str) -> Outcome | None:
        decision = check(role, action, phase, self.config.roles)
        return None if decision.allowed else Outcome(False, decision.reason)

    def _unknown_phase(self, phase: str) -> Outcome | None:
        if phase in self.config.phases:
            return None
        return Outcome(False, f"there is no phase {phase!r} (phases: {', '.join(self.config.phase_names)})")

    def promote(self, session: Session, app: App, phase: str, *, actor: str, role: str, trigger: str,
                version: str | None = None, rename_to: str | None = None,
                pr_number: int | None = None, comment_id: int | None = None) -> Outcome:
        """Put an already-built version on `phase`: by default what the previous phase serves.

        `pr_number` and `comment_id` name the command that asked, so the deployment's outcome
        edits that command's reply.
        """
        problem = self._unknown_phase(phase) or self._refusal(role, Action.PROMOTE, phase)
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
                promotion=PromotionRequest(phase, settings.branch, new_version, source.sha, source.id),
            )
        deployment = schedule(session, app, Deploy(
            repo=_repo(app), phase=phase, ref=source.sha, sha=source.sha, version=new_version,
            trigger=trigger, actor=actor), source_id=source.id)
        _answer_to(deployment, pr_number, comment_id)
        renamed = f" as {new_version}" if new_version != source.version else ""
        return Outcome(True, f"promoting {_label(source)} from {source.phase} to {phase}{renamed}",
                       deployment.id)

    def rollback(self, session: Session, app: App, phase: str, *, actor: str, role: str, trigger: str,
                 to_version: str | None = None, pr_number: int | None = None,
                 comment_id: int | None = None) -> Outcome:
        """Redeploy an earlier successful deployment of `phase`: its image and its profile."""
        problem = self._unknown_phase(phase) or self._refusal(role, Action.ROLLBACK, phase)
        if problem:
            return problem
        now = current(session, app.id, phase)
        if now is None:
            return Outcome(False, f"{phase} has no successful deployment to roll back from")
        if to_version is not None:
            target = successful(session, app.id, phase=phase, version=to_version)
            if target is None:
                return Outcome(False, f"{to_version} was never deployed successfully to {phase}")
        else:
            target = self._previous_distinct(session, app.id, phase, now)
            if target is None:
                return Outcome(False, f"{phase} has no earlier successful deployment to roll back to")
        deployment = schedule(session, app, Deploy(
            repo=_repo(app), phase=phase, ref=target.sha, sha=target.sha, version=target.version,
            trigger="rollback", actor=actor), source_id=target.id)
        _answer_to(deployment, pr_number, comment_id)
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
        problem = self._unknown_phase(phase) or self._refusal(role, Action.DEPLOY, phase)
        if problem:
            return problem
        if self.config.phase(phase).approvals > 0:
            return Outcome(False, f"{phase} needs approvals: use /promote {phase} to open a promotion PR")
        deployment = schedule(session, app, Deploy(
            repo=_repo(app), phase=phase, ref=sha, sha=sha, version=version or sha[:7], trigger=trigger,
            actor=actor, pr_number=pr_number))
        _answer_to(deployment, pr_number, comment_id)
        return Outcome(True, f"deploying {sha[:7]} to {phase}", deployment.id)


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
