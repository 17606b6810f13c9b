"""The command job: a slash-command is checked against the commenter's role, run, and answered.

The comment is parsed again here with the one grammar (`app.commands`), so the job needs
nothing but primitive identifiers. Every command gets a reaction at once and one reply;
a deployment it starts edits that same reply as it progresses (`app.reporting`). Runners
live in one table, checked when this module is imported: a command word without a runner
stops the worker at start-up, not at the first comment that uses it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from sqlalchemy.orm import Session

from app import commands, previews
from app import shipped
from app.actions import Actions, Outcome, PromotionRequest, current, latest_in
from app.commands import Command, CommandName
from app.context import Context
from app.exceptions import GitHubError
from app.jobs import DeployJob, Job, PreviewTeardownJob, ReportJob, enqueue_committed
from app.approvals import PROMOTION_REQUESTED
from app.models import IN_PROGRESS, App, AuditEntry, Deployment, DeploymentStatus
from app.plans import Trigger
from app.permissions import Action
from app.plans import PreviewAction, PreviewEvent, Repo
from workers import runtime

log = logging.getLogger(__name__)

#: The reaction that says "seen, working on it", added before anything slow happens.
ACKNOWLEDGED = "eyes"
TRIGGER = Trigger.COMMAND


def run(*, app_id: int, pr_number: int, comment_id: int, actor: str, body: str,
        commented_at: str | None = None) -> str:
    """RQ entry point (enqueued by `app.jobs.Jobs.command`)."""
    return CommandJob(runtime.context(), app_id=app_id, pr_number=pr_number, comment_id=comment_id,
                      actor=actor, body=body, commented_at=commented_at).run()


def repo_client(ctx: Context, app_id: int):
    """The app repository's GitHub client; raises GitHubError when GitHub is not configured."""
    if ctx.github is None:
        raise GitHubError("GitHub is not configured here (GITHUB_APP_ID is unset)")
    with ctx.db.session() as session:
        app = session.get(App, app_id)
        if app.installation_id is None:
            app.installation_id = ctx.github.installation_for_repo(app.full_name)
        installation_id, full_name = app.installation_id, app.full_name
    return ctx.github.repo(installation_id, full_name)


def open_promotion_pr(*, app_id: int, phase: str, branch: str, version: str, sha: str, source_id: int,
                      actor: str, override: str | None = None) -> str:
    """RQ entry point (enqueued by `app.jobs.Jobs.promotion`): a promotion asked for in the portal."""
    ctx = runtime.context()
    request = PromotionRequest(phase, branch, version, sha, source_id, override)
    with ctx.db.session() as session:
        changelog = shipped_text(ctx, session, session.get(App, app_id), phase, sha)
    number, url, _ = open_promotion(repo_client(ctx, app_id), request, requested_by=actor,
                                    origin="in the Apps Portal", changelog=changelog)
    with ctx.db.session() as session:
        record_promotion_request(session, app_id, actor, request, number, url)
    return url


def record_promotion_request(session: Session, app_id: int, actor: str, request: PromotionRequest,
                             number: int, url: str) -> None:
    """Remembered so the requester's own approval of this PR does not count."""
    session.add(AuditEntry(actor=actor, app_id=app_id, phase=request.phase, action=PROMOTION_REQUESTED,
                           detail={"pr_number": number, "url": url, "version": request.version,
                                   "sha": request.sha, "override": request.override}))


