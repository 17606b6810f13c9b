"""Release controls (README, Release controls; issue 15), end to end: signed deliveries, the GitHub stand-in, the
real Docker engine. Release commands, freezes (and their override), what a promotion ships,
redeploy, retry and cancel."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import select

from app.freezes import CONFIGURED, Freeze, active_freeze
from app.models import AuditEntry, LogLine
from app.pipeline import parse_pipeline
from tests.support.pipeline_e2e import APP, REPO

RELEASE = "release: [/bin/busybox, sh, -c, {script!r}]\n"


def _log(pipeline, deployment_id: int, stream: str | None = None) -> list[str]:
    with pipeline.ctx.db.session() as session:
        query = select(LogLine).where(LogLine.deployment_id == deployment_id).order_by(LogLine.id)
        return [line.text for line in session.scalars(query) if stream is None or line.stream == stream]


def _status_descriptions(pipeline, sha: str, phase: str) -> list[tuple[str, str]]:
    return [(s["state"], s["description"]) for s in pipeline.github.statuses.get((REPO, sha), [])
            if s["context"] == f"release-pipeline/{phase}"]


def _release_containers(pipeline) -> list:
    return pipeline.ctx.engine.client.containers.list(
        all=True, filters={"label": [f"release-pipeline.instance={pipeline.ctx.engine.instance}",
                                     "release-pipeline.release-of"]})


def _audit(pipeline, action: str) -> list[AuditEntry]:
    with pipeline.ctx.db.session() as session:
        return list(session.scalars(select(AuditEntry).where(AuditEntry.action == action)))


# --- release command ------------------------------------------------------------------------


def test_a_failing_release_command_fails_the_deploy_and_the_old_version_keeps_serving(pipeline):
    pipeline.push(pipeline.commit("1.0.0"))
    pipeline.work()
    sha = pipeline.commit("2.0.0", repo_file=RELEASE.format(script="echo migrating to $APP_VERSION; exit 3"))
    pipeline.push(sha)
    pipeline.work()

    first, second = pipeline.deployments("demo")
    assert (second.status, second.reason) == ("failed", "release command exited with 3")
    assert pipeline.fetch(first.url, "/version").strip() == "1.0.0"  # nothing was switched
    assert f"migrating to {sha[:7]}" in _log(pipeline, second.id, "release")
    assert _status_descriptions(pipeline, sha, "demo")[-1] == ("failure", "release command exited with 3")
    assert _release_containers(pipeline) == []
    assert [c.labels["release-pipeline.deployment"] for c in pipeline.ctx.engine.list_containers(app=APP)] == [
        str(first.id)]


def test_a_release_command_runs_once_with_the_phase_environment_before_the_new_version_serves(pipeline):
    sha = pipeline.commit("1.0.0", repo_file=RELEASE.format(script="echo migrated $APP_PHASE"))
    pipeline.push(sha)
    pipeline.work()

    [demo] = pipeline.deployments("demo")
    assert demo.status == "succeeded"
    log = _log(pipeline, demo.id)
    assert log.count("migrated demo") == 1
    assert log.index("release command exited with 0") < next(i for i, line in enumerate(log)
                                                             if line.startswith("starting "))
    assert _release_containers(pipeline) == []


def test_a_release_command_that_runs_too_long_is_stopped_and_fails_the_deploy(pipeline):
    sha = pipeline.commit("1.0.0", repo_file=RELEASE.format(script="echo started; exec /bin/busybox sleep 60")
                          + "release_timeout: 1\n")
    pipeline.push(sha)
    pipeline.work()

    [demo] = pipeline.deployments("demo")
    assert (demo.status, demo.reason) == ("failed", "release command timed out after 1 s")
    assert "started" in _log(pipeline, demo.id, "release")
    assert pipeline.ctx.engine.list_containers(app=APP) == [] and _release_containers(pipeline) == []
    assert _status_descriptions(pipeline, sha, "demo")[-1] == ("failure", "release command timed out after 1 s")


def test_a_rollback_does_not_run_the_release_command(pipeline):
    pipeline.github.permissions[(REPO, "wes")] = "write"
    pipeline.push(pipeline.commit("1.0.0", repo_file=RELEASE.format(script="echo migration one")))
    pipeline.work()
    pipeline.push(pipeline.commit("2.0.0", repo_file=RELEASE.format(script="echo migration two")))
    pipeline.work()
    pipeline.open_pull(1, "c" * 40)
    pipeline.comment("/rollback demo", user="wes")
    pipeline.work()

    *_, rollback = pipeline.deployments("demo")
    assert (rollback.status, rollback.trigger) == ("succeeded", "rollback")
    assert _log(pipeline, rollback.id, "release") == []


# --- freezes --------------------------------------------------------------------------------


def test_a_freeze_refuses_every_way_in_until_an_admin_overrides_it_or_it_is_lifted(pipeline):
    github = pipeline.github
    github.permissions[(REPO, "mo")] = "maintain"
    sha = pipeline.commit("1.0.0", tag="v1.0.0")
    pipeline.push(sha)
    pipeline.work()
    pipeline.open_pull(1, sha)
    freeze_comment = pipeline.comment("/freeze stage release week", user="mo")
    pipeline.work()
    assert "froze stage (release week)" in pipeline.reply_to(freeze_comment)
    frozen_line = "stage is frozen (release week) by @mo, until someone unfreezes it"

    # A tag: refused, nothing built or started, the reason in the commit status.
    builds = len(pipeline.builds())
    pipeline.push_tag("v1.0.0")
    pipeline.work()
    [tagged] = pipeline.deployments("stage")
    assert tagged.status == "refused" and frozen_line in tagged.reason
    assert len(pipeline.builds()) == builds
    assert {c.labels["release-pipeline.phase"] for c in pipeline.ctx.engine.list_containers(app=APP)} == {"demo"}
    assert _status_descriptions(pipeline, sha, "stage")[-1][0] == "failure"
    assert frozen_line in _status_descriptions(pipeline, sha, "stage")[-1][1]

    # /promote, the API and the portal say the same, and queue nothing.
    promote_comment = pipeline.comment("/promote stage", user="mo")
    pipeline.work()
    assert frozen_line in pipeline.reply_to(promote_comment)
    answer = pipeline.api("POST", f"/apps/{APP}/phases/stage/promote")
    assert answer.status_code == 409 and frozen_line in answer.get_json()["reason"]
    board = pipeline.api("GET", f"/apps/{APP}").get_json()
    [stage_column] = [p for p in board["phases"] if p["name"] == "stage"]
    assert stage_column["freeze"]["author"] == "mo" and stage_column["freeze"]["reason"] == "release week"
    assert len(pipeline.deployments("stage")) == 1

    # A maintainer cannot force it; an admin can, once, with a reason that is kept.
    override = pipeline.comment("/promote stage --force fix for the outage", user="mo")
    pipeline.work()
    assert "override the freeze of stage needs the admin role" in pipeline.reply_to(override)
    answer = pipeline.api("POST", f"/apps/{APP}/phases/stage/promote", {"force": "fix for the outage"})
    assert answer.status_code == 202, answer.get_json()
    pipeline.work()
    forced = pipeline.deployments("stage")[-1]
    assert (forced.status, forced.override) == ("succeeded", "fix for the outage")
    [entry] = _audit(pipeline, "freeze.override")
    assert entry.detail["reason"] == "fix for the outage" and entry.detail["deployment"] == forced.id

    # Still frozen for the next one; /unfreeze lifts it, and the API freezes again.
    again = pipeline.api("POST", f"/apps/{APP}/phases/stage/redeploy")
    assert again.status_code == 409 and frozen_line in again.get_json()["reason"]
    unfreeze = pipeline.comment("/unfreeze stage", user="mo")
    pipeline.work()
    assert "unfroze stage" in pipeline.reply_to(unfreeze)
    redeploy = pipeline.api("POST", f"/apps/{APP}/phases/stage/redeploy")
    assert redeploy.status_code == 202
    pipeline.work()
    assert pipeline.deployments("stage")[-1].status == "succeeded"
    frozen = pipeline.api("POST", f"/apps/{APP}/phases/stage/freeze", {"reason": "audit"}).get_json()
    assert frozen["frozen"] and (frozen["freeze"]["author"], frozen["freeze"]["reason"]) == ("admin", "audit")
    assert pipeline.api("DELETE", f"/apps/{APP}/phases/stage/freeze").get_json()["frozen"] is False
    assert [e.action for e in _audit(pipeline, "freeze")] == ["freeze", "freeze"]


def test_a_merged_promotion_pr_into_a_frozen_phase_deploys_nothing(pipeline):
    pipeline.github.permissions[(REPO, "ada")] = "admin"
    sha = pipeline.commit("1.0.0")
    pipeline.open_pull(1, sha)
    pipeline.comment("/freeze live change window", user="ada")
    pipeline.work()
    pipeline.open_pull(7, sha, author="alice", title="Release v1.0.0", base="live", head="release")
    pipeline.github.reviews[(REPO, 7)] = [{"user": "bob", "state": "APPROVED", "commit_id": sha}]
    pipeline.merge(7)
    pipeline.work()

    [live] = pipeline.deployments("live")
    assert live.status == "refused" and "live is frozen (change window) by @ada" in live.reason
    assert pipeline.builds() == [] and pipeline.ctx.engine.list_containers(app=APP) == []


def test_configured_freeze_windows():
    config = parse_pipeline(
        "phases:\n  live:\n    trigger: manual\n    freeze:\n"
        "      - {from: '2026-12-24T00:00Z', to: '2026-12-27T00:00Z', reason: holidays}\n"
        "      - {days: [sat, sun], reason: weekend}\n")
    at = lambda text: datetime.fromisoformat(text).replace(tzinfo=timezone.utc)  # noqa: E731
    holidays = Freeze("live", CONFIGURED, "holidays", at("2026-12-27T00:00"))
    assert active_freeze(config, "live", None, at("2026-12-24T10:00")) == holidays  # a Thursday
    # Saturday 26th: both apply; the one that ends last is named.
    assert active_freeze(config, "live", None, at("2026-12-26T10:00")) == Freeze(
        "live", CONFIGURED, "weekend", at("2026-12-28T00:00"))
    assert active_freeze(config, "live", None, at("2026-12-29T10:00")) is None  # a Tuesday
    assert active_freeze(config, "live", None, at("2026-12-27T00:00")).reason == "weekend"  # Sunday
    assert holidays.describe() == "live is frozen (holidays) by pipeline.yml, until 2026-12-27 00:00 UTC"


# --- what a promotion ships -----------------------------------------------------------------


def test_a_promotion_records_and_shows_the_commits_it_ships(pipeline):
    pipeline.github.permissions[(REPO, "mo")] = "maintain"
    first = pipeline.commit("1.0.0", tag="v1.0.0")
    pipeline.push(first)  # stage takes only what demo ran (require_previous_phase)
    pipeline.work()
    pipeline.push_tag("v1.0.0")
    pipeline.work()
    second = pipeline.commit("1.1.0")
    pipeline.push(second)
    third = pipeline.commit("1.2.0")
    pipeline.push(third)
    pipeline.work()

    compare = pipeline.api("GET", f"/apps/{APP}/compare?from=demo&to=stage").get_json()
    assert [c["sha"] for c in compare["commits"]] == [third, second]
    assert compare["commits"][0]["url"] == f"https://github.com/{REPO}/commit/{third}"
    pipeline.open_pull(1, third)
    command = pipeline.comment("/promote stage", user="mo")
    pipeline.work()

    *_, stage = pipeline.deployments("stage")
    assert stage.status == "succeeded" and stage.sha == third
    assert [(c["sha"], c["title"], c["author"]) for c in stage.commits] == [
        (third, "Sample app 1.2.0", "Sample Author"), (second, "Sample app 1.1.0", "Sample Author")]
    assert first not in {c["sha"] for c in stage.commits}
    reply = pipeline.reply_to(command)
    assert "2 commits since v1.0.0 (what stage serves)" in reply
    assert f"[`{second[:7]}`](https://github.com/{REPO}/commit/{second}) Sample app 1.1.0 — Sample Author" in reply
    detail = pipeline.api("GET", f"/apps/{APP}/deployments/{stage.id}").get_json()
    assert [c["title"] for c in detail["commits"]] == ["Sample app 1.2.0", "Sample app 1.1.0"]


def test_the_promotion_pr_that_promote_opens_lists_what_it_ships(pipeline):
    pipeline.github.permissions[(REPO, "ada")] = "admin"
    pipeline.commit("1.0.0")
    newer = pipeline.commit("1.1.0", tag="v1.1.0")
    pipeline.push(newer)
    pipeline.work()
    pipeline.push_tag("v1.1.0")
    pipeline.work()
    pipeline.open_pull(1, newer)
    pipeline.comment("/promote live", user="ada", pr=1)
    pipeline.work()

    [(number, pull)] = [(n, p) for (r, n), p in pipeline.github.pulls.items() if r == REPO and n != 1]
    assert "## What it ships" in pull["body"] and "2 commits:" in pull["body"]
    assert f"/commit/{newer}) Sample app 1.1.0 — Sample Author" in pull["body"]


def test_a_version_name_belongs_to_one_commit(pipeline):
    pipeline.push(pipeline.commit("1.0.0", tag="v1.0.0"))
    pipeline.work()
    pipeline.push_tag("v1.0.0")
    pipeline.work()
    other = pipeline.commit("1.0.1")
    pipeline.push(other)
    pipeline.work()
    answer = pipeline.api("POST", f"/apps/{APP}/phases/stage/promote", {"rename_to": "v1.0.0"})
    assert answer.status_code == 409 and "version v1.0.0 already names commit" in answer.get_json()["reason"]

    [stage] = pipeline.deployments("stage")
    assert (stage.status, stage.version) == ("succeeded", "v1.0.0")


# --- redeploy, retry, cancel ----------------------------------------------------------------


def test_redeploy_applies_an_edited_profile_to_what_the_phase_serves(pipeline):
    sha = pipeline.commit("1.0.0")
    pipeline.push(sha)
    pipeline.work()
    [before] = pipeline.deployments("demo")
    assert pipeline.api("PATCH", f"/apps/{APP}/phases/demo/profile", {"env": {"GREETING": "hello"}}).status_code == 200
    board = pipeline.api("GET", f"/apps/{APP}").get_json()
    assert board["phases"][0]["profile_changed_since_deployed"] is True

    answer = pipeline.api("POST", f"/apps/{APP}/phases/demo/redeploy")
    assert answer.status_code == 202
    new_id = answer.get_json()["deployment"]
    pipeline.work()

    _, after = pipeline.deployments("demo")
    assert after.id == new_id and (after.status, after.trigger, after.sha) == ("succeeded", "redeploy", sha)
    assert after.image_id == before.image_id and len(pipeline.builds()) == 1
    assert pipeline.info(after)["GREETING"] == "hello"
    assert pipeline.api("GET", f"/apps/{APP}").get_json()["phases"][0]["profile_changed_since_deployed"] is False


def test_cancel_a_queued_deployment_and_retry_it(pipeline):
    pipeline.push(pipeline.commit("1.0.0"))
    pipeline.work()
    sha = pipeline.commit("2.0.0")
    answer = pipeline.push(sha)
    queued = answer["deployment"]

    cancelled = pipeline.api("POST", f"/apps/{APP}/deployments/{queued}/cancel")
    assert cancelled.status_code == 200 and cancelled.get_json()["status"] == "cancelled"
    pipeline.work()
    first, second = pipeline.deployments("demo")
    assert (second.status, second.reason) == ("cancelled", "cancelled by @admin before it started")
    assert pipeline.fetch(first.url, "/version").strip() == "1.0.0" and len(pipeline.builds()) == 1
    assert pipeline.statuses(sha, "demo") == ["pending", "error"]
    again = pipeline.api("POST", f"/apps/{APP}/deployments/{queued}/cancel")
    assert again.status_code == 409 and "only queued or building" in again.get_json()["reason"]

    retried = pipeline.api("POST", f"/apps/{APP}/deployments/{queued}/retry")
    assert retried.status_code == 202
    pipeline.work()
    *_, third = pipeline.deployments("demo")
    assert third.id == retried.get_json()["deployment"] and (third.status, third.sha) == ("succeeded", sha)
    assert pipeline.fetch(third.url, "/version").strip() == "2.0.0"
    refused = pipeline.api("POST", f"/apps/{APP}/deployments/{third.id}/retry")
    assert refused.status_code == 409 and "only failed or cancelled" in refused.get_json()["reason"]


def test_slash_commands_cancel_and_retry(pipeline):
    pipeline.github.permissions[(REPO, "wes")] = "write"
    sha = pipeline.commit("1.0.0", repo_file=RELEASE.format(script="exit 1"))
    pipeline.push(sha)
    pipeline.work()
    pipeline.open_pull(1, sha)
    pipeline.push(pipeline.commit("2.0.0"))
    cancel = pipeline.comment("/cancel demo", user="wes")
    pipeline.work(("commands", "reports"))
    assert "before it started" in pipeline.reply_to(cancel)
    retry = pipeline.comment("/retry demo", user="wes")
    pipeline.work()
    assert "retrying deployment" in pipeline.reply_to(retry)
    statuses = [d.status for d in pipeline.deployments("demo")]
    assert statuses == ["failed", "cancelled", "succeeded"]


def test_the_portal_freezes_a_phase_shows_it_on_the_board_and_refuses_pushes_into_it(pipeline):
    from tests.support.pipeline_e2e import ADMIN_TOKEN
    from tests.support.portal_data import csrf_from

    pipeline.push(pipeline.commit("1.0.0"))
    pipeline.work()
    client = pipeline.client
    page = client.get("/signin")
    client.post("/signin", data={"token": ADMIN_TOKEN, "csrf_token": csrf_from(page.text)})
    board = client.get(f"/apps/{APP}")
    token = csrf_from(board.text)
    assert "Freeze</button>" in board.text and "frozen</span>" not in board.text

    client.post(f"/apps/{APP}/phases/stage/freeze", data={"reason": "quarter close", "csrf_token": token})
    board = client.get(f"/apps/{APP}").text
    assert "frozen</span>" in board and "Stage is frozen (quarter close) by @admin" in board
    refused = client.post(f"/apps/{APP}/phases/stage/promote", data={"csrf_token": token}, follow_redirects=True)
    assert "stage is frozen (quarter close) by @admin" in refused.text
    assert pipeline.deployments("stage") == []

    client.post(f"/apps/{APP}/phases/stage/unfreeze", data={"csrf_token": token})
    assert "frozen</span>" not in client.get(f"/apps/{APP}").text
    assert [e.actor for e in _audit(pipeline, "unfreeze")] == ["admin"]


# --- opening a promotion pull request is the request (issue 23) ----------------------------------


def _pr_event(pipeline, event: str, action: str, number: int, **review) -> None:
    from tests.conftest import load_payload

    stored = pipeline.github.pulls[(REPO, number)]
    payload = pipeline._repository(load_payload(f"{event}/{action}"))
    pull = payload["pull_request"]
    pull.update(number=number, title=stored["title"], user={**pull["user"], "login": stored["user"]["login"]})
    pull["head"] = {**pull["head"], "ref": stored["head"]["ref"], "sha": stored["head"]["sha"]}
    pull["base"] = {**pull["base"], "ref": stored["base"]["ref"]}
    payload["number"] = number
    if review:
        payload["review"] = {**payload["review"], **review}
    answer = pipeline.deliver(event, payload)
    assert "summary queued" in answer["reason"], answer


def _review(pipeline, number: int, user: str, commit: str) -> None:
    pipeline.github.reviews.setdefault((REPO, number), []).append(
        {"user": user, "state": "APPROVED", "commit_id": commit})
    _pr_event(pipeline, "pull_request_review", "submitted", number, state="approved", commit_id=commit)


def _summary(pipeline, number: int) -> tuple[str, str, str]:
    [comment] = pipeline.comments(number)  # always the one comment, edited in place
    [head] = {pipeline.github.pulls[(REPO, number)]["head"]["sha"]}
    states = [(s["state"], s["description"]) for s in pipeline.github.statuses.get((REPO, head), [])
              if s["context"] == "release-pipeline/promotion"]
    return comment["body"], *states[-1]


def test_a_promotion_pr_keeps_one_summary_comment_and_a_status_until_the_merge(pipeline):
    github = pipeline.github
    github.permissions[(REPO, "eve")] = "read"
    sha = pipeline.commit("1.0.0", tag="v1.0.0")
    pipeline.push(sha)
    pipeline.work()
    pipeline.push_tag("v1.0.0")
    pipeline.work()
    pipeline.open_pull(7, sha, author="alice", title="Release", base="live", head="release")
    _pr_event(pipeline, "pull_request", "opened", 7)
    pipeline.work()
    body, state, description = _summary(pipeline, 7)
    assert "Merging deploys **v1.0.0**" in body and "0 of 1 required approvals" in body
    assert "Live serves nothing yet." in body and "Sample app 1.0.0" in body
    assert (state, description) == ("pending", "1 more approval(s) needed")

    _review(pipeline, 7, "eve", sha)  # read access only: does not count
    pipeline.work()
    body, state, description = _summary(pipeline, 7)
    assert state == "pending" and "@eve, who may not approve" in description and "@eve" in body
    _review(pipeline, 7, "carol", "0" * 40)  # approved another commit
    pipeline.work()
    assert "older commit by @carol" in _summary(pipeline, 7)[2]

    _review(pipeline, 7, "bob", sha)
    pipeline.work()
    body, state, description = _summary(pipeline, 7)
    assert state == "success" and description.startswith("merging deploys: 1 of 1 required approvals (@bob)")
    assert len(github.calls_to("PATCH", f"/repos/{REPO}/issues/comments/")) >= 3

    newer = pipeline.commit("1.1.0", tag="v1.1.0")  # a push to the PR, which also ran on stage
    pipeline.push(newer)
    pipeline.work()
    pipeline.push_tag("v1.1.0")
    pipeline.work()
    github.pulls[(REPO, 7)]["head"]["sha"] = newer
    _pr_event(pipeline, "pull_request", "synchronize", 7)
    pipeline.work()
    body, state, description = _summary(pipeline, 7)
    assert state == "pending" and "older commit by @bob" in description and "**v1.1.0**" in body
    assert pipeline.deployments("live") == []  # nothing deploys before the merge


def test_a_promotion_pr_of_a_commit_that_never_ran_before_or_into_a_frozen_phase_fails_its_status(pipeline):
    pipeline.github.permissions[(REPO, "ada")] = "admin"
    sha = pipeline.commit("1.0.0")
    pipeline.open_pull(7, sha, author="alice", title="Release v1.0.0", base="live", head="release")
    _pr_event(pipeline, "pull_request", "opened", 7)
    pipeline.work()
    assert _summary(pipeline, 7)[1:] == ("failure", f"this commit never ran on stage: promote it there first")
    pipeline.open_pull(1, sha)
    pipeline.comment("/freeze live", user="ada")
    _pr_event(pipeline, "pull_request", "reopened", 7)
    pipeline.work()
    body, state, description = _summary(pipeline, 7)
    assert state == "failure" and "live is frozen by @ada" in description and "Freeze:" in body
