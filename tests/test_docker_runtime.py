"""The docker runtime's decisions, as values: which slot, what makes way, what the route lists,
what the engine is asked to create."""

from __future__ import annotations

import pytest

from app.adapters.docker import ContainerInfo, ContainerSpec, Engine, app_container_args, release_container_args
from app.adapters.router import Slots, upstream_ports
from app.docker_runtime import (
    DockerRuntime,
    Placement,
    combine_health,
    container_specs,
    describe_place,
    instance_of,
    place,
    route_ports,
    split_serving,
)
from app.exceptions import DeployFailed, EngineUnavailable, RouterError
from app.health import HealthResult
from app.runtime import HealthGate, Instance, Limits, Observed, PhaseRef, PhaseSpec
from tests.support.dockerkit import free_port

SLOTS = Slots(20000, 20001)
TARGET = PhaseRef(7, "shop", "demo")


def box(name: str, deployment: int | None, port: int | None, running: bool = True) -> Instance:
    return Instance(id=f"id-{name}", name=name, app="shop", phase="demo", deployment_id=deployment,
                    version=f"v{deployment}", running=running, address=f"127.0.0.1:{port}" if port else None)


def test_a_container_becomes_an_instance_with_its_deployment_and_address():
    info = ContainerInfo(id="c1", name="rp-shop-demo-4", status="running", host_port=20001,
                         labels={"release-pipeline.app": "shop", "release-pipeline.phase": "demo",
                                 "release-pipeline.deployment": "4", "release-pipeline.version": "1.2.0"})
    assert instance_of(info) == Instance(id="c1", name="rp-shop-demo-4", app="shop", phase="demo", deployment_id=4,
                                         version="1.2.0", running=True, address="127.0.0.1:20001", state="running")
    stopped = ContainerInfo(id="c2", name="x", status="exited", host_port=None, labels={})
    assert instance_of(stopped) == Instance(id="c2", name="x", app="", phase="", deployment_id=None, version=None,
                                            running=False, address=None, state="exited")


def test_serving_is_the_serving_deployments_running_instances_slot_one_first():
    a, extra, old, dead = box("a", 4, 20000), box("a2", 4, 33001), box("b", 3, 20001), box("d", 4, None, False)
    assert split_serving([extra, old, a, dead], 4, SLOTS) == ((a, extra), (old, dead))


def test_a_stale_record_falls_back_to_the_slot_the_router_prefers():
    on_b, on_a, on_a_replica = box("b", 3, 20001), box("a", 5, 20000), box("a2", 5, 33002)
    assert split_serving([on_b, on_a_replica, on_a], 9, SLOTS) == ((on_a, on_a_replica), (on_b,))
    assert split_serving([on_b], None, SLOTS) == ((on_b,), ())
    assert split_serving([box("d", 4, None, False)], 4, SLOTS) == ((), (box("d", 4, None, False),))


def test_the_new_version_goes_to_the_free_slot_and_leftovers_make_way():
    serving, on_free, dead, old_running = box("s", 4, 20001), box("f", 3, 20000), box("d", 2, None, False), \
        box("o", 1, 33000)
    observed = Observed(TARGET, serving=(serving,), others=(on_free, dead, old_running))
    assert place(observed, SLOTS) == Placement(port=20000, remove=(on_free, dead), retire=(old_running,))
    assert place(Observed(TARGET), SLOTS) == Placement(port=20000, remove=(), retire=())
    assert place(Observed(TARGET, serving=(box("s", 4, 20000),)), SLOTS).port == 20001


def test_each_replica_is_one_container_the_first_on_the_slot():
    spec = PhaseSpec(target=TARGET, deployment_id=9, version="2.0.0", sha="a" * 40, image="sha256:abc", port=8080,
                     env={"A": "1"}, replicas=3, limits=Limits("64m", 0.5), health=HealthGate("/healthz", 3),
                     network="rp-shop-demo")
    common = dict(app="shop", phase="demo", version="2.0.0", sha="a" * 40, deployment_id=9, image="sha256:abc",
                  env={"A": "1"}, port=8080, memory="64m", cpus=0.5, network="rp-shop-demo")
    assert container_specs(spec, 20001) == [ContainerSpec(**common, host_port=20001, replica=0),
                                            ContainerSpec(**common, host_port=None, replica=1),
                                            ContainerSpec(**common, host_port=None, replica=2)]
    assert describe_place(20001, 1) == "slot port 20001"
    assert describe_place(20001, 3) == "slot port 20001 and 2 more ports"


