"""The `release-pipeline` command: operator commands (up, migrate, serve, intake, worker,
scheduler, router, doctor, simulate) and client commands (app.cli_client). Every process checks what it
needs before it starts (app.startup)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import click

from app import cli_client
from app.exceptions import ReleasePipelineError
from app.settings import PROJECT_ROOT, load_settings

#: What `up` (and the Procfile's `worker:`) serve besides the notifier's own worker.
WORK_QUEUES = "deploys,commands,reports"
#: While a backlog waits, the intake drainer runs behind the web server for the CPU (`nice`: 0
#: is the default, 19 the lowest). The lowest: the web server's answers go first, and the drainer
#: takes every idle moment.
DRAINER_NICENESS = 19


def _context(process: str | None = None, *, secret_key: bool = False, schema: bool = False):
    """Settings and pipeline checked; for a long-running `process`, SECRET_KEY and the schema too.

    Anything that only the operator can fix ends the process here with one line (exit 1).
    """
    from app import startup
    from app.context import Context

    try:
        ctx = Context.from_settings(load_settings())
        if secret_key:
            startup.require_secret_key(ctx.settings, process)
        if schema:
            startup.require_schema(ctx.db)
    except ReleasePipelineError as exc:
        raise click.ClickException(str(exc)) from None
    return ctx


def _metrics_dir() -> Path:
    """prometheus_client's multiprocess mode for every process that records metrics: set before
    anything imports prometheus_client, so web server processes and RQ work horses all write their
    samples to one directory (PROMETHEUS_MULTIPROC_DIR, default var/metrics)."""
    return Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(PROJECT_ROOT / "var" / "metrics")))


def _prepare_metrics_dir() -> None:
    from app.metrics import prepare_directory

    prepare_directory(_metrics_dir())


def _check_free(host: str, port: int, setting: str) -> None:
    """Say now, in one line, that a port cannot be had: the web server's own (granian binds
    with SO_REUSEPORT, so a second `serve` would otherwise share the port with the first
    without a word) and METRICS_PORT, opened once the server has started."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise click.ClickException(f"{setting}: cannot listen on {host}:{port} ({exc.strerror})") from None


def _logging(ctx) -> None:
    """A long-running process logs at INFO, as LOG_FORMAT says (text or JSON lines)."""
    from app import logs

    logs.configure(ctx.settings.log_format, logging.INFO)


@click.group(cls=cli_client.SectionedGroup)
def main() -> None:
    """Release Pipeline: git events in, deployments through phases out."""
    from app import logs

    logs.configure("text", logging.WARNING)


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema (the Procfile's release phase)."""
    ctx = _context()
    ctx.db.migrate()
    click.echo("database is at the latest schema")


@main.command()
@click.option("--host", default=None, help="Address to listen on.  [default: $BIND or 0.0.0.0]")
@click.option("--port", type=int, default=None, help="Port to listen on.  [default: $PORT or 8000]")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="web server processes, 3 threads each.  [default: one per CPU core, at least 2]")
def serve(host: str | None, port: int | None, workers: int | None) -> None:
    """Serve the webhook endpoint, portal and API (granian, app.server)."""
    # A delivery costs under a millisecond of CPU (app.receiver): one process per core keeps
    # every core busy, and the threads cover the Redis round trip and slow portal queries.
    workers = workers or max(2, os.cpu_count() or 1)
    _metrics_dir()
    ctx = _context("web server", secret_key=True, schema=True)
    _prepare_metrics_dir()
    host, port = host or ctx.settings.bind, port or ctx.settings.port
    _check_free(host, port, "PORT")
    if ctx.settings.metrics_port is not None:
        _check_free("127.0.0.1", ctx.settings.metrics_port, "METRICS_PORT")
    _logging(ctx)
    from app import server

    server.run(ctx, host, port, workers)


def _queues(value: str) -> list[str]:
    from app.jobs import QUEUES

    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in QUEUES]
    if unknown or not names:
        raise click.BadParameter(f"{', '.join(unknown) or 'none given'}: the queues are {', '.join(QUEUES)}")
    return names


def _all_queues() -> str:
    from app.jobs import QUEUES

    return ",".join(QUEUES)


@main.command()
@click.option("--burst", is_flag=True, help="Stop when the queues are empty.")
@click.option("--queues", "queue_names", default=_all_queues, show_default="all",
              help="Comma-separated queues to serve, in priority order.")