def parse_time(text: str | None) -> datetime | None:
    """GitHub's ISO 8601 timestamps (`2026-12-01T21:00:00Z`); None when absent or unreadable."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


class CommandJob:
    def __init__(self, ctx: Context, *, app_id: int, pr_number: int, comment_id: int, actor: str, body: str,
                 commented_at: str | None = None):
        self.ctx = ctx
        self.commented_at = parse_time(commented_at)
        self.app_id = app_id
        self.pr_number = pr_number
        self.comment_id = comment_id
        self.actor = actor
        self.body = body
        self.actions = Actions(ctx.config)
        self._client = None
        #: Outcome reports of deployments a runner finished itself (a cancelled queued one).
        self.finished_reports: list[int] = []
        #: Jobs a runner queues once its transaction is committed (a preview's build or teardown).
        #: Jobs a runner recorded work for, queued with the reply once committed.
        self.after_commit: list[Job] = []

    # -- GitHub ------------------------------------------------------------------------------

    def client(self):
        """The repository's GitHub client; raises GitHubError when GitHub is not configured."""
        if self._client is None:
            self._client = repo_client(self.ctx, self.app_id)
        return self._client

    def role(self) -> tuple[str, str]:
        """The actor's repository role, and a note for the reply when it could not be read."""
        if self.ctx.github is None:
            return "none", "GitHub is not configured here (GITHUB_APP_ID is unset), so your role cannot be checked."
        try:
            return self.client().collaborator_permission(self.actor), ""
        except GitHubError as exc:
            log.warning("command %s: cannot read %s's role: %s", self.comment_id, self.actor, exc)
            return "none", f"Your role could not be read from GitHub ({exc})."

    # -- outbox ------------------------------------------------------------------------------

    def react(self, content: str) -> None:
        with self.ctx.db.session() as session:
            report = self.ctx.reports.reaction(session, session.get(App, self.app_id), self.comment_id, content)
            pending = report.id if report.state == "pending" else None
        if pending is not None:
            enqueue_committed(self.ctx, [ReportJob(pending)])

    def reply(self, text: str) -> None:
        with self.ctx.db.session() as session:
            pending = self.record_reply(session, session.get(App, self.app_id), text, None)
        self.send(None, pending)

    def record_reply(self, session: Session, app: App, text: str, deployment_id: int | None) -> list[int]:
        """The one reply to this command; with a deployment, its queued status too. Returns the
        reports to send, once the caller's transaction is committed."""
        deployment = session.get(Deployment, deployment_id) if deployment_id else None
        reports = self.ctx.reports.queued(session, app, deployment) if deployment is not None else []
        reports.append(self.ctx.reports.command_reply(session, app, self.pr_number, self.comment_id,
                                                      f"@{self.actor} {text}", deployment))
        return [r.id for r in reports if r.state == "pending"]

    def send(self, deployment_id: int | None, report_ids: list[int]) -> None:
        """Queue what was committed (`app.jobs.enqueue_committed`: withdrawn if Redis refuses)."""
        enqueue_committed(self.ctx, [*([DeployJob(deployment_id)] if deployment_id is not None else []),
                                     *self.after_commit, *(ReportJob(r) for r in report_ids)])

    # -- the job -----------------------------------------------------------------------------

    def run(self) -> str:
        parsed = commands.parse(self.body, self.ctx.config.phase_names)
        if parsed is None:
            return "no command in the comment"
        if isinstance(parsed, commands.Malformed):  # the pipeline changed since intake read it
            self.reply(parsed.message)
            return "malformed"
        self.react(ACKNOWLEDGED)
        runner = RUNNERS[parsed.name]
        phase = runner.phase_of(parsed, self.ctx.config.phase_names)
        role, note = self.role()
        refused = self.actions.refusal(role, runner.action, phase)
        if refused:  # asked before any runner reads GitHub or the database
            self.reply(f"`{as_text(parsed)}` refused: {refused.message}. Nothing was changed."
                       + (f"\n\n{note}" if note else ""))
            return "refused"
        try:
            # The deployment a command schedules and the reply that announces it are one
            # transaction: neither exists without the other.
            with self.ctx.db.session() as session:
                app = session.get(App, self.app_id)
                answer = runner.run(self, session, app, parsed, role)
                pending = self.record_reply(session, app, answer.message, answer.deployment_id)
        except GitHubError as exc:
            log.warning("command %s failed on GitHub: %s", self.comment_id, exc)
            self.reply(f"`{as_text(parsed)}` could not be carried out: {exc}. Nothing was deployed.")
            return "failed on GitHub"
        self.send(answer.deployment_id, pending + self.finished_reports)
        return "deployment queued" if answer.deployment_id else "answered"


# -- runners ---------------------------------------------------------------------------------


def _worded(command: Command, outcome: Outcome) -> Outcome:
    """The outcome with its message as the reply says it."""
    if not outcome.ok:
        return replace(outcome, message=f"`{as_text(command)}`: nothing was changed: {outcome.message}.")
    return replace(outcome, message=f"`{as_text(command)}`: {outcome.message}.")


def run_deploy(job: CommandJob, session: Session, app: App, command: commands.DeployHead, role: str) -> Outcome:
    """Deploy the pull request's head commit (built once, like any other commit)."""
    sha = job.client().get_pull(job.pr_number).head_sha
    if not sha:
        return Outcome(False, f"`{as_text(command)}`: GitHub did not say which commit heads #{job.pr_number}.")
    moved = moved_since_comment(job, command, sha)
    if moved is not None:
        return moved
    outcome = job.actions.deploy_commit(session, app, command.phase, sha=sha, actor=job.actor, role=role,
                                        trigger=TRIGGER, pr_number=job.pr_number, comment_id=job.comment_id)
    answer = _worded(command, outcome)
    if outcome.ok:
        answer = replace(answer, message=f"{answer.message} Commit {sha}, the head of #{job.pr_number} when you "
                                         "commented.")
    return answer


