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

from sqlalchemy import select

from app.actions import current
from app.adapters.swarm import (PROBE_SOURCE, PROBE_TARGET, AppService, BackingService, Rollout,
                                app_service_spec, backing_container, backing_service_spec, backing_state, pick_node,
                                placed_on, read_tasks, resources, restore_spec, rollout_state, served_routes, upstreams,
                                wipe_spec)
from app.exceptions import DeployFailed
from app.context import Context
from app.deployments import schedule
from app.jobs import DeployJob as QueuedDeploy
from app.locks import holder
from app.portal import changes, runtime_logs
from app.models import App, Deployment, LogLine, ServiceInstance
from app.plans import Deploy, Repo
from app.registry import ensure_app
from app.settings import load_settings
from tests.conftest import REDIS_URL, SECRET_KEY, WEBHOOK_SECRET
from tests.support.dockerkit import BUSYBOX, RequestLoop, context_tar, free_port, make_sample_repo
from workers import follow
from workers import reconcile as reconcile_job
from workers.deploy import Rollout as DeployJob
from tests.support.faults import WorkerProcess, wait_for
from tests.support.requires import Part, missing, used
from tests.support.swarm import SwarmUnavailable, TwoNodeSwarm

SECOND = 10**9
LOCK_SECONDS = 3


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
    spec = backing_service_spec("rp", BackingService(
        app="shop", phase="demo", name="db", definition="d" * 64, image="10.0.0.1:5000/rp-shop:dddd@sha256:1",
        node="node-2", env={"PASSWORD": "x"}, volume="rp-shop.demo.db.data", data="/var/lib/data",
        network="rp-shop-demo", command=("serve", "--port", "5432"), healthcheck=("pg_isready",),
        memory="64m", cpus=0.25))
    labels = {"release-pipeline.instance": "rp", "release-pipeline.service-app": "shop",
              "release-pipeline.service-phase": "demo", "release-pipeline.service": "db",
              "release-pipeline.service-definition": "d" * 64}
    assert spec == {
        "Name": "rp-shop-demo-db",
        "Labels": labels,  # a backing service's labels, as on docker: never taken for an app's task
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": "10.0.0.1:5000/rp-shop:dddd@sha256:1", "Labels": labels, "Hostname": "db",
                "Env": ["PASSWORD=x"], "Init": True, "Args": ["serve", "--port", "5432"],
                "Mounts": [{"Type": "volume", "Source": "rp-shop.demo.db.data", "Target": "/var/lib/data",
                            "VolumeOptions": {"Labels": labels}}],
                "Healthcheck": {"Test": ["CMD", "pg_isready"], "Interval": SECOND, "Timeout": 5 * SECOND,
                                "Retries": 3},
            },
            "Resources": {"Limits": {"MemoryBytes": 64 * 1024 * 1024, "NanoCPUs": 250_000_000}},
            "Placement": {"Constraints": ["node.hostname==node-2"]},
            "RestartPolicy": {"Condition": "any", "Delay": SECOND, "MaxAttempts": 0},
            "Networks": [{"Target": "rp-shop-demo", "Aliases": ["db"]}],
        },
        "Mode": {"Replicated": {"Replicas": 1}},
        "UpdateConfig": {"Parallelism": 1, "Order": "stop-first", "FailureAction": "pause"},  # never two on one volume
        "EndpointSpec": {"Mode": "dnsrr"},
    }
    # a service without data may run anywhere; a shell health check runs in a shell
    free = backing_service_spec("rp", BackingService(app="shop", phase="demo", name="cache", definition="e" * 64,
                                                     image="img", node=None, env={}, healthcheck="true"))
    assert free["TaskTemplate"]["Placement"] == {} and free["TaskTemplate"]["ContainerSpec"]["Mounts"] == []
    assert free["TaskTemplate"]["ContainerSpec"]["Healthcheck"]["Test"] == ["CMD-SHELL", "true"]
    assert placed_on({"Spec": spec}) == "node-2" and placed_on({"Spec": free}) is None


