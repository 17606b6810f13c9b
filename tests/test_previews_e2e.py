"""Pull request previews end to end (README, Pull request previews): signed `pull_request` and `issue_comment`
deliveries, jobs on a real queue, the GitHub stand-in, the Docker engine and Caddy.

PR heads live only under the base repository's `refs/pull/<n>/head`, as GitHub serves them (a
fork's commits are nowhere else in the base repository), so a preview that fetched from
anywhere else would not find them.
"""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
import requests
import yaml
from sqlalchemy import select

from app.models import AuditEntry, PhaseSlots, Preview, Profile, ServiceInstance, utcnow
from app.settings import PROJECT_ROOT
from tests.conftest import load_payload
from tests.support.portal_data import csrf_from, sign_in_as
from tests.support.dockerkit import free_port
from tests.support.pipeline_e2e import APP, REPO, Pipeline
from tests.test_services_deploy import commit as commit_with_store
from workers import preview as preview_job

pytestmark = [pytest.mark.docker, pytest.mark.slow]

FORK = "mallory/shop"
SECRET_VALUE = "demo-secret-value-0f3a"
_times = itertools.count(1)


@pytest.fixture
def router_port() -> int:
    return free_port()


@pytest.fixture
def pipeline_extra_env(caddy_server, router_port, tmp_path) -> dict[str, str]:
    """Caddy as the router, and previews with a plain profile variable and room for two."""
    config = tmp_path / "pipeline.yml"
    settings = yaml.safe_load((PROJECT_ROOT / "config" / "pipeline.yml").read_text())
    settings["previews"].update(max_active=2, ttl_hours=24, profile={"env": {"GREETING": "preview-hi"}})
    config.write_text(yaml.safe_dump(settings))
    return {"ROUTER": "caddy", "CADDY_ADMIN_URL": caddy_server.admin_url, "ROUTER_PORT": str(router_port),
            "PIPELINE_CONFIG": str(config)}


@pytest.fixture
def previews(pipeline, router_port):
    pipeline.ctx.router.ensure_server()
    pipeline.commit("base")  # main's first commit; PR heads branch off it
    return Previews(pipeline, router_port)


class Previews:
    def __init__(self, pipeline: Pipeline, router_port: int):
        self.pipeline = pipeline
        self.port = router_port

    def head(self, number: int, version_text: str, *, services: bool = False) -> str:
        """A new commit of PR `number`, kept only under refs/pull/<number>/head (main does not move)."""
        pipeline = self.pipeline
        main = pipeline.git("rev-parse", "main")
        sha = commit_with_store(pipeline, version_text) if services else pipeline.commit(version_text)
        pipeline.git("update-ref", f"refs/pull/{number}/head", sha)
        pipeline.git("reset", "--quiet", "--hard", main)
        return sha

    def event(self, action: str, number: int, sha: str, *, fork: bool = False, draft: bool = False,
              merged: bool = False, at: str | None = None) -> dict:
        """GitHub's `pull_request` delivery; `at` is the PR's updated_at (later for every call)."""
        payload = self.pipeline._repository(load_payload("pull_request/opened"))
        pr = payload["pull_request"]
        head_repo = {**pr["head"]["repo"], "full_name": FORK if fork else REPO,
                     "clone_url": f"https://github.com/{FORK if fork else REPO}.git"}
        pr.update(number=number, draft=draft, merged=merged, state="closed" if action == "closed" else "open",
                  updated_at=at or f"2026-12-02T00:00:{next(_times):02d}Z")
        pr["head"] = {**pr["head"], "sha": sha, "ref": "feature", "repo": head_repo}
        pr["base"] = {**pr["base"], "ref": "main"}
        payload.update(action=action, number=number)
        self.pipeline.github.pulls[(REPO, number)] = {
            "head": {"ref": "feature", "sha": sha, "repo": {"full_name": head_repo["full_name"]}},
            "base": {"ref": "main"}, "state": pr["state"], "draft": draft, "updated_at": pr["updated_at"]}
        return self.pipeline.deliver("pull_request", payload)

    def get(self, number: int, path: str = "/version") -> requests.Response:
        return requests.get(f"http://127.0.0.1:{self.port}{path}", timeout=10,
                            headers={"Host": f"{APP}-pr-{number}.localhost:{self.port}"})

    def url(self, number: int) -> str:
        return f"http://{APP}-pr-{number}.localhost:{self.port}"

    def comment(self, number: int) -> str:
        """The one bot comment about the preview (fails if there were more)."""
        found = [c for c in self.pipeline.comments(number) if "**Preview**" in c["body"]]
        assert len(found) == 1, [c["body"] for c in found]
        return found[0]["body"]

    def row(self, number: int) -> Preview:
        with self.pipeline.ctx.db.session() as session:
            return session.scalar(select(Preview).where(Preview.pr_number == number))

    def containers(self, number: int):
        return self.pipeline.ctx.engine.list_containers(app=APP, phase=f"pr-{number}")

    def github_deployments(self, number: int) -> list[dict]:
        return [d for d in self.pipeline.github.deployments.values() if d["environment"] == f"pr-{number}"]


