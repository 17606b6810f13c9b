"""The one grammar for slash commands in pull-request comments: command, reply or ignore.

A comment is ours only if a line *starts* with one of our command words; anything else
(prose, other bots' commands, paths like /usr/bin) is ignored without a reply, because
another bot may own it. A line that starts with our word but is malformed gets a reply (`Malformed`), so
the author learns why nothing happened.
"""

import re
import shlex
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from app.exceptions import InvalidVersion
from app.versions import MAX_VERSION_LENGTH, validate_version


class CommandName(StrEnum):
    """Every command word, without its slash."""

    DEPLOY = "deploy"
    #: `/deploy preview`: a sub-command of /deploy (its word is /deploy), with a role of its own.
    DEPLOY_PREVIEW = "deploy preview"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    REDEPLOY = "redeploy"
    RETRY = "retry"
    CANCEL = "cancel"
    FREEZE = "freeze"
    UNFREEZE = "unfreeze"
    STATUS = "status"
    HELP = "help"


@dataclass(frozen=True)
class DeployHead:
    """Deploy the pull request's head; ``phase=None`` means the first phase."""

    phase: str | None
    name: ClassVar[CommandName] = CommandName.DEPLOY


@dataclass(frozen=True)
class DeployPreview:
    """Build the pull request's head as its preview (README, Pull request previews): a fork's needs this consent."""

    name: ClassVar[CommandName] = CommandName.DEPLOY_PREVIEW


#: The word after /deploy that asks for the preview; a phase may not be named so.
PREVIEW_WORD = "preview"


@dataclass(frozen=True)
class Promote:
    """Push a version (``None``: the previous phase's current one) to ``phase``."""

    phase: str
    version: str | None
    rename_to: str | None
    #: An admin's reason to deploy into a frozen phase; None: no override.
    force: str | None = None
    name: ClassVar[CommandName] = CommandName.PROMOTE


@dataclass(frozen=True)
class Rollback:
    """Redeploy an earlier deployment of ``phase`` (``None``: the one before the current)."""

    phase: str
    to_version: str | None
    name: ClassVar[CommandName] = CommandName.ROLLBACK


@dataclass(frozen=True)
class _OnPhase:
    """A command whose only argument is the phase it acts on."""

    phase: str


@dataclass(frozen=True)
class Redeploy(_OnPhase):
    """Deploy again what ``phase`` serves, with its current profile."""

    name: ClassVar[CommandName] = CommandName.REDEPLOY


@dataclass(frozen=True)
class Retry(_OnPhase):
    """Retry the latest failed (or cancelled) deployment of ``phase``."""

    name: ClassVar[CommandName] = CommandName.RETRY


@dataclass(frozen=True)
class Cancel(_OnPhase):
    """Cancel the latest queued or building deployment of ``phase``."""

    name: ClassVar[CommandName] = CommandName.CANCEL


@dataclass(frozen=True)
class Freeze:
    phase: str
    reason: str
    name: ClassVar[CommandName] = CommandName.FREEZE


@dataclass(frozen=True)
class Unfreeze(_OnPhase):
    name: ClassVar[CommandName] = CommandName.UNFREEZE


@dataclass(frozen=True)
class Status:
    name: ClassVar[CommandName] = CommandName.STATUS


@dataclass(frozen=True)
class Help:
    name: ClassVar[CommandName] = CommandName.HELP


Command = DeployHead | DeployPreview | Promote | Rollback | Redeploy | Retry | Cancel | Freeze | Unfreeze | Status | Help


@dataclass(frozen=True)
class Malformed:
    """A malformed command: post ``message`` and do nothing else."""

    message: str


_SYNTAX: dict[CommandName, tuple[str, str]] = {
    CommandName.DEPLOY: (
        "/deploy [phase]",
        "build this pull request's head and deploy it (default: the first phase)",
    ),
    CommandName.DEPLOY_PREVIEW: (
        "/deploy preview",
        "build this pull request's head as its preview (a fork's code runs only after this)",
    ),
    CommandName.PROMOTE: (
        "/promote <phase> [<version>] [as <new-version>] [--force <reason>]",
        "push a version (default: the previous phase's) to a phase, optionally renamed; "
        "--force: an admin deploys into a frozen phase, once, with a reason",
    ),
    CommandName.ROLLBACK: (
        "/rollback <phase> [to <version>]",
        "redeploy an earlier version (default: the one before the current)",
    ),
    CommandName.REDEPLOY: ("/redeploy <phase>", "deploy what a phase serves again, with its current profile"),
    CommandName.RETRY: ("/retry <phase>", "retry the phase's latest failed deployment"),
    CommandName.CANCEL: ("/cancel <phase>", "cancel the phase's queued or building deployment"),
    CommandName.FREEZE: ("/freeze <phase> [reason]", "refuse every deployment into a phase until /unfreeze"),
    CommandName.UNFREEZE: ("/unfreeze <phase>", "lift a /freeze"),
    CommandName.STATUS: ("/status", "show what runs in each phase"),
    CommandName.HELP: ("/help", "show this help"),
}


