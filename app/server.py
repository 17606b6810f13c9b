"""`release-pipeline serve`: the webhook endpoint, portal and API under granian.

granian parses HTTP in Rust and hands each request to the WSGI app on one of a few Python
threads per process: a delivery costs the Python interpreter only what app.receiver does, and
every process takes its share of the connections (gunicorn's threaded workers each accepted
all they could: one process held 14 of 16 kept-alive connections while the other idled).
The processes fork from this one: each builds its own app and context (`worker_app`), and
this one serves METRICS_PORT from the samples all of them write (prometheus multiprocess).
"""

from __future__ import annotations

import gc
import logging

from granian.constants import Interfaces
from granian.server import Server
from prometheus_client import start_http_server

from app.context import Context

log = logging.getLogger(__name__)

#: Python threads per process: the Redis round trip and slow portal queries overlap on them,
#: and one stays free while the process holds its live page streams (live_log.HELD_STREAMS).
#: Not more: each waits its turn at the interpreter lock (wrk, 16 connections, drainer on:
#: p99 16-36 ms with 4 threads, 10-15 ms with 3).
THREADS = 3
#: The server's own lines go through this process's root handler, so LOG_FORMAT applies to
#: them as to everything else. The access log is the app's (app.logs.AccessLog).
_LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {"_granian": {"handlers": [], "level": "INFO", "propagate": True}},
}


def run(ctx: Context, host: str, port: int, workers: int) -> None:
    """Serve until a signal stops the server (SIGTERM from honcho or `up`, Ctrl-C)."""
    settings = ctx.settings
    if settings.metrics_port is not None:
        from app import metrics

        start_http_server(settings.metrics_port, addr="127.0.0.1", registry=metrics.registry(ctx))
        log.info("metrics on http://127.0.0.1:%s/metrics", settings.metrics_port)
    ctx.db.engine.dispose()  # forked processes must not share this one's database connections
    # What this process built stays as it is in every fork: out of the collector's sight, its
    # pages are not copied into each process, nor scanned by each one's collections.
    gc.freeze()
    Server("app.web:worker_app", address=host, port=port, interface=Interfaces.WSGI, workers=workers,
           blocking_threads=THREADS, websockets=False, factory=True, log_dictconfig=_LOGGING, log_access=False,
           respawn_failed_workers=True).serve()
