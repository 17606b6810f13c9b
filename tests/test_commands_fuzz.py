"""Whatever a commenter types, parse answers calmly and never lets an unsafe version through."""

from hypothesis import given, settings
from hypothesis import strategies as st

from app.commands import Command, DeployHead, Promote, Malformed, Rollback, parse
from app.versions import validate_version

PHASES = ("demo", "stage", "live")

# Random text alone almost never starts a line with "/promote", so most examples are built
# from the grammar's own pieces mixed with hostile ones.
_COMMAND_WORDS = st.sampled_from(
    ["/deploy", "/promote", "/rollback", "/status", "/help", "/Promote", "/ROLLBACK", "/status."]
)
_ARGUMENTS = st.sampled_from(
    [
        "demo", "STAGE", "live", "prod", "as", "AS", "to", "v1.2.3", "1.4.0-rc.1+build.5",
        "a1b2c3d", "V1.0.0", "$(rm -rf /)", "--upload-pack=x", "../../etc", "v1;ls", "`id`",
        "..", "'", '"', "\\", "#", ">", "```", "~~~", "\n", "\r\n", "\t", "\u00a0", "\u200b",
        "é", "",
    ]
)
_WORDS = st.lists(st.one_of(_ARGUMENTS, st.text(max_size=6)), max_size=6)
_COMMAND_LINES = st.builds(
    lambda word, arguments, separator: separator.join([word, *arguments]),
    _COMMAND_WORDS,
    _WORDS,
    st.sampled_from([" ", "  ", "\t", "\u00a0"]),
)
# Well-formed shapes whose versions may be anything, to reach validation every time.
_VERSIONS = st.one_of(
    _ARGUMENTS,
    st.text(max_size=12),
    st.from_regex(r"v?[0-9]\.[0-9]\.[0-9][-+.a-z0-9]*", fullmatch=True),
    st.from_regex(r"[-._a-zA-Z0-9]{1,70}", fullmatch=True),
)
_PHASE_NAMES = st.sampled_from(["demo", "STAGE", "Live"])
_PROMOTIONS = st.builds(
    lambda phase, version, rename: " ".join(["/promote", phase, *version, *rename]),
    _PHASE_NAMES,
    st.lists(_VERSIONS, max_size=1),
    st.lists(_VERSIONS, max_size=1).map(lambda rename: ["as", *rename] if rename else []),
)
_ROLLBACKS = st.builds(
    lambda phase, version: " ".join(["/rollback", phase, "to", version]), _PHASE_NAMES, _VERSIONS
)
_COMMENTS = st.one_of(
    st.text(),
    _COMMAND_LINES,
    _PROMOTIONS,
    _ROLLBACKS,
    st.lists(st.one_of(_COMMAND_LINES, _WORDS.map(" ".join)), max_size=5).map("\n".join),
    st.lists(st.one_of(_COMMAND_WORDS, _ARGUMENTS, st.text(max_size=5)), max_size=12).map("".join),
)


@settings(max_examples=2000, deadline=None)
@given(_COMMENTS)
def test_parse_never_raises_and_only_lets_valid_versions_through(comment):
    result = parse(comment, PHASES)

    assert result is None or isinstance(result, Command | Malformed)
    if isinstance(result, DeployHead):
        assert result.phase is None or result.phase in PHASES
    if isinstance(result, Promote):
        assert result.phase in PHASES
        for version in (result.version, result.rename_to):
            assert version is None or validate_version(version) == version
    if isinstance(result, Rollback):
        assert result.phase in PHASES
        assert result.to_version is None or validate_version(result.to_version) == result.to_version
    if isinstance(result, Malformed):
        assert "Usage: `/" in result.message

