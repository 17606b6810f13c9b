"""With RUNTIME=swarm, each phase URL follows its tasks within seconds, not only at reconcile.

When a node is drained or lost, Swarm starts its tasks elsewhere; until the router lists the
new places, Caddy keeps skipping the unreachable old ones and the phase runs on fewer tasks.
The scheduler process runs `loop` in a thread while a swarm runtime is configured: every
FOLLOW_SECONDS one listing of our services' tasks and nodes, the pure `served_routes` choice
(every running task of the phase's service), one read of the router's routes, and a write only
where a route changed: an idle phase costs the router nothing, however many there are. A phase
being deployed is skipped: its deploy job follows Swarm's rolling update itself.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import select

from app import previews
from app.actions import current
from app.context import Context
from app.locks import holder
from app.models import App

log = logging.getLogger(__name__)

#: Seconds between two looks at where the tasks run.
FOLLOW_SECONDS = 2.0


def served(ctx: Context) -> list[tuple[str, str]]:
    """The (app, phase)s a deployment of ours serves and nobody deploys now."""
    found = []
    with ctx.db.session() as session:
        for app in session.scalars(select(App).where(App.active.is_(True))).all():
            for phase in previews.running_phases(ctx.config, session, app.id):
                if current(session, app.id, phase) is not None and holder(ctx.redis, app.name, phase) is None:
                    found.append((app.name, phase))
    return found


def follow(ctx: Context) -> list[tuple[str, str]]:
    """Once: every served phase's route onto its tasks where they run now; the phases that changed."""
    changed = ctx.runtime.follow(served(ctx))
    for app, phase in changed:
        log.info("the route of %s/%s follows its tasks to their new places", app, phase)
    return changed


def loop(ctx: Context, stop: threading.Event, every: float = FOLLOW_SECONDS) -> None:
    """`follow` every `every` seconds until `stop` is set; a failure is logged and tried again."""
    failing = False
    while not stop.wait(every):
        try:
            follow(ctx)
        except Exception as exc:  # the manager, the router or the database away: next time
            if not failing:
                log.warning("following the Swarm tasks failed (tried again every %gs): %s", every, exc)
            failing = True
        else:
            failing = False
