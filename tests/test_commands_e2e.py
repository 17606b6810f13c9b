"""Slash-commands end to end: a signed `issue_comment` delivery, the command job on a real queue,
the commenter's role from the GitHub stand-in, real containers, and the bot's reply."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.commands import HELP_TEXT
from app.exceptions import GitHubError
from app.jobs import COMMANDS, REPORTS
from app.models import App, Deployment, DeploymentStatus, Report, ReportState
from app.permissions import ROLES
from tests.support.pipeline_e2e import APP, REPO, service_environment
from workers import command as command_job

# The default pipeline's phase roles; deploying, promoting and rolling back need at least triage.
PHASE_ROLE = {"demo": "write", "stage": "maintain", "live": "admin"}


def _user(role: str) -> str:
    return f"user-{role}"


def _allowed(role: str, required: str) -> bool:
    return ROLES.index(role) >= ROLES.index(required)


# (comment, role it needs, what the reply says when the role allows it). No deployment has
# succeeded yet, so nothing here ever reaches Docker: allowed commands either queue a
# deployment (left unrun) or explain why there is nothing to do.
MATRIX = [
    ("/deploy demo", "write", "deploying aaaaaaa to demo"),
    ("/deploy stage", "maintain", "deploying aaaaaaa to stage"),
    ("/deploy live", "admin", "live needs approvals: use /promote live"),
    ("/promote demo", "write", "demo is the first phase"),
    ("/promote stage", "maintain", "nothing to promote: demo has no successful deployment yet"),
    ("/promote live", "admin", "nothing to promote: stage has no successful deployment yet"),
    ("/rollback demo", "write", "demo has no successful deployment to roll back from"),
    ("/rollback stage", "maintain", "stage has no successful deployment to roll back from"),
    ("/rollback live", "admin", "live has no successful deployment to roll back from"),
    ("/status", "read", "| Phase | Version | URL | Health | When | Who |"),
    ("/help", "read", HELP_TEXT.splitlines()[0]),
]


@pytest.mark.parametrize("body, required, allowed_says", MATRIX, ids=[row[0] for row in MATRIX])
def test_every_command_for_every_role(pipeline, body, required, allowed_says):
    """Each role comments the command; only roles meeting the phase's role get past the check."""
    pipeline.open_pull(1, "a" * 40)
    comments = {}
    for role in ROLES:
        if role != "none":  # "none": GitHub answers 404, as for someone who is no collaborator
            pipeline.github.permissions[(REPO, _user(role))] = role
        comments[role] = pipeline.comment(body, user=_user(role))
    pipeline.work(queues=(COMMANDS, REPORTS))

    wrong = []
    for role, comment_id in comments.items():
        reply = pipeline.reply_to(comment_id)
        refusal = f"needs the {required} role (you have {role})"
        expected = allowed_says if _allowed(role, required) else refusal
        if expected not in reply or pipeline.reactions(comment_id) != ["eyes"]:
            wrong.append(f"{role}: {reply!r}, reactions {pipeline.reactions(comment_id)}")
        if not _allowed(role, required) and "Nothing was changed" not in reply:
            wrong.append(f"{role}: refusal does not say nothing changed: {reply!r}")
    assert not wrong, "\n".join(wrong)
    queued = [(d.phase, d.actor) for d in pipeline.deployments()]
    if allowed_says.startswith("deploying"):
        phase = body.split()[1]
        assert sorted(queued) == sorted((phase, _user(r)) for r in ROLES if _allowed(r, required))
    else:
        assert queued == []
    assert not pipeline.unsent_reports()


@pytest.mark.parametrize(
    "body, says",
    [
        ("/promote", "Which phase?"),
        ("/deploy production", "Unknown phase 'production'"),
        ("/rollback live to ../../etc", "is not a valid version"),
        ("/promote stage v1.0.0 as", "Missing the version after 'as'"),
        ("/status.", "Did you mean `/status`?"),
        ('/deploy "demo', "Unbalanced quote"),
    ],
)
def test_malformed_commands_get_a_reply_and_run_nothing(pipeline, body, says):
    pipeline.github.permissions[(REPO, "wanda")] = "admin"
    comment_id = pipeline.comment(body, user="wanda")
    pipeline.work()
    reply = pipeline.reply_to(comment_id)
    assert says in reply and "Usage: `/" in reply
    assert pipeline.deployments() == []
    assert pipeline.reactions(comment_id) == []  # not a command we run: no reaction
    assert pipeline.github.calls_to("GET", f"/repos/{REPO}/collaborators") == []


def test_ordinary_comments_are_ignored(pipeline):
    pipeline.comment("Looks good to me, please /deploy demo after lunch", user="wanda")
    pipeline.work()
    assert pipeline.comments() == [] and pipeline.github.calls_to("POST", "/repos") == []


