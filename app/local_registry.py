"""A plain-HTTP image registry on this machine (Debian's `docker-registry`, the distribution
registry) for RUNTIME=swarm when REGISTRY_URL is unset: `up` and the tests start one, so
images go from the build to every node without a pull from outside."""

from __future__ import annotations

import json
from pathlib import Path

#: Where `up` serves it when REGISTRY_URL is unset: loopback, so only this machine's engine
#: (a one-machine swarm) can pull; several machines need REGISTRY_URL on an address they share.
DEFAULT_ADDRESS = "127.0.0.1:5000"


def write_registry_config(root: Path, *, address: str) -> Path:
    """Write the registry's configuration (storage under `root`, listening on `address`) and
    return its path. JSON is YAML, so no YAML writer is needed."""
    root.mkdir(parents=True, exist_ok=True)
    config = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(root / "data")}, "delete": {"enabled": True}},
        "http": {"addr": address},
    }
    path = root / "config.yml"
    path.write_text(json.dumps(config))
    return path


def registry_argv(config: Path) -> list[str]:
    return ["docker-registry", "serve", str(config)]
