"""The pipeline definition (config/pipeline.yml) and a repository's .release-pipeline.yml.

Raw YAML is validated into typed objects with defaults filled in; every error names its
path (`phases/live/approvals: must be an integer ≥ 0`) so a user can fix it without
reading code.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from app.exceptions import ConfigError

Role = Literal["read", "triage", "write", "maintain", "admin"]
#: The file in an app's repository that describes its build, port, health check and services.
REPO_FILE = ".release-pipeline.yml"
SLUG = r"^[a-z][a-z0-9-]{0,30}$"
MEMORY = r"^[0-9]+[bkmg]$"
# Backing services (`services:` in .release-pipeline.yml).
ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,127}"
IMAGE_REFERENCE = r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}"
PLACEHOLDERS = ("host", "port", "password")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#: Seconds a container has between SIGTERM and SIGKILL when none is set (Docker's own default).
DEFAULT_STOP_TIMEOUT = 10
#: The longest stop timeout a profile may set, in seconds.
MAX_STOP_TIMEOUT = 600


class Profile(Strict):
    """What a phase runs with unless the app's own profile says otherwise."""

    memory: Annotated[str, Field(pattern=MEMORY)] | None = None
    cpus: Annotated[float, Field(gt=0, le=64)] | None = None
    replicas: Annotated[int, Field(ge=1, le=20)] | None = None
    #: Seconds from SIGTERM to SIGKILL when a container is stopped (after its drain).
    stop_timeout: Annotated[int, Field(ge=1, le=MAX_STOP_TIMEOUT)] | None = None
    env: dict[str, str] = {}


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _utc(value: Any) -> datetime:
    """An ISO 8601 moment in UTC (`2026-12-24T00:00Z`); a naive or non-UTC one is refused."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("must be a UTC time like 2026-12-24T00:00Z") from None
    else:
        raise ValueError("must be a UTC time like 2026-12-24T00:00Z")
    if moment.utcoffset() != timedelta(0):
        raise ValueError("must be in UTC (end it with Z)")
    return moment.astimezone(timezone.utc)


class FreezeWindow(Strict):
    """A configured change freeze: an absolute UTC window (`from`/`to`) or whole weekdays."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    start: Annotated[datetime, BeforeValidator(_utc)] | None = Field(default=None, alias="from")
    end: Annotated[datetime, BeforeValidator(_utc)] | None = Field(default=None, alias="to")
    days: list[Literal[WEEKDAYS]] | None = None  # type: ignore[valid-type]
    reason: Annotated[str, Field(max_length=200)] = ""

    @model_validator(mode="after")
    def _one_kind(self) -> FreezeWindow:
        if self.days is not None:
            if self.start is not None or self.end is not None:
                raise ValueError("set either days or from and to, not both")
            if not self.days:
                raise ValueError("days: name at least one day (mon … sun)")
        elif self.start is None or self.end is None:
            raise ValueError("set from and to (UTC), or days")
        elif self.end <= self.start:
            raise ValueError("to must be after from")
        return self


def _url_template(value: str | None) -> str | None:
    """A phase URL template: http(s), placeholders {app}, {phase} and {port} only, naming the app."""
    if value is None:
        return None
    names = set(re.findall(r"\{([^{}]*)\}", value))
    unknown = sorted(names - {"app", "phase", "port"})
    if unknown:
        raise ValueError(f"unknown placeholder {{{unknown[0]}}} (use {{app}}, {{phase}}, {{port}})")
    example = value.format(app="app", phase="phase", port=8088)
    parsed = urlparse(example)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or any(c.isspace() for c in value):
        raise ValueError("must be an http:// or https:// URL template")
    if "{app}" not in value:
        raise ValueError("must contain {app}: every app needs a URL of its own")
    return value


UrlTemplate = Annotated[str, AfterValidator(_url_template)]


class Phase(Strict):
    name: str = ""
    trigger: Literal["push", "tag", "pull_request", "manual"]
    branch: str | None = None
    tag_pattern: str = "v*"
    role: Role = "write"
    approvals: Annotated[int, Field(ge=0, le=20)] = 0
    #: This phase's URL template (else `defaults.url`): the router serves the phase there and
    #: deployments report it.
    url: UrlTemplate | None = None
    health_timeout: Annotated[float, Field(gt=0, le=600)] | None = None
    profile: Profile = Profile()
    freeze: list[FreezeWindow] = []

    @model_validator(mode="after")
    def _pull_request_needs_branch(self) -> Phase:
        if self.trigger == "pull_request" and not self.branch:
            raise ValueError("a pull_request phase needs the branch that promotion PRs merge into")
        return self


