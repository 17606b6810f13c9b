"""The `release-pipeline` command: up, serve, worker, migrate, doctor (client commands: app.cli_client)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time

import click

from app import cli_client
from app.exceptions import ReleasePipelineError
from app.settings import PROJECT_ROOT, load_settings

VAR = PROJECT_ROOT / "var"


def _context():
    from app.context import Context

    try:
        return Context.from_settings(load_settings())
    except ReleasePipelineError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(cls=cli_client.SectionedGroup)
def main() -> None:
    """Release Pipeline: git events in, deployments through phases out."""


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    ctx = _context()
    ctx.db.migrate()
    click.echo("database is at the latest schema")


@main.command()
@click.option("--port", default=lambda: int(os.environ.get("PORT", "8000")), show_default="$PORT or 8000")
@click.option("--workers", default=2, show_default=True)
def serve(port: int, workers: int) -> None:
    """Serve the webhook endpoint, portal and API with gunicorn."""
    _context()  # fail fast, with a readable message, on bad settings
    os.execvp(
        sys.executable,
        [sys.executable, "-m", "gunicorn", "--bind", f"0.0.0.0:{port}", "--workers", str(workers),
         "--threads", "4", "--access-logfile", "-", "app.web:create_app()"],
    )


@main.command()
@click.option("--burst", is_flag=True, help="Stop when the queues are empty.")
def worker(burst: bool) -> None:
    """Run an RQ worker for deploys, commands and reports (reconciling Docker first)."""
    from rq import Worker

    from app.jobs import QUEUES
    from workers import command, reconcile  # noqa: F401  (command: fails fast if a command has no runner)
    # Imported once here, before RQ forks a work horse per job, so no job pays for importing
    # them (GitPython and the rest: ~60 ms per deploy).
    from workers import deploy, report  # noqa: F401

    ctx = _context()
    reconcile.on_worker_start(ctx)
    Worker(list(QUEUES), connection=ctx.redis).work(burst=burst, with_scheduler=True)


@main.command()
def scheduler() -> None:
    """Enqueue the periodic jobs: reconcile, report catch-up, redelivery of missed webhooks."""
    from rq.cron import CronScheduler

    from app.jobs import DEPLOYS, REPORTS
    from workers import reconcile, redeliver, report

    ctx = _context()
    cron = CronScheduler(connection=ctx.redis, name=f"release-pipeline-{ctx.settings.pipeline_instance}")
    cron.register(reconcile.run, DEPLOYS, interval=60, job_timeout=300)
    cron.register(report.catch_up, REPORTS, interval=120, job_timeout=120)
    cron.register(redeliver.run, REPORTS, interval=300, job_timeout=120)
    cron.start()


def _secret_file(name: str) -> str:
    """A generated secret kept in var/ so `up` is repeatable without configuration."""
    path = VAR / name
    if not path.exists():
        VAR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def _start_caddy(settings) -> subprocess.Popen | None:
    from app.adapters.router import CaddyRouter

    router = CaddyRouter(settings.caddy_admin_url, settings.router_port, instance=settings.pipeline_instance)
    if router.ping():
        return None
    caddy = shutil.which("caddy")
    if caddy is None:
        raise click.ClickException("caddy is not installed (apt-get install caddy), or set ROUTER=direct")
    admin = settings.caddy_admin_url.split("://", 1)[1]
    config = VAR / "caddy.json"
    # Caddy logs every failed active health check, i.e. the idle slot of every phase, 4 times a
    # second: keep those out of var/caddy.log.
    config.write_text('{"admin": {"listen": "%s"}, "logging": {"logs": {"default": {"exclude": '
                      '["http.handlers.reverse_proxy.health_checker.active"]}}}}' % admin)
    process = subprocess.Popen([caddy, "run", "--config", str(config)], stdout=subprocess.DEVNULL,
                               stderr=open(VAR / "caddy.log", "ab"))
    for _ in range(50):
        if router.ping():
            return process
        time.sleep(0.1)
    raise click.ClickException(f"caddy did not start; see {VAR / 'caddy.log'}")


@main.command()
@click.option("--port", default=8000, show_default=True)
def up(port: int) -> None:
    """Everything on one machine: migrations, router, web and worker, until Ctrl-C."""
    from app.github_setup import ENV_FILE, load_env_file

    if load_env_file(ENV_FILE):  # written by the manifest flow (/github/register); set variables win
        click.echo(f"GitHub App settings loaded from {ENV_FILE}")
    os.environ.setdefault("SECRET_KEY", _secret_file("secret_key"))
    if not os.environ.get("GITHUB_WEBHOOK_SECRET") and not os.environ.get("PIPELINE_DEV"):
        os.environ["GITHUB_WEBHOOK_SECRET"] = _secret_file("webhook_secret")
        click.echo(f"webhook secret (for the GitHub App settings): {VAR / 'webhook_secret'}")
    os.environ.setdefault("PUBLIC_URL", f"http://localhost:{port}")
    ctx = _context()
    ctx.db.migrate()
    children = []
    if ctx.settings.router == "caddy":
        caddy = _start_caddy(ctx.settings)
        if caddy:
            children.append(caddy)
        ctx.router.ensure_server()
    exe = [sys.executable, "-m", "app.cli"]
    children.append(subprocess.Popen([*exe, "serve", "--port", str(port)]))
    children.append(subprocess.Popen([*exe, "worker"]))
    children.append(subprocess.Popen([*exe, "scheduler"]))
    click.echo(f"Release Pipeline is up: webhooks at http://localhost:{port}/api/github/webhooks, "
               f"portal at http://localhost:{port}/")

    def stop(*_):
        for child in children:
            child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while all(child.poll() is None for child in children):
        time.sleep(0.5)
    stop()
    for child in children:
        child.wait(timeout=20)


@main.command()
def doctor() -> None:
    """Check Docker, Redis, the database, the router and GitHub credentials; say how to fix each."""
    from app.doctor import run_checks

    problems = 0
    for check in run_checks(load_settings_or_explain()):
        mark = "ok " if check.ok else "FAIL"
        click.echo(f"[{mark}] {check.name}: {check.detail}")
        if not check.ok:
            problems += 1
            click.echo(f"       fix: {check.fix}")
    sys.exit(1 if problems else 0)


def load_settings_or_explain():
    try:
        return load_settings()
    except ReleasePipelineError as exc:
        click.echo(f"[FAIL] settings: {exc}")
        click.echo("       fix: export the variables named above (see README, Settings)")
        sys.exit(1)


cli_client.register(main)

if __name__ == "__main__":
    main()
