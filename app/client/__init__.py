"""A client of a running installation's JSON API (/api/v1), for the command line and scripts."""

from app.adapters.pipeline_api import ApiError, Client, ClientError, ConnectionFailed, Event

__all__ = ["ApiError", "Client", "ClientError", "ConnectionFailed", "Event"]