class Defaults(Strict):
    url: UrlTemplate = "http://{app}-{phase}.localhost:{port}"
    health_timeout: Annotated[float, Field(gt=0, le=600)] = 30
    profile: Profile = Profile(memory="256m", cpus=0.5, replicas=1, stop_timeout=DEFAULT_STOP_TIMEOUT)


class Images(Strict):
    keep_last: Annotated[int, Field(ge=1, le=1000)] = 10
    #: Image names a repository's `services.*.image` may run besides the images this
    #: installation built for that app (e.g. `postgres:16`, loaded on the engine by an operator).
    allow: list[Annotated[str, Field(pattern=f"^{IMAGE_REFERENCE}$")]] = []


#: What a notification target can subscribe to (README, Notifications); app.notifications.Event has the same names.
EVENTS = (
    "deployment.started", "deployment.succeeded", "deployment.failed", "deployment.rolled_back",
    "deployment.superseded", "promotion.requested", "freeze.changed", "preview.ready", "preview.removed",
)


class NotificationTarget(Strict):
    """An outbound webhook: `json` (signed with the secret in `secret_env`) or `slack`."""

    name: Annotated[str, Field(pattern=SLUG)]
    url: str
    format: Literal["json", "slack"] = "json"
    secret_env: Annotated[str, Field(pattern=f"^{ENV_NAME}$")] | None = None
    events: list[str]
    #: Seconds one attempt may take to connect and answer before it counts as failed.
    timeout: Annotated[float, Field(gt=0, le=30)] = 10

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError("must be an http:// or https:// URL")
        if any(c.isspace() for c in value):
            raise ValueError("must not contain spaces")
        return value

    @field_validator("events")
    @classmethod
    def _known_events(cls, events: list[str]) -> list[str]:
        if not events:
            raise ValueError(f"list at least one event ({', '.join(EVENTS)})")
        unknown = [e for e in events if e not in EVENTS]
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not an event (known: {', '.join(EVENTS)})")
        return list(dict.fromkeys(events))

    @model_validator(mode="after")
    def _secret(self) -> NotificationTarget:
        if self.format == "json" and self.secret_env is None:
            raise ValueError("a json target needs secret_env: the variable holding its signing secret")
        if self.format == "slack" and self.secret_env is not None:
            raise ValueError("a slack target is not signed (Slack does not check signatures): remove secret_env")
        return self


#: Preview phases are named `pr-<number>` (README, Pull request previews); no configured phase may look like one.
PREVIEW_PREFIX = "pr-"
PREVIEW_PHASE = re.compile(r"^pr-[0-9]+$")


def preview_phase(pr_number: int) -> str:
    return f"{PREVIEW_PREFIX}{pr_number}"


def is_preview(phase: str | None) -> bool:
    """Whether `phase` is a pull request's preview (`pr-12`), not a configured phase."""
    return bool(phase) and PREVIEW_PHASE.fullmatch(phase) is not None


class Previews(Strict):
    """`previews:` in pipeline.yml: one preview phase per open pull request into the default branch."""

    enabled: bool = True
    #: Plain environment and sizing only: a preview never receives a secret.
    profile: Profile = Profile()
    #: A preview without a push for this long is torn down (the scheduler checks every minute).
    ttl_hours: Annotated[float, Field(gt=0, le=8760)] = 72
    #: At most this many previews per app; a new one removes the one idle longest.
    max_active: Annotated[int, Field(ge=1, le=100)] = 10
    #: Build draft pull requests too (otherwise they wait for ready_for_review).
    drafts: bool = False
    #: Who may run a fork's code with `/deploy preview`. Below write is refused: on a public
    #: repository everyone can read, and a fork's Dockerfile is untrusted code.
    fork_role: Literal["write", "maintain", "admin"] = "write"


