"""Hostile input to the slash-command grammar and the configuration loaders (issue 8, item 1).

`tests/test_commands_fuzz.py` covers the grammar against the default phases; this adds what it
does not: arbitrary configured phase names, replies that stay short and never echo raw control
characters, comments of absurd size. For `parse_pipeline` and `parse_repo_config` (the
operator's pipeline.yml and a repository's .release-pipeline.yml): arbitrary text, YAML-ish
text built from YAML's own tricky pieces, and arbitrary nested structures dumped to YAML.
Each either returns a valid object or raises ConfigError whose message names a path; never
any other exception.
"""

from __future__ import annotations

import re

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.commands import Command, DeployHead, Promote, Malformed, Rollback, parse
from app.exceptions import ConfigError
from app.pipeline import (
    PROTECTED_KEYS,
    SLUG,
    PipelineConfig,
    RepoConfig,
    parse_pipeline,
    parse_repo_config,
)
from app.permissions import ROLES
from app.settings import PROJECT_ROOT
from app.versions import validate_version

FUZZ = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))

# --- the slash-command grammar with any configured phases ----------------------------------------

PHASE_NAMES = st.lists(st.from_regex(SLUG, fullmatch=True), min_size=1, max_size=5, unique=True)
HOSTILE_WORDS = [
    "$(touch /tmp/pwned)", "`id`", ";rm -rf /", "--upload-pack=touch /tmp/pwned", "../../etc/passwd",
    "v1.0.0;ls", "v1.0.0\nls", "v1.0.0\x00", "\x1b[31m", "\u202e", "\u200b", "ｖ1.0.0", "v１.0.0", "'", '"', "\\",
    "@everyone", "<script>", "as", "to", "AS", "TO", "x" * 300,
]


@st.composite
def commands_for(draw, phases: list[str]) -> str:
    """A comment line built from the grammar's words, the configured phases (any case) and junk."""
    word = draw(st.sampled_from(["/deploy", "/promote", "/rollback", "/status", "/help", "/PROMOTE", "/deploy,"]))
    pieces = draw(st.lists(st.one_of(
        st.sampled_from(phases).flatmap(lambda p: st.sampled_from([p, p.upper(), p.title()])),
        st.sampled_from(HOSTILE_WORDS),
        st.from_regex(r"v?[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(-[a-z0-9.]{1,8})?", fullmatch=True),
        st.text(max_size=8),
    ), max_size=6))
    separator = draw(st.sampled_from([" ", "\t", "\u00a0", "  "]))
    prefix = draw(st.sampled_from(["", "LGTM\n", "> quoted\n", "```\n/deploy\n```\n", "   "]))
    return prefix + separator.join([word, *pieces])


@settings(max_examples=1000, **FUZZ)
@given(data=st.data(), phases=PHASE_NAMES)
def test_grammar_with_any_configured_phases(data, phases):
    comment = data.draw(st.one_of(commands_for(phases), st.text(max_size=200)))
    result = parse(comment, phases)
    assert result is None or isinstance(result, Command | Malformed)
    if isinstance(result, DeployHead):
        assert result.phase is None or result.phase in phases
    if isinstance(result, Promote | Rollback):
        assert result.phase in phases  # the configured spelling, never the commenter's
    versions = {
        Promote: lambda r: (r.version, r.rename_to),
        Rollback: lambda r: (r.to_version,),
    }.get(type(result), lambda r: ())(result)
    for version in versions:
        assert version is None or validate_version(version) == version
    if isinstance(result, Malformed):
        _assert_safe_reply(result.message, phases)


def _assert_safe_reply(message: str, phases: list[str]) -> None:
    """A reply quotes the commenter's words escaped and cut, so it stays short and one-line."""
    problem, _, usage = message.partition("\n\nUsage: `")
    assert usage.endswith("`") and "\n" not in usage
    assert "\n" not in problem and "\r" not in problem
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f\u202e\u200b]", message), message
    assert len(problem) <= 200 + sum(len(p) + 2 for p in phases), message


@settings(max_examples=300, **FUZZ)
@given(
    phases=PHASE_NAMES,
    lines=st.lists(st.sampled_from(HOSTILE_WORDS + ["/deploy", "/promote", "```", "~~~", ">", ""]), max_size=8),
)
def test_hostile_text_never_becomes_part_of_a_command(phases, lines):
    """Whatever words surround or follow a command word, a Command carries only phases and versions."""
    for separator in (" ", "\n"):
        result = parse(separator.join(lines), phases)
        if isinstance(result, Command):
            for value in vars(result).values():
                assert value is None or value in phases or validate_version(value) == value


