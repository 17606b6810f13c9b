"""Ask GitHub to redeliver webhook deliveries that failed (GitHub never retries by itself).

Deliveries are grouped by their `guid` (one event, many attempts); an event none of whose
attempts succeeded, and that is younger than GitHub's redelivery window, is redelivered
once per sweep run. A delivery that did reach us is never asked for again, and our intake
deduplicates by delivery id anyway.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from app.context import Context
from app.exceptions import GitHubError, TransientGitHubError
from workers import runtime

log = logging.getLogger(__name__)

#: GitHub keeps deliveries for redelivery for three days; stay safely inside that.
WINDOW = timedelta(days=3) - timedelta(hours=1)
ASKED_KEY = "rp:redelivery:asked:{guid}"
#: An event whose deliveries failed this often is left alone (it fails for a reason).
MAX_ATTEMPTS = 5
#: Our own deliberate answers (bad request, too large, …) fail again when redelivered.
FINAL_CLIENT_ERRORS = range(400, 500)
RETRYABLE_CLIENT_ERRORS = {401, 408, 429}


def run() -> list[int]:
    """RQ entry point (periodic)."""
    return redeliver_failed(runtime.context())


def redeliver_failed(ctx: Context, now: datetime | None = None) -> list[int]:
    if ctx.github is None:
        return []
    now = now or datetime.now(timezone.utc)
    attempts_by_event: dict[str, list[dict]] = {}
    for delivery in ctx.github.list_hook_deliveries(since=now - WINDOW):
        attempts_by_event.setdefault(delivery.get("guid") or str(delivery["id"]), []).append(delivery)
    asked = []
    for guid, attempts in attempts_by_event.items():
        if any(_succeeded(a) for a in attempts):
            continue
        latest = max(attempts, key=lambda a: a.get("delivered_at") or "")
        delivered_at = datetime.fromisoformat(latest["delivered_at"].replace("Z", "+00:00"))
        if now - delivered_at > WINDOW or len(attempts) >= MAX_ATTEMPTS or _final(latest):
            continue
        # One request per failed attempt: the next sweep asks again only if that one failed too.
        key = ASKED_KEY.format(guid=guid) + f":{latest['id']}"
        if not ctx.redis.set(key, "1", nx=True, ex=int(WINDOW.total_seconds())):
            continue
        try:
            ctx.github.redeliver(int(latest["id"]))
        except TransientGitHubError:
            ctx.redis.delete(key)  # not asked after all: the next sweep tries again
            raise
        except GitHubError as exc:
            log.warning("GitHub refused to redeliver %s (attempt %s): %s", guid, latest["id"], exc)
            continue
        log.info("asked GitHub to redeliver %s (%s, attempt %s)", guid, latest.get("event"), latest["id"])
        asked.append(int(latest["id"]))
    return asked


def _succeeded(delivery: dict) -> bool:
    return 200 <= int(delivery.get("status_code") or 0) < 300


def _final(delivery: dict) -> bool:
    code = int(delivery.get("status_code") or 0)
    return code in FINAL_CLIENT_ERRORS and code not in RETRYABLE_CLIENT_ERRORS