def moved_since_comment(job: CommandJob, command: Command, sha: str) -> Outcome | None:
    """The command may have waited behind other jobs: a head pushed after the comment is not what
    the commenter saw (GitHub's branch-deploy checks the same), so it is not deployed."""
    committed = parse_time(job.client().commit_date(sha))
    if job.commented_at is not None and (committed is None or committed > job.commented_at):
        return Outcome(False, f"`{as_text(command)}`: nothing was deployed: the head of #{job.pr_number} is now "
                              f"{sha[:7]}, committed after your comment. Comment again to deploy it.")
    return None


def run_deploy_preview(job: CommandJob, session: Session, app: App, command: commands.DeployPreview,
                       role: str) -> Outcome:
    """Consent to build the head as it is now (a fork's code never runs without it), named in the reply."""
    said = f"`{as_text(command)}`"
    if not job.ctx.config.previews.enabled:
        return Outcome(False, f"{said}: nothing was built: previews are off (previews.enabled in pipeline.yml).")
    pull = job.client().get_pull(job.pr_number)
    sha = pull.head_sha
    if not sha:
        return Outcome(False, f"{said}: GitHub did not say which commit heads #{job.pr_number}.")
    if pull.state != "open":
        return Outcome(False, f"{said}: nothing was built: #{job.pr_number} is {pull.state}.")
    base = pull.base_ref
    if base != app.default_branch:
        return Outcome(False, f"{said}: nothing was built: previews are for pull requests into "
                              f"{app.default_branch} (#{job.pr_number} is into {base}).")
    moved = moved_since_comment(job, command, sha)
    if moved is not None:
        return moved
    event = PreviewEvent(repo=Repo(app.full_name, app.clone_url, app.default_branch, app.html_url,
                                   app.installation_id),
                         pr_number=job.pr_number, action=PreviewAction.COMMAND, head_sha=sha,
                         head_repo=pull.head_repo, draft=pull.draft, updated_at=pull.updated_at, actor=job.actor)
    recorded = previews.record(job.ctx, session, app, event)
    job.finished_reports.extend(recorded.reports or [])
    for teardown in recorded.teardowns or []:
        job.after_commit.append(PreviewTeardownJob(**teardown))
    if recorded.deployment_id is None:
        return Outcome(False, f"{said}: nothing was built: {recorded.reason.split(': ', 1)[-1]}.")
    deployment_id = recorded.deployment_id
    job.after_commit.append(DeployJob(deployment_id))
    return Outcome(True, f"{said}: building commit {sha}, the head of #{job.pr_number} now, as its preview; "
                         "the preview comment shows its URL once it serves. A later push needs a new "
                         "`/deploy preview`.")


def shipped_text(ctx: Context, session: Session, app: App, phase: str, head: str | None) -> str:
    """What promoting `head` to `phase` ships, as Markdown (the commits since what it serves)."""
    serving = current(session, app.id, phase)
    commits = shipped.commits_between(ctx, clone_url=app.clone_url, installation_id=app.installation_id,
                                      base=serving.sha if serving else None, head=head)
    label = f"{serving.version} (what {phase} serves)" if serving else None
    return shipped.markdown(commits, app.html_url, serving=label)


def run_promote(job: CommandJob, session: Session, app: App, command: commands.Promote, role: str) -> Outcome:
    outcome = job.actions.promote(session, app, command.phase, actor=job.actor, role=role, trigger=TRIGGER,
                                  version=command.version, rename_to=command.rename_to,
                                  pr_number=job.pr_number, comment_id=job.comment_id, force=command.force)
    if outcome.promotion is None:
        answer = _worded(command, outcome)
        if outcome.deployment_id is None:
            return answer
        head = session.get(Deployment, outcome.deployment_id).sha
        return replace(answer, message=f"{answer.message}\n\n{shipped_text(job.ctx, session, app, command.phase, head)}")
    request = outcome.promotion
    changelog = shipped_text(job.ctx, session, app, request.phase, request.sha)
    number, url, reused = open_promotion(job.client(), request, requested_by=job.actor,
                                         origin=f"in #{job.pr_number}", changelog=changelog)
    record_promotion_request(session, app.id, job.actor, request, number, url)
    needed = job.ctx.config.phase(request.phase).approvals
    opened = "is already open" if reused else "is open"
    forced = (f" The freeze of {request.phase} is overridden for this merge by @{job.actor}: {request.override}."
              if request.override else "")
    return Outcome(
        True,
        f"`{as_text(command)}`: {request.phase} deploys only through an approved promotion pull request, "
        f"so nothing was deployed yet. [#{number} {request.title}]({url}) {opened} "
        f"(branch `{request.head_branch}` at `{request.sha[:7]}`): merging it with {needed} approval(s) "
        f"from people other than its author deploys **{request.version}** to {request.phase}.{forced}"
        f"\n\n{changelog}"
    )