def test_deploy_command_deploys_the_pr_head_and_edits_its_reply_in_place(pipeline):
    sha = pipeline.commit("1.0.0")
    pipeline.open_pull(1, sha)
    pipeline.github.permissions[(REPO, "wanda")] = "write"
    comment_id = pipeline.comment("Ready for a look:\n\n/Deploy   DEMO\n", user="wanda")
    pipeline.work()

    [demo] = pipeline.deployments("demo")
    assert (demo.status, demo.sha, demo.trigger, demo.actor) == ("succeeded", sha, "command", "wanda")
    assert (demo.pr_number, demo.comment_id) == (1, comment_id)
    assert pipeline.info(demo)["APP_VERSION"] == sha[:7]
    assert pipeline.reactions(comment_id) == ["eyes"]
    reply = pipeline.reply_to(comment_id)
    assert reply.startswith(f"@wanda `/deploy demo`: deploying {sha[:7]} to demo.")
    assert f"is live on **Demo**: {demo.url}" in reply
    # One comment, posted once and then edited as the deployment progressed.
    [posted] = [c for c in pipeline.comments() if c["body"] == reply]
    assert len(pipeline.github.calls_to("PATCH", f"/repos/{REPO}/issues/comments/{posted['id']}")) >= 2
    assert pipeline.statuses(sha, "demo")[-1] == "success"

    status_id = pipeline.comment("/status", user="wanda")
    pipeline.work()
    table = pipeline.reply_to(status_id)
    assert f"| demo | `{sha[:7]}` | {demo.url} | running |" in table
    assert "| @wanda |" in table and "| stage | — | — | — | — | — |" in table


def test_refused_deploy_builds_nothing_and_says_which_role_was_needed(pipeline):
    sha = pipeline.commit("1.0.0")
    pipeline.open_pull(1, sha)
    pipeline.github.permissions[(REPO, "tom")] = "triage"
    comment_id = pipeline.comment("/deploy", user="tom")
    pipeline.work()
    assert pipeline.deployments() == [] and pipeline.builds() == []
    assert pipeline.reply_to(comment_id) == (
        "@tom `/deploy` refused: deploy to demo needs the write role (you have triage). Nothing was changed."
    )


def test_rollback_restores_the_previous_version_at_the_phase_url(pipeline):
    pipeline.github.permissions[(REPO, "wanda")] = "write"
    first = pipeline.commit("1.0.0")
    pipeline.push(first)
    pipeline.work()
    second = pipeline.commit("2.0.0")
    pipeline.push(second)
    pipeline.work()
    assert pipeline.fetch(pipeline.deployments("demo")[-1].url, "/version").strip() == "2.0.0"

    comment_id = pipeline.comment("/rollback demo", user="wanda")
    pipeline.work()
    rollback = pipeline.deployments("demo")[-1]
    assert (rollback.status, rollback.trigger, rollback.sha, rollback.version) == (
        "succeeded", "rollback", first, first[:7])
    assert pipeline.fetch(rollback.url, "/version").strip() == "1.0.0"
    assert pipeline.info(rollback)["APP_VERSION"] == first[:7]
    reply = pipeline.reply_to(comment_id)
    assert f"rolling back demo: {second[:7]} → {first[:7]}; image " in reply
    assert f"is live on **Demo**: {rollback.url}" in reply
    assert len(pipeline.builds()) == 2  # the old image was reused, not rebuilt
    # Only the restored version still runs in demo.
    running = pipeline.ctx.engine.list_containers(app=APP, phase="demo")
    assert [c.labels["release-pipeline.version"] for c in running] == [first[:7]]

    back = pipeline.comment(f"/rollback demo to {second[:7]}", user="wanda")
    pipeline.work()
    assert pipeline.fetch(pipeline.deployments("demo")[-1].url, "/version").strip() == "2.0.0"
    assert f"rolling back demo: {first[:7]} → {second[:7]}" in pipeline.reply_to(back)


def test_promote_renames_the_version_inside_the_container(pipeline):
    pipeline.github.permissions[(REPO, "mia")] = "maintain"
    sha = pipeline.commit("1.0.0")
    pipeline.push(sha)
    pipeline.work()
    comment_id = pipeline.comment("/promote stage as 2026.11", user="mia")
    pipeline.work()

    [demo], [stage] = pipeline.deployments("demo"), pipeline.deployments("stage")
    assert (stage.status, stage.version, stage.sha, stage.source_id) == ("succeeded", "2026.11", sha, demo.id)
    assert stage.image_id == demo.image_id and len(pipeline.builds()) == 1
    assert pipeline.info(stage)["APP_VERSION"] == "2026.11"
    assert pipeline.info(stage)["APP_PHASE"] == "stage"
    reply = pipeline.reply_to(comment_id)
    assert f"promoting {sha[:7]} from demo to stage as 2026.11" in reply
    assert f"**2026.11** is live on **Stage**: {stage.url}" in reply


def _seed_stage(pipeline, version: str, sha: str) -> None:
    """A successful stage deployment, as if a tag had been deployed (no Docker needed)."""
    with pipeline.ctx.db.session() as session:
        app = session.scalar(select(App).where(App.full_name == REPO))
        session.add(Deployment(app_id=app.id, phase="stage", version=version, ref=sha, sha=sha, trigger="tag",
                               actor="dora", status=DeploymentStatus.SUCCEEDED.value, image_id="sha256:" + "e" * 64))


