"""Issue 21, end to end: signed deliveries through the real endpoint, roles and reviews from the
GitHub stand-in, real builds and containers. Who may put what on a phase holds on every path in."""

from __future__ import annotations

from pydantic import SecretStr
from sqlalchemy import select

from app.context import Context
from app.models import Profile
from app.web import create_app
from tests.support.pipeline_e2e import APP, REPO
from tests.support.portal_data import sign_in_as


def _demo_then(pipeline, version: str) -> str:
    """A commit Demo ran (pushed by dora, maintain), tagged `version`."""
    sha = pipeline.commit(version.lstrip("v"), tag=version)
    pipeline.push(sha)
    pipeline.work()
    assert pipeline.deployments("demo")[-1].status == "succeeded"
    return sha


# --- High 1 ---------------------------------------------------------------------------------------


def test_an_unsigned_push_deploys_nothing(pipeline):
    sha = pipeline.commit("1.0.0")
    body = b'{"ref": "refs/heads/main", "after": "%s"}' % sha.encode()
    response = pipeline.client.post("/api/github/webhooks", data=body, headers={
        "X-GitHub-Event": "push", "X-GitHub-Delivery": "unsigned-1", "Content-Type": "application/json"})
    assert response.status_code == 401
    pipeline.work()
    assert pipeline.deployments() == []


# --- High 3: tags and pushes check the sender's role, and where the commit ran -------------------


def test_a_writer_s_release_tag_does_not_reach_stage(pipeline):
    pipeline.github.permissions[(REPO, "wes")] = "write"
    _demo_then(pipeline, "v6.6.0")
    pipeline.push_tag("v6.6.0", pusher="wes")
    pipeline.work()
    [stage] = pipeline.deployments("stage")
    assert stage.status == "refused", stage.reason
    assert stage.reason == "not deployed: pushed by @wes, but deploy to stage needs the maintain role (you have write)"
    assert pipeline.ctx.engine.list_containers(app=APP, phase="stage") == []
    assert pipeline.statuses(stage.sha or pipeline.git("rev-parse", "v6.6.0^{commit}"), "stage")[-1] == "failure"


def test_a_tag_of_a_commit_demo_never_ran_is_refused_and_never_built(pipeline):
    pipeline.commit("6.6.6", tag="v6.6.6")  # committed and tagged, never pushed to main
    pipeline.push_tag("v6.6.6")  # by dora, who has maintain
    pipeline.work()
    [stage] = pipeline.deployments("stage")
    assert stage.status == "refused" and "never ran on demo" in stage.reason, stage.reason
    assert "require_previous_phase" in stage.reason
    assert pipeline.builds() == [] and pipeline.ctx.engine.list_containers(app=APP) == []


def test_with_require_previous_phase_off_a_maintainer_s_tag_builds_and_deploys(relaxed_pipeline):
    pipeline = relaxed_pipeline
    sha = pipeline.commit("6.6.7", tag="v6.6.7")
    pipeline.push_tag("v6.6.7")
    pipeline.work()
    [stage] = pipeline.deployments("stage")
    assert (stage.status, stage.sha) == ("succeeded", sha), stage.reason


# --- High 2: a profile edit needs the role of every phase it reaches -----------------------------


def _portal(pipeline):
    settings = pipeline.ctx.settings.model_copy(update={"github_client_id": "Iv1.client",
                                                        "github_client_secret": SecretStr("s")})
    ctx = Context.from_settings(settings)
    flask_app = create_app(context=ctx)

    def client_for(login: str):
        client = flask_app.test_client()
        sign_in_as(client, ctx, login)
        return client, client.get("/api/v1/me").get_json()["csrf_token"]

    return client_for


def _patch(client_and_token, phase: str, body: dict):
    client, token = client_and_token
    return client.patch(f"/api/v1/apps/{APP}/phases/{phase}/profile", json=body, headers={"X-CSRFToken": token})


