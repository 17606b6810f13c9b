"""`pull_request`: a merged promotion PR into a phase's branch deploys its head to that phase; a PR into
the default branch gets a preview phase of its own (README, Pull request previews)."""

from app.exceptions import InvalidVersion
from app.plans import Deploy, Ignore, PreviewAction, PreviewEvent, SummarizePromotion, Trigger
from app.versions import short_sha, validate_version, version_from_title
from app.webhooks.common import repo_of, sender_of
from app.webhooks.router import Router

router = Router()


@router.register("pull_request", action="closed")
def closed(payload, config):
    pr = payload["pull_request"]
    base = pr["base"]["ref"]
    number = int(payload.get("number") or pr["number"])
    phase = next(
        (p for p in config.phases.values() if p.trigger == "pull_request" and p.branch == base),
        None,
    )
    if phase is None:
        return _preview_event(payload, config) or Ignore(f"PR #{number} into {base} deploys nothing")
    if not pr.get("merged"):
        return Ignore(f"PR #{number} closed without merging deploys nothing")
    repo = repo_of(payload)
    head_sha = pr["head"]["sha"]
    merger = (pr.get("merged_by") or {}).get("login") or ""
    promoted = _promoted_version(pr["head"].get("ref") or "", phase.name)
    return Deploy(
        repo=repo,
        phase=phase.name,
        ref=head_sha,
        sha=head_sha,
        version=promoted or version_from_title(pr.get("title") or "") or short_sha(head_sha),
        # "promotion": the version was chosen by /promote (maybe renamed); a tag must not override it.
        trigger=Trigger.PROMOTION if promoted else Trigger.PULL_REQUEST,
        actor=merger,
        dedup_key=f"pr:{repo.full_name}:{number}:{phase.name}",
        pr_number=number,
        required_approvals=phase.approvals,
    )


def _promoted_version(head_ref: str, phase: str) -> str | None:
    """The version a `/promote` promotion PR carries in its branch name, `promote/<phase>/<version>`."""
    prefix = f"promote/{phase}/"
    if not head_ref.startswith(prefix):
        return None
    try:
        return validate_version(head_ref.removeprefix(prefix))
    except InvalidVersion:
        return None


@router.register("pull_request", action="opened")
@router.register("pull_request", action="reopened")
@router.register("pull_request", action="synchronize")
@router.register("pull_request", action="ready_for_review")
@router.register("pull_request", action="converted_to_draft")
@router.register("pull_request_review", action="submitted")
@router.register("pull_request_review", action="dismissed")
def promotion_request(payload, config):
    """Opening a promotion PR is the request: its summary and status are kept up to date."""
    pr = payload["pull_request"]
    number = int(payload.get("number") or pr["number"])
    base = pr["base"]["ref"]
    phase = next((p for p in config.phases.values() if p.trigger == "pull_request" and p.branch == base), None)
    if phase is None:
        preview = None if "review" in payload else _preview_event(payload, config)
        what = f"reviews of PR #{number}" if "review" in payload else f"PR #{number} {payload.get('action')}"
        return preview or Ignore(f"{what} into {base}: deploys nothing")
    return SummarizePromotion(repo=repo_of(payload), pr_number=number, phase=phase.name)


def _preview_event(payload, config) -> PreviewEvent | Ignore | None:
    """A pull request into the default branch gets a preview (README, Pull request previews); None: not such a PR."""
    pr = payload["pull_request"]
    repo = repo_of(payload)
    if pr["base"]["ref"] != repo.default_branch:
        return None
    number = int(payload.get("number") or pr["number"])
    if not config.previews.enabled and payload["action"] != "closed":  # a close still removes what runs
        return Ignore(f"PR #{number}: previews are off (previews.enabled in pipeline.yml)")
    head_repo = (pr["head"].get("repo") or {}).get("full_name")
    return PreviewEvent(
        repo=repo, pr_number=number, action=PreviewAction(payload["action"]), head_sha=pr["head"]["sha"],
        head_repo=head_repo, draft=bool(pr.get("draft")), merged=bool(pr.get("merged")),
        updated_at=pr.get("updated_at") or "", actor=sender_of(payload))


@router.register("pull_request")
def other_pull_request_actions(payload, config):
    return Ignore(f"pull_request {payload.get('action')} deploys nothing")


@router.register("pull_request_review")
def review(payload, config):
    return Ignore(f"pull_request_review {payload.get('action')} changes no approval")
