"""The long-lived parts every request and job needs, built once from the settings.

Each adapter can be handed in (`Context(settings, config, engine=...)`, or the same keywords
to `from_settings`); what is not handed in is built from the settings on first use, so a
process that never deploys never connects to Docker.
"""

from __future__ import annotations

from typing import Any

from redis import Redis

from app.db import Database
from app.inbox import Inbox
from app.jobs import Jobs, NotifyJob
from app.notifications import Notifier
from app.pipeline import PipelineConfig, load_pipeline
from app.reporting import Reports
from app.settings import Settings, load_settings


class Context:
    def __init__(self, settings: Settings, config: PipelineConfig, *, db: Database | None = None,
                 redis: Redis | None = None, jobs: Jobs | None = None, notifier: Notifier | None = None,
                 reports: Reports | None = None, github: Any = None, box: Any = None, engine: Any = None,
                 router: Any = None, runtime: Any = None):
        self.settings = settings
        self.config = config
        given = dict(db=db, redis=redis, jobs=jobs, notifier=notifier, reports=reports, github=github, box=box,
                     engine=engine, router=router, runtime=runtime)
        self._parts: dict[str, Any] = {name: part for name, part in given.items() if part is not None}

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **parts: Any) -> Context:
        settings = settings or load_settings()
        return cls(settings, load_pipeline(settings.pipeline_config), **parts)

    def _part(self, name: str, build):
        if name not in self._parts:
            self._parts[name] = build()
        return self._parts[name]

    @property
    def db(self) -> Database:
        return self._part("db", lambda: Database(self.settings.database_url))

    @property
    def redis(self) -> Redis:
        return self._part("redis", lambda: Redis.from_url(self.settings.redis_url, socket_connect_timeout=2,
                                                          socket_timeout=5))

    @property
    def inbox(self) -> Inbox:
        """Deliveries accepted by the webhook endpoint, waiting for the intake drainer."""
        return self._part("inbox", lambda: Inbox(self.redis, self.settings.pipeline_instance))

    @property
    def jobs(self) -> Jobs:
        return self._part("jobs", lambda: Jobs(self.redis))

    @property
    def notifier(self) -> Notifier:
        """`ctx.notifier.notify(session, event, ...)`: announce an event to the configured targets."""
        return self._part("notifier", lambda: Notifier(self.config.notifications, portal_url=self.settings.public_url,
                                                       enqueue=lambda ident: self.jobs.enqueue(NotifyJob(ident))))

    @property
    def reports(self) -> Reports:
        return self._part("reports", lambda: Reports(
            public_url=self.settings.public_url,
            enabled=self.settings.reporting_enabled,
            last_phase=self.config.phase_names[-1],
            notifier=self.notifier,
        ))

    @property
    def github(self):
        """The GitHub App client, or None when reporting is off (no GITHUB_APP_ID)."""
        return self._part("github", self._build_github)

    def _build_github(self):
        if not self.settings.reporting_enabled:
            return None
        from app.adapters.github import GitHubApp

        return GitHubApp(self.settings, self.redis)

    @property
    def box(self):
        from app.crypto import SecretBox

        return self._part("box", lambda: SecretBox(self.settings.fernet_key))

    @property
    def engine(self):
        def build():
            from app.adapters.docker import Engine

            return Engine(self.settings.docker_host, instance=self.settings.pipeline_instance,
                          pull=self.settings.build_pull, builder=self.settings.builder)

        return self._part("engine", build)

    @property
    def router(self):
        return self._part("router", self._build_router)

    def _build_router(self):
        from app.adapters.router import CaddyRouter, DirectRouter

        s = self.settings
        if s.router == "caddy":
            return CaddyRouter(s.caddy_admin_url, s.router_port, self.config.defaults.url, instance=s.pipeline_instance,
                               bind=s.bind, phase_urls={name: self.config.url_template(name)
                                                        for name in self.config.phase_names})
        return DirectRouter()

    @property
    def runtime(self):
        """What runs the apps (RUNTIME): the deploy job and reconcile talk only to this."""
        return self._part("runtime", self._build_runtime)

    def _build_runtime(self):
        s = self.settings
        if s.runtime == "swarm":
            from app.swarm_runtime import SwarmRuntime

            return SwarmRuntime(self.swarm, self.engine, self.router, self.db)
        from app.docker_runtime import DockerRuntime

        return DockerRuntime(self.engine, self.router, self.db, s.slot_range, spreads=s.router == "caddy")

    @property
    def watched(self):
        """The app containers kept current from the engine's events (`watch_containers`), or None."""
        return self._parts.get("watched")

    def watch_containers(self) -> None:
        """Keep an index of the app containers from the engine's events, for the portal's
        health (RUNTIME=docker): called in each web server process, after it forked."""
        if self.settings.runtime == "docker" and "watched" not in self._parts:
            from app.docker_runtime import WatchedContainers

            self._parts["watched"] = WatchedContainers(self.engine).start()

    @property
    def swarm(self):
        """The Swarm manager (DOCKER_HOST) and the registry its nodes pull from (RUNTIME=swarm)."""
        def build():
            from app.adapters.swarm import Swarm
            from app.local_registry import DEFAULT_ADDRESS

            s = self.settings
            return Swarm(s.docker_host, s.pipeline_instance, s.registry_url or DEFAULT_ADDRESS)

        return self._part("swarm", build)
