"""RUNTIME=swarm: service specs (by equality), and a real two-node swarm on this machine.

The swarm is the test's own: a manager and a worker, each a private dockerd in a network
namespace it creates, a registry on the manager's address, Caddy on the host routing to the
tasks' host-mode ports. It shows what issue 13 asks: replicas spread over both nodes and
answering through the phase URL, a rolling update and a failing one (rolled back by Swarm)
without a failed request, a node drained and then killed, a backing service keeping its data.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from app.adapters.docker import Engine
from app.adapters.router import CaddyRouter
from app.adapters.swarm import (PROBE_SOURCE, PROBE_TARGET, AppService, BackingService, Followed, Rollout, Swarm, Task,
                                app_service_spec, backing_service_spec, read_tasks, rollout_state, upstreams)
from tests.support.dockerkit import BUSYBOX, RequestLoop, context_tar, free_port, write_sample_app
from tests.support.faults import wait_for
from tests.support.requires import Part, missing, used
from tests.support.swarm import SwarmUnavailable, TwoNodeSwarm

SECOND = 10**9


def _service(**overrides) -> AppService:
    values = dict(app="shop", phase="demo", version="v1", sha="a" * 40, deployment_id=7,
                  image="10.0.0.1:5000/rp-shop:abc@sha256:" + "b" * 64, env={"GREETING": "hi"}, port=8080,
                  health_path="/healthz", health_timeout=10, replicas=3, memory="256m", cpus=0.5, stop_timeout=4)
    values.update(overrides)
    return AppService(**values)


def test_an_app_service_spec_asks_swarm_for_everything_the_profile_says():
    spec = app_service_spec("rp", _service())
    labels = {"release-pipeline.instance": "rp", "release-pipeline.app": "shop", "release-pipeline.phase": "demo",
              "release-pipeline.version": "v1", "release-pipeline.sha": "a" * 40, "release-pipeline.deployment": "7"}
    update = {"Parallelism": 1, "Order": "start-first", "FailureAction": "rollback",
              "Monitor": 18 * SECOND, "MaxFailureRatio": 0.0}
    assert spec == {
        "Name": "rp-shop-demo",
        "Labels": labels,
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": "10.0.0.1:5000/rp-shop:abc@sha256:" + "b" * 64,
                "Labels": labels,
                "Env": ["APP_NODE={{.Node.Hostname}}", "APP_PHASE=demo", "APP_VERSION=v1", "GREETING=hi",
                        "PORT=8080"],
                "Init": True,
                "StopGracePeriod": 4 * SECOND,
                "Healthcheck": {"Test": ["CMD", PROBE_TARGET, "timeout", "3", PROBE_TARGET, "wget", "-q", "-O",
                                         "/dev/null", "http://127.0.0.1:8080/healthz"],
                                "Interval": SECOND, "Timeout": 4 * SECOND, "Retries": 3, "StartPeriod": 10 * SECOND},
                "Mounts": [{"Type": "bind", "Source": PROBE_SOURCE, "Target": PROBE_TARGET, "ReadOnly": True}],
            },
            "Resources": {"Limits": {"MemoryBytes": 256 * 1024 * 1024, "NanoCPUs": 500_000_000}},
            "RestartPolicy": {"Condition": "any", "Delay": SECOND, "MaxAttempts": 0},
            "Networks": [],
        },
        "Mode": {"Replicated": {"Replicas": 3}},
        "UpdateConfig": update,
        "RollbackConfig": {**update, "FailureAction": "pause"},
        "EndpointSpec": {"Mode": "dnsrr", "Ports": [{"Protocol": "tcp", "TargetPort": 8080, "PublishMode": "host"}]},
    }
    # The monitor window outlasts the slowest verdict of the health check (start period + retries).
    assert spec["UpdateConfig"]["Monitor"] > (10 + 3 * 1) * SECOND


def test_a_backing_service_is_one_replica_pinned_to_its_node_with_its_volume():
    spec = backing_service_spec("rp", BackingService(app="shop", phase="demo", name="db", image="rp-db:1",
                                                     node="node-2", env={"PASSWORD": "x"}, volume="rp-shop-demo-db",
                                                     data="/var/lib/data", network="rp-shop-demo"))
    assert spec["Mode"] == {"Replicated": {"Replicas": 1}}
    assert spec["TaskTemplate"]["Placement"] == {"Constraints": ["node.hostname==node-2"]}
    assert spec["TaskTemplate"]["ContainerSpec"]["Mounts"][0]["Source"] == "rp-shop-demo-db"
    assert spec["TaskTemplate"]["ContainerSpec"]["Mounts"][0]["Target"] == "/var/lib/data"
    assert spec["UpdateConfig"]["Order"] == "stop-first"  # never two tasks on one data directory
    assert spec["TaskTemplate"]["Networks"] == [{"Target": "rp-shop-demo", "Aliases": ["db"]}]


def _task(id: str, node: str, state: str = "running", deployment: str = "7", port: int | None = 30001,
          desired: str = "running") -> dict:
    return {"ID": id, "NodeID": node, "DesiredState": desired, "CreatedAt": id,
            "Spec": {"ContainerSpec": {"Labels": {"release-pipeline.deployment": deployment}}},
            "Status": {"State": state, "PortStatus": {"Ports": [{"PublishedPort": port}] if port else []}}}


NODES = [{"ID": "n1", "Description": {"Hostname": "manager"}, "Status": {"Addr": "10.0.0.10"}},
         {"ID": "n2", "Description": {"Hostname": "worker1"}, "Status": {"Addr": "10.0.0.11"}}]


def test_upstreams_are_the_running_tasks_on_ready_nodes():
    tasks = read_tasks([_task("1", "n1"), _task("2", "n2", port=30002), _task("3", "n2", state="starting", port=30003),
                        _task("4", "n1", desired="shutdown", port=30004)], NODES)
    assert upstreams(tasks, {"manager", "worker1"}) == ["10.0.0.10:30001", "10.0.0.11:30002"]
    assert upstreams(tasks, {"manager"}) == ["10.0.0.10:30001"]  # the worker is down or drained


def test_rollout_state_from_the_service_record_and_its_tasks():
    ours = {"Spec": {"Labels": {"release-pipeline.deployment": "8"}}, "UpdateStatus": {"State": "completed"}}
    new = read_tasks([_task("1", "n1", deployment="8"), _task("2", "n2", deployment="8")], NODES)
    mixed = read_tasks([_task("1", "n1", deployment="8"), _task("2", "n2", deployment="7")], NODES)
    assert rollout_state(ours, new, 8, 2) == Rollout.DONE
    assert rollout_state(ours, mixed, 8, 2) == Rollout.UPDATING
    assert rollout_state({**ours, "UpdateStatus": {"State": "updating"}}, new, 8, 2) == Rollout.UPDATING
    back = {"Spec": {"Labels": {"release-pipeline.deployment": "7"}}, "UpdateStatus": {"State": "rollback_completed"}}
    assert rollout_state(back, mixed, 8, 2) == Rollout.ROLLED_BACK
    assert rollout_state({**back, "UpdateStatus": {"State": "rollback_started"}}, mixed, 8, 2) == Rollout.UPDATING
    assert rollout_state({**ours, "UpdateStatus": {"State": "paused"}}, mixed, 8, 2) == Rollout.STUCK


# -- a real two-node swarm ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swarm(instance) -> Iterator[TwoNodeSwarm]:
    try:
        cluster, problem = TwoNodeSwarm(instance), None
    except SwarmUnavailable as exc:
        cluster, problem = None, str(exc)
    if cluster is None:
        missing(Part.NETNS, f"a two-node swarm of private engines is needed: {problem}")
    try:
        cluster.start()
        client = cluster.manager.client()
        used(Part.NETNS, client.version()["Version"])
        client.close()
        used(Part.REGISTRY, "docker-registry (distribution) on " + cluster.registry)
        yield cluster
    finally:
        cluster.close()


def _node_app(path: Path, version: str, healthy: bool = True) -> bytes:
    """The sample app, plus /cgi-bin/node answering its version and the node its task runs on."""
    write_sample_app(path, version_text=version, healthy=healthy)
    node = path / "www" / "cgi-bin" / "node"
    node.write_text(f'#!/bin/busybox sh\necho "Content-Type: text/plain"\necho ""\necho "{version} $APP_NODE"\n')
    node.chmod(0o755)
    return context_tar(path)


def _backing_app(path: Path) -> bytes:
    """A stateful service: on first start it writes a random id into its data directory,
    and serves that directory."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "busybox").write_bytes(BUSYBOX.read_bytes())
    (path / "busybox").chmod(0o755)
    start = ("[ -f /data/id ] || /bin/busybox head -c 8 /dev/urandom | /bin/busybox md5sum > /data/id; "
             "exec /bin/busybox httpd -f -p 9000 -h /data")
    (path / "Dockerfile").write_text(f'FROM scratch\nCOPY busybox /bin/busybox\n'
                                     f'CMD ["/bin/busybox", "sh", "-c", "{start}"]\n')
    return context_tar(path)


