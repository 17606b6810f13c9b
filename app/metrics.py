"""Prometheus metrics (README, Metrics and logs), shared by web server processes and RQ work horses.

prometheus_client's multiprocess mode: every process writes its samples to files in
PROMETHEUS_MULTIPROC_DIR (set by the CLI for `serve` and `worker`), and `/metrics` adds
them up. Queue depth and phase counts are read from Redis and the database at scrape time.
"""

from __future__ import annotations

import enum
import glob
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds: from a tenth of a second (a reused image's switch) to half an hour (a slow build).
STEP_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)


class Step(str, enum.Enum):
    """The timed steps of a deploy; `release` is the release command (README, Release controls)."""

    CLONE = "clone"
    BUILD = "build"
    RELEASE = "release"
    HEALTH = "health"
    SWITCH = "switch"


DELIVERIES = Counter("release_pipeline_deliveries", "Webhook deliveries by event and outcome.",
                     ["event", "outcome"])
DEPLOYMENTS = Counter("release_pipeline_deployments", "Finished deployments by phase and outcome.",
                      ["phase", "outcome"])
DEPLOY_STEP = Histogram("release_pipeline_deploy_step_seconds", "Duration of each deploy step.", ["step"],
                        buckets=STEP_BUCKETS)
PUSH_TO_URL = Histogram("release_pipeline_push_to_url_seconds",
                        "From a push's delivery to its phase URL serving it.", ["phase"], buckets=STEP_BUCKETS)
GITHUB_CALLS = Counter("release_pipeline_github_api_calls", "GitHub API calls by outcome.", ["outcome"])
NOTIFICATIONS = Counter("release_pipeline_notification_attempts", "Outbound notification attempts.",
                        ["target", "outcome"])


@contextmanager
def step(name: Step) -> Iterator[None]:
    """Time a deploy step (also when it fails: a slow failing build is worth seeing)."""
    started = time.monotonic()
    try:
        yield
    finally:
        DEPLOY_STEP.labels(step=name.value).observe(time.monotonic() - started)


# -- processes and their files -------------------------------------------------------------------


def horse_identifier(worker_pid: int):
    """Samples of RQ work horses go to one file set per worker (`<pid>h`), not one per job:
    a worker runs one horse at a time, and each new horse continues from the last one's file."""

    def identify() -> str | int:
        pid = os.getpid()
        return pid if pid == worker_pid else f"{worker_pid}h"

    return identify


def use_worker_files() -> None:
    """Called in the RQ worker process before it forks any horse."""
    values.ValueClass = values.MultiProcessValue(horse_identifier(os.getpid()))


def prepare_directory(path: Path) -> int:
    """Create the directory and remove the files of processes that are gone (a previous run's,
    a respawned web server worker's); returns how many were removed. Live processes' files stay,
    so `serve` and `worker` can start in any order."""
    path.mkdir(parents=True, exist_ok=True)
    removed = 0
    for file in glob.glob(str(path / "*.db")):
        owner = Path(file).stem.rsplit("_", 1)[-1].rstrip("h")
        if not owner.isdigit() or not process_alive(int(owner)):
            with suppress(FileNotFoundError):  # every process of the Procfile tidies at start, at once
                os.remove(file)
                removed += 1
    return removed


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- the scrape ----------------------------------------------------------------------------------


class StateCollector:
    """Queue depth per queue and phase counts, read when Prometheus scrapes."""

    def __init__(self, ctx):
        self.ctx = ctx

    def collect(self):
        from rq import Queue
        from sqlalchemy import func, select

        from app.jobs import QUEUES
        from app.models import Deployment, DeploymentStatus

        depth = GaugeMetricFamily("release_pipeline_queue_depth", "Jobs waiting per queue.", labels=["queue"])
        try:
            for name in QUEUES:
                depth.add_metric([name], Queue(name, connection=self.ctx.redis).count)
        except RedisError:
            pass  # Redis down: no depth rather than a failed scrape
        yield depth
        serving = GaugeMetricFamily("release_pipeline_serving_phases",
                                    "App phases with a successful deployment.", labels=["phase"])
        moving = GaugeMetricFamily("release_pipeline_deployments_in_progress",
                                   "Deployments queued or running, by status.", labels=["status"])
        try:
            with self.ctx.db.session() as session:
                for phase, count in session.execute(
                        select(Deployment.phase, func.count(func.distinct(Deployment.app_id)))
                        .where(Deployment.status == DeploymentStatus.SUCCEEDED.value).group_by(Deployment.phase)):
                    serving.add_metric([phase], count)
                busy = dict(session.execute(
                    select(Deployment.status, func.count()).where(Deployment.status.in_(
                        [DeploymentStatus.QUEUED.value, DeploymentStatus.BUILDING.value,
                         DeploymentStatus.DEPLOYING.value])).group_by(Deployment.status)).all())
            for status in (DeploymentStatus.QUEUED, DeploymentStatus.BUILDING, DeploymentStatus.DEPLOYING):
                moving.add_metric([status.value], busy.get(status.value, 0))
        except SQLAlchemyError:
            pass  # the database is down: the process samples are still worth scraping
        yield serving
        yield moving


def registry(ctx) -> CollectorRegistry:
    """Everything /metrics shows: the processes' samples (multiprocess) plus the state."""
    scrape = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        MultiProcessCollector(scrape)
    else:  # a single process (tests, `flask run`): its own samples
        for collector in (DELIVERIES, DEPLOYMENTS, DEPLOY_STEP, PUSH_TO_URL, GITHUB_CALLS, NOTIFICATIONS):
            scrape.register(collector)
    scrape.register(StateCollector(ctx))
    return scrape


def exposition(ctx) -> bytes:
    return generate_latest(registry(ctx))
