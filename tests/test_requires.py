"""A missing real part fails the run with how to get it, unless RP_SKIP names it; CI never skips.

The suite's own plugin and fixtures run in a pytest subprocess on a tiny test module whose
PostgreSQL is a closed port on 127.0.0.1 (its URL carries a password, which must not show).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.conftest import POSTGRES_ADMIN_URL
from tests.support.dockerkit import free_port
from tests.support.requires import Part, parts_to_skip

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "pg-password-never-shown-7c2"

TINY_MODULE = """
def test_state_on_postgres(postgres_url):
    assert postgres_url


def test_without_postgres():
    assert True
"""


def counts(result: subprocess.CompletedProcess) -> str:
    """The run's last line without its time, e.g. "1 passed, 1 error"."""
    return result.stdout.splitlines()[-1].strip("= ").rsplit(" in ", 1)[0]


@pytest.fixture
def run_tiny(tmp_path):
    """Run the tiny module with the suite's conftest as a plugin; PostgreSQL is a closed port."""
    (tmp_path / "test_tiny.py").write_text(TINY_MODULE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    closed = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/test"

    def run(**environ: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k not in ("CI", "RP_SKIP")}
        env.update(TEST_POSTGRES_URL=closed, PYTHONPATH=str(ROOT))
        env.update(environ)
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-c", str(tmp_path / "pytest.ini"),
             "-p", "no:cacheprovider", "-rs", str(tmp_path / "test_tiny.py")],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    return run


def test_a_missing_part_fails_the_run_with_how_to_get_it(run_tiny):
    result = run_tiny()
    assert result.returncode == 1, result.stdout + result.stderr
    assert counts(result) == "1 passed, 1 error"
    assert "PostgreSQL not reachable at postgresql://postgres:***@127.0.0.1:" in result.stdout
    assert PASSWORD not in result.stdout + result.stderr
    assert "apt-get install postgresql" in result.stdout
    assert "RP_SKIP=postgres scripts/dev test" in result.stdout


def test_rp_skip_skips_only_the_named_parts_tests_and_says_so(run_tiny):
    result = run_tiny(RP_SKIP="postgres")
    assert result.returncode == 0, result.stdout + result.stderr
    assert counts(result) == "1 passed, 1 skipped"
    assert "SKIPPED [1]" in result.stdout and "(RP_SKIP names postgres)" in result.stdout
    assert PASSWORD not in result.stdout + result.stderr
    assert "NOT USED: PostgreSQL (postgres) was missing; 1 test skipped because RP_SKIP names it" in result.stdout


def test_the_summary_lists_the_real_parts_used_with_versions(run_tiny, postgres_url):
    with psycopg.connect(postgres_url) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
    result = run_tiny(TEST_POSTGRES_URL=POSTGRES_ADMIN_URL)
    assert counts(result) == "2 passed", result.stdout + result.stderr
    summary = [line for line in result.stdout.split(" real parts used ", 1)[1].splitlines()[1:] if line]
    assert summary[0].startswith(f"PostgreSQL {version} (")
    assert summary[1].startswith("Redis ") and summary[2].startswith("git version ")


def test_naming_another_part_does_not_excuse_postgres(run_tiny):
    result = run_tiny(RP_SKIP="browser,docker")
    assert result.returncode == 1, result.stdout + result.stderr
    assert counts(result) == "1 passed, 1 error"


@pytest.mark.parametrize("ci", ["true", "1"])
def test_ci_refuses_rp_skip_before_running_anything(run_tiny, ci):
    result = run_tiny(RP_SKIP="postgres", CI=ci)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    assert "RP_SKIP=postgres is set, but CI never skips a real part: unset it" in result.stderr
    assert "passed" not in result.stdout


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, set()),
    ({"RP_SKIP": ""}, set()),
    ({"RP_SKIP": "postgres"}, {Part.POSTGRES}),
    ({"RP_SKIP": " Postgres , browser,"}, {Part.POSTGRES, Part.BROWSER}),
    ({"RP_SKIP": "docker,caddy,netns,registry,root"},
     {Part.DOCKER, Part.CADDY, Part.NETNS, Part.REGISTRY, Part.ROOT}),
    ({"RP_SKIP": "", "CI": "true"}, set()),
    ({"RP_SKIP": "postgres", "CI": "false"}, {Part.POSTGRES}),
    ({"RP_SKIP": "postgres", "CI": "0"}, {Part.POSTGRES}),
])
def test_parts_to_skip(environ, expected):
    assert parts_to_skip(environ) == expected


@pytest.mark.parametrize(("environ", "message"), [
    ({"RP_SKIP": "postgress"}, "RP_SKIP names unknown parts postgress; known: browser, caddy, docker, netns, "
                               "postgres, registry, root"),
    ({"RP_SKIP": "redis,git"}, "RP_SKIP names unknown parts redis, git; known:"),
    ({"RP_SKIP": "browser", "CI": "true"}, "RP_SKIP=browser is set, but CI never skips a real part: unset it"),
    ({"RP_SKIP": "browser", "CI": "yes"}, "RP_SKIP=browser is set, but CI never skips"),
])
def test_parts_to_skip_refuses(environ, message):
    with pytest.raises(ValueError) as error:
        parts_to_skip(environ)
    assert str(error.value).startswith(message)