@pytest.mark.parametrize("comment", [
    "x\n" * 200_000 + "/status",
    "/promote " + "a" * 1_000_000,
    "/promote " + "a " * 40_000,
    "/rollback live to " + "'x " * 30_000,
    "/promote stage " + "v1.0.0 " * 100_000,
    "```\n" * 100_000,
    "'" * 500_000,
    "/deploy " + "\u00a0" * 200_000 + "demo",
])
def test_huge_comments_are_answered(comment):
    # How fast is bench/'s business (a wall-clock bound fails on a busy machine); here: an answer.
    result = parse(comment, ["demo", "stage", "live"])
    if isinstance(result, Malformed):
        _assert_safe_reply(result.message, ["demo", "stage", "live"])


# --- configuration loaders -------------------------------------------------------------------

PIPELINE_SOURCE = "config/pipeline.yml"
REPO_SOURCE = ".release-pipeline.yml"
DEFAULT_PIPELINE = (PROJECT_ROOT / "config" / "pipeline.yml").read_text()

YAML_PIECES = [
    "phases:", "  demo:", "    trigger: push", "    trigger: pull_request", "    branch: live", "    role: admin",
    "    role: owner", "    approvals: -1", "    approvals: 1.5", "    approvals: '1'", "    url: x",
    "defaults:", "  url: http://{app}", "  health_timeout: 0", "images:", "  keep_last: 0", "services:",
    "  db:", "    image: postgres", "    build: .", "    port: 70000", "    port: 0x1F", "    healthcheck: [a, 1]",
    "dockerfile: ../Dockerfile", "dockerfile: /etc/passwd", "context: --help", "healthcheck: no-slash",
    "port: 8080", "approvals: 0", "role: read", "- item", "- [a, b]", "? complex", ": value", "&anchor",
    "*anchor", "a: &x [1, 2]", "b: *x", "c: *undefined", "<<: *x", "!!python/object/apply:os.system ['id']",
    "!!binary aGVsbG8=", "!!timestamp nonsense", "!!int x", "!!float y", "!!set {a}", "2001-13-45",
    "2001-02-29", "1e999", ".inf", ".nan", "~", "null", "yes", "no", "on", "0o777", "0b101", "---", "...",
    "%YAML 1.2", "%TAG ! tag:x,2000:", "{", "}", "[", "]", "'", '"', "|", ">", "\t", "#", "@", "`",
    "key: \"\\x00\"", "key: \"\\ud800\"", "\ufeff", "\x00", "\x85", "\u2028",
]
YAMLISH = st.lists(
    st.tuples(st.sampled_from(["", " ", "  ", "    ", "\t"]), st.one_of(st.sampled_from(YAML_PIECES), st.text(max_size=12))),
    max_size=14,
).map(lambda lines: "\n".join(indent + text for indent, text in lines))

PIPELINE_KEYS = ["phases", "defaults", "images", "demo", "stage", "live", "trigger", "branch", "tag_pattern", "role",
                 "approvals", "url", "health_timeout", "profile", "memory", "cpus", "replicas", "env", "keep_last",
                 "name"]
REPO_KEYS = ["dockerfile", "context", "port", "healthcheck", "services", "db", "image", "build", "environment",
             "data", "exports", *sorted(PROTECTED_KEYS)]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["push", "tag", "pull_request", "manual", *ROLES, "owner", "256m", "1g", "-1", "v*", "/",
                     "../..", "--help", "$(id)", "http://{app}-{phase}.localhost:{port}", "{app.__class__}",
                     "{0}", "{port!r:>99999999}"]),
)


def structures(keys: list[str]):
    return st.recursive(
        SCALARS,
        lambda children: st.lists(children, max_size=3)
        | st.dictionaries(st.one_of(st.sampled_from(keys), st.text(max_size=6), st.integers()), children, max_size=5),
        max_leaves=25,
    )


def _check_loader(loader, text: str, source: str, model: type) -> None:
    try:
        result = loader(text, source)
    except ConfigError as error:
        _assert_names_a_path(str(error), text, source)
        return
    assert isinstance(result, model)
    if isinstance(result, PipelineConfig):
        _assert_usable_pipeline(result)


def _assert_names_a_path(message: str, text: str, source: str) -> None:
    """`<source>: <path>: <problem>` — the file, then (when it is a mapping) the setting."""
    assert message.startswith(f"{source}: "), message
    problems = message.removeprefix(f"{source}: ")
    assert problems.strip(), message
    try:
        data = yaml.safe_load(text)
    except Exception:
        return  # not YAML: the file is the path
    if isinstance(data, dict) and not problems.startswith(("must be", "not valid YAML")):
        known = {str(key) for key in data} | set(PipelineConfig.model_fields) | set(RepoConfig.model_fields)
        first = problems.split("; ")[0]
        assert any(first.startswith(f"{key}") for key in known) or first.startswith(
            tuple(PROTECTED_KEYS)), message