def test_removing_a_backing_services_data_is_a_job_on_its_node_that_empties_the_volume():
    spec = backing_service_spec("rp", BackingService(app="shop", phase="demo", name="db", definition="d" * 64,
                                                     image="img@sha256:1", node="node-2", env={"A": "b"},
                                                     volume="rp-shop.demo.db.data", data="/data"))
    wipe = wipe_spec(spec)
    assert wipe["Name"] == "rp-shop-demo-db-wipe" and wipe["Mode"] == {"ReplicatedJob": {"MaxConcurrent": 1,
                                                                                       "TotalCompletions": 1}}
    assert wipe["TaskTemplate"]["Placement"] == {"Constraints": ["node.hostname==node-2"]}
    container = wipe["TaskTemplate"]["ContainerSpec"]
    assert container["Command"] == [PROBE_TARGET, "find", "/data", "-mindepth", "1", "-maxdepth", "1", "-exec",
                                    PROBE_TARGET, "rm", "-rf", "{}", "+"]
    assert container["Mounts"][0]["Source"] == "rp-shop.demo.db.data"
    assert wipe["TaskTemplate"]["RestartPolicy"] == {"Condition": "none"}
    cache = backing_service_spec("rp", BackingService(app="shop", phase="demo", name="cache", definition="e" * 64,
                                                      image="img", node=None, env={}))
    assert wipe_spec(cache) is None


def test_a_new_backing_service_goes_to_the_ready_node_with_the_fewest():
    assert pick_node({"manager", "worker1"}, []) == "manager"
    assert pick_node({"manager", "worker1"}, ["manager"]) == "worker1"
    assert pick_node({"manager"}, ["manager", "manager"]) == "manager"
    with pytest.raises(DeployFailed, match="no Swarm node is ready"):
        pick_node(set(), [])


def test_a_backing_service_reads_as_a_container_to_the_provisioner():
    spec = backing_service_spec("rp", BackingService(app="shop", phase="demo", name="db", definition="d" * 64,
                                                     image="img", node="manager", env={}, memory="64m"))
    service = {"Spec": spec}
    starting = read_tasks([_task("1", "n1", state="starting", port=None)], NODES)
    state = backing_state(service, starting)
    assert (state.status, state.restarts, state.memory) == ("starting", 0, 64 * 1024 * 1024)
    crashed = read_tasks([_task("2", "n1", state="starting", port=None),
                          {**_task("1", "n1", state="failed", port=None, desired="shutdown"),
                           "Status": {"State": "failed", "ContainerStatus": {"ExitCode": 3}}}], NODES)
    assert (backing_state(service, crashed).restarts, backing_state(service, crashed).exit_code) == (1, 3)
    running = read_tasks([_task("1", "n1", port=None, resources=spec["TaskTemplate"]["Resources"])], NODES)
    assert backing_state(service, running).status == "running"
    assert backing_container(service, running).id == "rp-shop-demo-db"
    # resized to 96m: until Swarm replaced it, the task started with 64m is not the service running
    resized = {"Spec": {**spec, "TaskTemplate": {**spec["TaskTemplate"], "Resources": resources("96m", None)}}}
    assert (backing_state(resized, running).status, backing_state(resized, running).memory) == (
        "starting", 96 * 1024 * 1024)


def test_each_served_phase_routes_to_its_running_tasks_on_ready_nodes():
    def task(id, node, deployment, phase="demo", port=30001):
        return {**_task(id, node, deployment=deployment, port=port),
                "Spec": {"ContainerSpec": {"Labels": {"release-pipeline.deployment": deployment,
                                                      "release-pipeline.app": "shop",
                                                      "release-pipeline.phase": phase}}}}

    tasks = read_tasks([task("1", "n1", "7"), task("2", "n2", "7", port=30002), task("3", "n2", "8", port=30003),
                        task("4", "n1", "9", phase="stage", port=30004)], NODES)
    # deployment 8's task too: Swarm runs it (an update it finished or rolled back to by itself)
    assert served_routes(tasks, {"manager", "worker1"}, [("shop", "demo"), ("shop", "stage")]) == {
        ("shop", "demo"): ["10.0.0.10:30001", "10.0.0.11:30002", "10.0.0.11:30003"],
        ("shop", "stage"): ["10.0.0.10:30004"]}
    # worker1 drained: only the manager's task is named
    assert served_routes(tasks, {"manager"}, [("shop", "demo")]) == {("shop", "demo"): ["10.0.0.10:30001"]}
    assert served_routes(tasks, {"manager"}, [("shop", "prod")]) == {("shop", "prod"): []}


