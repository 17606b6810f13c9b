"""What the planner decides: small immutable values, carried out later by executors."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Repo:
    """The repository fields a plan needs, read once from the delivery."""

    full_name: str
    clone_url: str | None
    default_branch: str
    html_url: str | None = None
    installation_id: int | None = None


@dataclass(frozen=True)
class Deploy:
    """Put a commit on a phase.

    `sha` is None when the event names a tag without its commit (`create`, `release`): the
    worker resolves it. `version` is the fallback label; with `prefer_tag` a release tag on the
    commit wins (a promotion PR's head).
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
    pr_author: str | None = None
    required_approvals: int = 0
    prefer_tag: bool = False


@dataclass(frozen=True)
class RunCommand:
    """A slash-command from a PR comment; permissions are checked by the worker (needs GitHub)."""

    repo: Repo
    pr_number: int
    comment_id: int
    actor: str
    body: str


@dataclass(frozen=True)
class Reply:
    """Answer a malformed command on the PR without doing anything else."""

    repo: Repo
    pr_number: int
    comment_id: int
    message: str


@dataclass(frozen=True)
class SyncInstallation:
    """Keep the app registry in step with where the GitHub App is installed."""

    installation_id: int
    account: str
    action: str
    added: tuple[Repo, ...] = field(default_factory=tuple)
    removed: tuple[str, ...] = field(default_factory=tuple)


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


Plan = Deploy | RunCommand | Reply | SyncInstallation | Pong | Ignore | Invalid
