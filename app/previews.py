"""Pull request previews (README, Pull request previews): what a PR event means for its `pr-<number>` phase.

Deciding is pure (`decide`, `evictions`, `expired`: tested by equality); `record` carries a
decision out at intake (database rows, a queued deployment through `app.deployments.schedule`,
the outbox), and `workers.preview` removes what a preview ran on Docker and the router.
A preview deploys like any phase (`workers.deploy`), with the previews profile and no secrets.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.deployments import schedule
from app.models import App, Deployment, DeploymentStatus, Preview, PreviewState, aware, utcnow
from app.pipeline import PipelineConfig, Previews
from app.plans import Deploy, PreviewAction, PreviewEvent, Repo, Trigger

#: The one bot comment per PR about its preview, edited in place (`Reports.comment` topic).
TOPIC = "preview"
TRIGGER = Trigger.PREVIEW
ACTOR = "release-pipeline"
#: Deployments of a preview that still count as "built or being built".
LIVE_STATUSES = (DeploymentStatus.QUEUED, DeploymentStatus.BUILDING, DeploymentStatus.DEPLOYING,
                 DeploymentStatus.SUCCEEDED)


class Step(str, enum.Enum):
    BUILD = "build"
    ASK_APPROVAL = "ask_approval"
    WAIT = "wait"
    TEARDOWN = "teardown"
    #: Remove what runs while the pull request stays open (back to draft); it builds again when ready.
    SET_ASIDE = "set_aside"
    NOTHING = "nothing"


@dataclass(frozen=True)
class Seen:
    """What is known of a PR's preview before the event."""

    state: PreviewState
    head_sha: str
    event_at: str = ""
    #: The commit the preview serves or is building in its current generation (None: nothing).
    built_sha: str | None = None


@dataclass(frozen=True)
class Decision:
    step: Step
    #: The preview's state afterwards (None: unchanged).
    state: PreviewState | None
    sha: str
    reason: str


def decide(seen: Seen | None, event: PreviewEvent, previews: Previews) -> Decision:
    """What `event` does to the preview; redelivered and out-of-order deliveries change nothing."""
    sha = event.head_sha
    if (seen is not None and event.action is not PreviewAction.COMMAND and event.updated_at and seen.event_at
            and event.updated_at < seen.event_at):
        return Decision(Step.NOTHING, None, sha, f"a delivery older than one already applied ({event.action.value})")
    if event.action is PreviewAction.CLOSED:
        if seen is not None and seen.state is PreviewState.CLOSED:
            return Decision(Step.NOTHING, None, sha, "the preview was already removed")
        why = "the pull request was merged" if event.merged else "the pull request was closed"
        return Decision(Step.TEARDOWN, PreviewState.CLOSED, sha, why)
    if seen is not None and seen.state is PreviewState.CLOSED and event.action is not PreviewAction.REOPENED:
        return Decision(Step.NOTHING, None, sha, "the pull request is closed")
    if event.action is PreviewAction.CONVERTED_TO_DRAFT:
        if previews.drafts:
            return Decision(Step.NOTHING, None, sha, "back to draft: drafts keep their preview (previews.drafts)")
        if seen is not None and seen.state is PreviewState.ACTIVE:
            return Decision(Step.SET_ASIDE, PreviewState.DRAFT, sha,
                            "back to draft: the preview is removed until the pull request is ready for review")
        return Decision(Step.WAIT, PreviewState.DRAFT, sha, "a draft: the preview waits for ready for review")
    if seen is not None and seen.built_sha == sha and seen.state is PreviewState.ACTIVE:
        return Decision(Step.NOTHING, None, sha, f"the preview already runs {sha[:7]}")
    if event.action is PreviewAction.COMMAND:
        return Decision(Step.BUILD, PreviewState.ACTIVE, sha, f"/deploy preview by @{event.actor}")
    keep = seen.state if seen is not None and seen.state is PreviewState.ACTIVE else None
    if event.fork:
        if seen is not None and seen.head_sha == sha and seen.state is PreviewState.AWAITING_APPROVAL:
            return Decision(Step.NOTHING, None, sha, f"already waiting for /deploy preview of {sha[:7]}")
        return Decision(Step.ASK_APPROVAL, keep or PreviewState.AWAITING_APPROVAL, sha,
                        f"{sha[:7]} comes from the fork {event.head_repo or '(deleted)'}: it needs /deploy preview")
    if event.draft and not previews.drafts:
        return Decision(Step.WAIT, keep or PreviewState.DRAFT, sha, "a draft: the preview waits for ready for review")
    return Decision(Step.BUILD, PreviewState.ACTIVE, sha, f"{event.action.value} at {sha[:7]}")


