"""The promotion-summary job: a promotion PR's one comment and `release-pipeline/promotion` status.

Opening a promotion pull request is the request (README, Release controls): on every change of the PR or its
reviews the bot says what merging would deploy, what it ships, the approvals needed and given,
and any freeze, and sets a status branch protection can require. Nothing is deployed here; the
merge keeps its own checks (`workers.deploy`), which stay the authority.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

from sqlalchemy import select

from app import gates
from app.actions import current
from app.adapters import git
from app.adapters.github import PullRequest
from app.approvals import ApprovalCount, count_approvals
from app.context import Context
from app.freezes import Freeze, frozen
from app.jobs import ReportJob
from app.models import App, Deployment, DeploymentStatus
from app.permissions import role_allows
from app.versions import is_release_tag, short_sha, version_from_title
from app.webhooks.pull_request import _promoted_version
from workers import runtime
from workers.command import repo_client, shipped_text
from workers.deploy import promotion_requesters

TOPIC = "promotion-summary"


@dataclass(frozen=True)
class Verdict:
    state: str  # pending | failure | success
    description: str


def verdict(*, counted: ApprovalCount, freeze: Freeze | None, ran_before: bool, previous: str | None) -> Verdict:
    """Whether merging would deploy, decided from what the merge itself checks."""
    if freeze is not None:
        return Verdict("failure", f"merging would deploy nothing: {freeze.describe()}")
    if not ran_before:
        return Verdict("failure", f"this commit never ran on {previous}: promote it there first")
    if counted.enough:
        return Verdict("success", f"merging deploys: {counted.explain()}")
    notes = ([f"approvals of an older commit by {', '.join('@' + x for x, _ in counted.stale)}"] if counted.stale
             else []) + ([f"approvals by {', '.join('@' + x for x in counted.ineligible)}, who may not approve"]
                         if counted.ineligible else [])
    why = f"; not counted: {'; '.join(notes)}" if notes else ""
    return Verdict("pending", f"{counted.needed - counted.count} more approval(s) needed{why}")


def summarize(*, app_id: int, pr_number: int, phase: str) -> str:
    """RQ entry point (enqueued by `app.jobs.Jobs.summary`)."""
    ctx = runtime.context()
    client = repo_client(ctx, app_id)
    pull = client.get_pull(pr_number)
    head = pull.head_sha
    author = pull.author
    settings = ctx.config.phase(phase)
    with ctx.db.session() as session:
        app = session.get(App, app_id)
        version = _version(ctx, app, pull, phase, head)
        serving = current(session, app_id, phase)
        # The merge's own rule (`require_previous_phase`): None when it does not apply.
        previous = gates.previous_phase(ctx.config.phase_names, phase, "pull_request",
                                        required=ctx.config.require_previous_phase)
        ran_before = previous is None or session.scalar(select(Deployment.id).where(
            Deployment.app_id == app_id, Deployment.phase == previous, Deployment.sha == head,
            Deployment.status == DeploymentStatus.SUCCEEDED.value).limit(1)) is not None
        freeze = frozen(session, ctx.config, app_id, phase)
        changelog = shipped_text(ctx, session, app, phase, head)
    requesters = promotion_requesters(ctx, app_id, pr_number)
    counted = count_approvals(client.list_reviews(pr_number), author=author, needed=settings.approvals,
                              requesters=requesters, head=head,
                              eligible=lambda login: role_allows(client.collaborator_permission(login), "write"))
    decided = verdict(counted=counted, freeze=freeze, ran_before=ran_before, previous=previous)
    body = _comment(phase=phase, version=version, head=head, serving=serving, changelog=changelog,
                    counted=counted, author=author, requesters=requesters, freeze=freeze, decided=decided,
                    previous=previous, ran_before=ran_before)
    with ctx.db.session() as session:
        app = session.get(App, app_id)
        reports = [ctx.reports.comment(session, app, pr_number, TOPIC, body),
                   ctx.reports.promotion_status(session, app, head, decided.state, decided.description,
                                                pull.html_url or ctx.settings.public_url)]
        pending = [r.id for r in reports if r.state == "pending"]
    for report_id in pending:
        ctx.jobs.enqueue(ReportJob(report_id))
    return decided.state


def _version(ctx: Context, app: App, pull: PullRequest, phase: str, head: str) -> str:
    """The merge's rule: /promote's branch name, else a release tag at the head, else the
    title's version, else the short sha."""
    promoted = _promoted_version(pull.head_ref, phase)
    if promoted:
        return promoted
    try:
        tags = [t for t in git.tags_at(app.clone_url, head, allowed_host=urlparse(ctx.settings.github_url).hostname
                                       or "", allow_file=ctx.settings.pipeline_allow_file_clones)
                if is_release_tag(t)]
    except Exception:  # the summary still answers; the merge reads the tag again
        tags = []
    return sorted(tags)[-1] if tags else version_from_title(pull.title) or short_sha(head)


def _comment(*, phase: str, version: str, head: str, serving: Deployment | None, changelog: str,
             counted: ApprovalCount, author: str | None, requesters: list[str], freeze: Freeze | None,
             decided: Verdict, previous: str | None, ran_before: bool) -> str:
    mark = {"success": "✅", "pending": "⏳", "failure": "⛔"}[decided.state]
    lines = [
        f"### Promotion to {phase.capitalize()}",
        "",
        f"{mark} **{decided.description}**",
        "",
        f"- Merging deploys **{version}** (`{head[:7]}`) to {phase}.",
        f"- {phase.capitalize()} serves " + (f"**{serving.version}** (`{serving.short_sha}`)." if serving
                                              else "nothing yet."),
        f"- Approvals: {counted.explain()} of this head commit, from people with write access or more"
        + "".join(f" other than @{who}" for who in [author, *requesters] if who) + ".",
    ]
    if counted.stale:
        lines.append("- Not counted, they approved an older commit: "
                     + ", ".join(f"@{x} (approved {sha})" for x, sha in counted.stale))
    if counted.ineligible:
        lines.append("- Not counted, they may not approve: " + ", ".join(f"@{x}" for x in counted.ineligible))
    if freeze is not None:
        lines.append(f"- Freeze: {freeze.describe()}.")
    if not ran_before:
        lines.append(f"- `{head[:7]}` never ran on {previous}.")
    lines += ["", "#### What it ships", "", changelog, "",
              "<sub>Nothing deploys before the merge; the merge checks all of this again.</sub>"]
    return "\n".join(lines)
