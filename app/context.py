"""The long-lived parts every request and job needs, built once from the settings."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from redis import Redis

from app.db import Database
from app.jobs import Jobs
from app.notifications import Notifier
from app.pipeline import PipelineConfig, load_pipeline
from app.reporting import Reports
from app.settings import Settings, load_settings


@dataclass
class Context:
    settings: Settings
    config: PipelineConfig

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Context:
        settings = settings or load_settings()
        return cls(settings=settings, config=load_pipeline(settings.pipeline_config))

    @cached_property
    def db(self) -> Database:
        return Database(self.settings.database_url)

    @cached_property
    def redis(self) -> Redis:
        return Redis.from_url(self.settings.redis_url, socket_connect_timeout=2, socket_timeout=5)

    @cached_property
    def jobs(self) -> Jobs:
        return Jobs(self.redis)

    @cached_property
    def notifier(self) -> Notifier:
        """`ctx.notifier.notify(session, event, ...)`: announce an event to the configured targets."""
        return Notifier(self.config.notifications, portal_url=self.settings.public_url, enqueue=self.jobs.notify)

    @cached_property
    def reports(self) -> Reports:
        return Reports(
            public_url=self.settings.public_url,
            enabled=self.settings.reporting_enabled,
            last_phase=self.config.phase_names[-1],
            notifier=self.notifier,
        )

    @cached_property
    def github(self):
        """The GitHub App client, or None when reporting is off (no GITHUB_APP_ID)."""
        if not self.settings.reporting_enabled:
            return None
        from app.adapters.github import GitHubApp

        return GitHubApp(self.settings, self.redis)

    @cached_property
    def box(self):
        from app.crypto import SecretBox

        return SecretBox(self.settings.fernet_key)

    @cached_property
    def engine(self):
        from app.adapters.docker import Engine

        return Engine(self.settings.docker_host, instance=self.settings.pipeline_instance,
                      pull=self.settings.build_pull)

    @cached_property
    def router(self):
        from app.adapters.router import CaddyRouter, DirectRouter

        s = self.settings
        if s.router == "caddy":
            return CaddyRouter(s.caddy_admin_url, s.router_port, self.config.defaults.url, instance=s.pipeline_instance,
                               bind=s.bind)
        return DirectRouter()
