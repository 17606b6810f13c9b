"""The pipeline definition (config/pipeline.yml) and a repository's .release-pipeline.yml.

Raw YAML is validated into typed objects with defaults filled in; every error names its
path (`phases/live/approvals: must be an integer ≥ 0`) so a user can fix it without
reading code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app.exceptions import ConfigError

Role = Literal["read", "triage", "write", "maintain", "admin"]
SLUG = r"^[a-z][a-z0-9-]{0,30}$"
MEMORY = r"^[0-9]+[bkmg]$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Profile(Strict):
    """What a phase runs with unless the app's own profile says otherwise."""

    memory: Annotated[str, Field(pattern=MEMORY)] | None = None
    cpus: Annotated[float, Field(gt=0, le=64)] | None = None
    replicas: Annotated[int, Field(ge=1, le=20)] | None = None
    env: dict[str, str] = {}


class Phase(Strict):
    name: str = ""
    trigger: Literal["push", "tag", "pull_request", "manual"]
    branch: str | None = None
    tag_pattern: str = "v*"
    role: Role = "write"
    approvals: Annotated[int, Field(ge=0, le=20)] = 0
    url: str | None = None
    health_timeout: Annotated[float, Field(gt=0, le=600)] | None = None
    profile: Profile = Profile()

    @model_validator(mode="after")
    def _pull_request_needs_branch(self) -> Phase:
        if self.trigger == "pull_request" and not self.branch:
            raise ValueError("a pull_request phase needs the branch that promotion PRs merge into")
        return self


class Defaults(Strict):
    url: str = "http://{app}-{phase}.localhost:{port}"
    health_timeout: Annotated[float, Field(gt=0, le=600)] = 30
    profile: Profile = Profile(memory="256m", cpus=0.5, replicas=1)


class Images(Strict):
    keep_last: Annotated[int, Field(ge=1, le=1000)] = 10


class PipelineConfig(Strict):
    defaults: Defaults = Defaults()
    phases: dict[Annotated[str, Field(pattern=SLUG)], Phase]
    images: Images = Images()

    @field_validator("phases")
    @classmethod
    def _named(cls, phases: dict[str, Phase]) -> dict[str, Phase]:
        if not phases:
            raise ValueError("at least one phase is needed")
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
        return self.phases[name].url or self.defaults.url

    def health_timeout(self, name: str) -> float:
        return self.phases[name].health_timeout or self.defaults.health_timeout

    @property
    def roles(self) -> dict[str, str]:
        return {name: phase.role for name, phase in self.phases.items()}


# Keys a repository may never set: its own file must not weaken who may deploy or approve.
PROTECTED_KEYS = {"phases", "role", "roles", "approvals", "defaults", "branch", "trigger"}


class Service(Strict):
    """A backing service a repository declares (database, cache, ...)."""

    image: str | None = None
    build: str | None = None
    port: Annotated[int, Field(ge=1, le=65535)]
    environment: dict[str, str] = {}
    data: str | None = None
    healthcheck: list[str] | None = None
    exports: dict[str, str] = {}

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