def worker(burst: bool, queue_names: str) -> None:
    """Run an RQ worker for deploys, commands, reports and notifications (reconciling Docker first)."""
    queues = _queues(queue_names)
    _metrics_dir()
    from app import metrics, startup
    from app.jobs import NOTIFICATIONS
    from app.notifications import missing_secrets
    from workers import command, reconcile  # noqa: F401  (command: fails fast if a command has no runner)
    # Imported once here, before RQ forks a work horse per job, so no job pays for importing
    # them (GitPython and the rest: ~60 ms per deploy).
    from workers import deploy, notify, report  # noqa: F401

    ctx = _context("worker", secret_key=True, schema=True)
    try:  # BUILDER=buildkit without BuildKit is refused; found once, before any work horse is forked
        builder = ctx.engine.builder_in_use()
    except ReleasePipelineError as exc:
        raise click.ClickException(str(exc)) from None
    if NOTIFICATIONS in queues:
        problems = missing_secrets(ctx.config.notifications, dict(os.environ))
        if problems:
            raise click.ClickException("; ".join(problems))
    _prepare_metrics_dir()
    _logging(ctx)
    logging.getLogger(__name__).info("builds use the %s builder (BUILDER=%s)", builder, ctx.settings.builder)
    startup.warn_slot_ports(ctx.settings)
    metrics.use_worker_files()
    startup.run_worker(ctx, burst=burst, on_start=reconcile.on_worker_start, queues=queues)


@main.command()
def intake() -> None:
    """Drain the deliveries the webhook endpoint accepted: plan, record and queue each, in order."""
    import threading

    _metrics_dir()  # before anything imports prometheus_client
    from app import startup
    from app.priority import Priority
    from workers import intake as drainer

    ctx = _context(schema=True)
    _prepare_metrics_dir()
    _logging(ctx)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    startup.wait_until(ctx.jobs.ping, "Redis at REDIS_URL")
    # Recording a burst can wait, the webhook's answers cannot: while a backlog waits, the web
    # server's processes go first.
    drainer.run(ctx, stopping=stop.is_set, sleep=stop.wait, priority=Priority(DRAINER_NICENESS))


@main.command()
def scheduler() -> None:
    """Enqueue the periodic jobs: reconcile, report and notification catch-up, redelivery of missed webhooks,
    expiry of idle pull request previews; with RUNTIME=swarm, also keep the phase URLs on their tasks."""
    from app import startup
    from app.jobs import DEPLOYS, NOTIFICATIONS, REPORTS
    from workers import notify, preview, reconcile, redeliver, report

    def register(cron) -> None:
        cron.register(reconcile.run, DEPLOYS, interval=60, job_timeout=300)
        cron.register(report.catch_up, REPORTS, interval=120, job_timeout=120)
        cron.register(notify.catch_up, NOTIFICATIONS, interval=120, job_timeout=120)
        cron.register(redeliver.run, REPORTS, interval=300, job_timeout=120)
        cron.register(preview.expire, DEPLOYS, interval=60, job_timeout=120)

    ctx = _context(schema=True)
    _logging(ctx)
    if ctx.settings.runtime == "swarm":
        import threading

        from workers import follow

        # Its own Context: the thread's database sessions and engine clients are its own.
        threading.Thread(target=follow.loop, args=(_context(), threading.Event()), name="follow",
                         daemon=True).start()
    startup.run_scheduler(ctx, register)


@main.command()
def router() -> None:
    """Run Caddy, which serves the phase URLs, on CADDY_ADMIN_URL and BIND:ROUTER_PORT."""
    from app.local import VAR

    ctx = _context()
    if ctx.settings.router != "caddy":
        raise click.ClickException("ROUTER=direct needs no router process: remove the router line, or set ROUTER=caddy")
    caddy = shutil.which("caddy")
    if caddy is None:
        raise click.ClickException("caddy is not installed (apt-get install caddy), or set ROUTER=direct")
    config = VAR / f"caddy-{ctx.settings.pipeline_instance}.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(ctx.router.base_config(), indent=1))
    os.execv(caddy, [caddy, "run", "--config", str(config)])


