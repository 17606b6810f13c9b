"""A two-node Docker Swarm on this machine, made and removed by one test run.

Topology (it leaves the host's firewall alone: FORWARD is DROP here with bridge-nf-call-iptables):
a network namespace holding only a bridge; one veth from the host onto it and one per node
namespace, all on a private /24. Each node is a `dockerd` of our own (data root, exec root,
pidfile, socket, bridge range, address pool, cgroup parent, identity key) started inside its
namespace with a mount namespace of its own where /sys is remounted (so the engine sees its
own interfaces) and the cgroup hierarchy bound back. The registry (Debian's docker-registry)
listens on the manager's address; both engines trust it as an insecure registry.

Every namespace, interface, directory and cgroup is named after the run's instance label and
`close()` removes them all, in reverse order, whatever failed; `sweep(instance)` does the same
from names alone (a run killed before its own cleanup). Nothing of the machine's own Docker
engine is touched: it never joins a swarm.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import docker

from app.local_registry import registry_argv, write_registry_config
from tests.support.dockerkit import engine_answers
from tests.support.faults import descendants, wait_for

REGISTRY_PORT = 5000
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Inside the node's new mount namespace: a sysfs of its own network namespace on /sys, the
# host's cgroup hierarchy bound back under it, its own hostname (the Swarm node's name).
_ENTER_NODE = """set -e
mkdir -p "$1/cgroup"
mount --rbind /sys/fs/cgroup "$1/cgroup"
mount -t sysfs sysfs /sys
mount --rbind "$1/cgroup" /sys/fs/cgroup
umount -l "$1/cgroup"
hostname "$2"
shift 2
exec "$@"
"""


class SwarmUnavailable(Exception):
    """What this machine lacks to build the swarm (root, a tool), in one line."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def _names(instance: str) -> dict[str, str]:
    """Every namespace and host-side interface name a run uses (interface names ≤ 15 chars)."""
    return {"bridge_ns": f"{instance}-br", "host_veth": f"{instance}h"}


@dataclass
class Node:
    name: str  # also its hostname, so its Swarm node name
    namespace: str
    address: str
    home: Path
    process: subprocess.Popen | None = None

    @property
    def socket(self) -> str:
        return f"unix://{self.home / 'docker.sock'}"

    def client(self, timeout: int = 60) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.socket, timeout=timeout)

    def cli(self, *args: str, timeout: float = 60) -> str:
        """The docker CLI against this node (what a test shows a person would type)."""
        result = subprocess.run(["docker", "-H", self.socket, *args], capture_output=True, text=True,
                                timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} on {self.name}: {result.stderr.strip()}")
        return result.stdout


