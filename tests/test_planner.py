"""The planner, table-driven: one case per row of the README's first table and per ignored case, no I/O."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.pipeline import load_pipeline, parse_pipeline
from app.planner import plan
from app.plans import Deploy, Ignore, Invalid, Pong, Reply, RunCommand, SyncInstallation
from tests.conftest import load_payload

CONFIG = load_pipeline(Path(__file__).parent.parent / "config" / "pipeline.yml")
SHA = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def push(ref="refs/heads/master", after=SHA, **extra):
    payload = load_payload("push/with-installation")
    payload.update(ref=ref, after=after, deleted=False, created=False, forced=False)
    payload["head_commit"] = {"id": after}
    payload.update(extra)
    return payload


def tag_create(tag="v1.2.3", ref_type="tag"):
    payload = load_payload("create/with-installation")
    payload.update(ref=tag, ref_type=ref_type)
    return payload


def release(tag="v1.2.3", action="published"):
    payload = load_payload("release/created")
    payload["action"] = action
    payload["release"]["tag_name"] = tag
    return payload


def merged_pr(base="live", merged=True, title="Promote v1.4.0 to Live", action="closed"):
    payload = load_payload("pull_request/closed")
    payload["action"] = action
    pr = payload["pull_request"]
    pr.update(merged=merged, title=title)
    pr["base"]["ref"] = base
    pr["head"]["sha"] = SHA
    pr["merged_by"] = {"login": "maintainer"}
    return payload


def into(base, payload):
    payload["pull_request"]["base"]["ref"] = base
    return payload


def comment(body, action="created", on_pr=True, user_type="User"):
    payload = load_payload("issue_comment/created")
    payload["action"] = action
    payload["comment"]["body"] = body
    payload["comment"]["user"]["type"] = user_type
    if not on_pr:
        payload["issue"].pop("pull_request", None)
    else:
        payload["issue"]["pull_request"] = {"url": "https://api.github.com/repos/x/y/pulls/1"}
    return payload


DEPLOYS = [
    ("push to the default branch → demo", "push", push(), dict(phase="demo", sha=SHA, version=SHA[:7], trigger="push")),
    ("forced push to the default branch → demo at the new head", "push", push(forced=True),
     dict(phase="demo", sha=SHA, version=SHA[:7])),
    ("release tag push → stage", "push", push(ref="refs/tags/v1.2.3", head_commit={"id": COMMIT}),
     dict(phase="stage", sha=COMMIT, version="v1.2.3", trigger="tag", dedup_key="tag:Codertocat/Hello-World:stage:v1.2.3")),
    ("pre-release tag push → stage", "push", push(ref="refs/tags/v2.0.0-rc.1"),
     dict(phase="stage", version="v2.0.0-rc.1")),
    ("tag create → stage, sha resolved later", "create", tag_create(),
     dict(phase="stage", sha=None, version="v1.2.3", dedup_key="tag:Codertocat/Hello-World:stage:v1.2.3")),
    ("release published → stage, same dedup key", "release", release(),
     dict(phase="stage", sha=None, dedup_key="tag:Codertocat/Hello-World:stage:v1.2.3")),
    ("merged promotion PR into live → live", "pull_request", merged_pr(),
     dict(phase="live", sha=SHA, version="v1.4.0", required_approvals=1, pr_number=2,
          actor="maintainer")),
    ("first push creating the default branch (recorded payload) → demo", "push", load_payload("push/with-new-branch"),
     dict(phase="demo", version="6113728", commit_title="Initial commit", commit_author="Codertocat")),
    ("push: the title is the message's first line, the author's GitHub name else git name", "push",
     push(head_commit={"id": SHA, "message": "Fix checkout\n\nLong body", "author": {"name": "Ada L."}}),
     dict(commit_title="Fix checkout", commit_author="Ada L.")),
    ("push: an odd commit message is cut and cleaned, never refused", "push",
     push(head_commit={"id": SHA, "message": "x\x00y\ud800" + "z" * 500, "author": {"username": 7}}),
     dict(commit_title="xy?" + "z" * 197, commit_author=None)),
    ("push without a head commit message", "push", push(), dict(commit_title=None, commit_author=None)),
    ("release tag push → stage, with its commit's title", "push",
     push(ref="refs/tags/v1.2.3", head_commit={"id": COMMIT, "message": "Release 1.2.3", "author": {"username": "bo"}}),
     dict(phase="stage", sha=COMMIT, commit_title="Release 1.2.3", commit_author="bo")),
    ("merged promotion PR without a version in the title → short sha", "pull_request", merged_pr(title="Ship it"),
     dict(phase="live", version=SHA[:7])),
]


@pytest.mark.parametrize("event,payload,expected", [c[1:] for c in DEPLOYS], ids=[c[0] for c in DEPLOYS])
def test_deploying_events(event, payload, expected):
    decided = plan(event, payload, CONFIG)
    assert isinstance(decided, Deploy), decided
    for key, value in expected.items():
        assert getattr(decided, key) == value, key
    assert decided.repo.full_name == "Codertocat/Hello-World"


def test_push_create_and_release_of_one_tag_share_one_dedup_key():
    keys = {
        plan("push", push(ref="refs/tags/v1.2.3"), CONFIG).dedup_key,
        plan("create", tag_create(), CONFIG).dedup_key,
        plan("release", release(), CONFIG).dedup_key,
    }
    assert len(keys) == 1


IGNORED = [
    ("tag deletion (the recorded push payload)", "push", load_payload("push/payload"), "tag deletion"),
    ("branch deletion", "push", push(deleted=True, after="0" * 40), "branch deletion"),
    ("push to another branch", "push", push(ref="refs/heads/feature"), "branch feature"),
    ("new branch pushed", "push", {**load_payload("push/with-new-branch"), "ref": "refs/heads/topic"}, "branch topic"),
    ("non-release tag push", "push", push(ref="refs/tags/simple-tag"), "not a release tag"),
    ("tag v1 without semver", "push", push(ref="refs/tags/v1"), "not a release tag"),
    ("branch create", "create", tag_create("feature", "branch"), "branch"),
    ("non-semver tag create", "create", tag_create("nightly"), "not a release tag"),
    ("release edited", "release", release(action="edited"), "release edited"),
    ("delete event", "delete", load_payload("delete/payload"), "deletion"),
    ("PR closed unmerged", "pull_request", merged_pr(merged=False), "without merging"),
    ("PR merged into another branch", "pull_request", merged_pr(base="main"), "into main"),
    # Into the default branch they plan a preview (tests/test_previews.py).
    ("PR opened into another branch", "pull_request", into("develop", load_payload("pull_request/opened")), "opened"),
    ("PR synchronize into another branch", "pull_request", into("develop", load_payload("pull_request/synchronize")),
     "synchronize"),
    ("review submitted", "pull_request_review", load_payload("pull_request_review/submitted"), "reviews"),
    ("comment edited", "issue_comment", comment("/status", action="edited"), "edited"),
    ("comment deleted", "issue_comment", load_payload("issue_comment/deleted"), "deleted"),
    ("ordinary comment", "issue_comment", comment("Looks good to me"), "no command"),
    ("command on an issue", "issue_comment", comment("/status", on_pr=False), "pull requests"),
    ("command from a bot", "issue_comment", comment("/status", user_type="Bot"), "bots"),
    ("unknown event", "watch", {"action": "started"}, "not used"),
]


@pytest.mark.parametrize("event,payload,reason", [c[1:] for c in IGNORED], ids=[c[0] for c in IGNORED])
def test_ignored_events_say_why(event, payload, reason):
    decided = plan(event, payload, CONFIG)
    assert isinstance(decided, Ignore), decided
    assert reason in decided.reason


def test_command_comment_becomes_a_run_command():
    decided = plan("issue_comment", comment("LGTM\n\n/promote stage"), CONFIG)
    assert isinstance(decided, RunCommand)
    assert decided.actor == "Codertocat" and decided.pr_number == 1


def test_malformed_command_gets_a_reply():
    decided = plan("issue_comment", comment("/promote nowhere"), CONFIG)
    assert isinstance(decided, Reply)
    assert "nowhere" in decided.message


def test_ping_and_installation():
    assert isinstance(plan("ping", load_payload("ping/payload"), CONFIG), Pong)
    created = plan("installation", load_payload("installation/created"), CONFIG)
    assert isinstance(created, SyncInstallation) and created.action == "created"
    assert [r.full_name for r in created.added] == ["Codertocat/Hello-World"]
    deleted = plan("installation", load_payload("installation/deleted"), CONFIG)
    assert deleted.action == "deleted"


@pytest.mark.parametrize(
    "event,payload",
    [
        ("push", {"ref": "refs/heads/main"}),
        ("push", {"ref": 5, "repository": {"full_name": "a/b"}, "after": SHA}),
        ("push", {**push(), "after": "not-a-sha"}),
        ("pull_request", {"action": "closed", "pull_request": {"base": None}}),
        ("issue_comment", {"action": "created", "issue": {}, "comment": {}}),
        ("push", ["a", "list"]),
        ("push", None),
    ],
)
def test_malformed_payloads_are_invalid_not_errors(event, payload):
    assert isinstance(plan(event, payload, CONFIG), Invalid)


def test_configured_branches_and_patterns_are_honoured():
    config = parse_pipeline(
        """
phases:
  dev: {trigger: push, branch: develop, role: write}
  prod: {trigger: tag, tag_pattern: "release-*", role: admin}
"""
    )
    assert plan("push", push(ref="refs/heads/develop"), config).phase == "dev"
    assert isinstance(plan("push", push(ref="refs/heads/master"), config), Ignore)
    # a pattern that is not v-prefixed semver never matches: tags must be semver releases
    assert isinstance(plan("push", push(ref="refs/tags/v1.2.3"), config), Ignore)
