"""`pull_request`: a merged promotion PR into a phase's branch deploys its head to that phase."""

from app.exceptions import InvalidVersion
from app.plans import Deploy, Ignore
from app.versions import short_sha, validate_version, version_from_title
from app.webhooks.common import repo_of
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
        return Ignore(f"PR #{number} into {base} deploys nothing")
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
        trigger="promotion" if promoted else "pull_request",
        actor=merger,
        dedup_key=f"pr:{repo.full_name}:{number}:{phase.name}",
        pr_number=number,
        pr_author=(pr.get("user") or {}).get("login"),
        required_approvals=phase.approvals,
        prefer_tag=not promoted,
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


@router.register("pull_request")
def other_pull_request_actions(payload, config):
    return Ignore(f"pull_request {payload.get('action')} deploys nothing")


@router.register("pull_request_review")
def review(payload, config):
    # Approvals are counted from the reviews API when the promotion PR merges.
    return Ignore("reviews are counted when the promotion PR is merged")