def usage(name: CommandName) -> str:
    """The one-line syntax of a command, e.g. ``/rollback <phase> [to <version>]``."""
    return _SYNTAX[name][0]


HELP_TEXT = "Release Pipeline commands (phase names are case-insensitive):\n" + "\n".join(
    f"- `{syntax}` — {meaning}" for syntax, meaning in _SYNTAX.values()
)

_COMMAND_WORDS = {f"/{name.value}": name for name in CommandName if " " not in name.value}
# Sentence punctuation glued to a command word ("/status.") gets a hint rather than silence.
_TRAILING_PUNCTUATION = ".,;:!?"
# Only these are fences (CommonMark): an info string after ``` may not hold a backtick,
# otherwise the line is inline code such as ```/deploy```.
_FENCE_OPENING = re.compile(r"(`{3,})[^`]*|(~{3,}).*")
# Mobile keyboards and pasted text bring no-break and other Unicode spaces; shlex only splits
# on ASCII whitespace, so every kind becomes a plain space first.
_ANY_WHITESPACE = re.compile(r"\s")
_SHOWN_LENGTH = 40


class _Unparsable(Exception):
    """Raised inside the grammar; becomes a `Malformed` with the command's usage."""


def _shown(text: str) -> str:
    """User text quoted for a reply: control characters escaped, long text cut."""
    if len(text) > _SHOWN_LENGTH:
        text = text[:_SHOWN_LENGTH] + "…"
    return repr(text)


def _unfenced_lines(comment: str) -> Iterator[str]:
    """Stripped lines outside fenced code blocks and block quotes; an unclosed fence runs
    to the end of the comment, as GitHub renders it."""
    closing_fence: re.Pattern[str] | None = None
    for raw_line in comment.splitlines():
        line = _ANY_WHITESPACE.sub(" ", raw_line).strip()
        if closing_fence is not None:
            if closing_fence.fullmatch(line):
                closing_fence = None
        elif line.startswith(">"):
            continue
        elif opening := _FENCE_OPENING.fullmatch(line):
            fence = opening.group(1) or opening.group(2)
            closing_fence = re.compile(re.escape(fence[0]) + f"{{{len(fence)},}}")
        else:
            yield line


def _phase(word: str | None, phases: Sequence[str]) -> str:
    """The configured spelling of the phase named ``word`` (case-insensitive)."""
    listed = ", ".join(phases) or "none are configured"
    if word is None:
        raise _Unparsable(f"Which phase? The phases are: {listed}.")
    for phase in phases:
        if phase.lower() == word.lower():
            return phase
    raise _Unparsable(f"Unknown phase {_shown(word)}. The phases are: {listed}.")


def _version(word: str) -> str:
    try:
        return validate_version(word)
    except InvalidVersion:
        # Shorter than InvalidVersion's text: the reply quotes the commenter's word as well.
        raise _Unparsable(f"{_shown(word)} is not a valid version: use semver (v1.2.3, 1.4.0-rc.1) or up to "
                          f"{MAX_VERSION_LENGTH} letters, digits, '.', '_' or '-', not starting with '.' or '-'.") from None


def _split_keyword(args: list[str], keyword: str) -> tuple[list[str], str | None]:
    """``[..., keyword, value]`` → ``([...], value)``; no keyword → ``(args, None)``."""
    lowered = [arg.lower() for arg in args]
    if keyword not in lowered:
        return args, None
    at = lowered.index(keyword)
    value = args[at + 1 : at + 2]
    if not value:
        raise _Unparsable(f"Missing the version after {keyword!r}.")
    if len(args) > at + 2:
        raise _Unparsable(f"Unexpected {_shown(args[at + 2])} after the version.")
    return args[:at], _version(value[0])


def _no_more(args: list[str]) -> None:
    if args:
        raise _Unparsable(f"Unexpected {_shown(args[0])}.")


