"""The comment grammar against comments people actually write (and some they shouldn't)."""

import dataclasses

import pytest

from app.commands import (
    HELP_TEXT,
    CommandName,
    DeployHead,
    DeployPreview,
    Help,
    Promote,
    Malformed,
    Rollback,
    Status,
    parse,
    usage,
)

PHASES = ("demo", "stage", "live")

COMMANDS = [
    # The plain forms.
    pytest.param("/deploy", DeployHead(None), id="deploy-default-phase"),
    pytest.param("/deploy demo", DeployHead("demo"), id="deploy-demo"),
    pytest.param("/deploy stage", DeployHead("stage"), id="deploy-stage"),
    pytest.param("/deploy preview", DeployPreview(), id="deploy-preview"),
    pytest.param("/Deploy  PREVIEW", DeployPreview(), id="deploy-preview-any-case"),
    pytest.param("/promote live", Promote("live", None, None), id="promote"),
    pytest.param("/promote live v1.2.0", Promote("live", "v1.2.0", None), id="promote-version"),
    pytest.param(
        "/promote live a1b2c3d as v1.4.0",
        Promote("live", "a1b2c3d", "v1.4.0"),
        id="promote-rename",
    ),
    pytest.param("/promote live as v1.4.0", Promote("live", None, "v1.4.0"), id="promote-as"),
    pytest.param("/rollback stage", Rollback("stage", None), id="rollback"),
    pytest.param("/rollback stage to v1.1.0", Rollback("stage", "v1.1.0"), id="rollback-to"),
    pytest.param("/status", Status(), id="status"),
    pytest.param("/help", Help(), id="help"),
    # Case: command words, phases and keywords fold; versions keep theirs.
    pytest.param("/Promote LIVE v1.2.0", Promote("live", "v1.2.0", None), id="mixed-case"),
    pytest.param("/DEPLOY Stage", DeployHead("stage"), id="upper-command"),
    pytest.param("/STATUS", Status(), id="upper-status"),
    pytest.param(
        "/promote live v1.4.0-RC.1", Promote("live", "v1.4.0-RC.1", None), id="version-case"
    ),
    pytest.param(
        "/promote live a1b2c3d AS Release-4", Promote("live", "a1b2c3d", "Release-4"), id="AS"
    ),
    pytest.param("/rollback STAGE TO V1.1.0", Rollback("stage", "V1.1.0"), id="TO"),
    # Whitespace of every kind.
    pytest.param("  /deploy   live  ", DeployHead("live"), id="extra-spaces"),
    pytest.param("\t/deploy\tdemo\t", DeployHead("demo"), id="tabs"),
    pytest.param("/deploy\u00a0demo", DeployHead("demo"), id="no-break-space"),
    pytest.param("/deploy\u3000stage", DeployHead("stage"), id="ideographic-space"),
    pytest.param("    /status", Status(), id="indented"),
    pytest.param("/promote live v1.2.3\r\n", Promote("live", "v1.2.3", None), id="crlf"),
    pytest.param("/promote live v1.2.3\u00a0", Promote("live", "v1.2.3", None), id="trailing-nbsp"),
    pytest.param("/status\r", Status(), id="bare-cr"),
    # Shell-style quoting is understood.
    pytest.param('/promote live "v1.2.3"', Promote("live", "v1.2.3", None), id="double-quoted"),
    pytest.param("/promote 'live' v1.2.3", Promote("live", "v1.2.3", None), id="single-quoted"),
    pytest.param(
        "/promote live 1.4.0-rc.1+build.5",
        Promote("live", "1.4.0-rc.1+build.5", None),
        id="full-semver",
    ),
    # Inside a longer comment.
    pytest.param("LGTM!\n\n/promote live", Promote("live", None, None), id="after-prose"),
    pytest.param(
        "LGTM!\r\n\r\n/promote live\r\nthanks\r\n", Promote("live", None, None), id="crlf-comment"
    ),
    pytest.param("/status\n/deploy live", Status(), id="first-line-wins"),
    pytest.param("Thanks!\n/deploy demo\n/promote live", DeployHead("demo"), id="first-command-wins"),
    pytest.param("/deploy demo\n\n```\n/promote live", DeployHead("demo"), id="before-a-fence"),
    pytest.param("/lgtm\n/deploy demo", DeployHead("demo"), id="after-another-bots-command"),
    pytest.param("/usr/bin is full\n/status", Status(), id="after-a-path"),
    # Quotes and code blocks are skipped, the command after them is found.
    pytest.param("> /promote live\n\n/deploy demo", DeployHead("demo"), id="after-a-quote"),
    pytest.param("```\n/promote live\n```\n/deploy demo", DeployHead("demo"), id="after-backticks"),
    pytest.param("~~~\n/promote live\n~~~\n/status", Status(), id="after-tildes"),
    pytest.param("```python\nx = 1\n```\n/status", Status(), id="after-info-string"),
    pytest.param("````\n```\n/deploy\n````\n/status", Status(), id="after-longer-fence"),
    pytest.param("```\n/deploy\n~~~\n/deploy\n```\n/status", Status(), id="mixed-fence-chars"),
    pytest.param("```/deploy demo```\n/status", Status(), id="inline-code-is-no-fence"),
    pytest.param("> ```\n/status", Status(), id="fence-in-quote-does-not-open"),
    pytest.param("Ship it 🚀\n/deploy demo", DeployHead("demo"), id="emoji-prose"),
]

