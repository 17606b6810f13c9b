"""Personal API tokens: created, listed and revoked by their owner; looked up by their hash."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import ApiToken, utcnow

#: Marks our tokens, so a leaked one is recognisable (and secret scanners can match it).
PREFIX = "rpt_"
SHOWN_CHARACTERS = 8
MAX_NAME = 100
#: Last use is written at most this often per token, not on every request.
LAST_USE_RESOLUTION = timedelta(minutes=1)


class TokenError(ValueError):
    """A token request that cannot be honoured; the message is safe to show."""


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(session: Session, *, login: str, kind: str, name: str) -> tuple[ApiToken, str]:
    """A new token for `login`: the row, and the plaintext (never stored; show it once)."""
    name = " ".join((name or "").split())
    if not name:
        raise TokenError("give the token a name (what it is for, e.g. “laptop” or “CI”)")
    if len(name) > MAX_NAME:
        raise TokenError(f"the name must be at most {MAX_NAME} characters")
    plaintext = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(login=login, kind=kind, name=name, token_hash=digest(plaintext),
                   prefix=plaintext[:len(PREFIX) + SHOWN_CHARACTERS])
    session.add(row)
    session.flush()
    return row, plaintext


def owned_by(session: Session, login: str) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).where(ApiToken.login == login).order_by(ApiToken.id.desc())))


def revoke(session: Session, *, login: str, token_id: int) -> ApiToken:
    row = session.get(ApiToken, token_id)
    if row is None or row.login != login:
        raise TokenError("you have no such token")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def find(session: Session, token: str) -> ApiToken | None:
    """The row of `token` (revoked ones too, so the caller can say so), or None."""
    if not token.startswith(PREFIX):
        return None
    return session.scalar(select(ApiToken).where(ApiToken.token_hash == digest(token)))


def mark_used(row: ApiToken) -> None:
    now = utcnow()
    last = row.last_used_at
    if last is not None and last.tzinfo is None:  # SQLite returns naive UTC
        last = last.replace(tzinfo=now.tzinfo)
    if last is None or now - last >= LAST_USE_RESOLUTION:
        row.last_used_at = now
