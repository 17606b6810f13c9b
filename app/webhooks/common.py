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


def sender_of(payload: dict[str, Any]) -> str:
    return _text((payload.get("sender") or {}).get("login") or "")


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value