def evictions(active: list[tuple[int, datetime]], incoming: int, max_active: int) -> list[int]:
    """The previews (PR numbers, idle longest first) that make room for `incoming` under max_active."""
    others = sorted((at, number) for number, at in active if number != incoming)
    excess = len(others) + 1 - max_active
    return [number for _, number in others[:max(excess, 0)]]


def expired(active: list[tuple[int, datetime]], now: datetime, ttl_hours: float) -> list[int]:
    """The previews idle (no push, no /deploy preview) for longer than `ttl_hours`."""
    cutoff = now - timedelta(hours=ttl_hours)
    return sorted(number for number, at in active if aware(at) < cutoff)


# -- carrying a decision out (intake and the command job) ----------------------------------------


@dataclass
class Recorded:
    """What `record` did: a reason for the delivery and the jobs to enqueue after commit."""

    reason: str
    deployment_id: int | None = None
    reports: list[int] | None = None
    teardowns: list[dict] | None = None


def find(session: Session, app_id: int, pr_number: int, *, lock: bool = False) -> Preview | None:
    query = select(Preview).where(Preview.app_id == app_id, Preview.pr_number == pr_number)
    return session.scalar(query.with_for_update() if lock else query)


def built_sha(session: Session, preview: Preview) -> str | None:
    """The commit of the preview's newest deployment that has not failed, in this generation."""
    deployment = latest(session, preview)
    if deployment is None or deployment.status not in [s.value for s in LIVE_STATUSES]:
        return None
    return deployment.sha


def latest(session: Session, preview: Preview) -> Deployment | None:
    return session.scalars(select(Deployment).where(
        Deployment.app_id == preview.app_id, Deployment.phase == preview.phase,
        Deployment.dedup_key.like(f"{_generation_key(preview)}%")).order_by(Deployment.id.desc())).first()


def _generation_key(preview: Preview) -> str:
    return f"preview:{preview.app_id}:{preview.pr_number}:{preview.generation}:"


def seen_of(session: Session, preview: Preview | None) -> Seen | None:
    if preview is None:
        return None
    return Seen(PreviewState(preview.state), preview.head_sha, preview.event_at, built_sha(session, preview))


def record(ctx, session: Session, app: App, event: PreviewEvent) -> Recorded:
    """Apply `event` to the PR's preview row and do what `decide` says (in `session`)."""
    preview = _row(session, app, event)
    decision = decide(seen_of(session, preview), event, ctx.config.previews)
    if decision.step is Step.NOTHING:
        return Recorded(f"preview of #{event.pr_number}: {decision.reason}")
    if event.updated_at and event.updated_at > (preview.event_at or ""):
        preview.event_at = event.updated_at
    preview.head_sha, preview.head_repo, preview.fork = event.head_sha, event.head_repo, event.fork
    if decision.step in (Step.TEARDOWN, Step.SET_ASIDE):
        teardown = begin_teardown(ctx, session, app, preview, decision.reason,
                                  closed=decision.step is Step.TEARDOWN)
        if decision.step is Step.SET_ASIDE:
            preview.state = decision.state.value  # a draft again: ready_for_review builds it
        return Recorded(f"preview of #{event.pr_number}: {decision.reason}; removing it",
                        reports=teardown.reports, teardowns=teardown.teardowns)
    preview.state, preview.reason = decision.state.value, decision.reason
    if decision.step in (Step.ASK_APPROVAL, Step.WAIT):
        text = (approval_text(event, ctx.config.previews.fork_role) if decision.step is Step.ASK_APPROVAL
                else DRAFT_TEXT)
        report = ctx.reports.comment(session, app, event.pr_number, TOPIC, text)
        return Recorded(f"preview of #{event.pr_number}: {decision.reason}", reports=_pending([report]))
    return build(ctx, session, app, preview, event)


