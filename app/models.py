"""What the service remembers: apps, deliveries, builds, deployments, profiles and reports.

Schema changes go through Alembic (app/migrations); SQLite and PostgreSQL are both supported,
so only portable types are used (JSON, not JSONB).
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from app.pipeline import preview_phase


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def aware(moment: datetime | None) -> datetime | None:
    """SQLite hands timestamps back without their zone; they were written in UTC."""
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def iso(moment: datetime | None) -> str | None:
    moment = aware(moment)
    return moment.isoformat().replace("+00:00", "Z") if moment else None


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class DeliveryOutcome(str, enum.Enum):
    ACCEPTED = "accepted"
    IGNORED = "ignored"
    #: Signed and valid JSON, but not a delivery the planner can read (kept with its reason).
    MALFORMED = "malformed"


class DeploymentStatus(str, enum.Enum):
    QUEUED = "queued"
    BUILDING = "building"
    DEPLOYING = "deploying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SUPERSEDED = "superseded"
    REFUSED = "refused"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (self.SUCCEEDED, self.FAILED, self.SUPERSEDED, self.REFUSED, self.CANCELLED)


#: A deployment in these states is on its way: it can still be cancelled or superseded.
IN_PROGRESS = (DeploymentStatus.QUEUED.value, DeploymentStatus.BUILDING.value, DeploymentStatus.DEPLOYING.value)
#: ... and in these a worker has taken it up (reconcile fails those whose worker is gone).
TAKEN_UP = (DeploymentStatus.BUILDING.value, DeploymentStatus.DEPLOYING.value)


class BuildStatus(enum.StrEnum):
    BUILDING = "building"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ServiceStatus(enum.StrEnum):
    CREATING = "creating"
    HEALTHY = "healthy"
    FAILED = "failed"


class ReportState(str, enum.Enum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    #: Reporting is off (no GITHUB_APP_ID): kept so the user sees what would have been sent.
    RECORDED = "recorded"


class Installation(Base):
    __tablename__ = "installations"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    account: Mapped[str] = mapped_column(String(200))
    suspended: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class App(Base):
    """A repository the GitHub App is installed on; `name` is its slug in URLs and Docker."""

    __tablename__ = "apps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    full_name: Mapped[str] = mapped_column(String(200), unique=True)
    name: Mapped[str] = mapped_column(String(40), unique=True)
    installation_id: Mapped[int | None] = mapped_column(BigInteger)
    clone_url: Mapped[str | None] = mapped_column(String(500))
    html_url: Mapped[str | None] = mapped_column(String(500))
    default_branch: Mapped[str] = mapped_column(String(200), default="main")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: Deleted from the portal or API: everything it ran is gone, its history stays readable,
    #: and deliveries for it deploy nothing.
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deleted_by: Mapped[str | None] = mapped_column(String(100))

    deployments: Mapped[list[Deployment]] = relationship(back_populates="app")


class Delivery(Base):
    """One webhook delivery, recorded before anything else so redeliveries are recognised."""

    __tablename__ = "deliveries"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    event: Mapped[str] = mapped_column(String(50))
    action: Mapped[str | None] = mapped_column(String(50))
    repository: Mapped[str | None] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(String(300), default="")
    job_id: Mapped[str | None] = mapped_column(String(100))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Build(Base):
    """An image built from one commit tree; every later phase reuses it."""

    __tablename__ = "builds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id"))
    tree_sha: Mapped[str] = mapped_column(String(64), index=True)
    commit_sha: Mapped[str] = mapped_column(String(64), index=True)
    image_id: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20), default=BuildStatus.BUILDING.value)
    reason: Mapped[str] = mapped_column(String(300), default="")
    #: The validated .release-pipeline.yml of that commit (port, health path, services).
    repo_config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Deployment(Base):
    """One attempt to put a version on a phase, with everything needed to explain or repeat it."""

    __tablename__ = "deployments"
    #: The newest of each kind per phase (apps list, board, `current`), and what is unfinished
    #: (a queued deployment's place in the queue), straight from an index.
    __table_args__ = (Index("ix_deployments_app_phase_status", "app_id", "phase", "status", "id"),
                      Index("ix_deployments_status", "status", "id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id"), index=True)
    phase: Mapped[str] = mapped_column(String(40))
    version: Mapped[str] = mapped_column(String(64))
    ref: Mapped[str | None] = mapped_column(String(300))
    sha: Mapped[str | None] = mapped_column(String(64))
    tree_sha: Mapped[str | None] = mapped_column(String(64))
    build_id: Mapped[int | None] = mapped_column(ForeignKey("builds.id"))
    image_id: Mapped[str | None] = mapped_column(String(100))
    profile_snapshot: Mapped[dict[str, Any]] = mapped_column(default=dict)
    trigger: Mapped[str] = mapped_column(String(30))
    actor: Mapped[str] = mapped_column(String(100), default="")
    status: Mapped[str] = mapped_column(String(20), default=DeploymentStatus.QUEUED.value)
    reason: Mapped[str] = mapped_column(String(300), default="")
    #: Same event seen twice (push/create/release of one tag, a redelivery) plans one deployment.
    dedup_key: Mapped[str | None] = mapped_column(String(300), unique=True)
    pr_number: Mapped[int | None] = mapped_column(Integer)
    comment_id: Mapped[int | None] = mapped_column(BigInteger)
    #: For promotions and rollbacks: the deployment whose image and profile are reused.
    source_id: Mapped[int | None] = mapped_column(ForeignKey("deployments.id"))
    required_approvals: Mapped[int] = mapped_column(Integer, default=0)
    container_id: Mapped[str | None] = mapped_column(String(100))
    container_name: Mapped[str | None] = mapped_column(String(200))
    host_port: Mapped[int | None] = mapped_column(Integer)
    url: Mapped[str | None] = mapped_column(String(500))
    #: Why a deploy failed: last container log lines and health responses.
    evidence: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: The commit's title and author: from the push that planned it, else from its source deployment.
    commit_title: Mapped[str | None] = mapped_column(String(200))
    commit_author: Mapped[str | None] = mapped_column(String(100))
    #: What a promotion ships: the commits between what the phase served and this one
    #: (sha, title, author, url), newest first.
    commits: Mapped[list[Any]] = mapped_column(default=list)
    #: An admin's reason for deploying into a frozen phase (`--force <reason>`).
    override: Mapped[str | None] = mapped_column(String(300))
    #: Who asked to cancel it while it was building; the worker stops at its next step.
    cancel_requested_by: Mapped[str | None] = mapped_column(String(100))
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    app: Mapped[App] = relationship(back_populates="deployments")

    @property
    def short_sha(self) -> str:
        return (self.sha or "")[:7]

    @property
    def headline(self) -> tuple[str | None, str | None]:
        """(title, author) of its commit: as recorded, else from the commits it shipped."""
        if self.commit_title:
            return self.commit_title, self.commit_author
        shipped = next((c for c in self.commits or [] if isinstance(c, dict) and c.get("sha") == self.sha), None)
        return (shipped.get("title"), shipped.get("author")) if shipped else (None, None)


class PhaseSlots(Base):
    """The two fixed loopback ports ("slots") of one app and phase, allocated once.

    The router sends the phase URL to whichever slot is healthy; a deployment starts the new
    container on the slot the serving one does not use, so the router never changes. Ports are
    handed out in pairs, so no port belongs to two phases.
    """

    __tablename__ = "phase_slots"
    __table_args__ = (UniqueConstraint("app_id", "phase"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id"))
    phase: Mapped[str] = mapped_column(String(40))
    port_a: Mapped[int] = mapped_column(Integer, unique=True)
    port_b: Mapped[int] = mapped_column(Integer, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PhaseFreeze(Base):
    """An ad-hoc freeze of one app's phase (`/freeze`, the portal, the API), until lifted."""

    __tablename__ = "phase_freezes"
    __table_args__ = (UniqueConstraint("app_id", "phase"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id"))
    phase: Mapped[str] = mapped_column(String(40))
    author: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(String(300), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LogLine(Base):
    """Build and rollout output, stored as it arrives so the portal can stream it."""

    __tablename__ = "log_lines"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"), index=True)
    stream: Mapped[str] = mapped_column(String(10))
    text: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Profile(Base):
    """An app's own settings for one phase; unset fields inherit from the previous phase."""

    __tablename__ = "profiles"
    __table_args__ = (UniqueConstraint("app_id", "phase"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id"))
    phase: Mapped[str] = mapped_column(String(40))
    env: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: name → Fernet ciphertext; never returned to a browser or API client.
    secrets: Mapped[dict[str, Any]] = mapped_column(default=dict)
    memory: Mapped[str | None] = mapped_column(String(20))
    cpus: Mapped[float | None] = mapped_column(Float)
    replicas: Mapped[int | None] = mapped_column(Integer)
    #: Seconds from SIGTERM to SIGKILL when one of its containers is stopped.
    stop_timeout: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )
    updated_by: Mapped[str] = mapped_column(String(100), default="")


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(100))
    app_id: Mapped[int | None] = mapped_column(ForeignKey("apps.id"))
    phase: Mapped[str | None] = mapped_column(String(40))
    action: Mapped[str] = mapped_column(String(50))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class UserSession(Base):
    """A signed-in portal session. The cookie carries only its random id (stored here hashed):
    signing out deletes the row, so a copied cookie stops working with it."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    login: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(20))
    #: For admin-token sessions, a fingerprint of the token signed in with: rotating ADMIN_TOKEN
    #: ends them.
    credential: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class Report(Base):
    """An outbox entry for GitHub: written with the deployment, sent by its own job."""

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id"), index=True)
    deployment_id: Mapped[int | None] = mapped_column(ForeignKey("deployments.id"), index=True)
    kind: Mapped[str] = mapped_column(String(30))
    body: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(20), default=ReportState.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(String(300), default="")
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class PullRequestComment(Base):
    """The one bot comment per PR and topic, edited in place instead of posting anew."""

    __tablename__ = "pr_comments"
    __table_args__ = (UniqueConstraint("app_id", "pr_number", "topic"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id"))
    pr_number: Mapped[int] = mapped_column(Integer)
    topic: Mapped[str] = mapped_column(String(100))
    comment_id: Mapped[int | None] = mapped_column(BigInteger)


class ServiceInstance(Base):
    """A backing service (database, cache, ...) of one app and phase; survives deployments."""

    __tablename__ = "services"
    __table_args__ = (UniqueConstraint("app_id", "phase", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id"))
    phase: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(40))
    definition: Mapped[dict[str, Any]] = mapped_column(default=dict)
    definition_hash: Mapped[str] = mapped_column(String(64), default="")
    #: The definition the repository now asks for, when it differs from the running one.
    pending_hash: Mapped[str | None] = mapped_column(String(64))
    image_id: Mapped[str | None] = mapped_column(String(100))
    container_id: Mapped[str | None] = mapped_column(String(100))
    network: Mapped[str | None] = mapped_column(String(200))
    volume: Mapped[str | None] = mapped_column(String(200))
    #: The Swarm node its volume lives on (RUNTIME=swarm): chosen once, the service stays pinned there.
    node: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default=ServiceStatus.CREATING.value)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class ApiToken(Base):
    """A personal API token: acts as the user who created it, with their repository roles.

    Only a SHA-256 of the token is kept (it is 256 random bits, so a slow hash adds nothing);
    the token itself is shown once, when it is created.
    """

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    login: Mapped[str] = mapped_column(String(100), index=True)
    #: How the owner signed in when creating it (auth.Kind); the token ends with that method.
    kind: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    #: The token's first characters, so its owner can tell tokens apart.
    prefix: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class NotificationState(str, enum.Enum):
    PENDING = "pending"
    #: The last attempt failed; RQ retries it later.
    RETRYING = "retrying"
    SENT = "sent"
    #: Every attempt failed (or the target can no longer be sent to).
    FAILED = "failed"


class Notification(Base):
    """One event for one outbound target (pipeline.yml `notifications:`), sent by its own job.

    The id is the `X-Release-Pipeline-Delivery` header: the same on every retry, so a receiver
    can recognise a repeat.
    """

    __tablename__ = "notifications"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    target: Mapped[str] = mapped_column(String(40), index=True)
    event: Mapped[str] = mapped_column(String(40))
    app_id: Mapped[int | None] = mapped_column(ForeignKey("apps.id"), index=True)
    deployment_id: Mapped[int | None] = mapped_column(ForeignKey("deployments.id"), index=True)
    #: What the event says, without `delivered_at` (added at each attempt); never a secret.
    body: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(20), default=NotificationState.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class NotificationAttempt(Base):
    """One try at delivering a notification: what the target answered, or why it did not."""

    __tablename__ = "notification_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    notification_id: Mapped[str] = mapped_column(ForeignKey("notifications.id"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    outcome: Mapped[str] = mapped_column(String(20))
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str] = mapped_column(String(300), default="")
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)


class PreviewState(str, enum.Enum):
    """Where a pull request's preview (README, Pull request previews) stands."""

    #: A draft: built once it is ready for review (unless `previews.drafts`).
    DRAFT = "draft"
    #: A fork's head: nothing is built until someone with `previews.fork_role` says `/deploy preview`.
    AWAITING_APPROVAL = "awaiting_approval"
    #: Built (or being built) and served at its URL.
    ACTIVE = "active"
    #: Torn down while the pull request stays open (idle, max_active, the portal): a push builds it again.
    REMOVED = "removed"
    #: The pull request was closed: only `reopened` brings it back.
    CLOSED = "closed"

    @property
    def running(self) -> bool:
        return self is PreviewState.ACTIVE


class Preview(Base):
    """One pull request's preview phase `pr-<number>`: what was seen of the PR, and its state."""

    __tablename__ = "previews"
    __table_args__ = (UniqueConstraint("app_id", "pr_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id"), index=True)
    pr_number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20))
    #: The head commit of the PR as last seen (a fork's waits here for `/deploy preview`).
    head_sha: Mapped[str] = mapped_column(String(64))
    head_repo: Mapped[str | None] = mapped_column(String(200))
    fork: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The PR's `updated_at` of the newest delivery applied: older ones arriving late are ignored.
    event_at: Mapped[str] = mapped_column(String(40), default="")
    #: Counts teardowns, so a reopened PR may build the same commit again.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str] = mapped_column(String(300), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: The last push (or `/deploy preview`) that asked for a build: idle time counts from here.
    active_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    removed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    @property
    def phase(self) -> str:
        return preview_phase(self.pr_number)