def open_promotion(client, request: PromotionRequest, *, requested_by: str, origin: str,
                   changelog: str) -> tuple[int, str, bool]:
    """Branch `promote/<phase>/<version>` at the sha and a pull request into the phase branch;
    an open one for the same branch is reused, so repeating the request is harmless."""
    try:
        client.create_ref(f"refs/heads/{request.head_branch}", request.sha)
    except GitHubError as exc:
        if "already exists" not in str(exc).lower():
            raise
    existing = client.find_open_pull(request.head_branch, request.branch)
    if existing is not None:
        return (*existing, True)
    body = (
        f"Promotes **{request.version}** (`{request.sha[:7]}`) to **{request.phase}**, as asked by "
        f"@{requested_by} {origin}.\n\n"
        f"Merging this pull request deploys the image already built for that commit to {request.phase}, "
        f"once it has the approvals the pipeline requires.\n\n"
        f"## What it ships\n\n{changelog}"
    )
    number, url = client.create_pull(title=request.title, head=request.head_branch, base=request.branch,
                                     body=body)
    return number, url, False


def run_rollback(job: CommandJob, session: Session, app: App, command: commands.Rollback, role: str) -> Outcome:
    outcome = job.actions.rollback(session, app, command.phase, actor=job.actor, role=role, trigger=TRIGGER,
                                   to_version=command.to_version, pr_number=job.pr_number,
                                   comment_id=job.comment_id)
    return _worded(command, outcome)


def run_redeploy(job: CommandJob, session: Session, app: App, command: commands.Redeploy, role: str) -> Outcome:
    return _worded(command, job.actions.redeploy(session, app, command.phase, actor=job.actor, role=role,
                                                       trigger=TRIGGER, pr_number=job.pr_number,
                                                       comment_id=job.comment_id))


def run_retry(job: CommandJob, session: Session, app: App, command: commands.Retry, role: str) -> Outcome:
    target = latest_in(session, app.id, command.phase, (DeploymentStatus.FAILED.value, DeploymentStatus.CANCELLED.value))
    return _worded(command, job.actions.retry(session, app, target, actor=job.actor, role=role,
                                                    pr_number=job.pr_number, comment_id=job.comment_id))


def run_cancel(job: CommandJob, session: Session, app: App, command: commands.Cancel, role: str) -> Outcome:
    target = latest_in(session, app.id, command.phase, IN_PROGRESS)
    outcome = job.actions.cancel(session, app, target, actor=job.actor, role=role)
    if outcome.finished:
        job.finished_reports.extend(r.id for r in job.ctx.reports.finished(session, app, target)
                                    if r.state == "pending")
    return replace(_worded(command, outcome), deployment_id=None)  # nothing to run: the reply only tells


def run_freeze(job: CommandJob, session: Session, app: App, command: commands.Freeze, role: str) -> Outcome:
    return _worded(command, job.actions.freeze(session, app, command.phase, actor=job.actor, role=role,
                                                     reason=command.reason))


def run_unfreeze(job: CommandJob, session: Session, app: App, command: commands.Unfreeze, role: str) -> Outcome:
    return _worded(command, job.actions.unfreeze(session, app, command.phase, actor=job.actor, role=role))


def run_status(job: CommandJob, session: Session, app: App, command: commands.Status, role: str) -> Outcome:
    return Outcome(True, f"here is what runs where:\n\n{status_table(job.ctx, session, app)}")


def run_help(job: CommandJob, session: Session, app: App, command: commands.Help, role: str) -> Outcome:
    return Outcome(True, commands.HELP_TEXT)