class TwoNodeSwarm:
    """A manager and a worker; `registry` is host:port on the manager's address."""

    def __init__(self, instance: str, *, workers: int = 1):
        if os.geteuid() != 0:
            raise SwarmUnavailable("a swarm of private engines needs root")
        for tool in ("ip", "dockerd", "docker", "nsenter", "unshare", "docker-registry"):
            if shutil.which(tool) is None:
                raise SwarmUnavailable(f"{tool} is not installed")
        self.instance = instance
        self.names = _names(instance)
        self.home = Path(tempfile.mkdtemp(prefix=f"rps-{instance}-", dir="/tmp"))
        self.nodes: list[Node] = []
        self.registry_process: subprocess.Popen | None = None
        self.worker_count = workers
        self.subnet = ""

    # -- building -------------------------------------------------------------------------------

    def start(self) -> TwoNodeSwarm:
        try:
            self._network()
            self._registry()
            for node in self.nodes:
                self._engine(node)
            for node in self.nodes:
                wait_for(lambda n=node: self._answers(n), 60, f"the engine of {node.name}", pause=0.1,
                         details=lambda n=node: self.log_tail(n))
            self._form_swarm()
            wait_for(self._registry_answers, 30, "the registry")
        except BaseException:
            self.close()
            raise
        return self

    def _network(self) -> None:
        routes = _ip("-4", "route").stdout
        third = next(n for n in random.sample(range(1, 255), 254) if f"10.233.{n}." not in routes)
        self.subnet = f"10.233.{third}"
        bridge_ns, host_veth = self.names["bridge_ns"], self.names["host_veth"]
        _ip("netns", "add", bridge_ns)
        _ip("-n", bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge_ns, "link", "set", "br0", "up")
        _ip("-n", bridge_ns, "link", "set", "lo", "up")
        _ip("link", "add", host_veth, "type", "veth", "peer", "name", "up0", "netns", bridge_ns)
        _ip("-n", bridge_ns, "link", "set", "up0", "master", "br0", "up")
        _ip("addr", "add", f"{self.subnet}.1/24", "dev", host_veth)
        _ip("link", "set", host_veth, "up")
        for index in range(1 + self.worker_count):
            name = "manager" if index == 0 else f"worker{index}"
            node = Node(name=name, namespace=f"{self.instance}-n{index}", address=f"{self.subnet}.{10 + index}",
                        home=self.home / name)
            node.home.mkdir()
            self.nodes.append(node)
            _ip("netns", "add", node.namespace)
            _ip("-n", node.namespace, "link", "add", "eth0", "type", "veth", "peer", "name", f"up{index + 1}",
                "netns", bridge_ns)
            _ip("-n", bridge_ns, "link", "set", f"up{index + 1}", "master", "br0", "up")
            _ip("-n", node.namespace, "addr", "add", f"{node.address}/24", "dev", "eth0")
            _ip("-n", node.namespace, "link", "set", "eth0", "up")
            _ip("-n", node.namespace, "link", "set", "lo", "up")

    @property
    def manager(self) -> Node:
        return self.nodes[0]

    @property
    def workers(self) -> list[Node]:
        return self.nodes[1:]

    @property
    def registry(self) -> str:
        return f"{self.manager.address}:{REGISTRY_PORT}"

    def _in_namespace(self, node: Node, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{node.namespace}", "unshare", "--mount", "--uts",
                "--propagation", "slave", "/bin/sh", "-c", _ENTER_NODE, "enter", str(node.home), node.name, *argv]

    def _registry(self) -> None:
        root = self.home / "registry"
        config = write_registry_config(root, address=self.registry)
        log = (self.home / "registry.log").open("ab")
        self.registry_process = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.manager.namespace}", *registry_argv(config)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _registry_answers(self) -> bool:
        import requests

        if self.registry_process.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {(self.home / 'registry.log').read_text()[-500:]}")
        try:
            return requests.get(f"http://{self.registry}/v2/", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def _engine(self, node: Node) -> None:
        index = self.nodes.index(node)
        third = int(self.subnet.rsplit(".", 1)[1])
        config = {
            # Each engine's identity; without it both would share /etc/docker/key.json.
            "deprecated-key-path": str(node.home / "key.json"),
            "insecure-registries": [self.registry],
            "labels": [f"release-pipeline.instance={self.instance}"],
        }
        (node.home / "daemon.json").write_text(json.dumps(config))
        argv = ["dockerd", "--config-file", str(node.home / "daemon.json"), "--host", node.socket,
                "--data-root", str(node.home / "data"), "--exec-root", str(node.home / "exec"),
                "--pidfile", str(node.home / "docker.pid"),
                "--bip", f"172.{24 + index}.{third}.1/24",
                "--default-address-pool", f"base=10.{234 + index}.{third}.0/24,size=28",
                "--cgroup-parent", self.cgroup_parent(node)]
        log = (node.home / "dockerd.log").open("ab")
        node.process = subprocess.Popen(self._in_namespace(node, argv), stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def cgroup_parent(self, node: Node) -> str:
        return f"/{self.instance}-{node.name}"

    def _answers(self, node: Node) -> bool:
        if node.process.poll() is not None:
            raise RuntimeError(f"dockerd of {node.name} exited with {node.process.returncode}:\n{self.log_tail(node)}")
        return engine_answers(node.socket)

    def _form_swarm(self) -> None:
        manager = self.manager.client()
        manager.swarm.init(advertise_addr=self.manager.address, listen_addr=f"{self.manager.address}:2377")
        token = manager.swarm.attrs["JoinTokens"]["Worker"]
        for node in self.workers:
            client = node.client()
            client.swarm.join(remote_addrs=[f"{self.manager.address}:2377"], join_token=token,
                              advertise_addr=node.address, listen_addr=f"{node.address}:2377")
            client.close()
        wait_for(lambda: sum(n.attrs["Status"]["State"] == "ready" for n in manager.nodes.list()) == len(self.nodes),
                 60, "every node ready", pause=0.2)
        manager.close()

    # -- faults ---------------------------------------------------------------------------------

    def node_id(self, node: Node) -> str:
        client = self.manager.client()
        try:
            return next(n.id for n in client.nodes.list() if n.attrs["Description"]["Hostname"] == node.name)
        finally:
            client.close()

    def drain(self, node: Node) -> None:
        """`docker node update --availability drain <node>`, on the manager."""
        self.manager.cli("node", "update", "--availability", "drain", self.node_id(node))

    def activate(self, node: Node) -> None:
        """`docker node update --availability active <node>`: tasks may be placed there again."""
        self.manager.cli("node", "update", "--availability", "active", self.node_id(node))

    def kill(self, node: Node) -> None:
        """The machine is gone: its engine, containerd and every task process SIGKILLed, its
        link down, so the manager finds out by missed heartbeats, as with a lost machine."""
        _ip("-n", node.namespace, "link", "set", "eth0", "down", check=False)
        for pid in self._processes_of(node):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if node.process is not None:
            node.process.wait(timeout=30)

    def _processes_of(self, node: Node) -> list[int]:
        """The engine's process tree plus what it left outside it (containerd shims, tasks):
        every process whose command line names the node's directory, and their descendants."""
        home = str(node.home)
        roots = [node.process.pid] if node.process is not None and node.process.poll() is None else []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with suppress(OSError):
                    if home in Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace"):
                        roots.append(int(entry))
        found: list[int] = []
        for root in roots:
            for pid in [root, *descendants(root)]:
                if pid not in found:
                    found.append(pid)
        return found

    def log_tail(self, node: Node, lines: int = 20) -> str:
        with suppress(OSError):
            return "\n".join((node.home / "dockerd.log").read_text(errors="replace").splitlines()[-lines:])
        return ""

    # -- cleanup --------------------------------------------------------------------------------

    def close(self) -> None:
        """Remove everything, in reverse: services and swarm state go with the engines' data."""
        for node in reversed(self.nodes):
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
        deadline = time.monotonic() + 20
        for node in reversed(self.nodes):
            if node.process is not None:
                try:
                    node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            for pid in self._processes_of(node):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if node.process is not None:
                with suppress(subprocess.TimeoutExpired):
                    node.process.wait(timeout=10)
        if self.registry_process is not None and self.registry_process.poll() is None:
            self.registry_process.kill()
            self.registry_process.wait(timeout=10)
        sweep(self.instance, self.home)


def sweep(instance: str, home: Path | None = None) -> None:
    """Remove what a run named `instance` may have left: processes naming its directory,
    cgroups, namespaces, the host veth, mounts and files. Safe to call again."""
    homes = [home] if home is not None else list(Path("/tmp").glob(f"rps-{instance}-*"))
    for directory in homes:
        text = str(directory)
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with suppress(OSError, ProcessLookupError):
                    if text in Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace"):
                        os.kill(int(entry), signal.SIGKILL)
    for controller in CGROUP_ROOT.iterdir() if CGROUP_ROOT.is_dir() else []:
        for group in sorted(controller.glob(f"{instance}-*"), key=lambda p: len(str(p)), reverse=True):
            for leaf in sorted((p for p in group.rglob("*") if p.is_dir()), key=lambda p: len(str(p)), reverse=True):
                with suppress(OSError):
                    leaf.rmdir()
            with suppress(OSError):
                group.rmdir()
    names = _names(instance)
    _ip("link", "del", names["host_veth"], check=False)
    listed = _ip("netns", "list", check=False).stdout.split()
    for namespace in listed:
        if namespace.startswith(f"{instance}-"):
            _ip("netns", "del", namespace, check=False)
    for directory in homes:
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(str(directory))), key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)
