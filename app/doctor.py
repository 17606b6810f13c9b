"""`release-pipeline doctor`: each dependency and process checked, each failure with its fix."""

from __future__ import annotations

from dataclasses import dataclass


from app.adapters import http
from app.context import Context
from app.exceptions import ReleasePipelineError
from app.settings import Settings


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def run_checks(settings: Settings) -> list[Check]:
    checks = []
    try:
        ctx = Context.from_settings(settings)
        checks.append(Check("pipeline", True, f"{settings.pipeline_config}: phases {', '.join(ctx.config.phase_names)}"))
    except ReleasePipelineError as exc:
        return [Check("pipeline", False, str(exc), "correct the file at the path named above")]
    checks.append(
        Check("docker", ctx.engine.ping(), settings.docker_host or "local socket",
              "start the engine: dockerd & (or systemctl start docker); check DOCKER_HOST")
    )
    checks.append(_builder(ctx.engine, settings.builder))
    checks.append(
        Check("redis", ctx.jobs.ping(), settings.redis_url,
              "start Redis (redis-server --daemonize yes) or correct REDIS_URL")
    )
    redis_ok = checks[-1].ok
    db_ok = ctx.db.ping()
    checks.append(
        Check("database", db_ok, ctx.db.engine.url.render_as_string(hide_password=True),
              "start the database or correct DATABASE_URL, then run: release-pipeline migrate")
    )
    if db_ok:
        checks.append(_schema(ctx))
    if redis_ok:
        checks.extend(_processes(ctx))
    if settings.runtime == "swarm":
        checks.extend(_swarm(ctx))
    checks.append(_sign_in(ctx, redis_ok))
    checks.append(_web(settings))
    checks.append(_router(ctx))
    if settings.runtime == "docker":  # swarm tasks publish on ports the engine picks
        checks.append(_slot_ports(settings))
    if settings.router == "caddy":
        checks.append(_connection_migration())
    checks.append(_github(ctx))
    return checks


def _schema(ctx: Context) -> Check:
    from app.startup import schema_problem, schema_revisions

    current, heads = schema_revisions(ctx.db)
    problem = schema_problem(current, heads)
    if problem:
        return Check("schema", False, problem.partition(":")[0], "release-pipeline migrate")
    return Check("schema", True, f"at {', '.join(heads)} (latest)")


def _processes(ctx: Context) -> list[Check]:
    """Workers and the scheduler, as they registered themselves in Redis (RQ's registries)."""
    from rq import Worker
    from rq.cron import CronScheduler

    from app.jobs import QUEUES
    from app.startup import scheduler_name

    # Queues may be split between processes (the Procfile's notifier serves notifications alone):
    # what matters is that each queue has someone serving it.
    workers = Worker.all(connection=ctx.redis)
    served = {name for w in workers for name in w.queue_names()}
    unserved = [name for name in QUEUES if name not in served]
    schedulers = [s for s in CronScheduler.all(connection=ctx.redis) if s.name == scheduler_name(ctx.settings)]
    detail = (f"{len(workers)} worker(s) serving {', '.join(QUEUES)}" if not unserved
              else f"no worker serves {', '.join(unserved)} ({len(workers)} worker(s) running)")
    return [
        _intake(ctx),
        Check("worker", not unserved, detail,
              "start one: release-pipeline worker (up and the Procfile start one)"),
        Check("scheduler", bool(schedulers), "running" if schedulers else "not running",
              "start one: release-pipeline scheduler (up and the Procfile start one)"),
    ]


def _intake(ctx: Context) -> Check:
    """The drainer that records what the webhook endpoint accepted (it holds the inbox's lease)."""
    inbox = ctx.inbox
    holder, waiting, aside = inbox.drainer(), inbox.waiting(), inbox.set_aside_count()
    if aside:
        return Check("intake", False, f"{aside} deliveries set aside: they could not be recorded",
                     "see the intake drainer's log for the error of each (redis-cli XRANGE "
                     f"{inbox.failed} - + shows them)")
    if holder is None:
        return Check("intake", False, f"no drainer running: {waiting} accepted deliveries wait unrecorded",
                     "start one: release-pipeline intake (up and the Procfile start one)")
    return Check("intake", True, f"drainer {holder}, {waiting} deliveries waiting")


def _swarm(ctx: Context) -> list[Check]:
    swarm, engine = ctx.swarm, ctx.settings.docker_host or "the local socket"
    return [Check("swarm", swarm.is_manager(), f"RUNTIME=swarm: the engine at {engine} must be a Swarm manager",
                  "docker swarm init (or point DOCKER_HOST at a manager)"),
            Check("registry", swarm.registry_answers(), f"http://{swarm.registry}/v2/ (REGISTRY_URL)",
                  "start it (apt-get install docker-registry; `up` starts one on 127.0.0.1:5000) or correct "
                  "REGISTRY_URL")]