def test_the_route_lists_the_slots_for_one_replica_and_every_replica_for_several():
    assert route_ports([box("a", 4, 20001)], SLOTS) == (20001, ())
    assert upstream_ports(SLOTS, 20001) == (20001, 20000)
    assert route_ports([box("a", 4, 20000), box("c", 4, 33002), box("b", 4, 33001)], SLOTS) == (20000, (33001, 33002))
    assert upstream_ports(SLOTS, 20000, (33001, 33002)) == (20000, 33001, 33002)
    assert route_ports([box("x", 4, 33001)], SLOTS) is None  # its slot container is gone: only a redeploy helps
    assert route_ports([], SLOTS) is None
    with pytest.raises(RouterError, match="replica port 20001"):
        upstream_ports(SLOTS, 20000, (20001,))


def test_the_health_gate_passes_only_when_every_replica_passed():
    good = HealthResult(True, 2, ["200 OK"], "healthy: 200 OK on /healthz after 2 attempt(s)")
    bad = HealthResult(False, 15, ["404 Not Found"], "health check failed: 404 Not Found on /healthz after 3s")
    assert combine_health([good], 1) == good
    assert combine_health([bad], 1) == bad
    assert combine_health([good, bad], 3) == HealthResult(
        False, 15, ["404 Not Found"], "replica 2 of 3: health check failed: 404 Not Found on /healthz after 3s")
    assert combine_health([good, good, good], 3) == HealthResult(
        True, 6, ["200 OK"], "3 replicas healthy: 200 OK on /healthz after 2 attempt(s)")


def test_an_app_container_and_a_release_container_are_created_with_these_arguments():
    spec = ContainerSpec(app="shop", phase="demo", version="2.0.0", sha="a" * 40, deployment_id=9,
                         image="sha256:abc", env={"A": "1"}, port=8080, memory="64m", cpus=0.5, network="net",
                         host_port=None, replica=2)
    labels = {"release-pipeline.instance": "rp", "release-pipeline.app": "shop", "release-pipeline.phase": "demo",
              "release-pipeline.version": "2.0.0", "release-pipeline.sha": "a" * 40,
              "release-pipeline.deployment": "9"}
    environment = {"A": "1", "PORT": "8080", "APP_PHASE": "demo", "APP_VERSION": "2.0.0"}
    assert app_container_args("rp", spec) == {
        "image": "sha256:abc", "command": None, "name": "rp-shop-demo-9.3", "labels": labels,
        "environment": environment, "mem_limit": "64m", "nano_cpus": 500_000_000,
        "restart_policy": {"Name": "unless-stopped"}, "ports": {"8080/tcp": ("127.0.0.1", None)}, "network": "net"}
    assert app_container_args("rp", ContainerSpec(**{**spec.__dict__, "replica": 0, "host_port": 20001}))["name"] \
        == "rp-shop-demo-9"
    assert release_container_args("rp", spec, ["bin/migrate", "--no-input"]) == {
        "image": "sha256:abc", "entrypoint": ["bin/migrate"], "command": ["--no-input"], "name": "rp-shop-demo-9-release",
        "labels": {"release-pipeline.instance": "rp", "release-pipeline.release-of": "shop",
                   "release-pipeline.phase": "demo", "release-pipeline.deployment": "9"},
        "environment": environment, "mem_limit": "64m", "nano_cpus": 500_000_000, "network": "net"}


def test_several_replicas_need_a_router_that_spreads_requests():
    spec = PhaseSpec(target=TARGET, deployment_id=9, version="2.0.0", sha="a" * 40, image="sha256:abc", port=8080,
                     replicas=2)
    direct = DockerRuntime(engine=None, router=None, db=None, slot_range=(20000, 20099), spreads=False)
    with pytest.raises(DeployFailed, match="replicas: 2 needs ROUTER=caddy"):
        direct.check(spec)
    direct.check(PhaseSpec(**{**spec.__dict__, "replicas": 1}))


def test_an_unreachable_engine_is_engine_unavailable_not_a_docker_exception():
    runtime = DockerRuntime(Engine(base_url=f"tcp://127.0.0.1:{free_port()}"), router=None, db=None,
                            slot_range=(20000, 20099), spreads=True)
    with pytest.raises(EngineUnavailable, match="Connection refused"):
        runtime.instances()