def test_open_push_close_serve_update_and_remove_everything(previews):
    pipeline = previews.pipeline
    first = previews.head(7, "1.0.0-pr", services=True)
    previews.event("opened", 7, first)
    pipeline.work()

    [built] = pipeline.deployments("pr-7")
    assert (built.status, built.sha, built.version, built.trigger) == ("succeeded", first, first[:7], "preview")
    assert built.url == previews.url(7)
    assert previews.get(7).text.strip() == "1.0.0-pr"  # through Caddy, at its own URL
    assert previews.get(7, "/cgi-bin/info").text.count("GREETING=preview-hi") == 1
    statuses = pipeline.statuses(first, "preview")
    assert statuses[0] == "pending" and statuses[-1] == "success" and set(statuses) == {"pending", "success"}
    assert pipeline.github.statuses[(REPO, first)][-1]["target_url"] == previews.url(7)
    [github_deployment] = previews.github_deployments(7)
    assert (github_deployment["transient_environment"], github_deployment["production_environment"]) == (True, False)
    assert [s["state"] for s in github_deployment["statuses"]] == ["in_progress", "success"]
    assert github_deployment["statuses"][-1]["environment_url"] == previews.url(7)
    assert previews.url(7) in previews.comment(7) and first[:7] in previews.comment(7)

    second = previews.head(7, "1.0.1-pr", services=True)
    previews.event("synchronize", 7, second)
    previews.event("synchronize", 7, second)  # the same push delivered twice builds once
    pipeline.work()
    assert [d.sha for d in pipeline.deployments("pr-7")] == [first, second]
    assert pipeline.deployments("pr-7")[-1].url == previews.url(7)
    assert previews.get(7).text.strip() == "1.0.1-pr"  # the same URL serves the new head
    assert len(previews.containers(7)) == 1
    assert second[:7] in previews.comment(7) and "ready" in previews.comment(7)  # still one comment, edited
    with pipeline.ctx.db.session() as session:
        [store] = session.scalars(select(ServiceInstance).where(ServiceInstance.phase == "pr-7")).all()
        volume = store.volume
    assert volume in pipeline.ctx.engine.service_volumes(APP, "pr-7")

    previews.event("closed", 7, second, merged=True)
    pipeline.work()
    engine = pipeline.ctx.engine
    assert previews.containers(7) == [] and engine.service_containers(APP, "pr-7") == []
    assert engine.service_volumes(APP, "pr-7") == [] and engine.service_networks(APP, "pr-7") == []
    assert (APP, "pr-7") not in pipeline.ctx.router.routes()
    assert "1.0.1-pr" not in previews.get(7).text
    with pipeline.ctx.db.session() as session:
        for model in (ServiceInstance, Profile, PhaseSlots):  # its service password and slot ports too
            assert session.scalars(select(model).where(model.phase == "pr-7")).all() == []
    for deployment in previews.github_deployments(7):
        assert deployment["statuses"][-1]["state"] == "inactive"
    assert "was removed: the pull request was merged" in previews.comment(7)
    assert previews.row(7).state == "closed"

    comment_before = previews.comment(7)
    previews.event("closed", 7, second, merged=True)  # redelivered
    pipeline.work()
    assert previews.comment(7) == comment_before
    with pipeline.ctx.db.session() as session:
        removals = session.scalars(select(AuditEntry).where(AuditEntry.action == "preview.removed")).all()
    assert len(removals) == 1

    # The merge (a fast-forward of main to the PR head): Demo runs the preview's image, unbuilt.
    builds = len(pipeline.builds())
    pipeline.git("update-ref", "refs/heads/main", second)
    pipeline.push(second)
    pipeline.work()
    [demo] = pipeline.deployments("demo")
    assert demo.status == "succeeded", demo.reason
    assert demo.image_id == pipeline.deployments("pr-7")[-1].image_id and len(pipeline.builds()) == builds


