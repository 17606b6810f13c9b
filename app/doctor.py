"""`release-pipeline doctor`: each dependency checked, each failure with its fix."""

from __future__ import annotations

from dataclasses import dataclass

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
    checks.append(
        Check("redis", ctx.jobs.ping(), settings.redis_url,
              "start Redis (redis-server --daemonize yes) or correct REDIS_URL")
    )
    db_ok = ctx.db.ping()
    checks.append(
        Check("database", db_ok, ctx.db.engine.url.render_as_string(hide_password=True),
              "start the database or correct DATABASE_URL, then run: release-pipeline migrate")
    )
    if settings.router == "caddy":
        checks.append(
            Check("router", ctx.router.ping(), f"caddy admin API at {settings.caddy_admin_url}",
                  "start Caddy (release-pipeline up starts it) or set ROUTER=direct")
        )
    else:
        checks.append(Check("router", True, "direct (no proxy: phase URLs change on every deploy)"))
    checks.append(_github(ctx))
    return checks


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