def _deploy(args: list[str], phases: Sequence[str]) -> DeployHead | DeployPreview:
    if not args:
        return DeployHead(phase=None)
    if args[0].lower() == PREVIEW_WORD and PREVIEW_WORD not in phases:
        _no_more(args[1:])
        return DeployPreview()
    phase = _phase(args[0], phases)
    _no_more(args[1:])
    return DeployHead(phase=phase)


def _rest_after(args: list[str], keyword: str) -> tuple[list[str], str | None]:
    """``[..., keyword, words...]`` → ``([...], "words ...")``: the rest of the line is free text."""
    lowered = [arg.lower() for arg in args]
    if keyword not in lowered:
        return args, None
    at = lowered.index(keyword)
    text = " ".join(args[at + 1 :]).strip()
    if not text:
        raise _Unparsable(f"{keyword} needs a reason, recorded in the audit log.")
    return args[:at], text[:300]


def _promote(args: list[str], phases: Sequence[str]) -> Promote:
    args, force = _rest_after(args, "--force")
    positional, rename_to = _split_keyword(args, "as")
    phase = _phase(positional[0] if positional else None, phases)
    version = positional[1:2]
    _no_more(positional[2:])
    return Promote(
        phase=phase,
        version=_version(version[0]) if version else None,
        rename_to=rename_to,
        force=force,
    )


def _rollback(args: list[str], phases: Sequence[str]) -> Rollback:
    positional, to_version = _split_keyword(args, "to")
    phase = _phase(positional[0] if positional else None, phases)
    _no_more(positional[1:])
    return Rollback(phase=phase, to_version=to_version)


def _phase_only(command: type[Redeploy | Retry | Cancel | Unfreeze]) -> Callable[[list[str], Sequence[str]], Command]:
    def parse_arguments(args: list[str], phases: Sequence[str]) -> Command:
        phase = _phase(args[0] if args else None, phases)
        _no_more(args[1:])
        return command(phase=phase)

    return parse_arguments


def _freeze(args: list[str], phases: Sequence[str]) -> Freeze:
    phase = _phase(args[0] if args else None, phases)
    return Freeze(phase=phase, reason=" ".join(args[1:]).strip()[:300])


def _without_arguments(command: Status | Help) -> Callable[[list[str], Sequence[str]], Command]:
    def parse_arguments(args: list[str], phases: Sequence[str]) -> Command:
        _no_more(args)
        return command

    return parse_arguments


_GRAMMAR: dict[CommandName, Callable[[list[str], Sequence[str]], Command]] = {
    CommandName.DEPLOY: _deploy,
    CommandName.PROMOTE: _promote,
    CommandName.ROLLBACK: _rollback,
    CommandName.REDEPLOY: _phase_only(Redeploy),
    CommandName.RETRY: _phase_only(Retry),
    CommandName.CANCEL: _phase_only(Cancel),
    CommandName.FREEZE: _freeze,
    CommandName.UNFREEZE: _phase_only(Unfreeze),
    CommandName.STATUS: _without_arguments(Status()),
    CommandName.HELP: _without_arguments(Help()),
}


def _reply(name: CommandName, problem: str) -> Malformed:
    return Malformed(f"{problem}\n\nUsage: `{usage(name)}`")


#: No command is longer; shlex is slow on huge lines and the intake must answer fast.
MAX_COMMAND_LENGTH = 10_000


def _parse_line(name: CommandName, line: str, phases: Sequence[str]) -> Command | Malformed:
    if len(line) > MAX_COMMAND_LENGTH:
        return _reply(name, f"The command line is longer than {MAX_COMMAND_LENGTH} characters.")
    try:
        args = shlex.split(line)[1:]
    except ValueError:
        return _reply(name, "Unbalanced quote or trailing backslash.")
    try:
        return _GRAMMAR[name](args, phases)
    except _Unparsable as problem:
        return _reply(name, str(problem))


def parse(comment: str, phases: Sequence[str]) -> Command | Malformed | None:
    """Read a pull-request comment: a Command to run, a Malformed to post, or None to ignore.

    The first line that starts with one of our command words decides.
    """
    for line in _unfenced_lines(comment):
        word = line.split(" ", 1)[0].lower()
        if word in _COMMAND_WORDS:
            return _parse_line(_COMMAND_WORDS[word], line, phases)
        bare_word = word.rstrip(_TRAILING_PUNCTUATION)
        if bare_word != word and bare_word in _COMMAND_WORDS:
            return _reply(
                _COMMAND_WORDS[bare_word],
                f"`{word}` is not a command. Did you mean `{bare_word}`?",
            )
    return None
