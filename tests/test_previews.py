"""Previews, decided purely (README, Pull request previews): the planner's PR events, `app.previews.decide`, which
previews make room or expire, and the `previews:` settings with path-bearing errors."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from app.exceptions import ConfigError
from app.models import PreviewState
from app.pipeline import Previews, is_preview, load_pipeline, parse_pipeline, preview_phase
from app.planner import plan
from app.plans import Ignore, PreviewAction, PreviewEvent, Repo
from app.previews import Decision, Seen, Step, decide, evictions, expired
from tests.conftest import load_payload

CONFIG = load_pipeline(Path(__file__).parent.parent / "config" / "pipeline.yml")
REPO = Repo("Codertocat/Hello-World", "https://github.com/Codertocat/Hello-World.git", "master",
            "https://github.com/Codertocat/Hello-World", 1)
A, B = "a" * 40, "b" * 40
ON = Previews()
ACTIVE, CLOSED = PreviewState.ACTIVE, PreviewState.CLOSED


def pr_payload(action, *, base="master", head_repo="Codertocat/Hello-World", draft=False, merged=False):
    payload = load_payload("pull_request/opened")
    payload["action"] = action
    pr = payload["pull_request"]
    pr["base"]["ref"] = base
    pr["head"]["sha"] = A
    pr["head"]["repo"]["full_name"] = head_repo
    pr.update(draft=draft, merged=merged)
    return payload


def event(action, sha=A, *, fork=False, draft=False, merged=False, at="2026-12-02T10:00:00Z", actor="octo"):
    return PreviewEvent(repo=REPO, pr_number=2, action=PreviewAction(action), head_sha=sha,
                        head_repo="mallory/Hello-World" if fork else REPO.full_name, draft=draft, merged=merged,
                        updated_at=at, actor=actor)


@pytest.mark.parametrize("action", ["opened", "reopened", "synchronize", "ready_for_review", "converted_to_draft",
                                    "closed"])
def test_a_pull_request_into_the_default_branch_is_a_preview_event(action):
    planned = plan("pull_request", pr_payload(action), CONFIG)
    assert planned == PreviewEvent(repo=REPO, pr_number=2, action=PreviewAction(action), head_sha=A,
                                   head_repo="Codertocat/Hello-World", updated_at="2019-05-15T15:20:33Z",
                                   actor="Codertocat")
    assert planned.fork is False


def test_the_planner_says_fork_draft_and_merged():
    planned = plan("pull_request", pr_payload("closed", head_repo="mallory/Hello-World", draft=True, merged=True),
                   CONFIG)
    assert (planned.fork, planned.draft, planned.merged) == (True, True, True)


def test_other_branches_and_previews_off_plan_no_preview():
    assert isinstance(plan("pull_request", pr_payload("opened", base="develop"), CONFIG), Ignore)
    off = parse_pipeline("phases: {demo: {trigger: push}}\npreviews: {enabled: false}\n")
    planned = plan("pull_request", pr_payload("opened"), off)
    assert isinstance(planned, Ignore) and "previews.enabled" in planned.reason
    assert plan("pull_request", pr_payload("closed"), off).action is PreviewAction.CLOSED  # still removed
    # A promotion PR into live stays a promotion request, never a preview.
    assert type(plan("pull_request", pr_payload("opened", base="live"), CONFIG)).__name__ == "SummarizePromotion"


DECISIONS = [
    ("first open builds", None, event("opened"), Decision(Step.BUILD, ACTIVE, A, "opened at aaaaaaa")),
    ("a push builds the new head", Seen(ACTIVE, A, "2026-12-02T09:00:00Z", A), event("synchronize", B),
     Decision(Step.BUILD, ACTIVE, B, "synchronize at bbbbbbb")),
    ("the same head again builds nothing", Seen(ACTIVE, A, "2026-12-02T09:00:00Z", A), event("synchronize"),
     Decision(Step.NOTHING, None, A, "the preview already runs aaaaaaa")),
    ("a failed head may build again", Seen(ACTIVE, A, "2026-12-02T09:00:00Z", None), event("synchronize"),
     Decision(Step.BUILD, ACTIVE, A, "synchronize at aaaaaaa")),
    ("opened after a later synchronize", Seen(ACTIVE, B, "2026-12-02T11:00:00Z", B), event("opened"),
     Decision(Step.NOTHING, None, A, "a delivery older than one already applied (opened)")),
    ("closed tears down", Seen(ACTIVE, A, "2026-12-02T09:00:00Z", A), event("closed"),
     Decision(Step.TEARDOWN, CLOSED, A, "the pull request was closed")),
    ("merged tears down too", Seen(ACTIVE, A, "", A), event("closed", merged=True),
     Decision(Step.TEARDOWN, CLOSED, A, "the pull request was merged")),
    ("closed twice", Seen(CLOSED, A, "2026-12-02T10:00:00Z"), event("closed"),
     Decision(Step.NOTHING, None, A, "the preview was already removed")),
    ("a push sent before the close", Seen(CLOSED, A, "2026-12-02T11:00:00Z"), event("synchronize", B),
     Decision(Step.NOTHING, None, B, "a delivery older than one already applied (synchronize)")),
    ("a push with the close's time", Seen(CLOSED, A, "2026-12-02T10:00:00Z"), event("synchronize", B),
     Decision(Step.NOTHING, None, B, "the pull request is closed")),
    ("reopened builds again", Seen(CLOSED, A, "2026-12-02T09:00:00Z"), event("reopened"),
     Decision(Step.BUILD, ACTIVE, A, "reopened at aaaaaaa")),
    ("an expired preview builds on a push", Seen(PreviewState.REMOVED, A, "2026-12-02T09:00:00Z"),
     event("synchronize", B), Decision(Step.BUILD, ACTIVE, B, "synchronize at bbbbbbb")),
    ("a fork asks", None, event("opened", fork=True),
     Decision(Step.ASK_APPROVAL, PreviewState.AWAITING_APPROVAL, A,
              "aaaaaaa comes from the fork mallory/Hello-World: it needs /deploy preview")),
    ("a fork asked already", Seen(PreviewState.AWAITING_APPROVAL, A, "2026-12-02T09:00:00Z"),
     event("synchronize", fork=True), Decision(Step.NOTHING, None, A, "already waiting for /deploy preview of aaaaaaa")),
    ("a fork's new push keeps what was consented to", Seen(ACTIVE, A, "2026-12-02T09:00:00Z", A),
     event("synchronize", B, fork=True),
     Decision(Step.ASK_APPROVAL, ACTIVE, B, "bbbbbbb comes from the fork mallory/Hello-World: it needs /deploy preview")),
    ("consent builds the fork's head", Seen(PreviewState.AWAITING_APPROVAL, A, "2026-12-02T11:00:00Z"),
     event("command", fork=True, actor="wes"), Decision(Step.BUILD, ACTIVE, A, "/deploy preview by @wes")),
    ("consent on a closed PR", Seen(CLOSED, A, "2026-12-02T09:00:00Z"), event("command", fork=True),
     Decision(Step.NOTHING, None, A, "the pull request is closed")),
    ("a draft waits", None, event("opened", draft=True),
     Decision(Step.WAIT, PreviewState.DRAFT, A, "a draft: the preview waits for ready for review")),
    ("ready for review builds", Seen(PreviewState.DRAFT, A, "2026-12-02T09:00:00Z"), event("ready_for_review"),
     Decision(Step.BUILD, ACTIVE, A, "ready_for_review at aaaaaaa")),
    ("back to draft removes what runs", Seen(ACTIVE, A, "2026-12-02T09:00:00Z", A),
     event("converted_to_draft", draft=True),
     Decision(Step.SET_ASIDE, PreviewState.DRAFT, A,
              "back to draft: the preview is removed until the pull request is ready for review")),
    ("back to draft with nothing running waits", Seen(PreviewState.AWAITING_APPROVAL, A, "2026-12-02T09:00:00Z"),
     event("converted_to_draft", draft=True, fork=True),
     Decision(Step.WAIT, PreviewState.DRAFT, A, "a draft: the preview waits for ready for review")),
    ("back to draft after the close", Seen(CLOSED, A, "2026-12-02T10:00:00Z"), event("converted_to_draft", draft=True),
     Decision(Step.NOTHING, None, A, "the pull request is closed")),
    ("back to draft sent before a later push", Seen(ACTIVE, B, "2026-12-02T11:00:00Z", B),
     event("converted_to_draft", draft=True),
     Decision(Step.NOTHING, None, A, "a delivery older than one already applied (converted_to_draft)")),
]


@pytest.mark.parametrize("seen, incoming, expected", [d[1:] for d in DECISIONS], ids=[d[0] for d in DECISIONS])
def test_decide(seen, incoming, expected):
    assert decide(seen, incoming, ON) == expected


def test_drafts_build_when_the_pipeline_says_so():
    assert decide(None, event("opened", draft=True), Previews(drafts=True)).step is Step.BUILD
    back = decide(Seen(ACTIVE, A, "2026-12-02T09:00:00Z", A), event("converted_to_draft", draft=True),
                  Previews(drafts=True))
    assert back.step is Step.NOTHING and "previews.drafts" in back.reason


T0 = datetime(2026, 12, 2, tzinfo=timezone.utc)


def test_the_preview_idle_longest_makes_room():
    active = [(1, T0 + timedelta(hours=3)), (2, T0), (3, T0 + timedelta(hours=1))]
    assert evictions(active, incoming=4, max_active=3) == [2]
    assert evictions(active, incoming=4, max_active=2) == [2, 3]
    assert evictions(active, incoming=4, max_active=4) == []
    assert evictions(active, incoming=1, max_active=3) == []  # already one of them


def test_previews_idle_beyond_the_ttl_expire():
    active = [(1, T0), (2, T0 + timedelta(hours=50)), (3, T0 - timedelta(hours=1))]
    assert expired(active, T0 + timedelta(hours=72, minutes=1), ttl_hours=72) == [1, 3]
    assert expired(active, T0 + timedelta(hours=1), ttl_hours=72) == []


def test_preview_phase_names():
    assert preview_phase(12) == "pr-12" and is_preview("pr-12")
    assert not any(is_preview(name) for name in ("demo", "pr-", "pr-x", "pr-1a", None, ""))


@pytest.mark.parametrize("text, says", [
    ("previews: {ttl_hours: 0}", "previews/ttl_hours: Input should be greater than 0"),
    ("previews: {max_active: 0}", "previews/max_active: Input should be greater than or equal to 1"),
    ("previews: {fork_role: read}", "previews/fork_role: Input should be 'write', 'maintain' or 'admin'"),
    ("previews: {drafts: maybe}", "previews/drafts: Input should be a valid boolean"),
    ("previews: {profile: {secrets: {A: b}}}", "previews/profile/secrets: is not a known setting"),
    ("previews: {ttl: 3}", "previews/ttl: is not a known setting"),
])
def test_previews_settings_are_validated_with_their_path(text, says):
    with pytest.raises(ConfigError) as raised:
        parse_pipeline("phases: {demo: {trigger: push}}\n" + text + "\n")
    assert says in str(raised.value)


@pytest.mark.parametrize("name", ["pr-1", "preview"])
def test_no_phase_may_take_a_preview_name(name):
    with pytest.raises(ConfigError, match="kept for pull request previews"):
        parse_pipeline(f"phases: {{{name}: {{trigger: push}}}}\n")


def test_the_defaults():
    assert CONFIG.previews == Previews(enabled=True, ttl_hours=72, max_active=10, drafts=False, fork_role="write")


def test_a_ready_preview_is_announced_as_preview_ready():
    from app.models import Deployment
    from app.notifications import Event, finished_event

    ready = Deployment(phase="pr-4", status="succeeded", trigger="preview")
    failed = Deployment(phase="pr-4", status="failed", trigger="preview")
    assert (finished_event(ready), finished_event(failed)) == (Event.PREVIEW_READY, Event.DEPLOYMENT_FAILED)
    assert finished_event(Deployment(phase="demo", status="succeeded", trigger="push")) is Event.DEPLOYMENT_SUCCEEDED


def test_a_preview_profile_has_no_secret_and_no_app_profile():
    from app.profiles import resolve

    config = parse_pipeline("phases: {demo: {trigger: push, profile: {env: {A: demo}}}}\n"
                            "previews: {profile: {env: {B: preview}, memory: 64m}}\n")
    resolved = resolve(None, config, 1, "pr-3")  # never reads the app's profiles (no session needed)
    assert resolved.snapshot() == {"env": {"B": "preview"}, "secrets": {}, "memory": "64m", "cpus": 0.5,
                                   "replicas": 1, "stop_timeout": 10}