def test_late_and_out_of_order_deliveries_never_leave_a_preview_running(previews):
    pipeline = previews.pipeline
    first, second = previews.head(3, "3.0.0"), previews.head(3, "3.0.1")
    previews.event("synchronize", 3, second, at="2026-12-02T01:00:10Z")  # before its `opened`
    previews.event("opened", 3, first, at="2026-12-02T01:00:05Z")
    pipeline.work()
    assert [(d.sha, d.status) for d in pipeline.deployments("pr-3")] == [(second, "succeeded")]

    previews.event("closed", 3, second, at="2026-12-02T01:00:20Z")
    previews.event("synchronize", 3, second, at="2026-12-02T01:00:15Z")  # sent before the close
    previews.event("closed", 3, second, at="2026-12-02T01:00:20Z")
    pipeline.work()
    assert previews.containers(3) == [] and len(pipeline.deployments("pr-3")) == 1
    assert previews.row(3).state == "closed"

    previews.event("reopened", 3, second, at="2026-12-02T01:00:30Z")  # reopening builds it again
    pipeline.work()
    assert previews.get(3).text.strip() == "3.0.1" and previews.row(3).state == "active"

    third, fourth = previews.head(3, "3.0.2"), previews.head(3, "3.0.3")
    previews.event("synchronize", 3, third, at="2026-12-02T01:00:40Z")
    previews.event("synchronize", 3, fourth, at="2026-12-02T01:00:50Z")  # before the third was built
    pipeline.work()
    assert [(d.sha, d.status) for d in pipeline.deployments("pr-3")][-2:] == [(third, "superseded"),
                                                                              (fourth, "succeeded")]
    assert previews.get(3).text.strip() == "3.0.3" and third not in {b.commit_sha for b in pipeline.builds()}

    # Back to draft: what runs goes (the PR stays open); ready for review builds it again, unbuilt.
    previews.event("converted_to_draft", 3, fourth, draft=True, at="2026-12-02T01:01:00Z")
    pipeline.work()
    assert previews.containers(3) == [] and (APP, "pr-3") not in pipeline.ctx.router.routes()
    assert previews.row(3).state == "draft" and "back to draft" in previews.comment(3)
    builds = len(pipeline.builds())
    previews.event("ready_for_review", 3, fourth, at="2026-12-02T01:01:10Z")
    pipeline.work()
    assert previews.get(3).text.strip() == "3.0.3" and previews.row(3).state == "active"
    assert len(pipeline.builds()) == builds  # the same tree: the image it had


def test_a_fork_runs_nothing_until_a_writer_says_deploy_preview(previews):
    pipeline = previews.pipeline
    github = pipeline.github
    # Demo runs with a secret and a backing service password of its own.
    base = commit_with_store(pipeline, "demo-1.0")
    pipeline.push(base)
    answer = pipeline.api("PATCH", f"/apps/{APP}/phases/demo/profile", {"secrets": {"API_KEY": SECRET_VALUE}})
    assert answer.status_code == 200, answer.get_json()
    pipeline.work()
    [demo] = pipeline.deployments("demo")
    assert demo.status == "succeeded", demo.reason
    demo_env = container_env(pipeline, demo.container_id)
    assert demo_env["API_KEY"] == SECRET_VALUE and demo_env["STORE_PASSWORD"]

    fork_head = previews.head(9, "fork-1.0", services=True)
    previews.event("opened", 9, fork_head, fork=True)
    pipeline.work()
    assert pipeline.deployments("pr-9") == [] and len(pipeline.builds()) == 1  # demo's only
    assert "`/deploy preview`" in previews.comment(9) and FORK in previews.comment(9)
    assert previews.row(9).state == "awaiting_approval"

    github.permissions[(REPO, "rita")] = "read"
    github.permissions[(REPO, "wes")] = "write"
    refused = pipeline.comment("/deploy preview", user="rita", pr=9)
    pipeline.work()
    assert "needs the write role (you have read)" in pipeline.reply_to(refused, pr=9)
    assert pipeline.deployments("pr-9") == [] and len(pipeline.builds()) == 1

    consent = pipeline.comment("/deploy preview", user="wes", pr=9)
    pipeline.work()
    assert f"building commit {fork_head}" in pipeline.reply_to(consent, pr=9)
    [built] = pipeline.deployments("pr-9")
    assert (built.status, built.sha, built.actor) == ("succeeded", fork_head, "wes")
    assert previews.get(9).text.strip() == "fork-1.0"

    env = container_env(pipeline, built.container_id)
    demo_secrets = {SECRET_VALUE, demo_env["STORE_PASSWORD"]}
    assert not demo_secrets & set(env.values()), "a fork preview received another phase's secret"
    assert "API_KEY" not in env and env["STORE_PASSWORD"] != demo_env["STORE_PASSWORD"]
    assert env["GREETING"] == "preview-hi"

    later = previews.head(9, "fork-1.1")
    previews.event("synchronize", 9, later, fork=True)
    pipeline.work()
    assert [d.sha for d in pipeline.deployments("pr-9")] == [fork_head]  # a new push needs a new consent
    assert later[:7] in previews.comment(9) and "`/deploy preview`" in previews.comment(9)
    assert previews.get(9).text.strip() == "fork-1.0"