def _assert_usable_pipeline(config: PipelineConfig) -> None:
    assert config.phases
    for name, phase in config.phases.items():
        assert re.fullmatch(SLUG, name) and phase.name == name
        assert phase.role in ROLES and 0 <= phase.approvals <= 20
        assert phase.trigger != "pull_request" or phase.branch


@settings(max_examples=700, **FUZZ)
@given(text=st.one_of(st.text(max_size=300), YAMLISH))
def test_loaders_on_arbitrary_and_yamlish_text(text):
    _check_loader(parse_pipeline, text, PIPELINE_SOURCE, PipelineConfig)
    _check_loader(parse_repo_config, text, REPO_SOURCE, RepoConfig)


@settings(max_examples=700, **FUZZ)
@given(data=structures(PIPELINE_KEYS), flow=st.booleans())
def test_pipeline_loader_on_arbitrary_structures(data, flow):
    _check_loader(parse_pipeline, yaml.safe_dump(data, default_flow_style=flow, allow_unicode=True),
                  PIPELINE_SOURCE, PipelineConfig)


@settings(max_examples=700, **FUZZ)
@given(data=structures(REPO_KEYS), flow=st.booleans())
def test_repo_config_loader_on_arbitrary_structures(data, flow):
    _check_loader(parse_repo_config, yaml.safe_dump(data, default_flow_style=flow, allow_unicode=True),
                  REPO_SOURCE, RepoConfig)


PIPELINE_PATHS = [
    ("phases",), ("defaults",), ("images",), ("defaults", "url"), ("defaults", "health_timeout"),
    ("defaults", "profile"), ("defaults", "profile", "memory"), ("defaults", "profile", "env"),
    ("images", "keep_last"), *[(("phases", phase, field)) for phase in ("demo", "stage", "live") for field in (
        "trigger", "branch", "tag_pattern", "role", "approvals", "url", "health_timeout", "profile", "name")],
    ("phases", "live"), ("phases", "Live"), ("phases", "new-phase"), ("phases", "live", "profile", "cpus"),
    ("phases", "live", "profile", "replicas"), ("phases", "live", "profile", "env"),
]


@settings(max_examples=500, **FUZZ)
@given(changes=st.lists(st.tuples(st.sampled_from(PIPELINE_PATHS), structures(PIPELINE_KEYS)), min_size=1,
                        max_size=3))
def test_default_pipeline_with_wrong_values_at_known_paths(changes):
    data = yaml.safe_load(DEFAULT_PIPELINE)
    for path, value in changes:
        node = data
        for key in path[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[path[-1]] = value
    _check_loader(parse_pipeline, yaml.safe_dump(data, allow_unicode=True), PIPELINE_SOURCE, PipelineConfig)


def test_yaml_bombs_and_deep_nesting_are_refused():
    laughs = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    laughs += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    for text in (
        "\n".join(laughs) + "\nservices: {db: {image: x, port: 1, healthcheck: *a8, environment: *a8}}",
        "\n".join(laughs) + "\nphases: {demo: {trigger: push, profile: {env: *a8}}}",
        "a: &a [*a]\nservices: {db: {image: x, port: 1, healthcheck: *a}}",
        "[" * 100_000,
        "{a: " * 100_000,
        "- " * 50_000,
    ):
        for loader in (parse_pipeline, parse_repo_config):
            with pytest.raises(ConfigError):
                loader(text)


@pytest.mark.parametrize("text, named", [
    ("a: 2001-13-01", "not valid YAML"),
    ("dockerfile: !!int x", "not valid YAML"),
    ("port: !!float nope", "not valid YAML"),
    ("!!timestamp x", "not valid YAML"),
    ("!!python/object/apply:os.system ['touch /tmp/pwned']", "not valid YAML"),
    ("dockerfile: ../../etc/passwd", "dockerfile"),
    ("context: --output=/tmp", "context"),
    ("healthcheck: 'http://evil'", "healthcheck"),
    ("services: {'../x': {image: y, port: 1}}", "services"),
])
def test_hostile_repository_files_are_refused_naming_the_setting(text, named):
    with pytest.raises(ConfigError) as refused:
        parse_repo_config(text)
    assert str(refused.value).startswith(f"{REPO_SOURCE}: ") and named in str(refused.value)