@main.command()
@click.option("--host", default=None, help="Address of the web server and router.  [default: $BIND or 127.0.0.1]")
@click.option("--port", type=int, default=None, help="Port of the web server.  [default: $PORT or 8000]")
def up(host: str | None, port: int | None) -> None:
    """Everything on one machine: migrations, router, web, intake, worker and scheduler, until Ctrl-C."""
    from app import local
    from app.supervisor import Child, Supervisor

    port = port or int(os.environ.get("PORT") or 8000)
    host = host or os.environ.get("BIND") or "127.0.0.1"
    for line in local.load(generate=True):
        click.echo(line)
    os.environ.update(BIND=host, PORT=str(port))
    os.environ.setdefault("PUBLIC_URL", f"http://localhost:{port}")
    local.write_private(local.UP_ENV, "# where the running `release-pipeline up` listens (read by doctor, simulate)\n"
                        f'BIND="{host}"\nPORT="{port}"\nPUBLIC_URL="{os.environ["PUBLIC_URL"]}"\n')
    registry = _local_registry_child() if os.environ.get("RUNTIME") == "swarm" else None
    ctx = _context()
    ctx.db.migrate()
    if ctx.settings.runtime == "swarm" and not ctx.swarm.is_manager():
        raise click.ClickException(f"RUNTIME=swarm: the Docker engine at {ctx.settings.docker_host or 'the local socket'} "
                                   "is not a Swarm manager (docker swarm init, or point DOCKER_HOST at a manager)")
    exe = [sys.executable, "-m", "app.cli"]
    # One metrics directory for all the processes below, emptied now that none of them runs.
    shutil.rmtree(_metrics_dir(), ignore_errors=True)
    children = [Child("serve", [*exe, "serve"]), Child("intake", [*exe, "intake"]),
                Child("worker", [*exe, "worker", "--queues", WORK_QUEUES]),
                # Notifications have a worker of their own: a slow target never holds up a deploy.
                Child("notifier", [*exe, "worker", "--queues", "notifications"]),
                Child("scheduler", [*exe, "scheduler"])]
    if ctx.settings.router == "caddy" and not ctx.router.ping():
        log = open(local.VAR / "caddy.log", "ab")
        children.insert(0, Child("router", [*exe, "router"], {"stdout": log, "stderr": log}))
    if registry is not None:
        children.insert(0, registry)
    supervisor = Supervisor(children, say=lambda text: click.echo(f"up: {text}", err=True))
    supervisor.start()

    def stop(*_):
        supervisor.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        _announce(ctx, host, port)
        supervisor.run()
    finally:
        supervisor.stop()


def _local_registry_child():
    """RUNTIME=swarm and no REGISTRY_URL: Debian's registry on loopback, for a swarm whose
    nodes are this machine (several machines need a REGISTRY_URL they all reach)."""
    from app import local
    from app.local_registry import DEFAULT_ADDRESS, registry_argv, write_registry_config
    from app.supervisor import Child

    if os.environ.get("REGISTRY_URL"):
        return None
    if shutil.which("docker-registry") is None:
        raise click.ClickException("RUNTIME=swarm without REGISTRY_URL needs docker-registry "
                                   "(apt-get install docker-registry), or set REGISTRY_URL")
    os.environ["REGISTRY_URL"] = DEFAULT_ADDRESS
    config = write_registry_config(local.VAR / "registry", address=DEFAULT_ADDRESS)
    log = open(local.VAR / "registry.log", "ab")
    return Child("registry", registry_argv(config), {"stdout": log, "stderr": log})


def _announce(ctx, host: str, port: int) -> None:
    """Where everything is, how to sign in at once, and which settings need a restart."""
    from app import local
    from app.portal.auth import issue_one_time_token

    settings = ctx.settings
    if settings.router == "caddy":
        for _ in range(300):  # the router must be up before a deploy asks it for a route (30 s)
            if ctx.router.ping():
                break
            time.sleep(0.1)
        else:
            raise click.ClickException(f"caddy did not start; see {local.VAR / 'caddy.log'}")
        ctx.router.ensure_server()
    click.echo(f"Release Pipeline is up: webhooks at http://{host}:{port}/api/github/webhooks, "
               f"portal at {settings.public_url}/")
    try:
        token = issue_one_time_token(ctx.redis, settings.pipeline_instance)
    except Exception as exc:  # Redis still starting: the admin token or OAuth still work
        click.echo(f"no sign-in link (Redis: {exc})")
    else:
        link = f"{settings.public_url}/signin/once?token={token}"
        local.write_private(local.SIGN_IN_LINK, link + "\n")
        click.echo(f"sign in (one use, within a day; also in {local.SIGN_IN_LINK}): {link}")
    click.echo("settings are read at start: after changing ADMIN_TOKEN, GITHUB_* (sign-in, reporting), "
               "PIPELINE_CONFIG, DATABASE_URL or REDIS_URL, restart up")