def test_the_oldest_idle_preview_makes_room_and_idle_ones_expire(previews):
    pipeline = previews.pipeline
    for number in (1, 2):
        previews.event("opened", number, previews.head(number, f"{number}.0"))
        pipeline.work()
    assert [previews.get(n).text.strip() for n in (1, 2)] == ["1.0", "2.0"]

    previews.event("opened", 3, previews.head(3, "3.0"))  # max_active is 2
    pipeline.work()
    assert previews.row(1).state == "removed" and previews.containers(1) == []
    assert "previews.max_active" in previews.comment(1)
    assert previews.get(3).text.strip() == "3.0" and previews.get(2).text.strip() == "2.0"

    with pipeline.ctx.db.session() as session:  # PR 2 saw no push for 25 hours (ttl_hours: 24)
        session.scalar(select(Preview).where(Preview.pr_number == 2)).active_at = utcnow() - timedelta(hours=25)
    assert preview_job.sweep(pipeline.ctx) == ["pr-2"]
    pipeline.work()
    assert previews.row(2).state == "removed" and previews.containers(2) == []
    assert "no push for more than 24 hours" in previews.comment(2)
    assert previews.row(3).state == "active" and len(previews.containers(3)) == 1

    previews.event("synchronize", 2, previews.head(2, "2.1"))  # a push brings an expired one back
    pipeline.work()
    assert previews.get(2).text.strip() == "2.1"

    # The API, the portal and /status list them; the portal and the API tear one down.
    listed = pipeline.api("GET", f"/apps/{APP}/previews").get_json()["previews"]
    assert [(p["pr_number"], p["state"], p["url"]) for p in listed] == [
        (3, "ready", previews.url(3)), (2, "ready", previews.url(2))]
    assert [p["pr_number"] for p in pipeline.api("GET", f"/apps/{APP}").get_json()["previews"]] == [3, 2]
    pipeline.github.permissions[(REPO, "wes")] = "write"
    status = pipeline.comment("/status", user="wes", pr=2)
    pipeline.work()
    assert f"| pr-2 (#2) | `{pipeline.deployments('pr-2')[-1].version}` | {previews.url(2)} | ready |" in \
        pipeline.reply_to(status, pr=2)
    sign_in_as(pipeline.client, pipeline.ctx, "admin", kind="token")
    page = pipeline.client.get(f"/apps/{APP}/previews").get_data(as_text=True)
    assert previews.url(3) in page and 'data-pr="1"' in page and "previews.max_active" in page
    answer = pipeline.client.post(f"/apps/{APP}/previews/3/remove", data={"csrf_token": csrf_from(page)})
    assert answer.status_code == 303
    pipeline.work()
    assert previews.row(3).state == "removed" and previews.containers(3) == []
    assert "removed by @admin in the Apps Portal" in previews.comment(3)
    assert pipeline.api("DELETE", f"/apps/{APP}/previews/2").status_code == 202
    pipeline.work()
    assert previews.containers(2) == [] and "removed by @admin through the API" in previews.comment(2)
    assert pipeline.api("DELETE", f"/apps/{APP}/previews/2").status_code == 409


def container_env(pipeline: Pipeline, container_id: str) -> dict[str, str]:
    """The environment Docker gives the container (what the app can read)."""
    attrs = pipeline.ctx.engine.client.api.inspect_container(container_id)
    return dict(item.split("=", 1) for item in attrs["Config"]["Env"])


