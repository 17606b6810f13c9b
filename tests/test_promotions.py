"""Build once, promote the artifact: tag → Stage and approved promotion PR → Live, end to end,
on one image, with approvals counted from the GitHub stand-in's reviews API."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.models import LogLine
from tests.support.pipeline_e2e import APP, REPO

BUILD_STARTED = "building Dockerfile"


def _build_log_lines(pipeline) -> list[str]:
    with pipeline.ctx.db.session() as session:
        return [line.text for line in session.scalars(select(LogLine).where(LogLine.stream == "build"))]


def _approvals(pipeline, number: int, *reviews: tuple[str, str]) -> None:
    pipeline.github.reviews[(REPO, number)] = [{"user": user, "state": state} for user, state in reviews]


def test_tag_deploys_to_stage_on_the_image_demo_built(pipeline):
    sha = pipeline.commit("1.0.0", tag="v1.0.0")
    pipeline.push(sha)
    pipeline.work()
    answers = pipeline.push_tag("v1.0.0")  # GitHub reports a new tag twice: push and create
    pipeline.work()

    [demo], [stage] = pipeline.deployments("demo"), pipeline.deployments("stage")
    assert answers[1]["reason"] == "v1.0.0 to stage is already planned"
    assert (stage.status, stage.version, stage.sha, stage.trigger) == ("succeeded", "v1.0.0", sha, "tag")
    assert stage.image_id == demo.image_id
    assert len(pipeline.builds()) == 1
    assert sum(BUILD_STARTED in line for line in _build_log_lines(pipeline)) == 1
    assert pipeline.info(stage)["APP_VERSION"] == "v1.0.0" and pipeline.info(demo)["APP_VERSION"] == sha[:7]
    running = {c.labels["release-pipeline.phase"]: c for c in pipeline.ctx.engine.list_containers(app=APP)}
    images = {phase: pipeline.ctx.engine.client.containers.get(c.id).image.id for phase, c in running.items()}
    assert images == {"demo": demo.image_id, "stage": demo.image_id}
    assert pipeline.statuses(sha, "stage") == ["pending", "pending", "success"]


def test_a_tag_on_a_new_commit_with_a_known_tree_reuses_that_tree_s_image(relaxed_pipeline):
    pipeline = relaxed_pipeline  # one phase at a time: require_previous_phase off
    first = pipeline.commit("1.0.0")
    pipeline.push(first)
    pipeline.work()
    again = pipeline.commit("1.0.0", tag="v1.0.1")  # a new commit, the same files
    assert again != first
    pipeline.push_tag("v1.0.1")
    pipeline.work()
    [demo], [stage] = pipeline.deployments("demo"), pipeline.deployments("stage")
    assert (stage.status, stage.sha, stage.tree_sha) == ("succeeded", again, demo.tree_sha)
    assert stage.image_id == demo.image_id and len(pipeline.builds()) == 1


def test_a_tag_on_an_unbuilt_commit_builds_it_once(relaxed_pipeline):
    pipeline = relaxed_pipeline  # one phase at a time: require_previous_phase off
    sha = pipeline.commit("3.0.0", tag="v3.0.0")
    pipeline.push_tag("v3.0.0")
    pipeline.work()
    [stage] = pipeline.deployments("stage")
    assert (stage.status, stage.sha, stage.version) == ("succeeded", sha, "v3.0.0")
    assert len(pipeline.builds()) == 1 and pipeline.fetch(stage.url, "/version").strip() == "3.0.0"


def test_walk_from_demo_to_live_on_one_image_driven_by_git_and_comments(pipeline):
    pipeline.github.permissions[(REPO, "ada")] = "admin"
    sha = pipeline.commit("1.4.0", tag="v1.4.0")
    pipeline.push(sha)
    pipeline.work()
    pipeline.push_tag("v1.4.0")
    pipeline.work()

    pipeline.open_pull(1, sha, title="Release notes for v1.4.0")
    comment_id = pipeline.comment("/promote live", user="ada", pr=1)
    pipeline.work()
    assert pipeline.deployments("live") == []
    [(number, pull)] = [(n, p) for (r, n), p in pipeline.github.pulls.items() if r == REPO and n != 1]
    assert pull["title"] == "Promote v1.4.0 to Live"
    assert f"/pull/{number})" in pipeline.reply_to(comment_id)
    pull["head"]["sha"] = pipeline.github.refs[(REPO, "refs/heads/promote/live/v1.4.0")]

    _approvals(pipeline, number, ("bob", "APPROVED"))
    pipeline.merge(number)
    pipeline.work()

    [demo], [stage], [live] = (pipeline.deployments(p) for p in ("demo", "stage", "live"))
    assert (live.status, live.version, live.sha, live.pr_number) == ("succeeded", "v1.4.0", sha, number)
    assert demo.image_id == stage.image_id == live.image_id and len(pipeline.builds()) == 1
    assert pipeline.info(live)["APP_VERSION"] == "v1.4.0" and pipeline.info(live)["APP_PHASE"] == "live"
    assert pipeline.statuses(sha, "live")[-1] == "success"
    [outcome] = pipeline.comments(number)
    assert f"**v1.4.0** is live on **Live**: {live.url}" in outcome["body"]
    [github_deployment] = [d for d in pipeline.github.deployments.values() if d["environment"] == "live"]
    assert github_deployment["statuses"][-1]["environment_url"] == live.url
    assert not pipeline.unsent_reports()


@pytest.mark.parametrize(
    "reviews, counted",
    [
        pytest.param([], "0 of 1 required approvals", id="no-review"),
        pytest.param([("alice", "APPROVED")], "0 of 1 required approvals", id="self-approval-only"),
        pytest.param([("bob", "APPROVED"), ("bob", "CHANGES_REQUESTED")], "0 of 1 required approvals",
                     id="approved-then-changes-requested"),
        pytest.param([("bob", "COMMENTED"), ("alice", "APPROVED"), ("carol", "DISMISSED")],
                     "0 of 1 required approvals", id="comment-self-and-dismissed"),
    ],
)
def test_promotion_without_enough_approvals_deploys_nothing_and_says_why(pipeline, reviews, counted):
    sha = pipeline.commit("1.0.0")
    pipeline.open_pull(7, sha, author="alice", title="Release v1.0.0", base="live", head="release")
    _approvals(pipeline, 7, *reviews)
    pipeline.merge(7)
    pipeline.work()

    [live] = pipeline.deployments("live")
    assert live.status == "refused" and counted in live.reason
    assert pipeline.builds() == [] and pipeline.ctx.engine.list_containers(app=APP) == []
    assert pipeline.statuses(sha, "live") == ["pending", "failure"]
    [comment] = pipeline.comments(7)
    assert "**v1.0.0** was not deployed to **Live**" in comment["body"]
    assert f"{counted}" in comment["body"]
    assert [d for d in pipeline.github.deployments.values() if d["environment"] == "live"] == []


def test_promotion_with_approvals_deploys_with_the_version_rule(relaxed_pipeline):
    """One approval from someone else is enough; the version is the tag at the PR head, else the
    title's vX.Y.Z, else the short sha; a later comment does not cancel the approval."""
    pipeline = relaxed_pipeline  # one phase at a time: require_previous_phase off
    tagged = pipeline.commit("1.0.0", tag="v1.0.0")
    titled = pipeline.commit("1.1.0")
    plain = pipeline.commit("1.2.0")
    expected = []
    for number, (sha, title, version) in enumerate(
        [(tagged, "Ship it (not v9.9.9-ish)", "v1.0.0"), (titled, "Release v1.1.0", "v1.1.0"),
         (plain, "Ship it", plain[:7])], start=10):
        pipeline.open_pull(number, sha, author="alice", title=title, base="live", head=f"release-{number}")
        _approvals(pipeline, number, ("alice", "APPROVED"), ("bob", "APPROVED"), ("bob", "COMMENTED"))
        pipeline.merge(number)
        pipeline.work()
        expected.append((sha, version))
        live = pipeline.deployments("live")[-1]
        assert (live.status, live.sha, live.version) == ("succeeded", sha, version), live.reason
        assert pipeline.info(live)["APP_VERSION"] == version
    assert [(d.sha, d.version) for d in pipeline.deployments("live")] == expected
    assert len(pipeline.ctx.engine.list_containers(app=APP, phase="live")) == 1