@main.command()
def doctor() -> None:
    """Check every dependency and process of this installation; say how to fix each problem."""
    from app import local
    from app.doctor import run_checks

    local.load()  # the settings `up` generated into var/, as it uses them
    try:
        settings = load_settings()
    except ReleasePipelineError as exc:
        click.echo(f"[FAIL] settings: {exc}")
        click.echo("       fix: export the variables named above (see README, Settings), or run scripts/dev up")
        sys.exit(1)
    problems = 0
    for check in run_checks(settings):
        click.echo(f"[{'ok ' if check.ok else 'FAIL'}] {check.name}: {check.detail}")
        if not check.ok:
            problems += 1
            click.echo(f"       fix: {check.fix}")
    sys.exit(1 if problems else 0)


@main.group()
@click.option("--repo", "path", default=".", show_default=True, type=click.Path(exists=True, file_okay=False),
              help="The git repository to deploy (with a Dockerfile).")
@click.pass_context
def simulate(click_ctx: click.Context, path: str) -> None:
    """Deploy a repository on this machine as if GitHub sent its events (needs PIPELINE_ALLOW_FILE_CLONES=1)."""
    from app import local
    from app.adapters.git import local_repository

    local.load()  # the webhook secret and address of the running `up`
    try:
        click_ctx.obj = (_context(), local_repository(path))
    except ReleasePipelineError as exc:
        raise click.ClickException(str(exc)) from None


@simulate.command("push")
@click.pass_obj
def simulate_push(obj) -> None:
    """A push of the checked-out branch (the app's default branch): deploys to the first phase."""
    from app import simulate as sim

    ctx, repo = obj
    _simulated(ctx, sim.push(repo, f"refs/heads/{repo.branch}", repo.head))


@simulate.command("tag")
@click.argument("version")
@click.pass_obj
def simulate_tag(obj, version: str) -> None:
    """A release tag VERSION (e.g. v1.0.0) pushed for the checked-out commit (tagged if need be)."""
    from app import simulate as sim
    from app.adapters.git import ensure_local_tag
    from app.webhooks.tags import tag_phase

    ctx, repo = obj
    if tag_phase(ctx.config, version) is None:
        raise click.ClickException(f"{version} is not a release tag of any phase (semver, matching the tag pattern)")
    try:
        if ensure_local_tag(repo, version, repo.head):
            click.echo(f"tagged {repo.head[:7]} as {version}")
    except ReleasePipelineError as exc:
        raise click.ClickException(str(exc)) from None
    _simulated(ctx, sim.push(repo, f"refs/tags/{version}", repo.head))


@simulate.command("pr-merge")
@click.pass_obj
def simulate_pr_merge(obj) -> None:
    """A merged promotion pull request: what the phase before the pull-request phase serves goes there."""
    from app import simulate as sim

    ctx, repo = obj
    phase = next((p for p in ctx.config.phases.values() if p.trigger == "pull_request"), None)
    if phase is None:
        raise click.ClickException("no phase of the pipeline is deployed by a pull request")
    if phase.approvals and ctx.github is None:
        raise click.ClickException(
            f"{phase.name} needs {phase.approvals} approval(s), which only GitHub can count: without a GitHub App, "
            "start up with PIPELINE_CONFIG=config/pipeline.local.yml (no approvals)")
    previous = ctx.config.previous_phases(phase.name)[0]
    source = sim.serving(ctx.db, repo, previous)
    if source is None:
        raise click.ClickException(f"nothing to promote: {previous} serves nothing yet")
    _simulated(ctx, sim.pr_merge(repo, number=source.id, base=phase.branch, phase=phase.name,
                                 version=source.version, sha=source.sha))


def _simulated(ctx, delivery) -> None:
    """Send, then follow the deployment to its end; exit 1 unless it succeeded."""
    from app import simulate as sim
    from app.models import DeploymentStatus

    try:
        answer = sim.send(ctx.settings.public_url, ctx.settings.webhook_secret or "", delivery)
        if answer.get("delivery"):  # accepted: the intake drainer plans and records it
            answer.update(sim.recorded(ctx.db, answer["delivery"]))
    except (RuntimeError, OSError) as exc:  # requests' errors are OSErrors
        raise click.ClickException(f"{ctx.settings.public_url}: {exc} (is `release-pipeline up` running?)") from None
    click.echo(answer.get("reason", ""))
    if not answer.get("deployment"):
        sys.exit(1)
    deployment = sim.wait(ctx.db, answer["deployment"])
    if deployment.status != DeploymentStatus.SUCCEEDED:
        raise click.ClickException(f"{deployment.phase}: {deployment.status}: {deployment.reason or 'see the portal'}")
    click.echo(f"{deployment.phase} serves {deployment.version} at {deployment.url}")


cli_client.register(main)

if __name__ == "__main__":
    main()
