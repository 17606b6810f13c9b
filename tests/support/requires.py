"""The real parts a test run needs, and the only place that decides what happens when one is missing.

A green run that quietly skipped PostgreSQL or Docker proves nothing, so a missing part fails
its tests with how to get it. Whoever runs the suite can go without parts by name
(`RP_SKIP=postgres,browser scripts/dev test`): then those tests are skipped, and the summary
says so. A part that is there always runs. CI (`CI=true`) never goes without: RP_SKIP set
there stops the run before it starts. A pytest plugin (listed in `tests/conftest.py`, which
imports it first, hence PYTEST_DONT_REWRITE: it has no asserts to rewrite).
"""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from collections.abc import Mapping
from enum import Enum
from typing import NoReturn

import pytest

SKIP_VARIABLE = "RP_SKIP"


class Part(str, Enum):
    POSTGRES = "postgres"
    DOCKER = "docker"
    CADDY = "caddy"
    BROWSER = "browser"
    NETNS = "netns"  # a private Docker engine on a bridge of its own (the engine-restart test)
    REGISTRY = "registry"
    ROOT = "root"  # mounting (e.g. a full tmpfs for WORK_DIR)


TITLES = {
    Part.POSTGRES: "PostgreSQL",
    Part.DOCKER: "Docker engine",
    Part.CADDY: "Caddy",
    Part.BROWSER: "Chromium",
    Part.NETNS: "private Docker engine",
    Part.REGISTRY: "Docker registry",
    Part.ROOT: "root privileges",
}

HOW_TO_GET = {
    Part.POSTGRES: "`scripts/dev test` installs and starts it (Debian: apt-get install postgresql; "
                   "pg_ctlcluster 15 main start); or set TEST_POSTGRES_URL to a role that may create databases",
    Part.DOCKER: "`scripts/dev test` installs and starts it (Debian: apt-get install docker.io; dockerd)",
    Part.CADDY: "`scripts/dev test` installs it (Debian: apt-get install caddy)",
    Part.BROWSER: "`scripts/dev test` installs both (Debian: apt-get install chromium; "
                  "playwright: .venv/bin/pip install -e '.[test]')",
    Part.NETNS: "run the tests as root with `ip` and `dockerd` (Debian: apt-get install iproute2 docker.io; "
                "`scripts/dev test` installs them)",
    Part.REGISTRY: "`scripts/dev test` installs it (Debian: apt-get install docker-registry)",
    Part.ROOT: "run the tests as root, as the README's Quick start does (they mount a tmpfs)",
}


def running_in_ci(environ: Mapping[str, str]) -> bool:
    return environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def parts_to_skip(environ: Mapping[str, str]) -> frozenset[Part]:
    """The parts RP_SKIP names; ValueError for an unknown name, or for any name under CI."""
    names = [name.strip().lower() for name in environ.get(SKIP_VARIABLE, "").split(",") if name.strip()]
    known = {part.value for part in Part}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"{SKIP_VARIABLE} names unknown parts {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(known))}")
    if names and running_in_ci(environ):
        raise ValueError(f"{SKIP_VARIABLE}={environ[SKIP_VARIABLE]} is set, but CI never skips a real part: unset it")
    return frozenset(Part(name) for name in names)


def missing(part: Part, problem: str) -> NoReturn:
    """Called by the fixture that found `part` missing: fail with how to get it, or skip when
    RP_SKIP names the part."""
    part = Part(part)
    if part in _state.skip:
        pytest.skip(f"{problem} ({SKIP_VARIABLE} names {part.value})")
    pytest.fail(f"{problem}.\nTo get it: {HOW_TO_GET[part]}.\n"
                f"To run without it, skipping its tests: {SKIP_VARIABLE}={part.value} scripts/dev test",
                pytrace=False)


def used(part: Part, version: str) -> None:
    """Called by the fixture that found `part`: the run's summary lists it with its version."""
    _state.used[Part(part)] = version


class _State:
    def __init__(self) -> None:
        self.skip: frozenset[Part] = frozenset()
        self.used: dict[Part, str] = {}
        self.skipped = Counter()


_state = _State()


def first_line(argv: list[str]) -> str:
    """What a `--version`-style command prints first, e.g. first_line(["git", "--version"])."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "not found"


def _redis_version() -> str:
    from redis import Redis, RedisError

    from tests.conftest import REDIS_URL

    try:
        with Redis.from_url(REDIS_URL, socket_connect_timeout=2) as conn:
            return str(conn.info("server")["redis_version"])
    except RedisError as exc:
        return f"not reachable at {REDIS_URL}: {exc}"


def pytest_configure(config: pytest.Config) -> None:
    try:
        _state.skip = parts_to_skip(os.environ)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_report_header(config: pytest.Config) -> list[str]:
    if not _state.skip:
        return ["real parts: every one is required (a missing one fails its tests; RP_SKIP=<name,...> opts out)"]
    names = ", ".join(sorted(part.value for part in _state.skip))
    return [f"real parts: {SKIP_VARIABLE}={names}: tests that need a missing {names} are skipped"]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and isinstance(report.longrepr, tuple):
        for part in _state.skip:
            if report.longrepr[2].endswith(f"({SKIP_VARIABLE} names {part.value})"):
                _state.skipped[part] += 1


def pytest_terminal_summary(terminalreporter) -> None:
    """Which real parts this run used, with versions, and which it went without."""
    lines = [f"{TITLES[part]} {version}" for part, version in sorted(_state.used.items())]
    lines += [f"Redis {_redis_version()}", first_line(["git", "--version"])]
    terminalreporter.section("real parts used")
    for line in lines:
        terminalreporter.write_line(line)
    for part, count in sorted(_state.skipped.items()):
        tests = "1 test" if count == 1 else f"{count} tests"
        terminalreporter.write_line(f"NOT USED: {TITLES[part]} ({part.value}) was missing; {tests} skipped "
                                    f"because {SKIP_VARIABLE} names it", red=True, bold=True)