def test_a_renamed_promotion_keeps_its_new_name_on_live(relaxed_pipeline):
    """`/promote live v1.0.0 as 2026.11`: the tag at the head does not override the rename."""
    pipeline = relaxed_pipeline  # one phase at a time: require_previous_phase off
    pipeline.github.permissions[(REPO, "ada")] = "admin"
    sha = pipeline.commit("1.0.0", tag="v1.0.0")
    pipeline.push_tag("v1.0.0")
    pipeline.work()
    pipeline.comment("/promote live v1.0.0 as 2026.11", user="ada")
    pipeline.work()
    [(number, pull)] = [(n, p) for (r, n), p in pipeline.github.pulls.items() if r == REPO]
    pull["head"]["sha"] = sha
    _approvals(pipeline, number, ("bob", "APPROVED"))
    pipeline.merge(number)
    pipeline.work()
    [live] = pipeline.deployments("live")
    assert (live.status, live.version, live.trigger) == ("succeeded", "2026.11", "promotion")
    assert pipeline.info(live)["APP_VERSION"] == "2026.11"


def test_the_requester_of_a_promotion_cannot_approve_it_alone(relaxed_pipeline):
    """The bot opens the promotion PR for whoever typed /promote: their approval does not count."""
    pipeline = relaxed_pipeline  # one phase at a time: require_previous_phase off
    pipeline.github.permissions[(REPO, "ada")] = "admin"
    sha = pipeline.commit("2.0.0", tag="v2.0.0")
    pipeline.push_tag("v2.0.0")
    pipeline.work()
    pipeline.comment("/promote live", user="ada")
    pipeline.work()
    [(number, pull)] = [(n, p) for (r, n), p in pipeline.github.pulls.items() if r == REPO]
    pull["head"]["sha"] = sha
    _approvals(pipeline, number, ("ada", "APPROVED"))
    pipeline.merge(number)
    pipeline.work()
    [live] = pipeline.deployments("live")
    assert live.status == "refused" and "0 of 1 required approvals" in live.reason