def test_a_writer_s_demo_edit_that_stage_and_live_inherit_is_refused(pipeline):
    pipeline.github.permissions[(REPO, "wes")] = "write"
    pipeline.github.permissions[(REPO, "ada")] = "admin"
    sha = _demo_then(pipeline, "v1.0.0")
    portal = _portal(pipeline)
    refused = _patch(portal("wes"), "demo", {"env": {"GREETING": "from-wes"}, "secrets": {"TOKEN": "stolen"},
                                             "memory": "64m"})
    assert refused.status_code == 403
    assert refused.get_json()["reason"] == (
        "stage inherits this from the demo profile, so the change needs stage's role too: "
        "edit the stage profile needs the maintain role (you have write)")
    with pipeline.ctx.db.session() as session:
        assert session.scalars(select(Profile)).all() == []
    pipeline.push_tag("v1.0.0")
    pipeline.work()
    [stage] = pipeline.deployments("stage")
    assert stage.status == "succeeded" and stage.sha == sha
    assert pipeline.info(stage).get("GREETING", "") != "from-wes"
    assert "TOKEN" not in stage.profile_snapshot["secrets"] and stage.profile_snapshot["memory"] != "64m"

    # The other direction: a value Stage and Live set themselves is Demo's own to change.
    assert _patch(portal("ada"), "stage", {"env": {"GREETING": "stage-own"}}).status_code == 200
    assert _patch(portal("wes"), "demo", {"env": {"GREETING": "demo-only"}}).status_code == 200
    # An admin's Demo edit reaches Stage and Live.
    assert _patch(portal("ada"), "demo", {"secrets": {"TOKEN": "shared"}}).status_code == 200
    pipeline.git("tag", "v1.0.1", sha)
    pipeline.push_tag("v1.0.1")
    pipeline.work()
    later = pipeline.deployments("stage")[-1]
    assert later.status == "succeeded", later.reason
    assert pipeline.info(later)["GREETING"] == "stage-own" and "TOKEN" in later.profile_snapshot["secrets"]


# --- Medium 4: /deploy deploys the head the commenter saw ----------------------------------------


def test_deploy_refuses_a_head_committed_after_the_comment(pipeline):
    pipeline.github.permissions[(REPO, "wanda")] = "write"
    moved = pipeline.commit("2.0.0")
    pipeline.open_pull(1, moved)
    pipeline.github.commit_dates[(REPO, moved)] = "2099-01-01T00:00:00Z"  # pushed while the job waited
    comment_id = pipeline.comment("/deploy demo", user="wanda")
    pipeline.work()
    assert pipeline.deployments() == []
    assert f"the head of #1 is now {moved[:7]}, committed after your comment" in pipeline.reply_to(comment_id)

    seen = pipeline.commit("2.0.1")
    pipeline.open_pull(1, seen)
    comment_id = pipeline.comment("/deploy demo", user="wanda")
    pipeline.work()
    [demo] = pipeline.deployments("demo")
    assert (demo.status, demo.sha) == ("succeeded", seen)
    assert f"Commit {seen}, the head of #1 when you commented." in pipeline.reply_to(comment_id)


# --- Medium 5: approvals count for the merged head only ------------------------------------------


def test_an_approval_of_an_earlier_head_does_not_deploy_live(relaxed_pipeline):
    pipeline = relaxed_pipeline
    approved = pipeline.commit("3.0.0")
    merged = pipeline.commit("3.0.1")
    pipeline.open_pull(30, merged, author="alice", title="Release v3.0.1", base="live", head="release-3")
    pipeline.github.reviews[(REPO, 30)] = [{"user": "bob", "state": "APPROVED", "commit_id": approved}]
    pipeline.merge(30)
    pipeline.work()
    [live] = pipeline.deployments("live")
    assert live.status == "refused"
    assert live.reason == (f"not deployed: 0 of 1 required approvals; not counted, given to an earlier head: "
                           f"@bob (approved {approved[:7]})")
    assert pipeline.ctx.engine.list_containers(app=APP, phase="live") == []
