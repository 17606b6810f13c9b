"""The command line against a running installation: the real `release-pipeline` executable in a
subprocess, the Flask app on a real socket, a real `release-pipeline worker` process doing real
Docker deploys, personal API tokens made in the portal, roles from the GitHub stand-in."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from app.web import create_app
from tests.support.dockerkit import free_port, remove_instance_objects, require_engine, stop_process
from tests.support.pipeline_e2e import APP, REPO, Pipeline, service_environment
from tests.support.portal_data import csrf_from, on_socket, sign_in_as

EXECUTABLE = str(Path(sys.executable).with_name("release-pipeline"))
ELAPSED = re.compile(r"^\s*\d+\.\d+s  ", re.MULTILINE)
NEW_TOKEN = re.compile(r'id="new-token">(rpt_[A-Za-z0-9_-]+)<')


@dataclass
class Installation:
    pipeline: Pipeline
    url: str
    flask_app: object

    def token(self, login: str, role: str, name: str = "laptop") -> str:
        """`login` signs in with GitHub (their `role` on the repository) and makes a token."""
        self.pipeline.github.permissions[(REPO, login)] = role
        browser = self.browser(login)
        page = browser.get("/tokens")
        made = browser.post("/tokens", data={"name": name, "csrf_token": csrf_from(page.text)})
        assert made.status_code == 201, made.text
        assert made.headers["Cache-Control"] == "no-store"
        return NEW_TOKEN.search(made.text).group(1)

    def browser(self, login: str):
        client = self.flask_app.test_client()
        sign_in_as(client, self.flask_app.extensions["release_pipeline"], login)
        return client

    def cli(self, token: str, *args: str, url: str | None = None, **env_extra: str) -> subprocess.CompletedProcess:
        env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root"),
               "RELEASE_PIPELINE_URL": url or self.url, "RELEASE_PIPELINE_TOKEN": token, **env_extra}
        return subprocess.run([EXECUTABLE, *args], env=env, capture_output=True, text=True, timeout=180)

    def serves(self, phase: str) -> str:
        [row] = [d for d in self.pipeline.deployments(phase) if d.status == "succeeded"][-1:]
        return requests.get(row.url.rstrip("/") + "/version", timeout=5).text.strip()


@pytest.fixture
def installation(github, database_url, redis_conn, instance, tmp_path, monkeypatch) -> Iterator[Installation]:
    """The web side in this process (on a real socket), GitHub sign-in configured."""
    from app.context import Context

    settings = service_environment(monkeypatch, database_url=database_url, instance=instance, tmp_path=tmp_path,
                                   github=github, GITHUB_CLIENT_ID="Iv1.cli-test", GITHUB_CLIENT_SECRET="s")
    pipeline = Pipeline(ctx=Context.from_settings(settings), github=github, redis_conn=redis_conn,
                        repo_path=tmp_path / "repo")
    flask_app = create_app(context=pipeline.ctx)
    try:
        with on_socket(flask_app) as url:
            yield Installation(pipeline, url, flask_app)
    finally:
        remove_instance_objects(instance)


@pytest.fixture
def worker(installation, instance, tmp_path) -> Iterator[subprocess.Popen]:
    """`release-pipeline worker`, as the Procfile runs it, with the test's environment."""
    require_engine(instance)
    log = (tmp_path / "worker.log").open("wb")
    process = subprocess.Popen([EXECUTABLE, "worker"], env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        stop_process(process, timeout=30)  # RQ's warm shutdown lets a running job finish
        log.close()


def _lines(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


@pytest.mark.slow
def test_deploy_promote_rollback_and_follow_logs_from_the_command_line(installation, worker):
    mo = installation.token("mo", "maintain")
    first = installation.pipeline.commit("1.0.0")
    installation.pipeline.push(first)  # the worker deploys it to demo

    [pushed] = json.loads(installation.cli(mo, "history", APP, "demo", "--json").stdout)["deployments"]
    followed = installation.cli(mo, "logs", str(pushed["id"]), "--follow")
    assert followed.returncode == 0, _lines(followed)
    assert "[build]" in followed.stdout and "[deploy]" in followed.stdout
    assert followed.stdout.rstrip().splitlines()[-1].startswith("succeeded: serving at http://")
    assert installation.serves("demo") == "1.0.0"

    promoted = installation.cli(mo, "promote", APP, "stage", "--as", "v1.0.0")
    assert promoted.returncode == 0, _lines(promoted)
    steps = promoted.stdout.splitlines()
    assert steps[0] == f"promoting {first[:7]} from demo to stage as v1.0.0"
    # Each rollout step is shown as it happens (a status that lasted less than the stream's poll
    # may be skipped; the steps are log lines and never are).
    assert any(ELAPSED.match(line) and " now serves " in line for line in steps), _lines(promoted)
    assert re.fullmatch(r"succeeded after \d+\.\d+s: serving at http://\S+", steps[-1]), _lines(promoted)
    assert installation.serves("stage") == "1.0.0"

    second = installation.pipeline.commit("2.0.0")
    deployed = installation.cli(mo, "deploy", APP, "demo", second)
    assert deployed.returncode == 0, _lines(deployed)
    assert deployed.stdout.startswith(f"deploying {second[:7]} to demo")
    assert any(ELAPSED.match(line) and " starting " in f" {line}" for line in deployed.stdout.splitlines()), \
        _lines(deployed)
    assert "succeeded after" in deployed.stdout
    assert installation.serves("demo") == "2.0.0"

    as_json = installation.cli(mo, "promote", APP, "stage", "--as", "v2.0.0", "--json")
    assert as_json.returncode == 0, _lines(as_json)
    final = json.loads(as_json.stdout)  # progress went to stderr, stdout is one document
    assert (final["status"], final["version"], final["sha"]) == ("succeeded", "v2.0.0", second)
    assert "succeeded after" in as_json.stderr
    assert installation.serves("stage") == "2.0.0"

    rolled = installation.cli(mo, "rollback", APP, "stage", "--no-wait", "--json")
    assert rolled.returncode == 0, _lines(rolled)
    answer = json.loads(rolled.stdout)
    assert answer["message"].startswith("rolling back stage: v2.0.0")
    assert answer["deployment"]["status"] == "queued"
    followed = installation.cli(mo, "logs", str(answer["deployment"]["id"]), "--follow")
    assert followed.returncode == 0, _lines(followed)
    assert installation.serves("stage") == "1.0.0"

    history = json.loads(installation.cli(mo, "history", APP, "stage", "--json").stdout)["deployments"]
    assert [(d["version"], d["trigger"], d["actor"], d["status"]) for d in history] == [
        ("v1.0.0", "rollback", "mo", "succeeded"), ("v2.0.0", "portal", "mo", "succeeded"),
        ("v1.0.0", "portal", "mo", "succeeded")]
    status = installation.cli(mo, "status", APP)
    assert status.returncode == 0
    [stage_row] = [line for line in status.stdout.splitlines() if line.startswith("stage ")]
    assert "v1.0.0" in stage_row and "mo" in stage_row


def test_refusals_revoked_tokens_and_unreachable_servers_exit_1_with_the_reason(installation):
    pipeline = installation.pipeline
    pipeline.push(pipeline.commit("1.0.0"))  # the app exists; its deployment stays queued (no worker)
    wes = installation.token("wes", "write")

    refused = installation.cli(wes, "promote", APP, "stage")
    assert refused.returncode == 1, _lines(refused)
    assert refused.stderr.strip() == ("Error: refused (403 forbidden): promote to stage needs the maintain role "
                                      "(you have write)")
    assert [d.phase for d in pipeline.deployments()] == ["demo"]

    listed = installation.cli(wes, "apps", "--json")
    assert listed.returncode == 0, _lines(listed)
    assert [a["name"] for a in json.loads(listed.stdout)["apps"]] == [APP]
    assert installation.cli(wes, "whoami").stdout.strip() == "wes (GitHub (personal API token))"
    completed = installation.cli(wes, _RELEASE_PIPELINE_COMPLETE="bash_complete", COMP_CWORD="2",
                                 COMP_WORDS="release-pipeline history s")
    assert completed.stdout.split() == ["plain,shop"]  # app names asked from the server
    completed = installation.cli(wes, _RELEASE_PIPELINE_COMPLETE="bash_complete", COMP_CWORD="3",
                                 COMP_WORDS="release-pipeline history shop ")
    assert completed.stdout.split() == ["plain,demo", "plain,stage", "plain,live"]

    browser = installation.browser("wes")
    page = browser.get("/tokens")
    assert "laptop" in page.text and "never" not in page.text  # its last use is shown
    assert wes not in page.text  # shown once only, when it was made
    token_id = re.search(r'data-token="(\d+)"', page.text).group(1)
    browser.post(f"/tokens/{token_id}/revoke", data={"csrf_token": csrf_from(page.text)})

    revoked = installation.cli(wes, "apps")
    assert revoked.returncode == 1
    assert "refused (401 unauthorized): the personal API token “laptop” was revoked" in revoked.stderr

    unreachable = installation.cli(wes, "apps", url=f"http://127.0.0.1:{free_port()}")
    assert unreachable.returncode == 1
    assert unreachable.stderr.strip().endswith("Connection refused"), _lines(unreachable)
    assert "cannot reach Release Pipeline at http://127.0.0.1:" in unreachable.stderr
