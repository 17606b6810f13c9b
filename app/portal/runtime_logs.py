"""A running phase's own output: its app container and backing services, last lines and a live tail.

Read through the runtime (`output_source`, then its services host's `output`: one call per
container, or per Swarm service for every node's tasks), for the portal's logs page and the API
alike. Every value that is a secret of the phase (its profile's secrets, the
passwords of its services, as in effect now and as the serving deployment runs them) is masked
with `crypto.mask` before a line leaves this module.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from flask import Response, request

from app.actions import current
from app.crypto import mask
from app.exceptions import EngineUnavailable, ReleasePipelineError
from app.models import App, iso
from app.portal import live_log, queries
from app.profiles import resolve
from app.runtime import PhaseRef

#: Lines shown when none are asked for, and the most one can ask for.
DEFAULT_LINES = 200
MAX_LINES = 2000


@dataclass(frozen=True)
class Source:
    """One container whose output is shown: `key` is "app" or the service's name."""

    key: str
    label: str
    container_id: str | None
    running: bool


@dataclass(frozen=True)
class Sources:
    """What runs for one app+phase, and the values its output must never show."""

    items: list[Source]
    hidden: list[str]


def sources_for(ctx, name: str, phase: str, require_view: Callable[[App], object]) -> tuple[App, Sources]:
    """The app named `name` (once `require_view` let the reader see it) and its phase's sources."""
    with ctx.db.session() as session:
        app = queries.get_app(session, name)
        require_view(app)
        queries.require_phase(ctx.config, phase)
        return app, sources(ctx, session, app, phase)


def sources(ctx, session, app: App, phase: str) -> Sources:
    """The serving deployment's output (its container; on Swarm its service, every node's tasks)
    and the phase's backing services' (an unreachable engine raises, for the caller to say so);
    and the phase's secret values, decrypted, to mask."""
    serving = current(session, app.id, phase)
    target, host = PhaseRef(app.id, app.name, phase), ctx.runtime.services
    try:
        found = ctx.runtime.output_source(target, serving.id, serving.container_id) if serving else None
        services = host.service_containers(app.name, phase)
    except ReleasePipelineError:
        raise
    except Exception as exc:  # whatever the engine's trouble, the page says it and nothing else
        raise EngineUnavailable(f"the Docker engine cannot be asked: {exc}") from exc
    items = []
    if serving is not None:
        items.append(Source("app", f"{app.name} {phase} · {serving.version}", *found))
    for service in sorted(services, key=lambda c: c.name):
        name = service.labels.get(host.LABEL_SERVICE) or service.name
        items.append(Source(name, f"service {name}", service.id, service.state == "running"))
    sealed = [s.value for s in resolve(session, ctx.config, app.id, phase).secrets.values()]
    if serving is not None:
        sealed += list((serving.profile_snapshot or {}).get("secrets", {}).values())
    # A value that cannot be decrypted raises SettingsError: nothing is shown unmasked.
    hidden = [ctx.box.open(value) for value in sealed]
    # Longest first: a secret that contains another is masked whole.
    return Sources(items, sorted({h for h in hidden if h}, key=len, reverse=True))


def lines_of(ctx, found: Sources, source: Source, *, tail: int,
             since: float | None = None) -> list[tuple[float, dict]]:
    """(unix time, {source, at, text}) per line of `source`, masked."""
    if source.container_id is None:
        return []
    return [(moment, {"source": source.key, "at": iso(datetime.fromtimestamp(moment, timezone.utc)),
                      "text": mask(text, found.hidden)})
            for moment, text in ctx.runtime.services.output(source.container_id, tail=tail, since=since)]


def document(ctx, found: Sources, tail: int) -> dict:
    """What the API answers and the page shows: each source with its last `tail` lines."""
    return {"lines": tail, "sources": [
        {"key": source.key, "label": source.label, "running": source.running,
         "lines": [line for _, line in lines_of(ctx, found, source, tail=tail)]}
        for source in found.items]}


def tail_response(ctx, found: Sources) -> Response:
    """Server-sent events: `line` per new line of any source (`source`, `at`, `text`), after
    Last-Event-ID or ?since (unix time; default now); ends after live_log.STREAM_SECONDS."""
    since = request.headers.get("Last-Event-ID", type=float) or request.args.get("since", type=float) or time.time()
    return live_log.events_response(_tail(ctx, found, since))


def _tail(ctx, found: Sources, since: float):
    def tick(held: bool) -> list[str]:
        nonlocal since
        fresh = sorted((pair for source in found.items
                        for pair in lines_of(ctx, found, source, tail=MAX_LINES, since=since)), key=lambda pair: pair[0])
        out = []
        for moment, line in fresh:
            since = max(since, moment)
            out.append(live_log.event("line", line, repr(moment)))
        if not held and not out:
            out.append(f"id: {since!r}\n\n")  # a short answer: the next one goes on from here
        return out

    return live_log.paced(tick)