def test_promote_live_opens_one_promotion_pull_request_and_deploys_nothing(pipeline):
    pipeline.github.permissions[(REPO, "ada")] = "admin"
    pipeline.github.permissions[(REPO, "mia")] = "maintain"
    sha = "c" * 40
    refused = pipeline.comment("/promote live", user="mia")  # also registers the app
    pipeline.work()
    assert "promote to live needs the admin role (you have maintain)" in pipeline.reply_to(refused)
    _seed_stage(pipeline, "v1.4.0", sha)

    first = pipeline.comment("/promote live", user="ada")
    again = pipeline.comment("/promote live", user="ada")
    pipeline.work()

    assert pipeline.github.refs == {(REPO, "refs/heads/promote/live/v1.4.0"): sha}
    [(number, pull)] = [(n, p) for (r, n), p in pipeline.github.pulls.items() if r == REPO]
    assert (pull["title"], pull["head"]["ref"], pull["base"]["ref"]) == ("Promote v1.4.0 to Live",
                                                                       "promote/live/v1.4.0", "live")
    assert "@ada" in pull["body"]
    url = f"https://github.com/{REPO}/pull/{number}"
    assert f"[#{number} Promote v1.4.0 to Live]({url}) is open" in pipeline.reply_to(first)
    assert f"[#{number} Promote v1.4.0 to Live]({url}) is already open" in pipeline.reply_to(again)
    assert len(pipeline.github.calls_to("POST", f"/repos/{REPO}/pulls")) == 1
    assert [d.phase for d in pipeline.deployments()] == ["stage"]  # only the seeded one

    renamed = pipeline.comment("/promote live v1.4.0 as 2026.11", user="ada")
    pipeline.work()
    assert pipeline.github.refs[(REPO, "refs/heads/promote/live/2026.11")] == sha
    assert "Promote 2026.11 to Live" in pipeline.reply_to(renamed)


def test_without_github_the_commenter_has_no_role_and_is_told_so(
        github, database_url, redis_conn, instance, tmp_path, monkeypatch):
    from app.context import Context
    from tests.support.pipeline_e2e import Pipeline

    settings = service_environment(monkeypatch, database_url=database_url, instance=instance, tmp_path=tmp_path,
                                   github=None)
    pipe = Pipeline(ctx=Context.from_settings(settings), github=github, redis_conn=redis_conn,
                    repo_path=tmp_path / "repo")
    comment_id = pipe.comment("/deploy demo", user="wanda")
    pipe.work()
    with pipe.ctx.db.session() as session:
        reports = list(session.scalars(select(Report).order_by(Report.id)))
    assert [(r.kind, r.state) for r in reports] == [("reaction", ReportState.RECORDED.value),
                                                    ("comment", ReportState.RECORDED.value)]
    assert reports[0].body == {"comment_id": comment_id, "content": "eyes"}
    reply = reports[1].body["body"]
    assert "deploy to demo needs the write role (you have none)" in reply
    assert "GitHub is not configured here" in reply
    assert pipe.deployments() == [] and github.calls == []


def test_a_role_github_cannot_tell_refuses_and_says_why(pipeline):
    pipeline.github.permissions[(REPO, "ada")] = "admin"
    pipeline.github.fail_next(1, status=502)  # the installation token for the permission lookup
    comment_id = pipeline.comment("/promote stage", user="ada")
    pipeline.work()
    reply = pipeline.reply_to(comment_id)
    assert "promote to stage needs the maintain role (you have none)" in reply
    assert "Your role could not be read from GitHub" in reply and "502" in reply
    assert pipeline.deployments() == []


def test_a_promotion_github_refuses_is_explained(pipeline, monkeypatch):
    from app.adapters.github import RepoClient

    def refuse(self, **fields):
        raise GitHubError(f"GitHub POST /repos/{REPO}/pulls: 422 No commits between live and {fields['head']}")

    monkeypatch.setattr(RepoClient, "create_pull", refuse)
    pipeline.github.permissions[(REPO, "ada")] = "admin"
    first = pipeline.comment("/status", user="ada")  # registers the app
    pipeline.work()
    pipeline.reply_to(first)
    _seed_stage(pipeline, "v1.4.0", "c" * 40)
    comment_id = pipeline.comment("/promote live", user="ada")
    pipeline.work()
    assert pipeline.reply_to(comment_id) == (
        f"@ada `/promote live` could not be carried out: GitHub POST /repos/{REPO}/pulls: 422 No commits "
        "between live and promote/live/v1.4.0. Nothing was deployed."
    )
    assert [d.phase for d in pipeline.deployments()] == ["stage"]


def test_every_command_has_a_runner_checked_at_import():
    assert set(command_job.RUNNERS) == set(command_job.CommandName)
    incomplete = {name: runner for name, runner in command_job.RUNNERS.items() if name != "help"}
    with pytest.raises(RuntimeError, match="missing \\[<CommandName.HELP: 'help'>\\]"):
        command_job.check_runners(incomplete)
