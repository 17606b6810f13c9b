"""The Docker adapter against the real engine, with the busybox sample app (never pulls)."""

from __future__ import annotations

import io
import tarfile
import time

import pytest
import requests

from app.adapters.docker import (
    LABEL_APP,
    LABEL_INSTANCE,
    LABEL_PHASE,
    LABEL_TREE,
    ContainerSpec,
    Engine,
)
from app.exceptions import BuildFailed, DeployFailed
from tests.support.dockerkit import (
    APP_PORT,
    PROFILE_VARIABLE,
    container_status,
    context_tar,
    remove_instance_objects,
    unique_instance,
    wait_until,
    write_sample_app,
)

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def built(docker_engine, tmp_path_factory):
    """The sample app built once for this module: (image id, streamed lines, tree)."""
    lines: list[str] = []
    tree = "a" * 40
    context = context_tar(write_sample_app(tmp_path_factory.mktemp("app"), version_text="2.0.0"))
    image_id = docker_engine.build_image(
        app="sample", tree=tree, sha="b" * 40, context_tar=context, on_line=lines.append
    )
    return image_id, lines, tree


def test_build_streams_lines_and_labels_the_image(docker_engine, built):
    image_id, lines, tree = built
    assert image_id.startswith("sha256:")
    assert any(line.startswith("Step 1/") for line in lines)
    assert all(line and not line.endswith("\n") for line in lines)
    image = docker_engine.client.images.get(image_id)
    assert image.labels[LABEL_INSTANCE] == docker_engine.instance
    assert image.labels[LABEL_APP] == "sample" and image.labels[LABEL_TREE] == tree
    assert f"{docker_engine.instance}-sample:{tree[:12]}" in image.tags


def test_find_image_reuses_the_build_for_the_same_tree(docker_engine, built):
    image_id, _, tree = built
    assert docker_engine.find_image("sample", tree) == image_id
    assert docker_engine.find_image("sample", "c" * 40) is None
    assert docker_engine.find_image("other-app", tree) is None
    assert Engine(instance=unique_instance()).find_image("sample", tree) is None


def test_run_serves_the_app_with_its_environment_and_limits(docker_engine, built):
    image_id, _, _ = built
    spec = ContainerSpec(
        app="sample",
        phase="demo",
        version="2.0.0",
        sha="b" * 40,
        deployment_id=7,
        image=image_id,
        env={PROFILE_VARIABLE: "hello demo", "PORT": "ignored"},
        port=APP_PORT,
        memory="64m",
        cpus=0.5,
    )
    running = docker_engine.run_container(spec)
    try:
        assert running.name == f"{docker_engine.instance}-sample-demo-7"
        body = _get_when_up(f"http://127.0.0.1:{running.host_port}/cgi-bin/info")
        assert "APP_VERSION=2.0.0" in body
        assert "APP_PHASE=demo" in body
        assert f"{PROFILE_VARIABLE}=hello demo" in body
        assert "BUILD=2.0.0" in body

        attrs = docker_engine.client.api.inspect_container(running.id)
        assert attrs["HostConfig"]["Memory"] == 64 * 1024 * 1024
        assert attrs["HostConfig"]["NanoCpus"] == 500_000_000
        assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
        assert attrs["NetworkSettings"]["Ports"][f"{APP_PORT}/tcp"][0]["HostIp"] == "127.0.0.1"
        assert f"PORT={APP_PORT}" in attrs["Config"]["Env"]
        labels = attrs["Config"]["Labels"]
        assert labels[LABEL_INSTANCE] == docker_engine.instance
        assert {labels[k] for k in ("release-pipeline.version", "release-pipeline.sha")} == {
            "2.0.0",
            "b" * 40,
        }
        assert labels["release-pipeline.deployment"] == "7" and labels[LABEL_PHASE] == "demo"

        assert container_status(docker_engine, running.id) == "running"
        listed = docker_engine.list_containers(app="sample", phase="demo")
        assert [(c.id, c.name, c.status, c.host_port) for c in listed] == [
            (running.id, running.name, "running", running.host_port)
        ]
        assert docker_engine.list_containers(app="sample", phase="live") == []
        assert Engine(instance=unique_instance()).list_containers() == []
    finally:
        docker_engine.stop_and_remove(running.id, timeout=5)
    assert container_status(docker_engine, running.id) is None
    assert docker_engine.container_logs(running.id) == []
    docker_engine.stop_and_remove(running.id)  # already gone: fine


