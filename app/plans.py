"""What the planner decides: small immutable values, carried out later by executors."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

#: Limits of the columns these values end up in (app.models); beyond them a delivery is malformed.
_MAX_INT = 2**63 - 1


def _text(value: Any, name: str, *, limit: int, optional: bool = False) -> None:
    """A str of at most `limit` characters that UTF-8 and PostgreSQL can store (no lone surrogates, no NUL)."""
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string")
    if len(value) > limit:
        raise ValueError(f"{name} is longer than {limit} characters")
    value.encode("utf-8")  # UnicodeEncodeError (a ValueError) for lone surrogates
    if "\x00" in value:
        raise ValueError(f"{name} contains a NUL character")  # PostgreSQL text cannot hold one


def _number(value: Any, name: str, *, optional: bool = False, maximum: int = _MAX_INT) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise TypeError(f"{name} must be a non-negative integer up to {maximum}")


class Trigger(StrEnum):
    """What put a deployment on its way (the `trigger` column)."""

    PUSH = "push"
    TAG = "tag"
    PULL_REQUEST = "pull_request"
    #: A merged promotion pull request that `/promote` or the portal opened.
    PROMOTION = "promotion"
    COMMAND = "command"
    PORTAL = "portal"
    ROLLBACK = "rollback"
    #: Reconcile putting back what a phase served after its container was lost.
    RESTORE = "restore"
    REDEPLOY = "redeploy"
    RETRY = "retry"
    #: A pull request's preview (README, Pull request previews): its head built for phase pr-<number>.
    PREVIEW = "preview"


@dataclass(frozen=True)
class Repo:
    """The repository fields a plan needs, read once from the delivery."""

    full_name: str
    clone_url: str | None
    default_branch: str
    html_url: str | None = None
    installation_id: int | None = None

    def __post_init__(self) -> None:
        # Plans come from webhook payloads: wrong types must become a 400, never reach the database.
        _text(self.full_name, "repository.full_name", limit=200)
        _text(self.clone_url, "repository.clone_url", limit=500, optional=True)
        _text(self.default_branch, "repository.default_branch", limit=200)
        _text(self.html_url, "repository.html_url", limit=500, optional=True)
        if self.html_url is not None and not self.html_url.startswith(("https://", "http://")):
            raise ValueError("repository.html_url must be an http(s) URL")  # the portal links to it
        _number(self.installation_id, "installation.id", optional=True)


@dataclass(frozen=True)
class Deploy:
    """Put a commit on a phase.

    `sha` is None when the event names a tag without its commit (`create`, `release`): the
    worker resolves it. `version` is the fallback label: for a merged pull request (trigger
    `pull_request`, not `promotion`) the worker prefers a release tag on the commit, and it reads
    the PR's author from GitHub when it counts approvals.
    """

    repo: Repo
    phase: str
    ref: str
    sha: str | None
    version: str
    trigger: str
    actor: str
    dedup_key: str | None = None
    pr_number: int | None = None
    required_approvals: int = 0
    #: The commit's title (its message's first line) and author, when the event carries them (a push).
    commit_title: str | None = None
    commit_author: str | None = None

    def __post_init__(self) -> None:
        _text(self.phase, "phase", limit=40)
        _text(self.ref, "ref", limit=300)
        _text(self.sha, "sha", limit=64, optional=True)
        _text(self.version, "version", limit=64)
        _text(self.trigger, "trigger", limit=30)
        _text(self.actor, "actor", limit=100)
        _text(self.dedup_key, "dedup key", limit=300, optional=True)
        _number(self.pr_number, "pull request number", optional=True, maximum=2**31 - 1)
        _number(self.required_approvals, "required approvals", maximum=1000)
        _text(self.commit_title, "commit title", limit=200, optional=True)
        _text(self.commit_author, "commit author", limit=100, optional=True)


@dataclass(frozen=True)
class RunCommand:
    """A slash-command from a PR comment; permissions are checked by the worker (needs GitHub)."""

    repo: Repo
    pr_number: int
    comment_id: int
    actor: str
    body: str
    #: The comment's `created_at`: `/deploy` deploys the head as it was then, never a later one.
    commented_at: str | None = None

    def __post_init__(self) -> None:
        _number(self.pr_number, "pull request number", maximum=2**31 - 1)
        _number(self.comment_id, "comment id")
        _text(self.actor, "actor", limit=100)
        _text(self.body, "comment body", limit=262_144)
        _text(self.commented_at, "comment.created_at", limit=40, optional=True)


@dataclass(frozen=True)
class SummarizePromotion:
    """Refresh a promotion PR's one summary comment and its `release-pipeline/promotion` status;
    deploys nothing (the merge does, with its own checks)."""

    repo: Repo
    pr_number: int
    phase: str

    def __post_init__(self) -> None:
        _number(self.pr_number, "pull request number", maximum=2**31 - 1)
        _text(self.phase, "phase", limit=40)


class PreviewAction(str, enum.Enum):
    """What happened to a pull request into the default branch, as far as its preview cares."""

    OPENED = "opened"
    REOPENED = "reopened"
    SYNCHRONIZE = "synchronize"
    READY_FOR_REVIEW = "ready_for_review"
    #: Back to draft: unless `previews.drafts`, what runs is removed until it is ready again.
    CONVERTED_TO_DRAFT = "converted_to_draft"
    CLOSED = "closed"
    #: `/deploy preview` by someone with `previews.fork_role`: consent to build the head now.
    COMMAND = "command"


@dataclass(frozen=True)
class PreviewEvent:
    """A pull request event for its preview phase (README, Pull request previews); `app.previews.decide` says what it means."""

    repo: Repo
    pr_number: int
    action: PreviewAction
    head_sha: str
    #: The repository the head lives in (None when a fork was deleted); ≠ repo: a fork.
    head_repo: str | None
    draft: bool = False
    merged: bool = False
    #: The PR's `updated_at`: a delivery older than one already applied changes nothing.
    updated_at: str = ""
    actor: str = ""

    def __post_init__(self) -> None:
        _number(self.pr_number, "pull request number", maximum=2**31 - 1)
        _text(self.head_sha, "pull_request.head.sha", limit=64)
        _text(self.head_repo, "pull_request.head.repo.full_name", limit=200, optional=True)
        _text(self.updated_at, "pull_request.updated_at", limit=40)
        _text(self.actor, "sender.login", limit=100)
        if not isinstance(self.draft, bool) or not isinstance(self.merged, bool):
            raise TypeError("pull_request.draft and merged must be booleans")

    @property
    def fork(self) -> bool:
        return self.head_repo != self.repo.full_name


@dataclass(frozen=True)
class Reply:
    """Answer a malformed command on the PR without doing anything else."""

    repo: Repo
    pr_number: int
    comment_id: int
    message: str

    def __post_init__(self) -> None:
        _number(self.pr_number, "pull request number", maximum=2**31 - 1)
        _number(self.comment_id, "comment id")
        _text(self.message, "message", limit=65_536)


@dataclass(frozen=True)
class SyncInstallation:
    """Keep the app registry in step with where the GitHub App is installed."""

    installation_id: int
    account: str
    action: str
    added: tuple[Repo, ...] = field(default_factory=tuple)
    removed: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        _number(self.installation_id, "installation.id")
        _text(self.account, "installation.account.login", limit=200)
        _text(self.action, "action", limit=50)
        if not all(isinstance(repo, Repo) for repo in self.added):
            raise TypeError("added repositories must be repositories")
        for name in self.removed:
            _text(name, "repository.full_name", limit=200)


@dataclass(frozen=True)
class Pong:
    zen: str = ""


@dataclass(frozen=True)
class Ignore:
    reason: str


@dataclass(frozen=True)
class Invalid:
    """A validly signed delivery whose body lacks what its event promises (→ 400)."""

    reason: str


Plan = Deploy | RunCommand | SummarizePromotion | PreviewEvent | Reply | SyncInstallation | Pong | Ignore | Invalid
