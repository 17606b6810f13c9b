"""Version labels end up in image tags, container labels, URLs and replies: test the edges."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.exceptions import InvalidVersion
from app.versions import (
    MAX_VERSION_LENGTH,
    is_release_tag,
    short_sha,
    validate_version,
    version_from_title,
)

VALID_VERSIONS = [
    pytest.param("v1.2.3", id="semver-with-v"),
    pytest.param("1.2.3", id="semver-without-v"),
    pytest.param("0.0.0", id="zeros"),
    pytest.param("1.4.0-rc.1+build.5", id="prerelease-and-build"),
    pytest.param("v1.4.0-rc.1", id="prerelease"),
    pytest.param("v1.4.0+20240501.sha.a1b2c3d", id="build-metadata"),
    pytest.param("1.0.0-alpha-1.0", id="hyphen-in-prerelease"),
    pytest.param("1.0.0-0A.is.legal", id="semver-org-example"),
    pytest.param("a1b2c3d", id="short-sha"),
    pytest.param("V1.2.3", id="capital-v-as-label"),
    pytest.param("release-2024.05", id="dated-label"),
    pytest.param("_hotfix", id="leading-underscore"),
    pytest.param("v1.2", id="two-part-as-label"),
    pytest.param("v1.2.3.", id="trailing-dot-label"),
    pytest.param("a..b", id="double-dot-inside"),
    pytest.param("x", id="one-char"),
    pytest.param("a" * MAX_VERSION_LENGTH, id="longest-label"),
    pytest.param("1.2.3-" + "a" * (MAX_VERSION_LENGTH - 6), id="longest-semver"),
]

INVALID_VERSIONS = [
    pytest.param("", id="empty"),
    pytest.param(".", id="dot"),
    pytest.param("..", id="dot-dot"),
    pytest.param(".hidden", id="leading-dot"),
    pytest.param("-x", id="leading-dash"),
    pytest.param("--upload-pack=x", id="git-option-injection"),
    pytest.param("$(rm -rf /)", id="command-substitution"),
    pytest.param("`id`", id="backticks"),
    pytest.param("v1;ls", id="semicolon"),
    pytest.param("v1&&ls", id="and-and"),
    pytest.param("v1|cat", id="pipe"),
    pytest.param("../../etc", id="path-traversal"),
    pytest.param("a/b", id="slash"),
    pytest.param("v1\nls", id="newline"),
    pytest.param("v1.2.3\n", id="trailing-newline"),
    pytest.param("v1 2", id="space"),
    pytest.param("v1\t2", id="tab"),
    pytest.param("v1\x00", id="nul"),
    pytest.param("vé1", id="unicode-letter"),
    pytest.param("v١.٢.٣", id="arabic-indic-digits"),
    pytest.param("1.2.3+", id="empty-build-is-not-semver"),
    pytest.param("+build", id="leading-plus"),
    pytest.param("a" * (MAX_VERSION_LENGTH + 1), id="label-too-long"),
    pytest.param("1.2.3-" + "a" * MAX_VERSION_LENGTH, id="semver-too-long"),
    pytest.param("v1.2.3@{0}", id="git-reflog-syntax"),
    pytest.param("v1.2.3:latest", id="colon"),
]


@pytest.mark.parametrize("text", VALID_VERSIONS)
def test_valid_versions_are_returned_unchanged(text):
    assert validate_version(text) == text


@pytest.mark.parametrize("text", INVALID_VERSIONS)
def test_invalid_versions_are_refused_with_what_is_allowed(text):
    with pytest.raises(InvalidVersion) as refused:
        validate_version(text)
    message = str(refused.value)
    assert "semver" in message and "v1.2.3" in message and str(MAX_VERSION_LENGTH) in message


@pytest.mark.parametrize(
    ("tag", "pattern", "expected"),
    [
        pytest.param("v1.2.3", "v*", True, id="release"),
        pytest.param("v1.4.0-rc.1", "v*", True, id="prerelease"),
        pytest.param("v1.4.0+build.5", "v*", True, id="build-metadata"),
        pytest.param("v10.20.30", "v*", True, id="multi-digit"),
        pytest.param("v1", "v*", False, id="major-only"),
        pytest.param("v1.2", "v*", False, id="major-minor"),
        pytest.param("vnext", "v*", False, id="word"),
        pytest.param("release-1", "v*", False, id="other-prefix"),
        pytest.param("1.2.3", "v*", False, id="no-v-fails-pattern"),
        pytest.param("V1.2.3", "v*", False, id="capital-v"),
        pytest.param("v01.2.3", "v*", False, id="leading-zero"),
        pytest.param("v1.2.3.4", "v*", False, id="four-parts"),
        pytest.param("vv1.2.3", "v*", False, id="double-v"),
        pytest.param("v1.2.3 ", "v*", False, id="trailing-space"),
        pytest.param("", "v*", False, id="empty"),
        pytest.param("v1.2.3", "release-*", False, id="pattern-mismatch"),
        pytest.param("1.2.3", "*", True, id="catch-all-without-v"),
        pytest.param("v2.0.0", "v2.*", True, id="major-pattern"),
        pytest.param("v1.9.0", "v2.*", False, id="major-pattern-other-major"),
        pytest.param("v1.2.3-" + "a" * MAX_VERSION_LENGTH, "v*", False, id="too-long"),
    ],
)
def test_is_release_tag(tag, pattern, expected):
    assert is_release_tag(tag, pattern) is expected


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        pytest.param("Release v1.4.0", "v1.4.0", id="plain"),
        pytest.param("v1.4.0", "v1.4.0", id="alone"),
        pytest.param("Promote v1.4.0 to live", "v1.4.0", id="middle"),
        pytest.param("Release v1.4.0.", "v1.4.0", id="sentence-end"),
        pytest.param("Release (v1.4.0)", "v1.4.0", id="parentheses"),
        pytest.param("Release v1.4.0, finally", "v1.4.0", id="comma"),
        pytest.param("release-v1.4.0", "v1.4.0", id="after-dash"),
        pytest.param("Release v1.4.0-rc.1", "v1.4.0-rc.1", id="prerelease"),
        pytest.param("Release v1.4.0+build.5", "v1.4.0+build.5", id="build-metadata"),
        pytest.param("v1.4.0 replaces v1.3.9", "v1.4.0", id="first-wins"),
        pytest.param("Release v1.4 then v1.5.0", "v1.5.0", id="skips-non-semver"),
        pytest.param("Release 1.4.0", None, id="no-v"),
        pytest.param("Release V1.4.0", None, id="capital-v"),
        pytest.param("Release v1.4", None, id="two-parts"),
        pytest.param("Release v1.4.0.1", None, id="four-parts"),
        pytest.param("Releasev1.4.0", None, id="glued-to-word"),
        pytest.param("Release v1.4.0rc1", None, id="glued-suffix"),
        pytest.param("Release v1.4.0_beta", None, id="underscore-suffix"),
        pytest.param("Release v1.4.0é", None, id="unicode-suffix"),
        pytest.param("Release v01.4.0", None, id="leading-zero"),
        pytest.param("Release v١.٤.٠", None, id="arabic-indic-digits"),
        pytest.param("Release 🚀 v2.0.0 🚀", "v2.0.0", id="emoji"),
        pytest.param("", None, id="empty"),
        pytest.param("Bump deps", None, id="none"),
        pytest.param("v1.2.3-" + "a" * MAX_VERSION_LENGTH, None, id="too-long"),
    ],
)
def test_version_from_title(title, expected):
    assert version_from_title(title) == expected


# Text made of the characters versions are built from, so the properties get exercised.
_VERSIONISH = st.text(alphabet="v0123456789.-+rcab_ é/", max_size=80)


@settings(max_examples=500, deadline=None)
@given(st.one_of(_VERSIONISH, st.text()))
def test_a_version_from_a_title_is_always_a_valid_version(title):
    version = version_from_title(title)
    assert version is None or validate_version(version) == version


@settings(max_examples=500, deadline=None)
@given(st.one_of(_VERSIONISH, st.text()))
def test_a_release_tag_is_always_a_valid_version(tag):
    if is_release_tag(tag, "*"):
        assert validate_version(tag) == tag


@pytest.mark.parametrize(
    ("sha", "expected"),
    [
        pytest.param("a1b2c3d4e5f60718293a4b5c6d7e8f9012345678", "a1b2c3d", id="sha1"),
        pytest.param("A1B2C3D4E5F60718293A4B5C6D7E8F9012345678", "a1b2c3d", id="uppercase"),
        pytest.param("a1b2c3d", "a1b2c3d", id="already-short"),
        pytest.param("0" * 64, "0000000", id="sha256"),
    ],
)
def test_short_sha(sha, expected):
    assert short_sha(sha) == expected
    assert validate_version(short_sha(sha)) == expected


@pytest.mark.parametrize(
    "sha",
    [
        pytest.param("", id="empty"),
        pytest.param("a1b2c3", id="too-short"),
        pytest.param("g1b2c3d4", id="not-hex"),
        pytest.param("a1b2c3d\n", id="trailing-newline"),
        pytest.param("0" * 65, id="too-long"),
    ],
)
def test_short_sha_refuses_what_is_not_a_sha(sha):
    with pytest.raises(ValueError):
        short_sha(sha)