IGNORED = [
    pytest.param("", id="empty"),
    pytest.param("   \n\t\n", id="blank"),
    pytest.param("LGTM", id="prose"),
    pytest.param("Looks good, please /deploy demo", id="command-not-first"),
    pytest.param("deploy demo", id="no-slash"),
    pytest.param("/", id="bare-slash"),
    pytest.param("/ deploy", id="slash-space"),
    pytest.param("//deploy", id="double-slash"),
    pytest.param("/usr/bin/env python", id="path"),
    pytest.param("/promotes live", id="promotes"),
    pytest.param("/deployment", id="deployment"),
    pytest.param("/deploy-now", id="dashed-suffix"),
    pytest.param("/deploy/stage", id="slash-suffix"),
    pytest.param("/deploy\u200b demo", id="zero-width-space"),
    pytest.param("/déploy demo", id="accented"),
    pytest.param("/ｄｅｐｌｏｙ demo", id="fullwidth"),
    pytest.param("/lgtm", id="other-bot"),
    pytest.param("/assign @me", id="other-bot-with-args"),
    pytest.param("https://example.com/deploy", id="url"),
    pytest.param("`/deploy demo`", id="inline-code"),
    pytest.param("*/deploy demo*", id="emphasis"),
    pytest.param("- /deploy demo", id="list-item"),
    pytest.param("<!-- /deploy demo -->", id="html-comment"),
    pytest.param("> /promote live", id="quoted"),
    pytest.param(">/promote live", id="quoted-tight"),
    pytest.param("  > > /deploy", id="nested-quote"),
    pytest.param("```\n/deploy demo\n```", id="backtick-fence"),
    pytest.param("~~~\n/deploy demo\n~~~", id="tilde-fence"),
    pytest.param("```\r\n/deploy demo\r\n```\r\n", id="crlf-fence"),
    pytest.param("```\n/deploy demo", id="unclosed-fence"),
    pytest.param("~~~~\n/deploy\n~~~\n/status", id="shorter-fence-does-not-close"),
    pytest.param("```\n/deploy\n``` not a close\n/status", id="close-with-text-does-not-close"),
    pytest.param("  ```\n/deploy\n  ```", id="indented-fence"),
    pytest.param("I said:\n> /deploy live\nbut no", id="quote-in-prose"),
]

