"""`issue_comment`: slash-commands in pull-request comments."""

from app import commands
from app.plans import Ignore, Reply, RunCommand
from app.webhooks.common import repo_of, sender_of
from app.webhooks.router import Router

router = Router()


@router.register("issue_comment", action="created")
def created(payload, config):
    issue = payload["issue"]
    comment = payload["comment"]
    number, comment_id = int(issue["number"]), int(comment["id"])
    if "pull_request" not in issue:
        return Ignore("commands are only read on pull requests")
    if (comment.get("user") or {}).get("type") == "Bot":
        return Ignore("comments from bots are not commands")
    body = comment.get("body") or ""
    if not isinstance(body, str):
        raise TypeError("comment body must be a string")
    parsed = commands.parse(body, config.phase_names)
    repo = repo_of(payload)
    if parsed is None:
        return Ignore("no command in the comment")
    if isinstance(parsed, commands.Malformed):
        return Reply(repo=repo, pr_number=number, comment_id=comment_id, message=parsed.message)
    return RunCommand(repo=repo, pr_number=number, comment_id=comment_id, actor=sender_of(payload), body=body,
                      commented_at=comment.get("created_at"))


@router.register("issue_comment")
def other_comment_actions(payload, config):
    return Ignore(f"only new comments are read (this one was {payload.get('action')})")
