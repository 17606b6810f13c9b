"""Logging for every process: plain lines, or with LOG_FORMAT=json one JSON object per line.

The delivery and deployment a line is about come from `log_context(...)` (a context variable,
so threads and requests never mix them up) or a call's `extra={...}`; a JSON line carries
them as `delivery_id` and `deployment_id`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone

IDS = ("delivery_id", "deployment_id")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_current: ContextVar[dict] = ContextVar("release_pipeline_log_ids", default={})
access_log = logging.getLogger("release_pipeline.access")


@contextmanager
def log_context(**ids) -> Iterator[None]:
    """Every line logged inside names these ids (e.g. deployment_id=42)."""
    token = _current.set({**_current.get(), **{k: v for k, v in ids.items() if v is not None}})
    try:
        yield
    finally:
        _current.reset(token)


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", "delivery_id"?, "deployment_id"?, "exception"?}`."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        ids = _current.get()
        for key in IDS:
            value = getattr(record, key, None)
            if value is None:
                value = ids.get(key)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure(log_format: str, level: int = logging.INFO) -> None:
    """The root handler of this process (RQ's and the web server's loggers go through it too).

    Like `logging.basicConfig`, it leaves alone a root logger someone else has set up (pytest).
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "release_pipeline", False)]
    if ours:
        ours[0].setFormatter(formatter(log_format))
        root.setLevel(level)
    elif not root.handlers:
        handler = logging.StreamHandler()
        handler.release_pipeline = True
        handler.setFormatter(formatter(log_format))
        root.addHandler(handler)
        root.setLevel(level)


def log_access(environ: dict, status: str, started: float) -> None:
    """The access line of one request: client, method, path (never the query: OAuth codes and
    state travel there), status and the time to the answer's start."""
    access_log.info('%s "%s %s" %s %.1f ms', environ.get("REMOTE_ADDR", "-"), environ.get("REQUEST_METHOD"),
                    environ.get("PATH_INFO"), status.partition(" ")[0], 1000 * (time.perf_counter() - started))


class AccessLog:
    """WSGI middleware: an access line for each request the wrapped app answers.

    Ours rather than the web server's: granian's calls back into Python after every response,
    a second turn at the interpreter lock that cost a fifth of a webhook delivery's CPU; the
    receiver logs its refusals itself and leaves accepted deliveries to the drainer's line."""

    def __init__(self, wrapped: Callable):
        self.wrapped = wrapped

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        started = time.perf_counter()

        def start(status: str, headers: list, exc_info=None):
            log_access(environ, status, started)
            return start_response(status, headers, exc_info)

        return self.wrapped(environ, start)