def build(ctx, session: Session, app: App, preview: Preview, event: PreviewEvent) -> Recorded:
    """Schedule the preview's deployment of the event's head, making room under max_active."""
    teardowns: list[dict] = []
    reports = []
    active = [(p.pr_number, p.active_at) for p in session.scalars(select(Preview).where(
        Preview.app_id == app.id, Preview.state == PreviewState.ACTIVE.value)).all()]
    for number in evictions(active, preview.pr_number, ctx.config.previews.max_active):
        evicted = find(session, app.id, number, lock=True)
        done = begin_teardown(ctx, session, app, evicted, f"at most {ctx.config.previews.max_active} previews "
                              f"may run at once (previews.max_active) and #{preview.pr_number} needed the room; "
                              "this one was idle longest. A push builds it again", closed=False)
        teardowns += done.teardowns
        reports += done.reports
    preview.state, preview.active_at = PreviewState.ACTIVE.value, utcnow()
    deployment = _schedule(session, app, preview, event)
    session.flush()
    reports += _pending(ctx.reports.queued(session, app, deployment))
    reports += _pending([ctx.reports.progress_reply(session, app, deployment)])
    return Recorded(f"preview of #{preview.pr_number}: building {event.head_sha[:7]}", deployment.id,
                    reports, teardowns)


def _schedule(session: Session, app: App, preview: Preview, event: PreviewEvent) -> Deployment:
    """The preview's deployment; a newer push supersedes one still queued (workers.deploy)."""
    key = f"{_generation_key(preview)}{event.head_sha}:{_attempt(session, preview, event.head_sha)}"
    deployment = schedule(session, app, Deploy(
        repo=Repo(app.full_name, app.clone_url, app.default_branch, app.html_url, app.installation_id),
        phase=preview.phase, ref=f"refs/pull/{preview.pr_number}/head", sha=event.head_sha,
        version=event.head_sha[:7], trigger=TRIGGER, actor=event.actor or ACTOR, dedup_key=key,
        pr_number=preview.pr_number))
    if deployment is None:  # only when two deliveries race for the same commit
        raise IntegrityError("preview deployment", None, Exception(key))
    return deployment


def _attempt(session: Session, preview: Preview, sha: str) -> int:
    """Failed builds of the same commit may be tried again (`/deploy preview`): one key per attempt."""
    return len(session.scalars(select(Deployment.id).where(
        Deployment.dedup_key.like(f"{_generation_key(preview)}{sha}:%"))).all())


@dataclass
class Teardown:
    reports: list[int]
    teardowns: list[dict]


def begin_teardown(ctx, session: Session, app: App, preview: Preview, reason: str, *, closed: bool) -> Teardown:
    """Stop the preview's queued and building deployments now; the job removes what runs."""
    reports = []
    up_to = 0
    for deployment in session.scalars(select(Deployment).where(
            Deployment.app_id == app.id, Deployment.phase == preview.phase)).all():
        up_to = max(up_to, deployment.id)
        if deployment.status == DeploymentStatus.QUEUED.value:
            deployment.status, deployment.finished_at = DeploymentStatus.CANCELLED.value, utcnow()
            deployment.reason = f"cancelled: {reason}"[:300]
            reports += _pending(ctx.reports.finished(session, app, deployment))
        elif deployment.status in (DeploymentStatus.BUILDING.value, DeploymentStatus.DEPLOYING.value):
            deployment.cancel_requested_by = ACTOR
    preview.state = (PreviewState.CLOSED if closed else PreviewState.REMOVED).value
    preview.reason, preview.removed_at = reason[:300], utcnow()
    job = {"app_id": app.id, "pr_number": preview.pr_number, "generation": preview.generation,
           "up_to": up_to, "reason": reason[:300]}
    preview.generation += 1
    return Teardown(reports, [job])


def _row(session: Session, app: App, event: PreviewEvent) -> Preview:
    """The PR's preview row, created on its first event (two deliveries at once create one)."""
    preview = find(session, app.id, event.pr_number, lock=True)
    if preview is not None:
        return preview
    preview = Preview(app_id=app.id, pr_number=event.pr_number, state=PreviewState.DRAFT.value,
                      head_sha=event.head_sha, head_repo=event.head_repo, fork=event.fork, event_at="",
                      generation=0, reason="")
    try:
        with session.begin_nested():
            session.add(preview)
    except IntegrityError:
        return find(session, app.id, event.pr_number, lock=True)
    return preview


def _pending(reports) -> list[int]:
    return [r.id for r in reports if r.state == "pending"]