# (comment, the command whose usage the reply must show, a fragment of the explanation)
REPLIES = [
    # Phases.
    pytest.param("/deploy prod", "deploy", "Unknown phase 'prod'", id="unknown-phase"),
    pytest.param("/deploy démo", "deploy", "Unknown phase 'démo'", id="unicode-phase"),
    pytest.param("/deploy `demo`", "deploy", "Unknown phase '`demo`'", id="backticked-phase"),
    pytest.param("/promote", "promote", "Which phase?", id="promote-without-phase"),
    pytest.param("/promote prod v1", "promote", "Unknown phase 'prod'", id="promote-unknown"),
    pytest.param("/promote as v2", "promote", "Which phase?", id="promote-as-first"),
    pytest.param("/rollback", "rollback", "Which phase?", id="rollback-without-phase"),
    pytest.param("/rollback to v1", "rollback", "Which phase?", id="rollback-to-first"),
    # Missing and extra arguments.
    pytest.param("/deploy demo stage", "deploy", "Unexpected 'stage'", id="deploy-two-phases"),
    pytest.param("/deploy demo # please", "deploy", "Unexpected '#'", id="hash-is-no-comment"),
    pytest.param("/promote live v1.2.3 as", "promote", "after 'as'", id="as-without-name"),
    pytest.param("/promote live as", "promote", "after 'as'", id="as-alone"),
    pytest.param("/promote live v1 v2", "promote", "Unexpected 'v2'", id="promote-two-versions"),
    pytest.param("/promote live v1 as v2 v3", "promote", "Unexpected 'v3' after", id="after-as"),
    pytest.param("/promote live v1 as v2 as v3", "promote", "Unexpected 'as'", id="two-as"),
    pytest.param("/rollback live to", "rollback", "after 'to'", id="to-without-version"),
    pytest.param("/rollback live v1.2.0", "rollback", "Unexpected 'v1.2.0'", id="without-to"),
    pytest.param("/rollback live to v1 now", "rollback", "Unexpected 'now'", id="after-to"),
    pytest.param("/status now", "status", "Unexpected 'now'", id="status-argument"),
    pytest.param("/help me", "help", "Unexpected 'me'", id="help-argument"),
    pytest.param("/help 🙂", "help", "Unexpected '🙂'", id="help-emoji"),
    # Trailing punctuation: the author meant the command, so say how to write it.
    pytest.param("/status.", "status", "Did you mean `/status`?", id="status-period"),
    pytest.param("/help?", "help", "Did you mean `/help`?", id="help-question"),
    pytest.param("/Status!", "status", "Did you mean `/status`?", id="status-bang"),
    pytest.param("/deploy, stage", "deploy", "Did you mean `/deploy`?", id="deploy-comma"),
    pytest.param("/promote: live", "promote", "Did you mean `/promote`?", id="promote-colon"),
    # Versions that are not versions, however they are smuggled in.
    pytest.param('/promote live "$(rm -rf /)"', "promote", "not a valid version", id="subshell"),
    pytest.param("/promote live $(rm -rf /)", "promote", "Unexpected '-rf'", id="subshell-split"),
    pytest.param("/promote live --upload-pack=x", "promote", "not a valid", id="git-option"),
    pytest.param("/promote live ../../etc", "promote", "not a valid", id="traversal"),
    pytest.param("/promote live v1;ls", "promote", "'v1;ls' is not a valid", id="semicolon"),
    pytest.param("/promote live v1&&ls", "promote", "not a valid", id="and-and"),
    pytest.param("/promote live `id`", "promote", "not a valid", id="backticks"),
    pytest.param('/promote live "v1 ls"', "promote", "not a valid", id="quoted-space"),
    pytest.param('/promote live ""', "promote", "'' is not a valid", id="empty-version"),
    pytest.param("/promote live .", "promote", "not a valid", id="dot"),
    pytest.param("/promote live vé1", "promote", "not a valid", id="unicode-version"),
    pytest.param("/promote live v1 as ../x", "promote", "'../x' is not a valid", id="as-traversal"),
    pytest.param("/promote live v1 as -x", "promote", "not a valid", id="as-option"),
    pytest.param("/rollback live to $(id)", "rollback", "not a valid", id="to-subshell"),
    pytest.param("/rollback live to 'a/b'", "rollback", "not a valid", id="to-slash"),
    pytest.param('/promote live "v1\\nls"', "promote", "not a valid", id="escaped-newline"),
    # Quoting the shell cannot finish.
    pytest.param("/promote live 'v1\nls'", "promote", "Unbalanced quote", id="newline-in-quote"),
    pytest.param('/deploy "demo', "deploy", "Unbalanced quote", id="unbalanced-double"),
    pytest.param("/deploy demo'", "deploy", "Unbalanced quote", id="unbalanced-single"),
    pytest.param("/deploy demo\\", "deploy", "trailing backslash", id="trailing-backslash"),
    # The first command line decides, even when a later one is well-formed.
    pytest.param("/deploy prod\n/deploy demo", "deploy", "Unknown phase", id="first-even-bad"),
]


