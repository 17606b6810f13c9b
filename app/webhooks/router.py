"""A small event router: handlers register for an event (and optionally an action).

Modelled on gidgethub's Router as bedevere uses it: each event module owns a router and
the planner composes them. Handlers are pure: (payload, pipeline config) -> Plan.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.pipeline import PipelineConfig
from app.plans import Plan

Handler = Callable[[dict[str, Any], PipelineConfig], Plan]


class Router:
    def __init__(self, *others: Router):
        self._handlers: dict[tuple[str, str | None], Handler] = {}
        for other in others:
            for key, handler in other._handlers.items():
                if key in self._handlers:
                    raise ValueError(f"two handlers for {key}")
                self._handlers[key] = handler

    def register(self, event: str, action: str | None = None) -> Callable[[Handler], Handler]:
        def decorate(handler: Handler) -> Handler:
            if (event, action) in self._handlers:
                raise ValueError(f"two handlers for {(event, action)}")
            self._handlers[(event, action)] = handler
            return handler

        return decorate

    def handler_for(self, event: str, action: str | None) -> Handler | None:
        """The action-specific handler first, then the event-wide one."""
        return self._handlers.get((event, action)) or self._handlers.get((event, None))