DRAFT_TEXT = ("**Preview**: this pull request is a draft, so no preview is built yet; it is built when the "
              "pull request is marked ready for review.")


def approval_text(event: PreviewEvent, fork_role: str) -> str:
    return (f"**Preview**: this pull request comes from the fork `{event.head_repo or 'a deleted repository'}`. "
            f"Its Dockerfile and code are untrusted, so nothing of it is built or run automatically. Someone with "
            f"the {fork_role} role (or higher) can comment `/deploy preview` to build the head as it is then "
            f"(now `{event.head_sha[:7]}`); every later push needs a new `/deploy preview`.")


def removed_text(pr_number: int, served: tuple[str, str] | None, reason: str) -> str:
    """The preview comment once it is gone; `served`: (version, URL) it last served."""
    last = f" It served `{served[0]}` at {served[1]}, which no longer answers." if served else ""
    return f"**Preview** of #{pr_number} was removed: {reason}.{last}"


def served(session: Session, app_id: int, phase: str, up_to: int) -> tuple[str, str] | None:
    """(version, URL) of the preview's last successful deployment up to id `up_to`."""
    deployment = session.scalars(select(Deployment).where(
        Deployment.app_id == app_id, Deployment.phase == phase, Deployment.id <= up_to,
        Deployment.status == DeploymentStatus.SUCCEEDED.value).order_by(Deployment.id.desc())).first()
    return (deployment.version, deployment.url or "") if deployment is not None else None


def running(session: Session, app_id: int) -> list[Preview]:
    """The app's previews that run (or are being built); reconcile keeps their containers."""
    return list(session.scalars(select(Preview).where(
        Preview.app_id == app_id, Preview.state == PreviewState.ACTIVE.value).order_by(Preview.pr_number)).all())


def running_phases(config: PipelineConfig, session: Session, app_id: int) -> list[str]:
    """Every phase of the app that may run: the configured ones, then its previews."""
    return [*config.phase_names, *(p.phase for p in running(session, app_id))]


# -- what the portal, the API and /status show ------------------------------------------------------

#: How a preview's newest deployment reads to a person.
SHOWN = {DeploymentStatus.SUCCEEDED.value: "ready", DeploymentStatus.FAILED.value: "failed",
         DeploymentStatus.REFUSED.value: "failed", DeploymentStatus.CANCELLED.value: "cancelled",
         DeploymentStatus.SUPERSEDED.value: "building"}


def listing(session: Session, app_id: int, *, include_gone: bool = False) -> list[dict]:
    """The app's previews, newest PR first: PR, state, URL, version, age (and why, if removed)."""
    query = select(Preview).where(Preview.app_id == app_id).order_by(Preview.pr_number.desc())
    if not include_gone:
        query = query.where(Preview.state.not_in([PreviewState.CLOSED.value, PreviewState.REMOVED.value]))
    rows = []
    now = utcnow()
    for preview in session.scalars(query).all():
        deployment = latest(session, preview) if preview.state == PreviewState.ACTIVE.value else None
        state = preview.state
        if deployment is not None:
            state = SHOWN.get(deployment.status, "building")
        serving = session.scalars(select(Deployment).where(
            Deployment.app_id == app_id, Deployment.phase == preview.phase,
            Deployment.dedup_key.like(f"{_generation_key(preview)}%"),
            Deployment.status == DeploymentStatus.SUCCEEDED.value).order_by(Deployment.id.desc())).first()
        rows.append({
            "pr_number": preview.pr_number, "phase": preview.phase, "state": state, "fork": preview.fork,
            "head_sha": preview.head_sha, "url": serving.url if serving is not None else None,
            "version": serving.version if serving is not None else None,
            "deployment_id": deployment.id if deployment is not None else None,
            "created_at": aware(preview.created_at), "active_at": aware(preview.active_at),
            "age_seconds": int((now - aware(preview.created_at)).total_seconds()),
            "reason": preview.reason,
        })
    return rows


def remove_by_hand(ctx, session: Session, app: App, pr_number: int, actor: str, channel: str) -> Teardown | None:
    """Tear a running preview down on someone's request (portal, API); None: none runs."""
    preview = find(session, app.id, pr_number, lock=True)
    if preview is None or preview.state != PreviewState.ACTIVE.value:
        return None
    return begin_teardown(ctx, session, app, preview, f"removed by @{actor} {channel}; a push builds it again",
                          closed=False)
