"""`push`: a branch push deploys to the push phase; a release tag push to the tag phase."""

from app.plans import Deploy, Ignore, Trigger
from app.versions import short_sha
from app.webhooks.common import commit_of, repo_of, sender_of
from app.webhooks.router import Router
from app.webhooks.tags import deploy_tag

router = Router()


@router.register("push")
def push(payload, config):
    ref = payload["ref"]
    repo = repo_of(payload)
    # The sender is the GitHub account that pushed (its role is checked before deploying);
    # `pusher.name` is only a git name.
    actor = sender_of(payload) or (payload.get("pusher") or {}).get("name") or ""
    if payload.get("deleted"):
        kind = "tag" if ref.startswith("refs/tags/") else "branch"
        return Ignore(f"{kind} deletion ({ref}) deploys nothing")
    after = payload["after"]
    if not isinstance(after, str) or len(after) != 40:
        raise ValueError("after must be a commit sha")
    if ref.startswith("refs/tags/"):
        head = payload.get("head_commit") or {}
        # For an annotated tag `after` is the tag object; head_commit names the commit.
        return deploy_tag(config, repo, ref.removeprefix("refs/tags/"), head.get("id") or after, actor, "push",
                          commit=commit_of(head))
    if not ref.startswith("refs/heads/"):
        return Ignore(f"push to {ref} deploys nothing")
    branch = ref.removeprefix("refs/heads/")
    for phase in config.phases.values():
        if phase.trigger == "push" and branch == (phase.branch or repo.default_branch):
            return Deploy(
                repo=repo,
                phase=phase.name,
                ref=ref,
                sha=after,
                version=short_sha(after),
                trigger=Trigger.PUSH,
                actor=actor,
                **commit_of(payload.get("head_commit")),
            )
    return Ignore(f"push to branch {branch} deploys nothing (only {repo.default_branch} does)")
