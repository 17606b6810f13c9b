"""Phase profiles with inheritance: each value set on the phase, else inherited, with its source.

Precedence for a phase P: the app's profile on P, then the app's profiles on the phases
before P (nearest first), then the pipeline's settings for P, then the pipeline defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.crypto import SecretBox
from app.models import Profile
from app.pipeline import PipelineConfig, is_preview

SIZING = ("memory", "cpus", "replicas", "stop_timeout")


@dataclass(frozen=True)
class Sourced:
    value: Any
    #: The phase whose app profile set it, or "pipeline" for configuration defaults.
    source: str


@dataclass(frozen=True)
class ResolvedProfile:
    phase: str
    env: dict[str, Sourced] = field(default_factory=dict)
    #: name → Sourced(ciphertext, source); plaintext only in `container_env`.
    secrets: dict[str, Sourced] = field(default_factory=dict)
    sizing: dict[str, Sourced] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        """What a deployment records (secrets stay encrypted) and a rollback restores."""
        return {
            "env": {k: v.value for k, v in self.env.items()},
            "secrets": {k: v.value for k, v in self.secrets.items()},
            **{k: v.value for k, v in self.sizing.items()},
        }


def resolve(session: Session, config: PipelineConfig, app_id: int, phase: str) -> ResolvedProfile:
    if is_preview(phase):
        return _preview(config, phase)
    rows = {
        p.phase: p for p in session.scalars(select(Profile).where(Profile.app_id == app_id)).all()
    }
    chain = [phase, *config.previous_phases(phase)]
    env: dict[str, Sourced] = {}
    secrets: dict[str, Sourced] = {}
    sizing: dict[str, Sourced] = {}
    for name in chain:
        row = rows.get(name)
        if row is None:
            continue
        for key, value in (row.env or {}).items():
            env.setdefault(key, Sourced(value, name))
        for key, value in (row.secrets or {}).items():
            secrets.setdefault(key, Sourced(value, name))
        for key in SIZING:
            if getattr(row, key) is not None:
                sizing.setdefault(key, Sourced(getattr(row, key), name))
    _fill_from_pipeline((config.phase(phase).profile, config.defaults.profile), env, sizing)
    return ResolvedProfile(phase=phase, env=env, secrets=secrets, sizing=sizing)


def _fill_from_pipeline(profiles, env: dict[str, Sourced], sizing: dict[str, Sourced]) -> None:
    """Values still unset come from the pipeline's profiles, first one first."""
    for pipeline_profile in profiles:
        for key, value in pipeline_profile.env.items():
            env.setdefault(key, Sourced(value, "pipeline"))
        for key in SIZING:
            if getattr(pipeline_profile, key) is not None:
                sizing.setdefault(key, Sourced(getattr(pipeline_profile, key), "pipeline"))


def _preview(config: PipelineConfig, phase: str) -> ResolvedProfile:
    """A pull request preview runs untrusted code: `previews.profile` and the defaults only, never
    an app profile (so no secret of any phase) (README, Pull request previews)."""
    env: dict[str, Sourced] = {}
    sizing: dict[str, Sourced] = {}
    _fill_from_pipeline((config.previews.profile, config.defaults.profile), env, sizing)
    return ResolvedProfile(phase=phase, env=env, secrets={}, sizing=sizing)


def container_env(snapshot: dict[str, Any], box: SecretBox) -> dict[str, str]:
    """Environment for the container: plain variables plus decrypted secrets."""
    env = {k: str(v) for k, v in (snapshot.get("env") or {}).items()}
    env.update({k: box.open(v) for k, v in (snapshot.get("secrets") or {}).items()})
    return env
