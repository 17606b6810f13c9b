"""A release tag deploys once, whichever of push, create or release reports it first."""

from __future__ import annotations

from app.pipeline import PipelineConfig
from app.plans import Deploy, Ignore, Plan, Repo, Trigger
from app.versions import is_release_tag


def tag_phase(config: PipelineConfig, tag: str) -> str | None:
    for phase in config.phases.values():
        if phase.trigger == "tag" and is_release_tag(tag, phase.tag_pattern):
            return phase.name
    return None


def deploy_tag(config: PipelineConfig, repo: Repo, tag: str, sha: str | None, actor: str, via: str,
               commit: dict[str, str | None] | None = None) -> Plan:
    phase = tag_phase(config, tag)
    if phase is None:
        return Ignore(f"tag {tag} ({via}) is not a release tag of any phase")
    return Deploy(
        repo=repo,
        phase=phase,
        ref=f"refs/tags/{tag}",
        sha=sha,
        version=tag,
        trigger=Trigger.TAG,
        actor=actor,
        dedup_key=f"tag:{repo.full_name}:{phase}:{tag}",
        **(commit or {}),
    )