class PipelineConfig(Strict):
    defaults: Defaults = Defaults()
    previews: Previews = Previews()
    phases: dict[Annotated[str, Field(pattern=SLUG)], Phase]
    images: Images = Images()
    #: A phase takes only commits that succeeded on the phase before it (a tag of a commit Demo
    #: never ran does not reach Stage); rollbacks are exempt.
    require_previous_phase: bool = True
    notifications: list[NotificationTarget] = []

    @field_validator("notifications")
    @classmethod
    def _unique_names(cls, targets: list[NotificationTarget]) -> list[NotificationTarget]:
        names = [t.name for t in targets]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"target names must be unique: {repeated[0]} is used twice")
        return targets

    def notification_target(self, name: str) -> NotificationTarget | None:
        return next((t for t in self.notifications if t.name == name), None)

    @field_validator("phases")
    @classmethod
    def _named(cls, phases: dict[str, Phase]) -> dict[str, Phase]:
        if not phases:
            raise ValueError("at least one phase is needed")
        clashing = [name for name in phases if is_preview(name) or name == "preview"]
        if clashing:
            raise ValueError(f"{clashing[0]}: preview and pr-<number> names are kept for pull request previews")
        return {name: phase.model_copy(update={"name": name}) for name, phase in phases.items()}

    @property
    def phase_names(self) -> list[str]:
        return list(self.phases)

    def phase(self, name: str) -> Phase:
        return self.phases[name]

    def next_phase(self, name: str) -> str | None:
        names = self.phase_names
        index = names.index(name)
        return names[index + 1] if index + 1 < len(names) else None

    def previous_phases(self, name: str) -> list[str]:
        """The phases before `name`, nearest first (profile inheritance walks these)."""
        names = self.phase_names
        return list(reversed(names[: names.index(name)]))

    def url_template(self, name: str) -> str:
        """Where `name` is served and reported: its own `url`, else `defaults.url` (a preview,
        pr-<n>, uses the defaults)."""
        phase = self.phases.get(name)
        return (phase.url if phase else None) or self.defaults.url

    @model_validator(mode="after")
    def _phase_urls_apart(self) -> PipelineConfig:
        seen: dict[str, str] = {}
        for name in self.phases:
            host = urlparse(self.url_template(name).format(app="app", phase=name, port=8088)).netloc
            if host in seen:
                raise ValueError(f"phases {seen[host]} and {name} would be served at the same URL "
                                 "(give one of them a url with {phase} or a host of its own)")
            seen[host] = name
        return self

    def health_timeout(self, name: str) -> float:
        phase = self.phases.get(name)
        return (phase.health_timeout if phase else None) or self.defaults.health_timeout

    @property
    def roles(self) -> dict[str, str]:
        return {name: phase.role for name, phase in self.phases.items()}


# Keys a repository may never set: its own file must not weaken who may deploy or approve.
PROTECTED_KEYS = {"phases", "role", "roles", "approvals", "defaults", "branch", "trigger"}