@pytest.mark.slow
def test_apps_across_two_nodes(swarm, caddy_server, instance, tmp_path):
    manager_engine = Engine(base_url=swarm.manager.socket, instance=instance)
    cluster = Swarm(swarm.manager.socket, instance, swarm.registry)
    router = CaddyRouter(caddy_server.admin_url, free_port(), instance=instance)
    router.ensure_server()
    url = router.url_for("shop", "demo")

    def release(version: str, deployment_id: int, healthy: bool = True) -> tuple[dict, Followed]:
        image = manager_engine.build_image(app="shop", tree=f"{deployment_id:040x}", sha="c" * 40,
                                           context_tar=_node_app(tmp_path / version, version, healthy),
                                           on_line=lambda line: None)
        ref = cluster.push(image, "shop", f"{deployment_id:012x}")
        spec = app_service_spec(instance, _service(version=version, deployment_id=deployment_id, image=ref,
                                                   health_timeout=4, memory=None, cpus=None, env={}))
        cluster.apply(spec)
        outcome = cluster.follow(spec, deployment_id, timeout=120,
                                 on_endpoints=lambda endpoints: router.ensure_upstreams("shop", "demo", endpoints))
        return spec, outcome

    def get(session: requests.Session) -> requests.Response:
        return session.get(url.replace("shop-demo.localhost", "127.0.0.1") + "/cgi-bin/node",
                           headers={"Host": f"shop-demo.localhost:{router.listen_port}"}, timeout=10)

    # replicas: 3, over both nodes, every one answering through the phase URL
    spec, outcome = release("v1", 1)
    assert outcome.state == Rollout.DONE
    tasks = [t for t in cluster.tasks(spec["Name"]) if t.state == "running"]
    assert len(tasks) == 3 and {t.node for t in tasks} == {"manager", "worker1"}
    with requests.Session() as session:
        answers = {get(session).text.strip() for _ in range(30)}
    assert answers == {"v1 manager", "v1 worker1"}

    # a rolling update under a request loop: no request fails, v2 serves at the end
    with RequestLoop(get, keep_alive=False) as loop:
        _, outcome = release("v2", 2)
        time.sleep(0.5)
    assert outcome.state == Rollout.DONE
    assert loop.failures == [] and len(loop.answers) > 20
    assert {a.split()[0] for a in loop.answers[-5:]} == {"v2"}

    # an update whose health check fails: Swarm rolls it back by itself, v2 serves throughout
    with RequestLoop(get, keep_alive=False) as loop:
        spec, followed = release("v3", 3, healthy=False)
    assert followed.state == Rollout.ROLLED_BACK
    assert loop.failures == [] and {a.split()[0] for a in loop.answers} == {"v2"}
    evidence = cluster.evidence(spec["Name"], followed)
    assert any("unhealthy" in line for line in evidence["tasks"]), evidence

    # a backing service pinned to the manager keeps its data on that node across a new task
    backing_image = manager_engine.build_image(app="shop", tree="d" * 40, sha="c" * 40,
                                               context_tar=_backing_app(tmp_path / "db"), on_line=lambda line: None)
    db = backing_service_spec(instance, BackingService(
        app="shop", phase="demo", name="db", image=cluster.push(backing_image, "shop", "d" * 12), node="manager",
        env={}, volume=f"{instance}-shop-demo-db", data="/data"))
    cluster.apply(db)

    def data_id() -> str | None:
        running = [t for t in cluster.tasks(db["Name"]) if t.state == "running"]
        return _read_on_node(swarm.manager, running[0]) if running else None

    first = wait_for(data_id, 60, "the backing service's data")
    db["TaskTemplate"]["ContainerSpec"]["Env"] = ["RESTARTED=1"]  # a changed definition: a new task
    cluster.apply(db)
    wait_for(lambda: len([t for t in cluster.tasks(db["Name"]) if t.state == "running"]) == 1
             and len(cluster.tasks(db["Name"])) == 2, 60, "the backing service's new task")
    assert wait_for(data_id, 60, "the new task's data") == first
    assert {t.node for t in cluster.tasks(db["Name"])} == {"manager"}
    worker_volumes = swarm.workers[0].client().volumes.list()
    assert f"{instance}-shop-demo-db" not in {v.name for v in worker_volumes}

    # the worker drained, then killed: its tasks move, the phase URL keeps answering
    stop = threading.Event()

    def follow_tasks() -> None:  # what the periodic reconcile does between deployments
        while not stop.is_set():
            endpoints = cluster.endpoints(spec["Name"])
            if endpoints:
                router.ensure_upstreams("shop", "demo", endpoints)
            time.sleep(0.3)

    follower = threading.Thread(target=follow_tasks, daemon=True)
    follower.start()
    try:
        with RequestLoop(get, keep_alive=False) as loop:
            swarm.drain(swarm.workers[0])
            wait_for(lambda: {t.node for t in cluster.tasks(spec["Name"]) if t.state == "running"
                              and t.desired == "running"} == {"manager"}
                     and len([t for t in cluster.tasks(spec["Name"]) if t.state == "running"
                              and t.desired == "running"]) == 3, 90, "every task on the manager")
            swarm.kill(swarm.workers[0])
            time.sleep(3)
        assert loop.failures == [] and {a for a in loop.answers[-5:]} == {"v2 manager"}
    finally:
        stop.set()
        follower.join(timeout=5)


def _read_on_node(node, task: Task) -> str | None:
    """The backing task's data file, read inside its container on its node."""
    client = node.client()
    try:
        for container in client.containers.list(filters={"label": f"com.docker.swarm.task.id={task.id}"}):
            result = container.exec_run(["/bin/busybox", "cat", "/data/id"])
            return result.output.decode().strip() if result.exit_code == 0 else None
        return None
    finally:
        client.close()