def test_another_instance_cannot_touch_our_container(docker_engine, built):
    running = docker_engine.run_container(_spec(built[0], deployment_id=8))
    try:
        stranger = Engine(instance=unique_instance())
        stranger.stop_and_remove(running.id)
        remove_instance_objects(stranger.instance)
        assert container_status(stranger, running.id) is None
        assert container_status(docker_engine, running.id) == "running"
    finally:
        docker_engine.stop_and_remove(running.id, timeout=5)


def test_a_container_that_cannot_start_is_removed(docker_engine, built):
    spec = _spec(built[0], deployment_id=9, command=["/no/such/binary"])
    with pytest.raises(DeployFailed, match="cannot start"):
        docker_engine.run_container(spec)
    assert docker_engine.list_containers(app="sample", phase="demo") == []
    with pytest.raises(DeployFailed, match="cannot create"):
        docker_engine.run_container(_spec("sha256:" + "0" * 64, deployment_id=10))


def test_failing_build_raises_build_failed(docker_engine, tmp_path):
    app = write_sample_app(tmp_path / "broken")
    (app / "Dockerfile").write_text("FROM scratch\nCOPY no-such-file /x\n")
    lines: list[str] = []
    with pytest.raises(BuildFailed, match="no-such-file") as failure:
        docker_engine.build_image(
            app="broken",
            tree="d" * 40,
            sha="d" * 40,
            context_tar=context_tar(app),
            on_line=lines.append,
        )
    assert "\n" not in str(failure.value)
    assert lines  # the steps before the failure were streamed
    (app / "Dockerfile").write_text("FROMM scratch\n")
    with pytest.raises(BuildFailed, match=r"(?i)unknown instruction"):
        docker_engine.build_image(
            app="broken",
            tree="e" * 40,
            sha="e" * 40,
            context_tar=context_tar(app),
            on_line=lines.append,
        )


def test_prune_keeps_what_is_asked(docker_engine, tmp_path):
    """Only this instance's images of this app are looked at: another test run on the same
    engine (its own instance) may be pruning its own "pruned" app at the same time."""
    ids = []
    for number in range(4):
        context = context_tar(write_sample_app(tmp_path / str(number), version_text=f"0.{number}"))
        ids.append(
            docker_engine.build_image(
                app="pruned",
                tree=f"{number + 1}" * 40,  # distinct trees, so distinct tags too
                sha=f"{number + 1}" * 40,
                context_tar=context,
                on_line=lambda line: None,
            )
        )
    oldest, kept_by_id, in_use, newest = ids
    stranger = Engine(instance=unique_instance())
    foreign = stranger.build_image(app="pruned", tree="f" * 40, sha="f" * 40, on_line=lambda line: None,
                                   context_tar=context_tar(write_sample_app(tmp_path / "foreign")))
    running = docker_engine.run_container(_spec(in_use, deployment_id=11, app="pruned"))
    try:
        removed = docker_engine.prune_images("pruned", keep_ids={kept_by_id}, keep_last=1)
        assert removed == [oldest]
        remaining = {
            image.id
            for image in docker_engine.client.images.list(
                filters={"label": [f"{LABEL_INSTANCE}={docker_engine.instance}", f"{LABEL_APP}=pruned"]}
            )
        }
        assert remaining == {kept_by_id, in_use, newest}
        assert stranger.find_image("pruned", "f" * 40) == foreign
    finally:
        docker_engine.stop_and_remove(running.id, timeout=5)
        remove_instance_objects(stranger.instance)


def test_remove_instance_objects_clears_everything(tmp_path):
    engine = Engine(instance=unique_instance())
    context = context_tar(write_sample_app(tmp_path / "app"))
    image = engine.build_image(
        app="gone", tree="f" * 40, sha="f" * 40, context_tar=context, on_line=lambda line: None
    )
    engine.run_container(_spec(image, deployment_id=1, app="gone"))
    engine.client.networks.create(
        f"{engine.instance}-net", labels={LABEL_INSTANCE: engine.instance}
    )
    engine.client.volumes.create(f"{engine.instance}-vol", labels={LABEL_INSTANCE: engine.instance})
    remove_instance_objects(engine.instance)
    label = {"label": f"{LABEL_INSTANCE}={engine.instance}"}
    assert engine.list_containers() == []
    assert engine.client.images.list(filters=label) == []
    assert engine.client.networks.list(filters=label) == []
    assert engine.client.volumes.list(filters=label) == []


