"""Who may do what: the role each action needs, as one table that slash commands, promotion
merges, the portal and the API all consult."""

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


# GitHub's repository roles, weakest first (the collaborator permission API's ``role_name``).
ROLES = ("none", "read", "triage", "write", "maintain", "admin")
# Older GitHub payloads (a repository's ``permissions`` object) still say pull and push.
_ROLE_ALIASES = {"pull": "read", "push": "write"}
PHASE = "phase"
#: The role `previews.fork_role` in pipeline.yml sets (README, Pull request previews; default write).
FORK_ROLE = "previews.fork_role"
DEFAULT_FORK_ROLE = "write"


class Action(StrEnum):
    """Everything a user can ask for, by comment, by merging a promotion or in the portal."""

    DEPLOY = "deploy"
    #: `/deploy preview`: run a pull request's (maybe a fork's) code as its preview.
    DEPLOY_PREVIEW = "deploy_preview"
    REMOVE_PREVIEW = "remove_preview"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    STATUS = "status"
    HELP = "help"
    EDIT_PROFILE = "edit_profile"
    REMOVE_SERVICES = "remove_services"
    MERGE_PROMOTION = "merge_promotion"
    REDEPLOY = "redeploy"
    RETRY = "retry"
    CANCEL = "cancel"
    FREEZE = "freeze"
    UNFREEZE = "unfreeze"
    OVERRIDE_FREEZE = "override_freeze"
    VIEW = "view"
    DELETE_APP = "delete_app"


# The role each action needs; PHASE means the target phase's configured role.
RULES: dict[Action, str] = {
    Action.DEPLOY: PHASE,
    Action.DEPLOY_PREVIEW: FORK_ROLE,
    # Removing a preview loses nothing a push cannot bring back.
    Action.REMOVE_PREVIEW: "write",
    Action.PROMOTE: PHASE,
    Action.ROLLBACK: PHASE,
    Action.EDIT_PROFILE: PHASE,
    Action.REMOVE_SERVICES: PHASE,
    Action.MERGE_PROMOTION: PHASE,
    Action.REDEPLOY: PHASE,
    Action.RETRY: PHASE,
    Action.CANCEL: PHASE,
    Action.FREEZE: PHASE,
    Action.UNFREEZE: PHASE,
    # A freeze is the team's decision; only an admin may deploy through it (once, with a reason).
    Action.OVERRIDE_FREEZE: "admin",
    Action.STATUS: "read",
    Action.HELP: "read",
    Action.VIEW: "read",
    Action.DELETE_APP: "admin",
}
# Floors under RULES that no phase configuration lowers. On a public repository everyone
# has read, so a phase configured as "read" (or "none") must not open deployments to the
# world; removing backing services destroys data, so it needs maintain anywhere.
AT_LEAST: dict[Action, str] = {
    Action.DEPLOY: "triage",
    # A fork's Dockerfile is untrusted code: never for readers, whatever the configuration says.
    Action.DEPLOY_PREVIEW: "write",
    Action.PROMOTE: "triage",
    Action.ROLLBACK: "triage",
    Action.EDIT_PROFILE: "triage",
    Action.MERGE_PROMOTION: "triage",
    Action.REDEPLOY: "triage",
    Action.RETRY: "triage",
    Action.CANCEL: "triage",
    Action.FREEZE: "triage",
    Action.UNFREEZE: "triage",
    Action.REMOVE_SERVICES: "maintain",
}

_WHAT: dict[Action, str] = {
    Action.DEPLOY: "deploy to {phase}",
    Action.DEPLOY_PREVIEW: "build a pull request's preview",
    Action.REMOVE_PREVIEW: "remove a preview",
    Action.PROMOTE: "promote to {phase}",
    Action.ROLLBACK: "roll back {phase}",
    Action.EDIT_PROFILE: "edit the {phase} profile",
    Action.REMOVE_SERVICES: "remove the {phase} backing services",
    Action.MERGE_PROMOTION: "merge a promotion to {phase}",
    Action.REDEPLOY: "redeploy {phase}",
    Action.RETRY: "retry a deployment to {phase}",
    Action.CANCEL: "cancel a deployment to {phase}",
    Action.FREEZE: "freeze {phase}",
    Action.UNFREEZE: "unfreeze {phase}",
    Action.OVERRIDE_FREEZE: "override the freeze of {phase}",
    Action.STATUS: "see the status",
    Action.HELP: "get help",
    Action.VIEW: "view this app",
    Action.DELETE_APP: "delete this app",
}


@dataclass(frozen=True)
class Decision:
    """The answer and, for the reply or the error page, the reason in plain words."""

    allowed: bool
    required: str
    reason: str


def _canonical(role: str) -> str | None:
    role = role.lower()
    role = _ROLE_ALIASES.get(role, role)
    return role if role in ROLES else None


def _rank(role: str) -> int:
    """Position in ROLES; anything else (an organisation's custom role) ranks as none."""
    canonical = _canonical(role)
    return ROLES.index(canonical) if canonical else 0


def _known(role: str) -> str:
    """A required role must be real: treating a typo as "none" would let everyone in."""
    canonical = _canonical(role)
    if canonical is None:
        raise ValueError(f"unknown repository role {role!r}; expected one of {', '.join(ROLES)}")
    return canonical


def role_allows(actual: str, required: str) -> bool:
    return _rank(actual) >= ROLES.index(_known(required))


def required_role(action: Action, phase_role: str | None, fork_role: str = DEFAULT_FORK_ROLE) -> str:
    """The role ``action`` needs, given the target phase's role (None for phaseless actions)
    and, for previews, ``previews.fork_role`` (callers pass the configured one)."""
    rule = RULES[action]
    if rule == FORK_ROLE:
        rule = fork_role
    if rule == PHASE:
        if phase_role is None:
            raise ValueError(f"{action} needs a phase")
        rule = phase_role
    return max(_known(rule), _known(AT_LEAST.get(action, "none")), key=ROLES.index)


def check(
    actor_role: str, action: Action, phase: str | None, phase_roles: Mapping[str, str],
    *, fork_role: str = DEFAULT_FORK_ROLE,
) -> Decision:
    """Whether a user with ``actor_role`` may do ``action`` on ``phase``, and why.

    ``phase`` must be configured when the action targets one; phaseless actions ignore it.
    ``fork_role`` (``previews.fork_role``) is needed for ``DEPLOY_PREVIEW``.
    """
    phase_role = None
    if RULES[action] == PHASE and phase is not None:
        if phase not in phase_roles:
            raise ValueError(f"unknown phase {phase!r}")
        phase_role = phase_roles[phase]
    required = required_role(action, phase_role, fork_role)
    has = ROLES[_rank(actor_role)]
    reason = f"{_WHAT[action].format(phase=phase)} needs the {required} role (you have {has})"
    return Decision(allowed=role_allows(actor_role, required), required=required, reason=reason)
