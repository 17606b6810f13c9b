"""The whole service on one machine for end-to-end tests: webhook endpoint, RQ, Docker, GitHub.

Deliveries go through the real Flask endpoint (signed), jobs run on a real Redis queue in a
burst `SimpleWorker` (in this process, with the Context `workers.runtime` builds from the
environment), containers run on the real Docker engine under the test run's instance label,
and GitHub is the local stand-in. The sample app is committed to a file:// git repository.

    def test_x(pipeline):
        sha = pipeline.commit("1.0.0")
        pipeline.push(sha)
        pipeline.work()
"""

from __future__ import annotations

import itertools
from datetime import datetime, timezone
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from rq import Queue, SimpleWorker
from rq.registry import FailedJobRegistry
from sqlalchemy import select

from app.context import Context
from app.jobs import QUEUES
from app.models import Build, Deployment, Report, ReportState
from app.settings import PROJECT_ROOT, Settings, load_settings
from app.web import create_app
from tests.conftest import REDIS_URL, SECRET_KEY, WEBHOOK_SECRET, delivery_headers, drain_inbox, load_payload
from tests.support.dockerkit import make_sample_repo, remove_instance_objects, require_engine
from workers import runtime

REPO = "acme/shop"
ADMIN_TOKEN = "admin-token-for-end-to-end-tests-41c9"
APP = "shop"
INSTALLATION = 77
#: Every build of the sample app answers its health check here (RepoConfig's default is "/").
REPO_FILE = {".release-pipeline.yml": "port: 8080\nhealthcheck: /healthz\n"}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Pipeline:
    def __init__(self, *, ctx: Context, github, redis_conn, repo_path: Path):
        self.ctx = ctx
        self.github = github
        self.redis = redis_conn
        self.repo_path = repo_path
        self.clone_url = ""
        self.client = create_app(context=ctx).test_client()
        self._ids = itertools.count(5_000_000)
        github.installations[REPO] = INSTALLATION
        # Who pushes and tags (maintain: Stage takes tags), who merges promotion PRs (admin, as
        # live requires) and who reviews them (write).
        github.permissions[(REPO, "dora")] = "maintain"
        github.permissions[(REPO, "maya")] = "admin"
        for reviewer in ("bob", "carol", "dave"):
            github.permissions[(REPO, reviewer)] = "write"

    # -- git ---------------------------------------------------------------------------------

    def commit(self, version_text: str, *, tag: str | None = None, repo_file: str | None = None) -> str:
        """A new commit of the sample app on main (built, it serves `version_text` at /version);
        `repo_file` adds lines to its .release-pipeline.yml."""
        files = {name: text + (repo_file or "") for name, text in REPO_FILE.items()}
        self.clone_url, sha = make_sample_repo(self.repo_path, version_text=version_text, tag=tag,
                                               extra_files=files)
        return sha

    def api(self, method: str, path: str, body: dict | None = None):
        """The JSON API as an admin (the ADMIN_TOKEN bearer)."""
        return self.client.open(f"/api/v1{path}", method=method, json=body,
                                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})

    def git(self, *args: str) -> str:
        return subprocess.run(["git", "-C", str(self.repo_path), *args], check=True, capture_output=True,
                              text=True).stdout.strip()

    # -- GitHub deliveries -------------------------------------------------------------------

    def deliver(self, event: str, payload: dict) -> dict:
        """The delivery's outcome once the intake drainer (run here) recorded it."""
        body = json.dumps(payload).encode()
        response = self.client.post("/api/github/webhooks", data=body,
                                    headers=delivery_headers(event, body, secret=WEBHOOK_SECRET))
        assert response.status_code in (200, 202), response.get_json()
        outcomes = drain_inbox(self.ctx)
        return outcomes[-1].body if outcomes else response.get_json()

    def _repository(self, payload: dict) -> dict:
        payload["repository"].update(full_name=REPO, name=APP, clone_url=self.clone_url, default_branch="main",
                                     html_url=f"https://github.com/{REPO}")
        payload["installation"] = {"id": INSTALLATION}
        return payload

    def push_payload(self, sha: str, *, pusher: str = "dora") -> dict:
        """GitHub's `push` delivery of `sha` to the default branch."""
        payload = self._repository(load_payload("push/with-installation"))
        payload.update(ref="refs/heads/main", after=sha, deleted=False, created=False)
        payload["head_commit"] = {**(payload.get("head_commit") or {}), "id": sha}
        payload["pusher"] = {"name": pusher, "email": f"{pusher}@example.test"}
        payload["sender"] = {**payload["sender"], "login": pusher}
        return payload

    def push(self, sha: str, *, pusher: str = "dora") -> dict:
        return self.deliver("push", self.push_payload(sha, pusher=pusher))

    def push_tag(self, tag: str, *, pusher: str = "dora") -> list[dict]:
        """A release tag as GitHub reports it: `push` (refs/tags/…) and `create`."""
        tag_object, commit = self.git("rev-parse", tag), self.git("rev-parse", f"{tag}^{{commit}}")
        push = self._repository(load_payload("push/with-installation"))
        push.update(ref=f"refs/tags/{tag}", after=tag_object, deleted=False, created=True, base_ref=None)
        push["head_commit"] = {**(push.get("head_commit") or {}), "id": commit}
        push["pusher"] = {"name": pusher, "email": f"{pusher}@example.test"}
        push["sender"] = {**push["sender"], "login": pusher}
        create = self._repository(load_payload("create/with-installation"))
        create.update(ref=tag, ref_type="tag")
        create["sender"] = {**create["sender"], "login": pusher}
        return [self.deliver("push", push), self.deliver("create", create)]

    def open_pull(self, number: int, head_sha: str, *, author: str = "alice", title: str | None = None,
                  base: str = "main", head: str = "feature") -> None:
        self.github.pulls[(REPO, number)] = {
            "title": title or f"Pull request {number}",
            "user": {"login": author, "id": 100 + number, "type": "User"},
            "head": {"ref": head, "sha": head_sha},
            "base": {"ref": base},
        }

    def comment(self, body: str, *, user: str, pr: int = 1) -> int:
        """`user` comments `body` on PR `pr`; returns the comment id."""
        comment_id = next(self._ids)
        payload = self._repository(load_payload("issue_comment/created.with-installation"))
        payload["issue"].update(number=pr, pull_request={"url": f"https://api.github.com/repos/{REPO}/pulls/{pr}"})
        payload["comment"].update(id=comment_id, body=body, created_at=_now(),
                                  user={**payload["comment"]["user"], "login": user, "type": "User"})
        payload["sender"] = {**payload["sender"], "login": user, "type": "User"}
        self.deliver("issue_comment", payload)
        return comment_id

    def merge(self, number: int, *, merged_by: str = "maya") -> dict:
        """GitHub's `pull_request` `closed` delivery for the merge of PR `number` (from the stand-in)."""
        stored = self.github.pulls[(REPO, number)]
        payload = self._repository(load_payload("pull_request/closed"))
        pull = payload["pull_request"]
        pull.update(number=number, title=stored["title"], merged=True, state="closed",
                    merged_by={**(pull.get("merged_by") or pull["user"]), "login": merged_by},
                    user={**pull["user"], "login": stored["user"]["login"]})
        pull["head"] = {**pull["head"], "ref": stored["head"]["ref"], "sha": stored["head"]["sha"]}
        pull["base"] = {**pull["base"], "ref": stored["base"]["ref"]}
        payload["number"] = number
        stored["state"] = "closed"
        return self.deliver("pull_request", payload)

    # -- the queue ---------------------------------------------------------------------------

    def work(self, queues: tuple[str, ...] = QUEUES) -> None:
        """Run every queued job (and the jobs they queue) in this process, then check none failed."""
        rq_queues = [Queue(name, connection=self.redis) for name in queues]
        SimpleWorker(rq_queues, connection=self.redis).work(burst=True)
        failed = {q.name: FailedJobRegistry(queue=q).get_job_ids() for q in rq_queues}
        assert not any(failed.values()), f"failed jobs: {failed}"

    # -- what happened -----------------------------------------------------------------------

    def deployments(self, phase: str | None = None) -> list[Deployment]:
        with self.ctx.db.session() as session:
            query = select(Deployment).order_by(Deployment.id)
            if phase is not None:
                query = query.where(Deployment.phase == phase)
            return list(session.scalars(query))

    def builds(self) -> list[Build]:
        with self.ctx.db.session() as session:
            return list(session.scalars(select(Build).order_by(Build.id)))

    def unsent_reports(self) -> list[Report]:
        with self.ctx.db.session() as session:
            return list(session.scalars(select(Report).where(Report.state != ReportState.SENT.value)))

    def comments(self, pr: int = 1) -> list[dict]:
        return [c for c in self.github.comments.values() if c["repo"] == REPO and c["issue_number"] == pr]

    def reply_to(self, comment_id: int, pr: int = 1) -> str:
        """The body of the bot's one reply to a command comment (found by the outbox topic)."""
        topic = f"command-{comment_id}"
        with self.ctx.db.session() as session:
            sent = [r for r in session.scalars(select(Report).where(Report.kind == "comment"))
                    if r.body.get("topic") == topic and r.state == ReportState.SENT.value]
        assert sent, f"no reply to comment {comment_id} was sent"
        ids = {r.result["comment_id"] for r in sent}
        assert len(ids) == 1, f"the reply to {comment_id} was posted {len(ids)} times"
        return self.github.comments[ids.pop()]["body"]

    def reactions(self, comment_id: int) -> list[str]:
        calls = self.github.calls_to("POST", f"/repos/{REPO}/issues/comments/{comment_id}/reactions")
        return [call.json["content"] for call in calls]

    def statuses(self, sha: str, phase: str) -> list[str]:
        return [s["state"] for s in self.github.statuses.get((REPO, sha), [])
                if s["context"] == f"release-pipeline/{phase}"]

    @staticmethod
    def fetch(url: str, path: str) -> str:
        return requests.get(url.rstrip("/") + path, timeout=5).text

    def info(self, deployment: Deployment) -> dict[str, str]:
        """APP_VERSION, APP_PHASE, … as the container serving `deployment` reports them."""
        text = self.fetch(deployment.url, "/cgi-bin/info")
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def service_environment(monkeypatch, *, database_url: str, instance: str, tmp_path: Path, github,
                        **extra: str) -> Settings:
    """Point the worker's Context (built from the environment) at the test's services; the same
    settings are returned for the web side. `github=None`: GitHub not configured; `extra`: more
    variables (e.g. PIPELINE_CONFIG)."""
    values = {
        "GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "SECRET_KEY": SECRET_KEY,
        "REDIS_URL": REDIS_URL,
        "DATABASE_URL": database_url,
        "PIPELINE_INSTANCE": instance,
        "PIPELINE_ALLOW_FILE_CLONES": "1",
        "ROUTER": "direct",
        "DRAIN_SECONDS": "0",
        "WORK_DIR": str(tmp_path / "work"),
        "PUBLIC_URL": "http://portal.test",
        "ADMIN_TOKEN": ADMIN_TOKEN,
        **(github.environ if github is not None else {}),
        **extra,
    }
    for name in ("GITHUB_APP_ID", "GITHUB_PRIVATE_KEY", "GITHUB_PRIVATE_KEY_PATH", "GITHUB_API_URL",
                 "PIPELINE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    runtime.reset()
    return load_settings(values)


def _pipeline(github, database_url, redis_conn, instance, tmp_path, monkeypatch, **extra) -> Iterator[Pipeline]:
    engine = require_engine(instance)
    settings = service_environment(monkeypatch, database_url=database_url, instance=instance, tmp_path=tmp_path,
                                   github=github, **extra)
    try:
        yield Pipeline(ctx=Context.from_settings(settings), github=github, redis_conn=redis_conn,
                       repo_path=tmp_path / "repo")
    finally:
        runtime.reset()
        remove_instance_objects(engine.instance)


@pytest.fixture
def pipeline(github, database_url, redis_conn, instance, tmp_path, monkeypatch,
             pipeline_extra_env) -> Iterator[Pipeline]:
    """The service wired to the stand-in GitHub, a fresh database, Redis and Docker (plus the
    variables of `pipeline_extra_env`, in conftest: a module overrides it)."""
    yield from _pipeline(github, database_url, redis_conn, instance, tmp_path, monkeypatch, **pipeline_extra_env)


@pytest.fixture
def relaxed_pipeline(github, database_url, redis_conn, instance, tmp_path, monkeypatch) -> Iterator[Pipeline]:
    """`pipeline` with `require_previous_phase: false`, for tests of one phase on its own (a
    tag straight to Stage, a promotion PR straight to Live)."""
    config = tmp_path / "pipeline.yml"
    text = (PROJECT_ROOT / "config" / "pipeline.yml").read_text()
    assert "require_previous_phase: true" in text
    config.write_text(text.replace("require_previous_phase: true", "require_previous_phase: false"))
    yield from _pipeline(github, database_url, redis_conn, instance, tmp_path, monkeypatch,
                         PIPELINE_CONFIG=str(config))
