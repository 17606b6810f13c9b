"""Change freezes: whether a phase is frozen now, by whom, why and until when.

A freeze is either configured (`phases.<name>.freeze` in pipeline.yml: UTC windows or whole
weekdays) or ad hoc (`/freeze`, the portal, the API: one row until `/unfreeze`). Deciding is
pure (`active_freeze`, tested by equality); `frozen` reads the ad-hoc row and asks it.
Every way into a phase consults `frozen` before anything is built or switched.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import PhaseFreeze, utcnow
from app.pipeline import WEEKDAYS, FreezeWindow, PipelineConfig

#: Who a configured window is attributed to in messages.
CONFIGURED = "pipeline.yml"


@dataclass(frozen=True)
class Freeze:
    phase: str
    author: str
    reason: str
    #: When it ends by itself; None: until someone unfreezes the phase.
    until: datetime | None

    def describe(self) -> str:
        """One line naming the freeze, its author and its end (replies, statuses, the board)."""
        reason = f" ({self.reason})" if self.reason else ""
        end = f"until {self.until:%Y-%m-%d %H:%M} UTC" if self.until else "until someone unfreezes it"
        by = "by pipeline.yml" if self.author == CONFIGURED else f"by @{self.author}"
        return f"{self.phase} is frozen{reason} {by}, {end}"


def _window_end(window: FreezeWindow, now: datetime) -> datetime | None:
    """When `window` ends if it covers `now`, else None."""
    if window.days is not None:
        if WEEKDAYS[now.weekday()] not in window.days:
            return None
        end = now.replace(hour=0, minute=0, second=0, microsecond=0)
        while WEEKDAYS[end.weekday()] in window.days and end - now < timedelta(days=7):
            end += timedelta(days=1)
        return end
    if window.start <= now < window.end:
        return window.end
    return None


def active_freeze(config: PipelineConfig, phase: str, ad_hoc: PhaseFreeze | None, now: datetime) -> Freeze | None:
    """The freeze in force on `phase` at `now`: an ad-hoc one first, else the configured
    window that ends last."""
    if ad_hoc is not None:
        return Freeze(phase, ad_hoc.author, ad_hoc.reason, None)
    configured = config.phases.get(phase)  # a preview (pr-<n>) has no configured freeze
    windows = [(end, window) for window in (configured.freeze if configured else [])
               if (end := _window_end(window, now)) is not None]
    if not windows:
        return None
    end, window = max(windows, key=lambda pair: pair[0])
    return Freeze(phase, CONFIGURED, window.reason, end)


def ad_hoc_freeze(session: Session, app_id: int, phase: str) -> PhaseFreeze | None:
    return session.scalar(select(PhaseFreeze).where(PhaseFreeze.app_id == app_id, PhaseFreeze.phase == phase))


def frozen(session: Session, config: PipelineConfig, app_id: int, phase: str,
           now: datetime | None = None) -> Freeze | None:
    moment = now or utcnow()
    return active_freeze(config, phase, ad_hoc_freeze(session, app_id, phase), moment.astimezone(timezone.utc))
