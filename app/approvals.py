"""Counting a promotion PR's approvals the way a reviewer expects them to count."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

#: Audit action recorded when /promote opens a promotion PR on someone's behalf.
PROMOTION_REQUESTED = "promotion_requested"

# Only these states change a reviewer's verdict; a later plain comment keeps an approval.
DECISIVE = {"APPROVED", "CHANGES_REQUESTED", "DISMISSED"}


@dataclass(frozen=True)
class ApprovalCount:
    approvers: tuple[str, ...]
    needed: int
    #: (login, short sha) of approvals given to an earlier head: they do not count.
    stale: tuple[tuple[str, str], ...] = ()
    #: Approvals of the head by people the phase's rules do not let approve: not counted.
    ineligible: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        return len(self.approvers)

    @property
    def enough(self) -> bool:
        return self.count >= self.needed

    def explain(self) -> str:
        who = f" ({', '.join('@' + a for a in self.approvers)})" if self.approvers else ""
        stale = "; not counted, given to an earlier head: " + ", ".join(
            f"@{login} (approved {sha})" for login, sha in self.stale) if self.stale else ""
        return f"{self.count} of {self.needed} required approvals{who}{stale}"


def count_approvals(reviews: Iterable[dict], *, author: str | None, needed: int, head: str,
                    requesters: Iterable[str] = (),
                    eligible: Callable[[str], bool] | None = None) -> ApprovalCount:
    """The latest decisive review per reviewer, excluding the PR author; APPROVED ones count.

    Only an approval of `head` (the commit merged and deployed) counts: one given to an earlier
    head approved other code, so it is listed as stale instead.

    `requesters` are excluded too: a promotion PR is opened by the bot on someone's behalf,
    and that person must not approve their own promotion. `eligible` filters approvers (e.g.
    by repository role), asked only for those whose latest verdict is an approval.

    Reviews arrive in chronological order from the reviews API; `submitted_at` breaks ties
    when a caller hands them in another order.
    """
    excluded = {(author or "").lower(), *(r.lower() for r in requesters)} - {""}
    latest: dict[str, tuple[str, str]] = {}
    ordered = sorted(reviews, key=lambda r: (r.get("submitted_at") or "", r.get("id") or 0))
    for review in ordered:
        # The adapter's reviews carry the login itself; GitHub's JSON a user object.
        user = review.get("user")
        login = ((user.get("login") if isinstance(user, dict) else user) or "").lower()
        state = (review.get("state") or "").upper()
        if not login or state not in DECISIVE or login in excluded:
            continue
        latest[login] = (state, review.get("commit_id") or "")
    approved = sorted(login for login, (state, _) in latest.items() if state == "APPROVED")
    stale = tuple((login, latest[login][1][:7] or "an unknown commit") for login in approved
                  if latest[login][1] != head)
    current = {login for login, _ in stale}
    of_head = [login for login in approved if login not in current]
    ineligible = tuple(login for login in of_head if eligible is not None and not eligible(login))
    approvers = tuple(login for login in of_head if login not in ineligible)
    return ApprovalCount(approvers=approvers, needed=needed, stale=stale, ineligible=ineligible)
