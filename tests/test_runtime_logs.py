"""Runtime logs against the real Docker engine: a running phase's own output, its last lines and
a live tail, in the portal and the API, with every phase secret masked."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.adapters.docker import ContainerSpec
from app.models import Deployment
from app.portal import live_log
from app.crypto import MASK
from tests.support.dockerkit import (
    BUSYBOX,
    context_tar,
    wait_until,
)
from tests.support.portal_data import (
    ADMIN_TOKEN,
    add_app,
    add_deployment,
    csrf_from,
    on_socket,
    set_profile,
)

pytestmark = pytest.mark.docker

#: One in the serving deployment's snapshot, one set on the profile since (a backing service's
#: password is such a phase secret too).
RUNNING_SECRET = "runtime-secret-7c1f-never-shown"
PROFILE_SECRET = "profile-secret-a93e-never-shown"
CHATTY = ('echo "connecting with API_KEY=$API_KEY"; echo "db at postgres://app:$DB_PASSWORD@db/app"; i=0; '
          'while true; do echo "tick $i"; i=$((i+1)); /bin/busybox sleep 0.2; done')


@pytest.fixture
def engine(docker_engine):  # the real engine where the portal tests use a stub
    return docker_engine


@pytest.fixture(scope="module")
def chatty_image(docker_engine, tmp_path_factory):
    folder = tmp_path_factory.mktemp("chatty")
    shutil.copy2(BUSYBOX, folder / "busybox")
    command = json.dumps(["/bin/busybox", "sh", "-c", CHATTY])
    (folder / "Dockerfile").write_text(f"FROM scratch\nCOPY busybox /bin/busybox\nCMD {command}\n")
    return docker_engine.build_image(app="shop", tree="c" * 40, sha="d" * 40, context_tar=context_tar(folder),
                                     on_line=lambda line: None)


@pytest.fixture
def serving(build, docker_engine, chatty_image):
    """Demo serves a deployment whose container writes a line every 0.2 s, secrets included."""
    ctx, flask_app = build(ADMIN_TOKEN=ADMIN_TOKEN)
    app_id = add_app(ctx)
    deployment_id = add_deployment(ctx, app_id, "demo", "a1b2c3d", "a", snapshot={
        "env": {}, "secrets": {"API_KEY": ctx.box.seal(RUNNING_SECRET)}, "memory": "64m", "cpus": 0.5, "replicas": 1})
    set_profile(ctx, app_id, "demo", secrets={"DB_PASSWORD": PROFILE_SECRET})
    running = docker_engine.run_container(ContainerSpec(
        app="shop", phase="demo", version="a1b2c3d", sha="a" * 40, deployment_id=deployment_id, image=chatty_image,
        env={"API_KEY": RUNNING_SECRET, "DB_PASSWORD": PROFILE_SECRET}, port=8080, memory="64m", cpus=0.5))
    with ctx.db.session() as session:
        session.get(Deployment, deployment_id).container_id = running.id
    wait_until(lambda: len(docker_engine.output(running.id, tail=10)) >= 5, timeout=20)
    client = flask_app.test_client()
    client.post("/signin", data={"token": ADMIN_TOKEN, "csrf_token": csrf_from(client.get("/signin").text)})
    yield ctx, client, running, flask_app
    docker_engine.stop_and_remove(running.id, timeout=1)


def test_the_adapter_reads_the_last_lines_and_what_came_after(serving, docker_engine):
    _, _, running, _ = serving
    last = docker_engine.output(running.id, tail=3)
    assert len(last) == 3 and all(text.startswith("tick ") for _, text in last)
    assert [moment for moment, _ in last] == sorted(moment for moment, _ in last)
    wait_until(lambda: docker_engine.output(running.id, tail=50, since=last[-1][0]), timeout=10)
    after = docker_engine.output(running.id, tail=50, since=last[-1][0])
    assert after and all(moment > last[-1][0] for moment, _ in after)
    assert int(after[0][1].split()[1]) == int(last[-1][1].split()[1]) + 1  # the very next line, none lost


def test_the_portal_and_the_api_show_the_output_with_every_phase_secret_masked(serving):
    _, client, _, _ = serving
    page = client.get("/apps/shop/phases/demo/logs?lines=1000")
    assert page.status_code == 200
    assert f"connecting with API_KEY={MASK}" in page.text and f"postgres://app:{MASK}@db/app" in page.text
    assert "tick 1" in page.text and 'role="log"' in page.text
    assert RUNNING_SECRET not in page.text and PROFILE_SECRET not in page.text
    body = client.get("/api/v1/apps/shop/phases/demo/logs?lines=4").get_json()
    [app_source] = body["sources"]
    assert (app_source["key"], app_source["running"], len(app_source["lines"])) == ("app", True, 4)
    everything = client.get("/api/v1/apps/shop/phases/demo/logs?lines=2000")
    assert RUNNING_SECRET not in everything.text and PROFILE_SECRET not in everything.text
    texts = [line["text"] for line in everything.get_json()["sources"][0]["lines"]]
    assert f"connecting with API_KEY={MASK}" in texts


def test_the_live_tail_streams_new_lines_masked(serving, monkeypatch):
    _, client, _, _ = serving
    monkeypatch.setattr(live_log, "STREAM_SECONDS", 1.2)
    monkeypatch.setattr(live_log, "WATCH_SECONDS", 0.1)
    since = time.time()
    for path in ("/apps/shop/phases/demo/logs/events", "/api/v1/apps/shop/phases/demo/logs/events"):
        body = client.get(f"{path}?since={since}").get_data(as_text=True)
        lines = [json.loads(block.split("data: ", 1)[1]) for block in body.split("\n\n") if "event: line" in block]
        ticks = [int(line["text"].split()[1]) for line in lines]
        assert len(ticks) >= 2 and ticks == list(range(ticks[0], ticks[0] + len(ticks))), ticks  # in order, no gap
        assert {line["source"] for line in lines} == {"app"}
        assert RUNNING_SECRET not in body and PROFILE_SECRET not in body


def test_the_command_line_prints_the_last_lines_then_follows_masked(serving):
    *_, flask_app = serving
    executable = str(Path(sys.executable).with_name("release-pipeline"))
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root"),
           "RELEASE_PIPELINE_TOKEN": ADMIN_TOKEN}
    with on_socket(flask_app) as url:
        env["RELEASE_PIPELINE_URL"] = url
        last = subprocess.run([executable, "output", "shop", "demo", "--lines", "3"], env=env,
                              capture_output=True, text=True, timeout=60)
        assert last.returncode == 0, last.stderr
        shown = last.stdout.splitlines()
        assert shown[0] == "== shop demo · a1b2c3d" and len(shown) == 4
        assert all(" [app] tick " in line for line in shown[1:])
        everything = subprocess.run([executable, "output", "shop", "demo", "-n", "2000"], env=env,
                                    capture_output=True, text=True, timeout=60)
        assert f"[app] connecting with API_KEY={MASK}" in everything.stdout
        assert RUNNING_SECRET not in everything.stdout and PROFILE_SECRET not in everything.stdout

        following = subprocess.Popen([executable, "output", "shop", "demo", "-n", "1", "--follow"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            lines = [following.stdout.readline() for _ in range(4)]  # the header, the last line, then new ones
        finally:
            following.send_signal(signal.SIGINT)
            status = following.wait(timeout=30)
    ticks = [int(line.split(" tick ")[1]) for line in lines[1:]]
    assert ticks == list(range(ticks[0], ticks[0] + 3)), lines  # followed in order, none lost
    assert status == 130
