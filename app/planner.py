"""The planner: a pure function from (event, payload, pipeline configuration) to a Plan.

No I/O here, so every row of the README's first table is tested as a table. Executors (intake, workers)
carry plans out against the database, the queue, GitHub, git and Docker.
"""

from __future__ import annotations

from typing import Any

from app.pipeline import PipelineConfig
from app.plans import Ignore, Invalid, Plan
from app.webhooks import create, delete, installation, issue_comment, ping, pull_request, push, release
from app.webhooks.router import Router

ROUTER = Router(
    ping.router,
    push.router,
    create.router,
    delete.router,
    release.router,
    pull_request.router,
    issue_comment.router,
    installation.router,
)


def plan(event: str, payload: Any, config: PipelineConfig) -> Plan:
    if not isinstance(payload, dict):
        return Invalid("the body must be a JSON object")
    action = payload.get("action")
    handler = ROUTER.handler_for(event, action if isinstance(action, str) else None)
    if handler is None:
        return Ignore(f"event {event!r} is not used by Release Pipeline")
    try:
        return handler(payload, config)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as exc:
        missing = f"missing field {exc}" if isinstance(exc, KeyError) else "a field has the wrong type"
        return Invalid(f"{event} delivery is malformed: {missing}")
