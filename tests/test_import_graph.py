"""The shape the README promises: no import cycle among app/ and workers/ modules, and only
app/adapters/ talks to the outside (requests, docker, git). Read from the source with `ast`,
function-level imports included, so a lazy import cannot hide a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OUTSIDE = ("requests", "docker", "git")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted([*ROOT.glob("app/**/*.py"), *ROOT.glob("workers/**/*.py")]):
        if "migrations" in path.parts:
            continue
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        found[name] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in it (`from a import b` counts as a and a.b)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (a → b → a), or None."""
    state: dict[str, str] = {}
    trail: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        trail.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return trail[trail.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        state[module] = "done"
        trail.pop()
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_the_search_sees_the_tree():
    assert {"app.web", "app.portal.views", "app.api.v1", "workers.command", "app.adapters.github"} <= set(MODULES)
    assert {"app.portal.auth", "app.security"} <= _imports(MODULES["app.web"])


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_app_and_workers():
    graph = {name: {target for target in _imports(path) if target in MODULES and target != name}
             for name, path in MODULES.items()}
    assert _cycle(graph) is None


@pytest.mark.parametrize("module", sorted(name for name in MODULES if not name.startswith("app.adapters")))
def test_only_adapters_import_requests_docker_or_git(module):
    used = sorted({name for name in _imports(MODULES[module]) if name.split(".")[0] in OUTSIDE})
    assert used == [], f"{module} imports {used}: only app/adapters/ may"