class Service(Strict):
    """A backing service a repository declares (database, cache, ...), one instance per phase.

    `image:` runs an image already on the Docker engine (never pulled by the pipeline); `build:`
    builds `dockerfile` in that directory of the repository. `environment`, `exports` values may
    use the placeholders {password} (generated once per app+phase, stored as the phase secret
    `<NAME>_PASSWORD`), {host} (the service's name on the phase network) and {port}.
    `healthcheck` is a command run inside the service container (a list: exec form; a string:
    run by /bin/sh -c), healthy when it exits 0; without one, the image's own HEALTHCHECK is
    used, else the service counts as ready once it keeps running.
    """

    image: str | None = None
    build: str | None = None
    dockerfile: str = "Dockerfile"
    command: list[str] | None = None
    port: Annotated[int, Field(ge=1, le=65535)]
    environment: dict[str, str] = {}
    data: str | None = None
    healthcheck: list[str] | str | None = None
    health_timeout: Annotated[float, Field(gt=0, le=600)] = 60
    exports: dict[str, str] = {}

    @field_validator("image")
    @classmethod
    def _image_reference(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(IMAGE_REFERENCE, value):
            raise ValueError("must be an image reference like postgres:16 or registry.example/team/db:1.2")
        return value

    @field_validator("build", "dockerfile")
    @classmethod
    def _build_inside_repo(cls, value: str | None) -> str | None:
        if value is not None:
            parts = Path(value).parts
            if not value or value.startswith(("/", "-")) or ".." in parts or "\x00" in value:
                raise ValueError("must be a relative path inside the repository")
        return value

    @field_validator("command", "healthcheck", mode="before")
    @classmethod
    def _command(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return None
        if isinstance(value, str) and info.field_name == "healthcheck":
            if not value.strip() or "\x00" in value:
                raise ValueError("must be a non-empty command")
            return value
        if (not isinstance(value, list) or not value or len(value) > 50
                or not all(isinstance(part, str) and "\x00" not in part for part in value) or not value[0]):
            raise ValueError("must be a command: a list of strings (exec form)" + (
                " or one string (run by /bin/sh -c)" if info.field_name == "healthcheck" else ""))
        return value

    @field_validator("environment", "exports", mode="before")
    @classmethod
    def _variables(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("must be a mapping of NAME: value")
        for name, text in value.items():
            if not isinstance(name, str) or not re.fullmatch(ENV_NAME, name):
                raise ValueError(f"{str(name)[:40]!r} is not a valid variable name "
                                 "(letters, digits and _, not starting with a digit)")
            if not isinstance(text, str):
                raise ValueError(f"{name}: must be a string (quote numbers)")
            if "\x00" in text or len(text) > 4096:
                raise ValueError(f"{name}: must be at most 4096 characters, without NUL")
            unknown = sorted(set(re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", text)) - set(PLACEHOLDERS))
            if unknown:
                raise ValueError(f"{name}: unknown placeholder {{{unknown[0]}}} "
                                 f"(use {', '.join('{' + p + '}' for p in PLACEHOLDERS)})")
        return value

    @field_validator("data")
    @classmethod
    def _data_path(cls, value: str | None) -> str | None:
        if value is not None:
            if (not value.startswith("/") or value.rstrip("/") == "" or ".." in Path(value).parts
                    or any(c in value for c in ":,\x00") or any(c.isspace() for c in value)):
                raise ValueError("must be an absolute path inside the service container, like /var/lib/data")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Service:
        if (self.image is None) == (self.build is None):
            raise ValueError("set exactly one of image or build")
        return self


class RepoConfig(Strict):
    """`.release-pipeline.yml` at the repository root: how to build and check the app."""

    dockerfile: str = "Dockerfile"
    context: str = "."
    port: Annotated[int, Field(ge=1, le=65535)] = 8080
    healthcheck: str = "/"
    services: dict[Annotated[str, Field(pattern=SLUG)], Service] = {}
    #: Run once per deployment in a one-off container of the new image, before it serves
    #: (migrations); an argument list replacing the image's ENTRYPOINT and CMD, never a shell string.
    release: list[str] | None = None
    release_timeout: Annotated[int, Field(ge=1, le=3600)] = 600

    @field_validator("release", mode="before")
    @classmethod
    def _release_argv(cls, value: Any) -> Any:
        if value is None:
            return None
        if (not isinstance(value, list) or not value or len(value) > 100
                or not all(isinstance(part, str) and "\x00" not in part for part in value) or not value[0]):
            raise ValueError("must be a command: a list of strings, e.g. [bin/migrate, --yes] (never a shell string)")
        return value

    @field_validator("dockerfile", "context")
    @classmethod
    def _inside_repo(cls, value: str) -> str:
        parts = Path(value).parts
        if value.startswith("/") or ".." in parts or value.startswith("-"):
            raise ValueError("must be a relative path inside the repository")
        return value

    @field_validator("healthcheck")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or any(c.isspace() for c in value):
            raise ValueError("must be a URL path starting with /")
        return value


def _describe(exc: ValidationError, prefix: str = "") -> str:
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not str(p).startswith("function-after")]
        # pydantic marks a bad dict key with a trailing "[key]"; a key literally named "[key]"
        # (or "") must still show up in the path.
        bad_key = len(loc) > 1 and loc[-1] == "[key]" and err["type"] != "extra_forbidden"
        path = "/".join(p or '""' for p in (loc[:-1] if bad_key else loc))
        message = err["msg"].removeprefix("Value error, ")
        if bad_key:
            message = "names must be lowercase letters, digits and dashes, starting with a letter"
        elif err["type"] == "extra_forbidden":
            message = "is not a known setting"
        elif err["type"] in ("greater_than_equal", "less_than_equal") and err["loc"][-1] == "approvals":
            message = "must be an integer ≥ 0 and ≤ 20"
        elif err["type"] in ("int_parsing", "int_type", "int_from_float"):
            message = "must be an integer" + (" ≥ 0" if err["loc"][-1] == "approvals" else "")
        problems.append(f"{prefix}{path}: {message}" if path else f"{prefix}{message}")
    return "; ".join(problems)


def _load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{source}: not valid YAML{where}") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid YAML (nested too deeply)") from None
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        # PyYAML's constructors raise these for scalars that look typed but are not
        # (`2001-13-01`, `!!int x`, `!!timestamp x`).
        raise ConfigError(f"{source}: not valid YAML ({type(exc).__name__}: {str(exc)[:100]})") from None


def parse_pipeline(text: str, source: str = "pipeline.yml") -> PipelineConfig:
    data = _load_yaml(text, source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a mapping with a phases: section")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from None


def load_pipeline(path: Path) -> PipelineConfig:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    return parse_pipeline(text, str(path))


def parse_repo_config(text: str | None, source: str = ".release-pipeline.yml") -> RepoConfig:
    """Validate a repository's file; absent or empty means all defaults."""
    data = _load_yaml(text, source) if text else None
    if data is None:
        return RepoConfig()
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a mapping")
    protected = sorted(PROTECTED_KEYS & set(data))
    if protected:
        raise ConfigError(
            f"{source}: {', '.join(protected)}: cannot be set from the repository "
            "(phase roles and approvals live in the pipeline configuration)"
        )
    try:
        return RepoConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from None
