"""gunicorn hooks for `release-pipeline serve` (loaded with `--config python:app.gunicorn_conf`).

- A worker that exits (recycled, crashed) has its live-gauge metrics files removed, as
  prometheus_client's multiprocess mode requires.
- With METRICS_PORT, the master serves /metrics on that loopback port, without a token.
- With LOG_FORMAT=json, gunicorn's own error and access logs are JSON lines too.
- Each worker watches the engine's app containers (the portal's health, app.docker_runtime).
"""

from __future__ import annotations

import logging

from prometheus_client import multiprocess, start_http_server

from app.settings import load_settings

log = logging.getLogger("gunicorn.error")
_settings = load_settings()


def post_worker_init(worker) -> None:
    """Each worker process keeps its own index of the app containers from the engine's events
    (threads and sockets do not survive gunicorn's fork, so not in the master)."""
    worker.wsgi.extensions["release_pipeline"].watch_containers()


def child_exit(server, worker) -> None:
    multiprocess.mark_process_dead(worker.pid)


def when_ready(server) -> None:
    if _settings.metrics_port is None:
        return
    from app import metrics
    from app.context import Context

    start_http_server(_settings.metrics_port, addr="127.0.0.1",
                      registry=metrics.registry(Context.from_settings(_settings)))
    log.info("metrics on http://127.0.0.1:%s/metrics", _settings.metrics_port)


def _json_logging() -> dict:
    stream = {"class": "logging.StreamHandler", "formatter": "json"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "app.logs.JsonFormatter"}},
        "handlers": {"console": {**stream, "stream": "ext://sys.stdout"},
                     "error_console": {**stream, "stream": "ext://sys.stderr"}},
        "root": {"level": "INFO", "handlers": ["console"]},
        "loggers": {"gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False},
                    "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False}},
    }


if _settings.log_format == "json":
    logconfig_dict = _json_logging()
