"""Reading the fields every event shares; a missing field raises KeyError (→ 400)."""

from __future__ import annotations

from typing import Any

from app.plans import Repo


def repo_of(payload: dict[str, Any]) -> Repo:
    repository = payload["repository"]
    installation = payload.get("installation") or {}
    return Repo(
        full_name=_text(repository["full_name"]),
        clone_url=repository.get("clone_url"),
        default_branch=_text(repository.get("default_branch") or repository.get("master_branch") or "main"),
        html_url=repository.get("html_url"),
        installation_id=installation.get("id"),
    )


def commit_of(head: Any) -> dict[str, str | None]:
    """A push's `head_commit` as the plan keeps it: its title (the message's first line) and
    author. A commit message is the pusher's free text: anything odd in it is cut or replaced,
    never a reason to refuse the push."""
    head = head if isinstance(head, dict) else {}
    message, author = head.get("message"), head.get("author") if isinstance(head.get("author"), dict) else {}
    who = author.get("username") or author.get("name")
    return {"commit_title": _printable(message.strip().split("\n", 1)[0], 200) if isinstance(message, str) else None,
            "commit_author": _printable(who, 100) if isinstance(who, str) else None}


def _printable(text: str, limit: int) -> str | None:
    cleaned = text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8").strip()[:limit]
    return cleaned or None


def sender_of(payload: dict[str, Any]) -> str:
    return _text((payload.get("sender") or {}).get("login") or "")


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value