def _sign_in(ctx: Context, redis_ok: bool) -> Check:
    from app.portal.auth import one_time_tokens_waiting

    settings = ctx.settings
    ways = []
    if settings.github_client_id and settings.github_client_secret:
        ways.append("GitHub")
    if settings.admin_token and settings.admin_token.get_secret_value():
        ways.append("ADMIN_TOKEN")
    if redis_ok and one_time_tokens_waiting(ctx.redis, settings.pipeline_instance):
        ways.append("the one-time link up printed (var/sign-in-link)")
    if settings.pipeline_dev and not ways:
        ways.append("development mode (anyone can sign in as admin)")
    if settings.secret_key is None:
        return Check("sign-in", False, "SECRET_KEY is unset: no session can be signed", "set SECRET_KEY and restart")
    return Check("sign-in", bool(ways), ", ".join(ways) or "nobody can sign in to the portal",
                 "set ADMIN_TOKEN, or GITHUB_CLIENT_ID and GITHUB_CLIENT_SECRET, and restart")


def _web(settings: Settings) -> Check:
    url = f"{settings.public_url}/healthz"
    answer = http.get(url, timeout=5, via_proxy=True)
    if answer.status is None:
        return Check("web", False, f"{url}: {answer.words}",
                     "start it: release-pipeline serve (or up); check PUBLIC_URL and PORT")
    return Check("web", answer.status in (200, 503), f"{url} answered {answer.status}",
                 "see the web server's log")


def _router(ctx: Context) -> Check:
    settings = ctx.settings
    if settings.router != "caddy":
        return Check("router", True, "direct (no proxy: phase URLs change on every deploy)")
    if not ctx.router.ping():
        return Check("router", False, f"caddy admin API at {settings.caddy_admin_url} not answering",
                     "start it: release-pipeline router (up and the Procfile start it), or set ROUTER=direct")
    host = "127.0.0.1" if settings.bind in ("0.0.0.0", "::") else settings.bind
    answer = http.get(f"http://{host}:{settings.router_port}/", timeout=5, via_proxy=True)
    if answer.status is None:
        return Check("router", False, f"caddy does not serve phase URLs on port {settings.router_port}: "
                     f"{answer.words}", "restart release-pipeline router; check ROUTER_PORT and BIND")
    return Check("router", True, f"caddy at {settings.caddy_admin_url}, phase URLs on port {settings.router_port}")


def _builder(engine, setting: str) -> Check:
    """Which builder BUILDER picks on this machine (BuildKit needs a docker CLI that has it)."""
    from app.adapters.docker import buildkit_cli

    try:
        used = engine.builder_in_use()
    except ReleasePipelineError as exc:
        return Check("builder", False, str(exc), "install Debian's docker.io (its docker CLI has BuildKit) "
                                                 "or set BUILDER=classic")
    how = f"BuildKit, through {buildkit_cli()}" if used == "buildkit" else "classic, through the engine's API"
    return Check("builder", True, f"{how} (BUILDER={setting})")


def _slot_ports(settings: Settings) -> Check:
    from app.slots import ephemeral_overlap, ephemeral_range

    problem = ephemeral_overlap("SLOT_PORTS", settings.slot_range, ephemeral_range())
    if problem is not None:
        return Check("slot ports", False, problem, "set SLOT_PORTS outside it")
    return Check("slot ports", True, f"{settings.slot_ports}, outside the kernel's ephemeral port range")


def _connection_migration() -> Check:
    """Caddy reloads on every route switch; without this setting a reload resets the
    connections its old listener had accepted (README, zero downtime)."""
    from app.adapters.router import migration_enabled

    enabled = migration_enabled()
    detail = {True: "on", False: "off", None: "not offered by this kernel (Linux 5.14+)"}[enabled]
    return Check("net.ipv4.tcp_migrate_req", enabled is True, detail,
                 "sysctl -w net.ipv4.tcp_migrate_req=1 (as root; scripts/dev does it), "
                 "or requests can fail at the instant the router switches")


def _github(ctx: Context) -> Check:
    settings = ctx.settings
    if not settings.reporting_enabled:
        return Check("github", True, "GITHUB_APP_ID unset: deployments are recorded, not reported")
    from app.adapters.github import GitHubApp

    try:
        GitHubApp(settings, ctx.redis).whoami()
    except ReleasePipelineError as exc:
        return Check("github", False, str(exc),
                     "check GITHUB_APP_ID, the private key and GITHUB_API_URL (see README, Register the App)")
    return Check("github", True, f"authenticated as app {settings.github_app_id} at {settings.github_api_url}")
