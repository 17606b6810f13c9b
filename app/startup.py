"""What every long-running process checks before it starts (README, Running in production; issue 12).

Refused at once, with one line, because waiting would not fix them: a schema behind the code,
SECRET_KEY missing where it is needed, an invalid pipeline file (`Context.from_settings`).
Waited for, logged once, because they come back by themselves: Redis and the database being
away (restarting, or started after us by a Procfile host). A Docker engine that is away is only
logged: the worker serves reports and commands meanwhile, and deploys fail with the reason.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Sequence

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from redis.exceptions import RedisError
from tenacity import retry, retry_if_result, wait_exponential

from app.db import Database, alembic_config
from app.exceptions import ReleasePipelineError
from app.settings import Settings

log = logging.getLogger(__name__)

#: Seconds between two tries while a dependency is away: doubling from 0.2, at most 5.
WAIT = wait_exponential(multiplier=0.2, max=5)


class StartupError(ReleasePipelineError):
    """A reason to refuse to start that only the operator can fix."""


def schema_problem(current: Sequence[str], heads: Sequence[str]) -> str | None:
    """Why a database at revision(s) `current` cannot serve code expecting `heads` (None: it can)."""
    if set(current) == set(heads):
        return None
    if not current:
        return "the database has no schema yet: run release-pipeline migrate"
    return (f"the database schema is at {', '.join(sorted(current))}, this version needs "
            f"{', '.join(sorted(heads))}: run release-pipeline migrate")


def schema_revisions(db: Database) -> tuple[list[str], list[str]]:
    """(the database's current revisions, the code's head revisions)."""
    heads = ScriptDirectory.from_config(alembic_config(db.url)).get_heads()
    with db.engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_heads()
    return list(current), list(heads)


def require_schema(db: Database) -> None:
    """Wait for the database to answer, then refuse to start unless its schema is at head."""
    wait_until(db.ping, f"the database at {db.engine.url.render_as_string(hide_password=True)}")
    problem = schema_problem(*schema_revisions(db))
    if problem:
        raise StartupError(problem)


def require_secret_key(settings: Settings, process: str) -> None:
    """`serve` signs sessions and seals secrets with it, `worker` opens them for deploys and tokens."""
    if settings.secret_key is None or not settings.secret_key.get_secret_value():
        raise StartupError(f"SECRET_KEY is required to run the {process} (it signs sessions and encrypts "
                           "secrets): set it to a long random string, the same for every process")


def warn_slot_ports(settings: Settings) -> None:
    """Logged, not refused: a slot port an outgoing connection holds fails only that deploy,
    and only sometimes; the operator should still hear it before the first one does."""
    from app.slots import ephemeral_overlap, ephemeral_range

    if settings.runtime == "docker":
        problem = ephemeral_overlap("SLOT_PORTS", settings.slot_range, ephemeral_range())
        if problem is not None:
            log.warning("%s", problem)


def wait_until(probe: Callable[[], bool], what: str) -> None:
    """Return once `probe()` is true; while it is not, say so once and try again with backoff."""
    if probe():
        return
    log.warning("waiting for %s (not answering); retrying until it does", what)

    @retry(wait=WAIT, retry=retry_if_result(lambda ok: not ok))
    def again() -> bool:
        return probe()

    again()
    log.warning("%s answers again", what)


def run_worker(ctx, *, burst: bool, on_start: Callable[[object], None], queues: list[str] | None = None) -> None:
    """RQ's worker loop, started again whenever Redis went away under it (RQ itself quits then,
    and can die in its own teardown: `register_death` → ConnectionError). `on_start` runs before
    each start: the reconcile queues again what a Redis that came back empty lost. `queues`:
    which to serve, in priority order (default: all)."""
    from rq import Worker

    from app.jobs import QUEUES

    class _Worker(Worker):
        stopping = False

        def request_stop(self, signum, frame):
            self.stopping = True
            super().request_stop(signum, frame)

    while True:
        wait_until(ctx.jobs.ping, f"Redis at {_redacted(ctx.settings.redis_url)}")
        if not ctx.engine.ping():  # reports and commands need no engine: serve them, say it once
            log.warning("the Docker engine at %s is not answering: deploys fail until it does",
                        ctx.settings.docker_host or "the local socket")
        on_start(ctx)
        worker = _Worker(queues or list(QUEUES), connection=ctx.redis)
        try:
            worker.work(burst=burst, with_scheduler=True)
        except RedisError as exc:
            log.warning("the worker lost Redis (%s)", exc)
        _default_signals()
        if burst or worker.stopping:
            return
        log.warning("the worker stopped unasked (Redis away?): starting it again")


def run_scheduler(ctx, register: Callable[[object], None]) -> None:
    """rq.cron's loop, started again whenever Redis went away under it; returns on SIGTERM/SIGINT."""
    from rq.cron import CronScheduler

    while True:
        wait_until(ctx.jobs.ping, f"Redis at {_redacted(ctx.settings.redis_url)}")
        cron = CronScheduler(connection=ctx.redis, name=scheduler_name(ctx.settings))
        register(cron)
        try:
            cron.start()  # returns when asked to stop
            return
        except RedisError as exc:
            log.warning("the scheduler lost Redis (%s): starting it again once Redis answers", exc)
        _default_signals()


def scheduler_name(settings: Settings) -> str:
    return f"release-pipeline-{settings.pipeline_instance}"


def _default_signals() -> None:
    """RQ's handlers only set flags on a loop that no longer runs: let a stop stop us while we wait."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.rpartition("@")[2]