def status_table(ctx: Context, session: Session, app: App) -> str:
    """One Markdown row per phase: version, URL, health, when and by whom; then the previews."""
    try:
        containers = ctx.runtime.instances(app=app.name)
    except Exception as exc:  # Docker unreachable: the table still answers from the database
        log.warning("status: cannot list containers: %s", exc)
        containers = None
    rows = ["| Phase | Version | URL | Health | When | Who |", "|---|---|---|---|---|---|"]
    for phase in ctx.config.phase_names:
        serving = current(session, app.id, phase)
        if serving is None:
            rows.append(f"| {phase} | — | — | — | — | — |")
            continue
        rows.append(
            f"| {phase} | {_version(serving)} | {serving.url or '—'} "
            f"| {_health(containers, serving)} | {_when(serving.finished_at)} "
            f"| {'@' + serving.actor if serving.actor else '—'} |"
        )
    for preview in previews.listing(session, app.id):  # pull request previews (README, Pull request previews)
        rows.append(f"| {preview['phase']} (#{preview['pr_number']}) | "
                    f"{'`' + preview['version'] + '`' if preview['version'] else '—'} | {preview['url'] or '—'} "
                    f"| {preview['state']} | {_when(preview['active_at'])} | — |")
    return "\n".join(rows)


def _version(deployment: Deployment) -> str:
    if deployment.version == deployment.short_sha:
        return f"`{deployment.short_sha}`"
    return f"{_cell(deployment.version)} (`{deployment.short_sha}`)"


def _health(containers, deployment: Deployment) -> str:
    if containers is None:
        return "unknown (Docker unreachable)"
    for container in containers:
        if container.id == deployment.container_id:
            return container.state or ("running" if container.running else "stopped")
    return "no container"


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "—"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def as_text(command: Command) -> str:
    """The command as its canonical comment text, for quoting in replies."""
    words = [f"/{command.name.value}"]
    if isinstance(command, commands.DeployPreview):
        return f"/deploy {commands.PREVIEW_WORD}"
    if isinstance(command, commands.DeployHead) and command.phase:
        words.append(command.phase)
    elif isinstance(command, commands.Promote):
        words += [command.phase, *([command.version] if command.version else []),
                  *(["as", command.rename_to] if command.rename_to else [])]
        if command.force:
            words += ["--force", command.force]
    elif isinstance(command, commands.Rollback):
        words += [command.phase, *(["to", command.to_version] if command.to_version else [])]
    elif isinstance(command, commands.Freeze):
        words += [command.phase, *([command.reason] if command.reason else [])]
    elif isinstance(command, (commands.Redeploy, commands.Retry, commands.Cancel, commands.Unfreeze)):
        words.append(command.phase)
    return " ".join(words)


# -- the table -------------------------------------------------------------------------------


def _first_phase(command: commands.DeployHead, phases: list[str]) -> str:
    return command.phase or phases[0]


def _target_phase(command: Command, phases: list[str]) -> str:
    return command.phase


def _no_phase(command: Command, phases: list[str]) -> None:
    return None


@dataclass(frozen=True)
class Runner:
    """How to carry out one command: the permission it needs, on which phase, and the work."""

    action: Action
    phase_of: Callable[[Command, list[str]], str | None]
    run: Callable[[CommandJob, Session, App, Command, str], Outcome]


RUNNERS: dict[CommandName, Runner] = {
    CommandName.DEPLOY: Runner(Action.DEPLOY, _first_phase, run_deploy),
    CommandName.DEPLOY_PREVIEW: Runner(Action.DEPLOY_PREVIEW, _no_phase, run_deploy_preview),
    CommandName.PROMOTE: Runner(Action.PROMOTE, _target_phase, run_promote),
    CommandName.ROLLBACK: Runner(Action.ROLLBACK, _target_phase, run_rollback),
    CommandName.REDEPLOY: Runner(Action.REDEPLOY, _target_phase, run_redeploy),
    CommandName.RETRY: Runner(Action.RETRY, _target_phase, run_retry),
    CommandName.CANCEL: Runner(Action.CANCEL, _target_phase, run_cancel),
    CommandName.FREEZE: Runner(Action.FREEZE, _target_phase, run_freeze),
    CommandName.UNFREEZE: Runner(Action.UNFREEZE, _target_phase, run_unfreeze),
    CommandName.STATUS: Runner(Action.STATUS, _no_phase, run_status),
    CommandName.HELP: Runner(Action.HELP, _no_phase, run_help),
}


def check_runners(table: dict[CommandName, Runner]) -> None:
    """Fail fast: every command word of the grammar needs a runner, and nothing else has one."""
    missing = sorted(set(CommandName) - set(table))
    unknown = sorted(set(table) - set(CommandName))
    if missing or unknown:
        raise RuntimeError(f"command runners out of step with the grammar: missing {missing}, unknown {unknown}")


check_runners(RUNNERS)