def test_a_service_put_back_never_rolls_back_to_the_deployment_it_replaces():
    previous = app_service_spec("rp", _service())
    restored = restore_spec(previous)
    assert restored["UpdateConfig"]["FailureAction"] == "continue"
    assert {k: v for k, v in restored.items() if k != "UpdateConfig"} == {
        k: v for k, v in previous.items() if k != "UpdateConfig"}
    assert previous["UpdateConfig"]["FailureAction"] == "rollback"  # the deploys' own stays as it was


def _task(id: str, node: str, state: str = "running", deployment: str = "7", port: int | None = 30001,
          desired: str = "running", resources: dict | None = None) -> dict:
    return {"ID": id, "NodeID": node, "DesiredState": desired, "CreatedAt": id,
            "Spec": {"ContainerSpec": {"Labels": {"release-pipeline.deployment": deployment}},
                     **({"Resources": resources} if resources else {})},
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


def test_doctor_says_when_the_engine_is_no_swarm_manager_and_the_registry_is_away(make_settings, database_url):
    from app.doctor import run_checks

    settings = make_settings(DATABASE_URL=database_url, RUNTIME="swarm", ROUTER="caddy",
                             REGISTRY_URL=f"127.0.0.1:{free_port()}")
    checks = {check.name: check for check in run_checks(settings)}
    assert not checks["swarm"].ok and "docker swarm init" in checks["swarm"].fix  # the shared engine is no manager
    assert not checks["registry"].ok and "REGISTRY_URL" in checks["registry"].fix


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


PIPELINE = """\
defaults:
  health_timeout: 4
phases:
  demo:
    trigger: push
    profile: {replicas: 3, memory: 64m, cpus: 0.5, stop_timeout: 3}
"""
REPO_FILE = {".release-pipeline.yml": "port: 8080\nhealthcheck: /healthz\n"}


class SwarmRig:
    """The installation with RUNTIME=swarm on the test's swarm: deployments run in-process."""

    def __init__(self, ctx: Context, repo: Path, router_port: int, environ: dict[str, str]):
        self.ctx, self.repo, self.router_port, self.environ = ctx, repo, router_port, environ
        self.clone_url, self.shas, self.ids = "", {}, {}

    def commit(self, version: str, repo_file: str = REPO_FILE[".release-pipeline.yml"],
               files: dict[str, str] | None = None, **options) -> None:
        self.clone_url, self.shas[version] = make_sample_repo(
            self.repo, version_text=version, extra_files={".release-pipeline.yml": repo_file, **(files or {})},
            **options)

    def schedule(self, version: str, *, trigger: str = "push", source: str | None = None) -> int:
        with self.ctx.db.session() as session:
            repo = Repo("acme/shop", self.clone_url, "main")
            deployment = schedule(session, ensure_app(session, repo), Deploy(
                repo=repo, phase="demo", ref=self.shas[version], sha=self.shas[version], version=version,
                trigger=trigger, actor="dora"), source_id=self.ids.get(source))
            session.flush()
            self.ids.setdefault(version, deployment.id)
            return deployment.id

    def run(self, deployment_id: int) -> Deployment:
        DeployJob(self.ctx, deployment_id).run()
        return self.deployment(deployment_id)

    def deploy(self, version: str, **options) -> Deployment:
        return self.run(self.schedule(version, **options))

    def deployment(self, deployment_id: int) -> Deployment:
        with self.ctx.db.session() as session:
            return session.get(Deployment, deployment_id)

    def service_deployment(self) -> str | None:
        """The deployment the phase's Swarm service is specified by now."""
        service = self.ctx.swarm.service(f"{self.ctx.settings.pipeline_instance}-shop-demo") or {}
        return (service.get("Spec", {}).get("Labels") or {}).get("release-pipeline.deployment")

    def lines(self, deployment_id: int) -> list[str]:
        with self.ctx.db.session() as session:
            return list(session.scalars(select(LogLine.text).where(LogLine.deployment_id == deployment_id)
                                        .order_by(LogLine.id)))

    def get(self, session: requests.Session, path: str = "/cgi-bin/info") -> requests.Response:
        return session.get(f"http://127.0.0.1:{self.router_port}{path}",
                           headers={"Host": f"shop-demo.localhost:{self.router_port}"}, timeout=10)

    def info(self, session: requests.Session) -> dict[str, str]:
        text = self.get(session).text
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def version(self, session: requests.Session) -> str:
        return self.get(session, "/version").text.strip()

    def upstreams(self) -> list[str]:
        """The phase URL's upstreams as Caddy holds them now (its admin API)."""
        route = requests.get(f"{self.ctx.settings.caddy_admin_url}/id/{self.ctx.settings.pipeline_instance}.shop.demo",
                             timeout=5).json()
        return sorted(_dials(route))


@pytest.fixture
def rig(swarm, instance, database_url, redis_conn, caddy_server, tmp_path) -> SwarmRig:
    (tmp_path / "pipeline.yml").write_text(PIPELINE)
    router_port = free_port()
    environ = {"GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET, "SECRET_KEY": SECRET_KEY, "REDIS_URL": REDIS_URL,
               "PIPELINE_INSTANCE": instance, "PIPELINE_ALLOW_FILE_CLONES": "1", "WORK_DIR": str(tmp_path / "work"),
               "DATABASE_URL": database_url, "RUNTIME": "swarm", "DOCKER_HOST": swarm.manager.socket,
               "REGISTRY_URL": swarm.registry, "ROUTER": "caddy", "CADDY_ADMIN_URL": caddy_server.admin_url,
               "ROUTER_PORT": str(router_port), "DRAIN_SECONDS": "0.3", "DEPLOY_LOCK_SECONDS": str(LOCK_SECONDS),
               "PIPELINE_CONFIG": str(tmp_path / "pipeline.yml")}
    ctx = Context.from_settings(load_settings(environ))
    ctx.router.ensure_server()
    return SwarmRig(ctx, tmp_path / "repo", router_port, environ)


def _backing_app(path: Path) -> bytes:
    """A stateful service: on first start it writes a random id into its data directory,
    and serves that directory on port 9000."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "busybox").write_bytes(BUSYBOX.read_bytes())
    (path / "busybox").chmod(0o755)
    start = ("[ -f /data/id ] || /bin/busybox head -c 8 /dev/urandom | /bin/busybox md5sum > /data/id; "
             "exec /bin/busybox httpd -f -p 9000 -h /data")
    (path / "Dockerfile").write_text(f'FROM scratch\nCOPY busybox /bin/busybox\n'
                                     f'CMD ["/bin/busybox", "sh", "-c", "{start}"]\n')
    return context_tar(path)


#: The app asks its backing service, by name over the phase's overlay network, for its data.
CGI_DB = """\
#!/bin/busybox sh
echo "Content-Type: text/plain"
echo ""
echo "APP_NODE=$APP_NODE"
echo "DB=$(/bin/busybox wget -q -O - http://db:9000/id | /bin/busybox cut -c1-32)"
echo "PASSWORD_SET=${DB_PASSWORD:+yes}"
echo "db asked on $APP_NODE" >&2
"""


@pytest.mark.slow
def test_a_backing_service_keeps_its_data_on_its_node(swarm, rig, tmp_path):
    """services: on a swarm: the app's tasks on both nodes reach their database by name; the
    database is one task pinned to the node chosen at its creation (recorded), where its volume
    lives; its data survives the app's rolling update; removing it empties the volume on its node."""
    engine = rig.ctx.engine  # the manager's: builds happen there
    image = engine.build_image(app="shop", tree="d" * 40, sha="c" * 40, context_tar=_backing_app(tmp_path / "db"),
                               on_line=lambda line: None)
    repo_file = (REPO_FILE[".release-pipeline.yml"]
                 + f"services:\n  db:\n    image: {image}\n    port: 9000\n    data: /data\n"
                   "    healthcheck: [/bin/busybox, wget, -q, -O, /dev/null, 'http://127.0.0.1:9000/id']\n")
    rig.commit("2.0.0", repo_file=repo_file, files={"www/cgi-bin/db": CGI_DB})
    first = rig.deploy("2.0.0")
    assert first.status == "succeeded", rig.lines(first.id)
    with rig.ctx.db.session() as session:
        row = session.scalar(select(ServiceInstance).where(ServiceInstance.app_id == first.app_id))
        node, volume, db_name = row.node, row.volume, row.container_id
    assert node in {"manager", "worker1"} and volume == f"{rig.ctx.settings.pipeline_instance}-shop.demo.db.data"
    assert any(line.startswith("service db: starting") and f"on node {node}" in line for line in rig.lines(first.id))
    db_task = wait_for(lambda: next((t for t in rig.ctx.swarm.tasks(db_name) if t.state == "running"), None), 30,
                       "the database's task")
    assert db_task.node == node
    with requests.Session() as session:
        answers = [dict(line.split("=", 1) for line in rig.get(session, "/cgi-bin/db").text.splitlines()
                        if "=" in line) for _ in range(20)]
    data = answers[0]["DB"]
    assert len(data) == 32 and {a["DB"] for a in answers} == {data}  # one database for every task
    assert {a["APP_NODE"] for a in answers} == {"manager", "worker1"}  # reached across the overlay
    assert {a["PASSWORD_SET"] for a in answers} == {"yes"}  # DB_PASSWORD, as on docker
    # runtime logs read every node's tasks through the manager (the app's CGI writes to stderr)
    with rig.ctx.db.session() as session:
        found = runtime_logs.sources(rig.ctx, session, session.get(App, first.app_id), "demo")
    assert [(source.key, source.running) for source in found.items] == [("app", True), ("db", True)]
    shown = wait_for(lambda: (lambda doc: doc if {"db asked on manager", "db asked on worker1"} <= {
        line["text"] for line in doc["sources"][0]["lines"]} else None)(runtime_logs.document(rig.ctx, found, 200)),
        30, "both nodes' output")
    moments = [line["at"] for line in shown["sources"][0]["lines"]]
    assert moments == sorted(moments)

    # a rolling update of the app: the database is reused untouched, same task, same node, same data
    rig.commit("2.1.0", repo_file=repo_file, files={"www/cgi-bin/db": CGI_DB})
    with RequestLoop(lambda session: rig.get(session, "/cgi-bin/db"), keep_alive=False) as loop:
        second = rig.deploy("2.1.0")
    assert second.status == "succeeded", rig.lines(second.id)
    assert any(line.startswith("service db: reusing its running instance") for line in rig.lines(second.id))
    assert loop.failures == [] and {a.split("DB=")[1].split()[0] for a in loop.answers} == {data}
    running = [t for t in rig.ctx.swarm.tasks(db_name) if t.state == "running"]
    assert [t.id for t in running] == [db_task.id] and running[0].node == node
    with rig.ctx.db.session() as session:
        assert session.scalar(select(ServiceInstance.node).where(ServiceInstance.app_id == first.app_id)) == node

    # a changed definition (pending on the first deploy that sees it, applied on the next): a new
    # task replaces the old one on the same node, with the same volume and so the same data
    changed = repo_file + "    environment: {RESTARTED: '1'}\n"
    for version in ("2.2.0", "2.3.0"):
        rig.commit(version, repo_file=changed, files={"www/cgi-bin/db": CGI_DB})
        deployed = rig.deploy(version)
        assert deployed.status == "succeeded", rig.lines(deployed.id)
    assert any(line.startswith("service db: applying its changed definition") for line in rig.lines(deployed.id))
    replaced = [t for t in rig.ctx.swarm.tasks(db_name) if t.state == "running"]
    assert len(replaced) == 1 and replaced[0].id != db_task.id and replaced[0].node == node
    with requests.Session() as session:
        assert {rig.get(session, "/cgi-bin/db").text.split("DB=")[1].split()[0] for _ in range(6)} == {data}

    # the phase's profile resized (memory 64m → 96m): Swarm cannot resize a task in place, so a new
    # task on the same node with the same volume; the database answers with its data as the deploy ends
    (tmp_path / "pipeline.yml").write_text(PIPELINE.replace("memory: 64m", "memory: 96m"))
    rig.ctx = Context.from_settings(load_settings(rig.environ))
    rig.commit("2.4.0", repo_file=changed, files={"www/cgi-bin/db": CGI_DB})
    resized = rig.deploy("2.4.0")
    assert resized.status == "succeeded", rig.lines(resized.id)
    with requests.Session() as session:
        assert {rig.get(session, "/cgi-bin/db").text.split("DB=")[1].split()[0] for _ in range(6)} == {data}
    assert any(line.startswith("service db: resized to the demo profile (96m") for line in rig.lines(resized.id))
    assert rig.ctx.swarm.service(db_name)["Spec"]["TaskTemplate"]["Resources"] == resources("96m", 0.5)
    after = [t for t in rig.ctx.swarm.tasks(db_name) if t.state == "running"]
    assert len(after) == 1 and after[0].id != replaced[0].id and after[0].node == node

    # the app deleted: its Swarm service and route, its backing service, the service's data
    # (emptied by a job on its node, where the manager cannot delete the volume), the network
    removed = changes.delete_app(rig.ctx, "shop", confirm="shop", actor="dora", role_of=lambda app: "admin")
    assert removed["services"] == {"demo": ["db"]}
    assert rig.ctx.swarm.services() == [] and rig.ctx.swarm.networks() == []
    assert ("shop", "demo") not in rig.ctx.router.routes()
    holder_node = next(n for n in swarm.nodes if n.name == node)
    client = holder_node.client()
    try:
        mountpoint = Path(client.volumes.get(volume).attrs["Mountpoint"])
    finally:
        client.close()
    assert mountpoint.is_dir() and list(mountpoint.iterdir()) == []


def _running(rig: SwarmRig) -> list:
    return [t for t in rig.ctx.swarm.tasks(f"{rig.ctx.settings.pipeline_instance}-shop-demo")
            if t.state == "running" and t.desired == "running"]


@pytest.mark.slow
def test_the_procfiles_worker_deploys_and_its_scheduler_follows_a_drained_node(swarm, rig, tmp_path):
    """As the Procfile runs it: `release-pipeline worker` deploys 3 replicas over both nodes;
    then, with no worker left (so no reconcile anywhere), `release-pipeline scheduler`'s follow
    thread alone moves the phase URL off the drained node; no request fails."""
    worker_address = swarm.workers[0].address
    processes: list[WorkerProcess] = []
    try:
        processes.append(scheduler := WorkerProcess(rig.environ, tmp_path / "scheduler.log", command="scheduler"))
        processes.append(worker := WorkerProcess(rig.environ, tmp_path / "worker.log"))
        rig.commit("3.0.0")
        deployment_id = rig.schedule("3.0.0")
        rig.ctx.jobs.enqueue(QueuedDeploy(deployment_id))
        wait_for(lambda: rig.deployment(deployment_id).status in ("succeeded", "failed"), 180,
                 "the worker process's deployment", pause=0.5, details=worker.tail)
        assert rig.deployment(deployment_id).status == "succeeded", rig.lines(deployment_id)
        assert len(_running(rig)) == 3 and {t.node for t in _running(rig)} == {"manager", "worker1"}
        assert any(dial.startswith(worker_address) for dial in rig.upstreams())
        worker.stop()  # from here on only the scheduler process runs: its reconcile jobs wait in the queue
        with RequestLoop(lambda session: rig.get(session), keep_alive=False) as loop:
            swarm.drain(swarm.workers[0])
            wait_for(lambda: len(_running(rig)) == 3 and {t.node for t in _running(rig)} == {"manager"}, 90,
                     "every task on the manager", pause=0.5)
            dials = wait_for(lambda: (lambda d: d if len(d) == 3 and not any(
                x.startswith(worker_address) for x in d) else None)(rig.upstreams()), 20,
                "the scheduler's follow to move the route", details=scheduler.tail)
            time.sleep(3)
        assert all(dial.startswith(swarm.manager.address) for dial in dials)
        assert loop.failures == [] and len(loop.answers) > 10
        assert all("APP_NODE=manager" in answer for answer in loop.answers[-5:])
        assert scheduler.alive() and "follows its tasks to their new places" in scheduler.tail(200)
        assert rig.deployment(deployment_id).status == "succeeded"  # moved, not redeployed
    finally:
        for process in processes:
            process.stop()
        swarm.activate(swarm.workers[0])
    changes.delete_app(rig.ctx, "shop", confirm="shop", actor="dora", role_of=lambda app: "admin")
    assert rig.ctx.swarm.services() == []


@pytest.mark.slow
def test_a_phase_on_two_nodes_through_the_deploy_job(swarm, rig, tmp_path):
    from app.doctor import run_checks

    checks = {check.name: check for check in run_checks(rig.ctx.settings)}
    assert checks["swarm"].ok and checks["registry"].ok, checks
    # replicas: 3 from the profile, spread over both nodes, every one answering at the phase URL
    rig.commit("1.0.0")
    first = rig.deploy("1.0.0")
    assert first.status == "succeeded", rig.lines(first.id)
    tasks = [t for t in rig.ctx.swarm.tasks(f"{rig.ctx.settings.pipeline_instance}-shop-demo") if t.state == "running"]
    assert len(tasks) == 3 and {t.node for t in tasks} == {"manager", "worker1"}
    with requests.Session() as session:
        answers = [rig.info(session) for _ in range(30)]
    assert {a["APP_NODE"] for a in answers} == {"manager", "worker1"}
    assert {a["APP_VERSION"] for a in answers} == {"1.0.0"}
    # the manager's own tasks are what the portal's runtime logs can read
    assert any(c.labels.get("release-pipeline.deployment") == str(first.id)
               for c in rig.ctx.engine.list_containers(app="shop", phase="demo"))

    # a rolling update under a request loop: no request fails, 1.1.0 serves at the end
    rig.commit("1.1.0")
    with RequestLoop(lambda session: rig.get(session, "/version"), keep_alive=False) as loop:
        second = rig.deploy("1.1.0")
        time.sleep(0.5)
    assert second.status == "succeeded", rig.lines(second.id)
    assert any(line.startswith("the previous version's instances were stopped during the rollout")
               for line in rig.lines(second.id))
    assert not any(line.startswith("stopping the previous container") for line in rig.lines(second.id))
    assert loop.failures == [] and len(loop.answers) > 20
    assert set(loop.answers[-5:]) == {"1.1.0"}

    # an update whose health check fails: Swarm rolls it back by itself, 1.1.0 serves throughout
    rig.commit("1.2.0", healthy=False)
    with RequestLoop(lambda session: rig.get(session, "/version"), keep_alive=False) as loop:
        third = rig.deploy("1.2.0")
    assert third.status == "failed" and "rolled the service back" in third.reason
    assert loop.failures == [] and set(loop.answers) == {"1.1.0"}
    assert any("unhealthy" in line for line in third.evidence["logs"]), third.evidence
    assert any("health check (exit 1)" in line and "404" in line for line in rig.lines(third.id)) or \
        any("unhealthy" in line for line in rig.lines(third.id))

    # our own rollback: 1.0.0's image and profile from the history, as a rolling update
    with RequestLoop(lambda session: rig.get(session, "/version"), keep_alive=False) as loop:
        back = rig.deploy("1.0.0", trigger="rollback", source="1.0.0")
    assert back.status == "succeeded", rig.lines(back.id)
    assert loop.failures == [] and set(loop.answers[-5:]) == {"1.0.0"}

    # an RQ worker killed during a rolling update: Swarm finishes the update by itself; once the
    # dead worker's lock expired, reconcile (the next worker's start) fails the deployment and
    # puts back what our history says serves, by a rolling update again
    rig.commit("1.3.0")
    rolling = rig.schedule("1.3.0")
    rig.ctx.jobs.enqueue(QueuedDeploy(rolling))
    worker = WorkerProcess(rig.environ, tmp_path / "worker.log")
    try:
        wait_for(lambda: rig.service_deployment() == str(rolling), 90, "the rolling update to start",
                 details=worker.tail)
        worker.kill()
    finally:
        worker.stop()
    assert rig.deployment(rolling).status == "deploying"
    wait_for(lambda: holder(rig.ctx.redis, "shop", "demo") is None, LOCK_SECONDS + 5, "the dead worker's lock")
    findings = reconcile_job.reconcile(rig.ctx)
    assert findings.failed == [rolling]
    for restore in findings.redeployed:  # when Swarm had already replaced every task
        assert rig.run(restore).status == "succeeded", rig.lines(restore)
    serving = back.id if not findings.redeployed else findings.redeployed[-1]
    name = f"{rig.ctx.settings.pipeline_instance}-shop-demo"
    wait_for(lambda: {t.deployment for t in rig.ctx.swarm.tasks(name) if t.state == "running"} == {str(serving)}
             and len([t for t in rig.ctx.swarm.tasks(name) if t.state == "running"]) == 3, 90,
             "the service back on the serving deployment")
    reconcile_job.reconcile(rig.ctx)  # the periodic one: the route follows the tasks
    with requests.Session() as session:
        assert {rig.version(session) for _ in range(10)} == {"1.0.0"}
    with rig.ctx.db.session() as session:
        back = current(session, first.app_id, "demo")

    # the worker drained, then killed (the last thing this module's swarm does): its tasks move to
    # the manager, and the scheduler's follow (not reconcile, which never runs here) points the
    # phase URL at them within seconds; no request fails
    stop = threading.Event()
    follower = threading.Thread(target=follow.loop, args=(Context.from_settings(load_settings(rig.environ)), stop,
                                                         0.5), daemon=True)
    worker_address = swarm.workers[0].address

    def on_manager_only() -> bool:
        running = [t for t in rig.ctx.swarm.tasks(f"{rig.ctx.settings.pipeline_instance}-shop-demo")
                   if t.state == "running" and t.desired == "running"]
        return len(running) == 3 and {t.node for t in running} == {"manager"}

    if not any(dial.startswith(worker_address) for dial in rig.upstreams()):
        # Swarm put every restored task on the manager (it lost the worker's heartbeat for a
        # moment on a loaded machine, say) and never rebalances by itself; a rolling update
        # places each new task on the node with fewest, so over both again.
        again = rig.deploy("1.0.0", trigger="rollback", source="1.0.0")
        assert again.status == "succeeded", rig.lines(again.id)
        with rig.ctx.db.session() as session:
            back = current(session, first.app_id, "demo")
    assert any(dial.startswith(worker_address) for dial in rig.upstreams())  # tasks on both nodes now
    follower.start()
    try:
        with RequestLoop(lambda session: rig.get(session), keep_alive=False) as loop:
            swarm.drain(swarm.workers[0])
            wait_for(on_manager_only, 90, "every task on the manager", pause=0.5)
            wait_for(lambda: (lambda d: len(d) == 3 and all(x.startswith(swarm.manager.address) for x in d))(
                rig.upstreams()), 15, "the route to follow the tasks", details=lambda: str(rig.upstreams()))
            time.sleep(1)
            swarm.kill(swarm.workers[0])
            time.sleep(3)
    finally:
        stop.set()
        follower.join(timeout=30)
    assert loop.failures == []
    assert {a for a in loop.answers[-5:]} and all("APP_NODE=manager" in a for a in loop.answers[-5:])
    with rig.ctx.db.session() as session:  # nothing was redeployed: the same deployment serves
        assert current(session, back.app_id, "demo").id == back.id


def _dials(value) -> list[str]:
    if isinstance(value, dict):
        return [value["dial"]] if "dial" in value else [d for v in value.values() for d in _dials(v)]
    return [d for v in value for d in _dials(v)] if isinstance(value, list) else []
