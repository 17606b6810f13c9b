"""What a deployment that git started (push, tag, merged promotion PR) must pass before anything
is built: the role of whoever caused it, and where the commit has run before. Pure decisions;
the deploy job asks GitHub and the database for the facts.

Commands, the portal and the API check the role when they are asked; a git event only says
who pushed, so the check happens here, against the same table (`app.permissions`).
"""

from __future__ import annotations

from collections.abc import Mapping

from app.permissions import Action, role_allows
from app.plans import Trigger

#: The action each git trigger stands for, and so the role its sender needs on the phase.
GIT_TRIGGERS: Mapping[str, Action] = {
    Trigger.PUSH: Action.DEPLOY,
    Trigger.TAG: Action.DEPLOY,
    Trigger.PULL_REQUEST: Action.MERGE_PROMOTION,
    Trigger.PROMOTION: Action.MERGE_PROMOTION,
}
#: Triggers that put back what a phase ran before: it passed the gates then.
RESTORING = (Trigger.ROLLBACK, Trigger.RESTORE)


def actor_action(trigger: str) -> Action | None:
    """The action to check the deployment's actor against; None when it was checked at request."""
    return GIT_TRIGGERS.get(trigger)


def proven_by_push(trigger: str, required: str) -> bool:
    """A push or tag reached GitHub, so its sender has write: a phase needing no more than that
    needs no question to GitHub (and a GitHub outage does not stop Demo's deploys)."""
    return trigger in (Trigger.PUSH, Trigger.TAG) and role_allows("write", required)


def previous_phase(phase_names: list[str], phase: str, trigger: str, *, required: bool) -> str | None:
    """The phase `phase`'s commit must have run on first (`require_previous_phase`), or None."""
    if phase not in phase_names:
        return None  # a pull request preview takes the PR's head, whatever ran before
    index = phase_names.index(phase)
    if not required or index == 0 or trigger in RESTORING:
        return None
    return phase_names[index - 1]


def previous_phase_refusal(phase: str, previous: str, short_sha: str) -> str:
    return (f"not deployed: {short_sha} never ran on {previous}, and {phase} takes only what {previous} "
            "ran (require_previous_phase in pipeline.yml)")