@pytest.mark.parametrize(
    "merger, reviewer, reviewer_role, reason",
    [
        pytest.param("wes", "bob", "write", "merged by @wes, but merge a promotion to live needs the admin role", id="merger-without-admin"),
        pytest.param("maya", "rita", "read", "0 of 1 required approvals", id="approval-from-a-reader"),
    ],
)
def test_promotion_merges_follow_the_role_matrix(pipeline, merger, reviewer, reviewer_role, reason):
    pipeline.github.permissions[(REPO, "wes")] = "write"
    pipeline.github.permissions[(REPO, reviewer)] = reviewer_role
    sha = pipeline.commit("3.1.0")
    pipeline.open_pull(21, sha, author="alice", title="Release v3.1.0", base="live", head="release-3.1")
    _approvals(pipeline, 21, (reviewer, "APPROVED"))
    pipeline.merge(21, merged_by=merger)
    pipeline.work()
    [live] = pipeline.deployments("live")
    assert live.status == "refused" and reason in live.reason, live.reason


def test_pushing_to_live_in_the_portal_opens_the_promotion_pull_request(relaxed_pipeline):
    pipeline = relaxed_pipeline  # one phase at a time: require_previous_phase off
    from app.approvals import PROMOTION_REQUESTED
    from app.models import AuditEntry
    from app.portal import changes

    sha = pipeline.commit("5.0.0", tag="v5.0.0")
    pipeline.push_tag("v5.0.0")
    pipeline.work()
    result = changes.promote(pipeline.ctx, APP, "live", actor="ada", role_of=lambda app: "admin")
    assert "is being opened on GitHub" in result.message
    pipeline.work()
    [(number, pull)] = [(n, p) for (r, n), p in pipeline.github.pulls.items() if r == REPO]
    assert (pull["title"], pull["head"]["ref"], pull["base"]["ref"]) == ("Promote v5.0.0 to Live", "promote/live/v5.0.0", "live")
    assert "@ada in the Apps Portal" in pull["body"]
    assert pipeline.github.refs[(REPO, "refs/heads/promote/live/v5.0.0")] == sha
    with pipeline.ctx.db.session() as session:
        [entry] = session.scalars(select(AuditEntry).where(AuditEntry.action == PROMOTION_REQUESTED)).all()
        assert (entry.actor, entry.detail["pr_number"]) == ("ada", number)
    assert pipeline.deployments("live") == []