@pytest.mark.parametrize(("comment", "expected"), COMMANDS)
def test_commands(comment, expected):
    assert parse(comment, PHASES) == expected


@pytest.mark.parametrize("comment", IGNORED)
def test_ignored_comments(comment):
    assert parse(comment, PHASES) is None


@pytest.mark.parametrize(("comment", "command", "explanation"), REPLIES)
def test_malformed_commands_get_a_reply_with_usage(comment, command, explanation):
    reply = parse(comment, PHASES)
    assert isinstance(reply, Malformed)
    assert explanation in reply.message
    assert reply.message.endswith(f"Usage: `{usage(CommandName(command))}`")


@pytest.mark.parametrize(
    "comment",
    [
        pytest.param("/deploy prod", id="deploy"),
        pytest.param("/promote", id="promote-without-phase"),
        pytest.param("/rollback nowhere", id="rollback"),
    ],
)
def test_phase_replies_list_the_phases(comment):
    assert "demo, stage, live" in parse(comment, PHASES).message


def test_a_bad_version_reply_explains_what_is_allowed():
    message = parse("/promote live v1;ls", PHASES).message
    assert "semver" in message and "letters, digits" in message


def test_long_user_text_is_cut_in_replies():
    reply = parse("/deploy " + "x" * 5000, PHASES)
    assert "…" in reply.message and len(reply.message) < 200


def test_control_characters_are_escaped_in_replies():
    reply = parse('/deploy "a\x1b[31m"', PHASES)
    assert "\x1b" not in reply.message


def test_phases_come_back_as_configured():
    assert parse("/deploy STAGE", ["Demo", "Stage"]) == DeployHead("Stage")


def test_deploy_preview_takes_no_more_words():
    assert "Unexpected 'now'" in parse("/deploy preview now", PHASES).message


def test_without_configured_phases_a_phase_is_unknown():
    assert "none are configured" in parse("/deploy demo", []).message
    assert parse("/deploy", []) == DeployHead(None)


@pytest.mark.parametrize("name", list(CommandName))
def test_every_command_has_a_usage_a_help_line_and_a_grammar(name):
    assert usage(name).startswith(f"/{name}")
    assert f"`{usage(name)}`" in HELP_TEXT
    assert parse(f"/{name} nonsense-phase extra words", PHASES) is not None


@pytest.mark.parametrize(
    ("command", "name"),
    [
        pytest.param(DeployHead(None), CommandName.DEPLOY, id="deploy"),
        pytest.param(Promote("live", None, None), CommandName.PROMOTE, id="promote"),
        pytest.param(Rollback("live", None), CommandName.ROLLBACK, id="rollback"),
        pytest.param(Status(), CommandName.STATUS, id="status"),
        pytest.param(Help(), CommandName.HELP, id="help"),
    ],
)
def test_commands_know_their_name_and_are_frozen(command, name):
    assert command.name is name
    assert name not in [field.name for field in dataclasses.fields(command)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        command.phase = "demo"