def test_ping_and_lazy_client():
    engine = Engine(instance=unique_instance())
    assert engine._client is None
    assert engine.ping()
    assert not Engine(base_url="unix:///nonexistent.sock").ping()
    with pytest.raises(ValueError):
        Engine(instance="Bad_Name")


def _spec(image: str, *, deployment_id: int, app: str = "sample", command=None) -> ContainerSpec:
    return ContainerSpec(
        app=app,
        phase="demo",
        version="1.0.0",
        sha="b" * 40,
        deployment_id=deployment_id,
        image=image,
        env={},
        port=APP_PORT,
        memory="64m",
        cpus=0.5,
        command=command,
    )


def _get_when_up(url: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = requests.get(url, timeout=2)
            if response.ok:
                return response.text
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer")
        time.sleep(0.05)


def test_builds_never_pull_a_missing_base_image_unless_build_pull_is_missing(docker_engine, tmp_path):
    """BUILD_PULL=never (default): the engine would fetch an unknown FROM image from Docker Hub."""
    from app.adapters.docker import base_images

    app = write_sample_app(tmp_path / "pulls")
    (app / "Dockerfile").write_text("ARG BASE=rp-test-missing/base:never\nFROM ${BASE} AS first\n"
                                    "FROM first\nCOPY . /x\n")
    assert docker_engine.pull == "never"
    with pytest.raises(BuildFailed, match="base image rp-test-missing/base:never is not on the Docker engine and "
                                          "BUILD_PULL=never"):
        docker_engine.build_image(app="pulls", tree="c" * 40, sha="c" * 40, context_tar=context_tar(app),
                                  on_line=lambda line: None)
    (app / "Dockerfile").write_text("FROM $UNSET_BASE\n")
    with pytest.raises(BuildFailed, match="cannot be checked, and BUILD_PULL=never"):
        docker_engine.build_image(app="pulls", tree="c" * 40, sha="c" * 40, context_tar=context_tar(app),
                                  on_line=lambda line: None)
    pulling = Engine(instance=docker_engine.instance, pull="missing")
    (app / "Dockerfile").write_text("FROM rp-test-missing/base:never\n")
    with pytest.raises(BuildFailed) as tried:  # the engine tried its registry (no network here)
        pulling.build_image(app="pulls", tree="c" * 40, sha="c" * 40, context_tar=context_tar(app),
                            on_line=lambda line: None)
    assert "BUILD_PULL" not in str(tried.value)
    assert base_images("FROM scratch\nFROM --platform=linux/amd64 busybox:1 AS b\nFROM b\n") == ["busybox:1"]
    with pytest.raises(ValueError, match="never or missing"):
        Engine(instance="x", pull="always")


# -- BUILDER=buildkit ------------------------------------------------------------------------


def test_buildkit_builds_label_the_image_and_stream_their_steps(docker_engine, tmp_path):
    """The docker CLI with BuildKit: the same tag and labels as the classic builder, its
    progress in the log, a second build of another version reusing the unchanged layer."""
    from app.adapters.docker import buildkit_cli

    assert buildkit_cli() is not None, "no docker CLI here builds with BuildKit (Debian's docker.io has one)"
    engine = Engine(instance=docker_engine.instance, builder="buildkit")
    first, second = [], []
    ids = [engine.build_image(app="kit", tree=f"{number}" * 40, sha="b" * 40, on_line=lines.append,
                              context_tar=context_tar(write_sample_app(tmp_path / str(number), version_text=f"{number}.0")))
           for number, lines in ((1, first), (2, second))]
    assert ids[0] != ids[1] and all(i.startswith("sha256:") for i in ids)
    image = engine.client.images.get(ids[1])
    assert image.labels[LABEL_INSTANCE] == engine.instance
    assert image.labels[LABEL_APP] == "kit" and image.labels[LABEL_TREE] == "2" * 40
    assert f"{engine.instance}-kit:{'2' * 12}" in image.tags
    assert engine.find_image("kit", "2" * 40) == ids[1]
    assert any("COPY www /www" in line for line in second) and any("CACHED" in line for line in second)
    assert not any(line.startswith("#") and "sha256:" in line and len(line.split()) == 2 for line in second)
    # It runs: the classic builder's image and this one serve alike.
    running = engine.run_container(_spec(ids[1], deployment_id=77, app="kit"))
    try:
        assert _get_when_up(f"http://127.0.0.1:{running.host_port}/version") == "2.0\n"
    finally:
        engine.stop_and_remove(running.id, timeout=1)


def test_buildkit_build_failures_say_why(docker_engine, tmp_path):
    engine = Engine(instance=docker_engine.instance, builder="buildkit")
    app = write_sample_app(tmp_path / "broken")
    for dockerfile, reason in (("FROM scratch\nCOPY no-such-file /x\n", "no-such-file"),
                               ("FROMM scratch\n", "(?i)unknown instruction")):
        (app / "Dockerfile").write_text(dockerfile)
        lines: list[str] = []
        with pytest.raises(BuildFailed, match=reason) as failure:
            engine.build_image(app="broken", tree="d" * 40, sha="d" * 40, context_tar=context_tar(app),
                               on_line=lines.append)
        assert "\n" not in str(failure.value) and lines
    (app / "Dockerfile").write_text("FROM rp-test-missing/base:never\n")  # BUILD_PULL=never still holds
    with pytest.raises(BuildFailed, match="BUILD_PULL=never"):
        engine.build_image(app="broken", tree="d" * 40, sha="d" * 40, context_tar=context_tar(app),
                           on_line=lambda line: None)


def test_buildkit_argv_and_which_clis_can(monkeypatch):
    from app.adapters import docker as adapter

    assert adapter.buildkit_argv("/usr/bin/docker", dockerfile="sub/Dockerfile", tag="rp-shop:abc",
                                 labels={"a": "1", "b": "x y"}, iidfile="/tmp/iid") == [
        "/usr/bin/docker", "build", "--progress=plain", "--file", "sub/Dockerfile", "--tag", "rp-shop:abc",
        "--label", "a=1", "--label", "b=x y", "--iidfile", "/tmp/iid", "-"]
    cases = [("Docker version 20.10.24+dfsg1, build 297e128", False, True),
             ("Docker version 18.06.1-ce, build e68fc7a", False, False),
             ("Docker version 18.09.0, build 4d60db4", False, True),
             ("Docker version 28.2.2, build e6534b4", False, False),
             ("Docker version 28.2.2, build e6534b4", True, True),
             ("podman version 4.3.1", True, False)]
    assert [adapter.cli_has_buildkit(text, buildx) for text, buildx, _ in cases] == [want for *_, want in cases]
    from app import doctor

    def builder_check(builder: str) -> doctor.Check:
        return doctor._builder(Engine(instance="x", builder=builder), builder)

    adapter.buildkit_cli.cache_clear()
    try:
        with monkeypatch.context() as patched:  # a machine without any docker CLI
            patched.setattr(adapter, "_CLI_CANDIDATES", ("no-such-docker-cli",))
            with pytest.raises(BuildFailed, match="set BUILDER=classic"):
                Engine(instance="x", builder="buildkit").builder_in_use()
            assert Engine(instance="x", builder="auto").builder_in_use() == "classic"
            refused = builder_check("buildkit")
            assert not refused.ok and "no docker CLI here builds with BuildKit" in refused.detail
            assert builder_check("auto") == doctor.Check("builder", True, "classic, through the engine's API (BUILDER=auto)")
    finally:
        adapter.buildkit_cli.cache_clear()
    assert Engine(instance="x", builder="auto").builder_in_use() == "buildkit"  # this machine has one
    assert Engine(instance="x", builder="classic").builder_in_use() == "classic"
    assert builder_check("auto").detail == f"BuildKit, through {adapter.buildkit_cli()} (BUILDER=auto)"
    with pytest.raises(ValueError, match="auto, classic or buildkit"):
        Engine(instance="x", builder="kaniko")


@pytest.mark.parametrize("builder", ["classic", "buildkit"])
def test_dockerignore_keeps_what_it_lists_out_of_the_image(docker_engine, tmp_path, builder):
    """A context sent as a tar (ours always is) reaches the builder whole; what .dockerignore
    lists must still stay out, as with `docker build DIR`."""
    app = write_sample_app(tmp_path / "ignoring", extra_files={
        ".dockerignore": "# local files\nsecret.txt\nlogs/\n*.tmp\n!keep.tmp\n", "secret.txt": "s3cr3t",
        "logs/today.log": "x", "scratch.tmp": "x", "keep.tmp": "kept", "www/extra": "served"})
    (app / "Dockerfile").write_text("FROM scratch\nCOPY . /ctx/\n")
    engine = Engine(instance=docker_engine.instance, builder=builder)
    image = engine.build_image(app="ignoring", tree=("c" if builder == "classic" else "d") * 40, sha="b" * 40,
                               context_tar=context_tar(app), on_line=lambda line: None)
    container = engine.client.api.create_container(image, command=["/nothing"])
    try:
        exported = b"".join(engine.client.api.export(container["Id"]))
    finally:
        engine.client.api.remove_container(container["Id"], force=True)
    with tarfile.open(fileobj=io.BytesIO(exported)) as tar:
        files = {m.name.removeprefix("ctx/") for m in tar.getmembers() if m.name.startswith("ctx/") and m.isfile()}
    assert {"busybox", "www/version", "www/extra", "keep.tmp", "Dockerfile"} <= files
    assert not files & {"secret.txt", "logs/today.log", "scratch.tmp"}


def test_buildkit_takes_a_context_whose_first_file_has_a_long_name(docker_engine, tmp_path):
    """The docker CLI tells a tar on stdin from a Dockerfile by its first header: a long name's
    extra record there made it read the whole tar as a Dockerfile ("ambiguous Dockerfile source")."""
    app = write_sample_app(tmp_path / "long")
    name = "a" * 120
    (app / name).write_text("long\n")
    (app / "Dockerfile").write_text(f"FROM scratch\nCOPY busybox /bin/busybox\nCOPY {name} /www/long\n")
    with tarfile.open(fileobj=io.BytesIO(context_tar(app))) as source:
        members = sorted(source.getmembers(), key=lambda m: m.name != name)  # the long name first
        contents = {m.name: source.extractfile(m).read() for m in members if m.isfile()}
    first_long = io.BytesIO()
    with tarfile.open(fileobj=first_long, mode="w") as target:
        for member in members:
            target.addfile(member, io.BytesIO(contents[member.name]) if member.isfile() else None)
    engine = Engine(instance=docker_engine.instance, builder="buildkit")
    image = engine.build_image(app="long", tree="e" * 40, sha="b" * 40, context_tar=first_long.getvalue(),
                               on_line=lambda line: None)
    assert engine.find_image("long", "e" * 40) == image


def test_watched_containers_follow_the_engine_s_events(docker_engine, built):
    """The portal's health index (README, The Apps Portal): what `list_containers` says, kept
    current from the engine's events as a container starts, stops and goes."""
    from app.docker_runtime import WatchedContainers, instance_of

    watched = WatchedContainers(docker_engine, retry=0.1).start()
    running = None
    try:
        wait_until(lambda: watched.instances() is not None, 30)
        running = docker_engine.run_container(_spec(built[0], deployment_id=11))

        def seen():
            return next((i for i in watched.instances("sample") if i.id == running.id), None)

        wait_until(lambda: seen() is not None and seen().state == "running", 30)
        listed = next(c for c in docker_engine.list_containers(app="sample") if c.id == running.id)
        assert seen() == instance_of(listed)  # the same view as asking the engine
        assert seen().deployment_id == 11 and seen().address == f"127.0.0.1:{running.host_port}"
        assert watched.instances("another-app") == []
        docker_engine.client.api.stop(running.id, timeout=1)
        wait_until(lambda: seen() is not None and seen().state == "exited", 30)
        docker_engine.stop_and_remove(running.id)
        wait_until(lambda: seen() is None, 30)
    finally:
        watched.stop()
        if running is not None:
            docker_engine.stop_and_remove(running.id)


def test_watched_containers_know_nothing_while_the_engine_cannot_be_watched(tmp_path, caplog):
    """Then the portal lists the containers itself (queries.containers), as before."""
    from app.docker_runtime import WatchedContainers

    watched = WatchedContainers(Engine(f"unix://{tmp_path}/no-engine.sock", instance=unique_instance()), retry=0.05)
    with caplog.at_level("WARNING", logger="app.docker_runtime"):
        watched.start()
        try:
            wait_until(lambda: any("cannot watch the engine's containers" in r.getMessage() for r in caplog.records),
                       30)
            assert watched.instances() is None
        finally:
            watched.stop()
