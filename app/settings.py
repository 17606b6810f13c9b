"""Settings from the environment (README, Settings), read once into a typed, validated object."""

from __future__ import annotations

import base64
import hashlib
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.exceptions import SettingsError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Every knob of the service. Built by `load_settings()`, never at import time."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    github_app_id: int | None = None
    github_private_key: SecretStr | None = None
    github_private_key_path: Path | None = None
    github_webhook_secret: SecretStr | None = None
    github_api_url: str = "https://api.github.com"
    github_url: str = "https://github.com"
    github_client_id: str | None = None
    github_client_secret: SecretStr | None = None

    redis_url: str = "redis://localhost:6379/0"
    database_url: str = f"sqlite:///{PROJECT_ROOT / 'var' / 'release-pipeline.db'}"
    pipeline_config: Path = PROJECT_ROOT / "config" / "pipeline.yml"
    pipeline_allow_file_clones: bool = False
    docker_host: str | None = None

    #: Development mode: runs without a webhook secret (never in production).
    pipeline_dev: bool = False
    #: Names this installation's Docker objects, so two installations (or test runs) on one
    #: engine never touch each other's containers.
    pipeline_instance: str = Field(default="rp", pattern=r"^[a-z0-9][a-z0-9-]{0,20}$")
    #: Where the portal is reachable; used for log links reported to GitHub.
    public_url: str = "http://localhost:8000"
    #: Signs sessions and encrypts secrets at rest. Generated into var/ by `up` when unset.
    secret_key: SecretStr | None = None
    #: Token for the portal and API when GitHub OAuth is not configured.
    admin_token: SecretStr | None = None

    #: The address the web server and the router listen on (`up` keeps them on loopback).
    bind: str = Field(default="0.0.0.0", pattern=r"^[A-Za-z0-9.:-]{1,253}$")
    #: The web server's port (Procfile hosts set $PORT).
    port: int = Field(default=8000, ge=1, le=65535)

    #: What runs the apps (app.runtime): `docker`, one engine with two slots per phase behind
    #: the router, or `swarm`, a Swarm service per phase.
    runtime: Literal["docker", "swarm"] = "docker"
    #: The registry a swarm's nodes pull images from (`host:port`); only RUNTIME=swarm uses it.
    registry_url: str | None = Field(default=None, pattern=r"^[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$")
    router: Literal["caddy", "direct"] = "caddy"
    caddy_admin_url: str = "http://127.0.0.1:2019"
    #: Port on which the router serves the phase URLs.
    router_port: int = Field(default=8088, ge=1, le=65535)
    #: Seconds the old container keeps serving in-flight requests after the switch.
    drain_seconds: float = Field(default=2.0, ge=0, le=300)
    #: Seconds a deploy lock outlives a worker that stopped renewing it (e.g. SIGKILLed); the
    #: running worker renews it every third of that.
    deploy_lock_seconds: float = Field(default=60.0, ge=1, le=3600)
    #: Loopback ports handed out in pairs, two fixed "slots" per app and phase (app.slots).
    slot_ports: str = Field(default="20000-29999", pattern=r"^[0-9]{1,5}-[0-9]{1,5}$")
    work_dir: Path = PROJECT_ROOT / "var" / "work"
    #: `json`: every process logs one JSON object per line (with delivery and deployment ids).
    log_format: Literal["text", "json"] = "text"
    #: Serve /metrics without a token on this loopback port too (from the web server's master).
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    max_body_bytes: int = 25 * 1024 * 1024
    #: Whether builds may pull a base image missing from the engine (`missing`) or never.
    build_pull: Literal["never", "missing"] = "never"
    #: `classic`: builds through the engine's API (Docker SDK); `buildkit`: through the docker CLI
    #: with BuildKit (the SDK cannot drive it), refused at the worker's start without such a CLI;
    #: `auto`: BuildKit where there is one (the sample app's build: 0.33 s instead of 0.64 s).
    builder: Literal["auto", "classic", "buildkit"] = "auto"

    @field_validator("github_api_url", "github_url", "public_url", "caddy_admin_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @field_validator("slot_ports")
    @classmethod
    def _port_range(cls, value: str) -> str:
        low, high = (int(part) for part in value.split("-"))
        if not 1024 <= low < high <= 65535:
            raise ValueError("must be LOW-HIGH with 1024 <= LOW < HIGH <= 65535")
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.github_webhook_secret is not None and not self.github_webhook_secret.get_secret_value().strip():
            # An empty secret would sign nothing: refuse it rather than read it as "no secret".
            raise ValueError("GITHUB_WEBHOOK_SECRET is empty; set the App's webhook secret (or unset it "
                             "with PIPELINE_DEV=1 for local development)")
        if self.github_webhook_secret is None and not self.pipeline_dev:
            raise ValueError(
                "GITHUB_WEBHOOK_SECRET is required (set PIPELINE_DEV=1 only for local development)"
            )
        if self.runtime == "swarm" and self.router != "caddy":
            raise ValueError("RUNTIME=swarm needs ROUTER=caddy: the phase URL spreads requests over the tasks on "
                             "every node, which ROUTER=direct cannot do")
        if self.registry_url is not None and self.runtime != "swarm":
            raise ValueError("REGISTRY_URL is used only with RUNTIME=swarm (the docker runtime runs images on "
                             "the engine that built them); unset it")
        if self.github_app_id is not None and self.private_key is None:
            raise ValueError(
                "GITHUB_APP_ID is set but neither GITHUB_PRIVATE_KEY nor GITHUB_PRIVATE_KEY_PATH is"
            )
        return self

    @cached_property
    def private_key(self) -> str | None:
        if self.github_private_key is not None:
            return self.github_private_key.get_secret_value().replace("\\n", "\n")
        if self.github_private_key_path is not None:
            try:
                return self.github_private_key_path.read_text()
            except OSError as exc:
                raise ValueError(f"GITHUB_PRIVATE_KEY_PATH: cannot read: {exc.strerror}") from None
        return None

    @property
    def slot_range(self) -> tuple[int, int]:
        """SLOT_PORTS as (low, high), both included."""
        low, high = (int(part) for part in self.slot_ports.split("-"))
        return low, high

    @property
    def reporting_enabled(self) -> bool:
        return self.github_app_id is not None

    @property
    def webhook_secret(self) -> str | None:
        return self.github_webhook_secret.get_secret_value() if self.github_webhook_secret else None

    @cached_property
    def fernet_key(self) -> bytes:
        """A Fernet key derived from SECRET_KEY, so one setting protects sessions and secrets."""
        secret = self.secret_key.get_secret_value() if self.secret_key else ""
        if not secret:
            raise SettingsError("SECRET_KEY is required to store secrets")
        return base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest())


def load_settings(environ: dict[str, str] | None = None, **overrides) -> Settings:
    """Read settings from `environ` (default: the process environment) plus overrides.

    Errors are turned into one readable message naming each variable.
    """
    import os

    env = dict(os.environ if environ is None else environ)
    try:
        if environ is not None:
            # pydantic-settings reads os.environ itself; give it exactly `env`.
            values = {k.lower(): v for k, v in env.items() if k.lower() in Settings.model_fields}
            return Settings.model_validate({**values, **overrides})
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]).upper() or "settings"
            message = err["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if err["loc"] else message)
        raise SettingsError("; ".join(problems)) from None
