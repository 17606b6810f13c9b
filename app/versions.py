"""Version labels: one definition of what a safe version is, so every caller agrees."""

import fnmatch
import re

from app.exceptions import InvalidVersion

MAX_VERSION_LENGTH = 64

# semver.org's grammar; callers add the optional leading "v". Explicit ASCII classes because Python's
# \d would also accept other scripts' digits.
_NUMBER = r"(?:0|[1-9][0-9]*)"
_PRERELEASE_PART = rf"(?:{_NUMBER}|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_BUILD_PART = r"[0-9A-Za-z-]+"
_SEMVER_WITHOUT_V = (
    rf"{_NUMBER}\.{_NUMBER}\.{_NUMBER}"
    rf"(?:-{_PRERELEASE_PART}(?:\.{_PRERELEASE_PART})*)?"
    rf"(?:\+{_BUILD_PART}(?:\.{_BUILD_PART})*)?"
)
_SEMVER_RE = re.compile(rf"v?{_SEMVER_WITHOUT_V}")
# Starting with a letter, digit or "_" also keeps it a valid Docker tag and never an option
# ("-x") or a path step ("." / "..").
_SAFE_LABEL_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
# In a title the version must stand alone: "v1.2.3." and "(v1.2.3)" hold one, while
# "v1.2.3.4", "xv1.2.3" and "v1.2.3_beta" do not.
_TITLE_VERSION_RE = re.compile(rf"(?<!\w)v{_SEMVER_WITHOUT_V}(?!\w|[.+-]\w)")
_SHA_RE = re.compile(r"[0-9a-fA-F]{7,64}")


def _is_semver(text: str) -> bool:
    return len(text) <= MAX_VERSION_LENGTH and _SEMVER_RE.fullmatch(text) is not None


def validate_version(text: str) -> str:
    """Return ``text`` unchanged if it is a safe version label, else raise InvalidVersion."""
    if len(text) <= MAX_VERSION_LENGTH and (
        _SEMVER_RE.fullmatch(text) or _SAFE_LABEL_RE.fullmatch(text)
    ):
        return text
    raise InvalidVersion(
        "A version must be semver, optionally v-prefixed (v1.2.3, 1.4.0-rc.1), "
        f"or up to {MAX_VERSION_LENGTH} letters, digits, '.', '_' or '-', not starting with '.' or '-'."
    )


def is_release_tag(tag: str, pattern: str = "v*") -> bool:
    """Whether a tag name (without ``refs/tags/``) matches ``pattern`` and is semver.

    Case-sensitive on every platform, like git tag names.
    """
    return fnmatch.fnmatchcase(tag, pattern) and _is_semver(tag)


def version_from_title(title: str) -> str | None:
    """The first standalone ``vX.Y.Z`` (semver) in a pull-request title, if any."""
    candidates = (match.group() for match in _TITLE_VERSION_RE.finditer(title))
    return next((version for version in candidates if _is_semver(version)), None)


def short_sha(sha: str) -> str:
    """The 7-character abbreviation GitHub shows, used as Demo's version label."""
    if _SHA_RE.fullmatch(sha) is None:
        raise ValueError(f"not a commit sha: {sha[:80]!r}")
    return sha[:7].lower()
