"""What a promotion ships: the commits between what a phase serves and what is promoted.

Read from the repository itself (a scratch fetch of both commits), so it works without the
GitHub App too; recorded on the deployment and shown in command replies, promotion PR
bodies and summaries, and the portal's compare and deployment pages.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import urlparse

from app.adapters import git
from app.exceptions import ReleasePipelineError

log = logging.getLogger(__name__)

#: How many commits are listed; beyond that the list says it was cut.
LIMIT = 100
#: Listing the same pair again (the portal's compare page) is read from Redis.
CACHE_SECONDS = 3600


def commits_between(ctx, *, clone_url: str | None, installation_id: int | None, base: str | None,
                    head: str | None) -> list[dict]:
    """[{sha, title, author}], newest first; [] when it cannot be read (said in the log)."""
    if not clone_url or not head:
        return []
    key = f"rp:shipped:{clone_url}:{base}:{head}"
    try:
        cached = ctx.redis.get(key)
        if cached is not None:
            return json.loads(cached)
    except Exception:  # a cache only: Redis being away must not hide the list
        cached = None
    token = None
    if ctx.github is not None and installation_id is not None:
        try:
            token = ctx.github.installation_token(installation_id)
        except ReleasePipelineError as exc:
            log.warning("no installation token for the commit list: %s", exc)
    try:
        found = git.log_between(clone_url, base, head, token=token, limit=LIMIT,
                                allowed_host=urlparse(ctx.settings.github_url).hostname or "",
                                allow_file=ctx.settings.pipeline_allow_file_clones)
    except ReleasePipelineError as exc:
        log.warning("cannot list the commits %s..%s: %s", (base or "")[:7], head[:7], exc)
        return []
    commits = [{"sha": c.sha, "title": c.title[:200], "author": c.author[:100]} for c in found]
    try:
        ctx.redis.set(key, json.dumps(commits), ex=CACHE_SECONDS)
    except Exception:
        pass
    return commits


def commit_url(html_url: str | None, sha: str) -> str | None:
    return f"{html_url.rstrip('/')}/commit/{sha}" if html_url else None


def markdown(commits: list[dict], html_url: str | None, *, serving: str | None) -> str:
    """The list as GitHub Markdown: one line per commit, linked, with its author."""
    if not commits:
        return f"No new commits since {serving}." if serving else "No commits to list."
    lines = []
    for commit in commits:
        url = commit_url(html_url, commit["sha"])
        sha = f"[`{commit['sha'][:7]}`]({url})" if url else f"`{commit['sha'][:7]}`"
        title = commit["title"].replace("\n", " ")
        lines.append(f"- {sha} {_escape(title)} — {_escape(commit['author'])}")
    if len(commits) >= LIMIT:
        lines.append(f"- … (only the newest {LIMIT} are listed)")
    since = f" since {serving}" if serving else ""
    return f"{len(commits)} commit{'s' if len(commits) != 1 else ''}{since}:\n" + "\n".join(lines)


def _escape(text: str) -> str:
    """Commit text is user data: no mentions, no HTML in a bot comment."""
    return text.replace("@", "@\u200b").replace("<", "&lt;").replace(">", "&gt;")
