"""The command line's client commands: drive a running installation over its JSON API.

`apps`, `status`, `history`, `deploy`, `promote`, `rollback`, `redeploy`, `retry`, `cancel`,
`logs`, `freeze`, `unfreeze` and `whoami` read RELEASE_PIPELINE_URL (or `--url`) and
RELEASE_PIPELINE_TOKEN; the server checks every permission, this side only asks and shows.
Tables for people, `--json` for scripts; the exit status is 0 only on success.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from app.client import Client, ClientError, render
from app.adapters.pipeline_api import path

OPERATOR = "Operator commands (run the service on this machine)"
CLIENT = "Client commands (drive a running installation over its API)"
CLIENT_NOTE = ("Client commands read RELEASE_PIPELINE_URL (or --url) and RELEASE_PIPELINE_TOKEN (a personal "
               "API token from the portal's API tokens page, or the admin token). Shell completion: "
               'eval "$(_RELEASE_PIPELINE_COMPLETE=bash_source release-pipeline)" (or zsh_source, fish_source).')
TOKEN_VARIABLE = "RELEASE_PIPELINE_TOKEN"
URL_VARIABLE = "RELEASE_PIPELINE_URL"


class SectionedGroup(click.Group):
    """`--help` lists operator and client commands apart, each in the order it was added."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {OPERATOR: [], CLIENT: []}
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names), default=0)
        for name in names:
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                sections[CLIENT if isinstance(command, ClientCommand) else OPERATOR].append(
                    (name, command.get_short_help_str(limit)))
        for title, rows in sections.items():
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)
        with formatter.section("Client settings"):
            formatter.write_text(CLIENT_NOTE)


class ClientCommand(click.Command):
    """A command that talks to the API (listed in its own section of `--help`)."""


# --- completion -------------------------------------------------------------------------------


def _completion_client(ctx: click.Context) -> Client | None:
    url = ctx.params.get("url") or os.environ.get(URL_VARIABLE)
    token = os.environ.get(TOKEN_VARIABLE)
    return Client(url, token) if url and token else None


def _complete(kind: str) -> Callable:
    """Completes app or phase names from the server; nothing when it cannot be asked."""

    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
        client = _completion_client(ctx)
        if client is None:
            return []
        try:
            body = client.get(path("apps"))
        except ClientError:
            return []
        names = [app["name"] for app in body.get("apps", [])] if kind == "app" else body.get("phases", [])
        return [name for name in names if name.startswith(incomplete)]

    return complete


APP = click.argument("app", shell_complete=_complete("app"))
PHASE = click.argument("phase", shell_complete=_complete("phase"))
DEPLOYMENT = click.argument("deployment", type=click.IntRange(min=1))
NO_WAIT = click.option("--no-wait", is_flag=True, help="Return once the server accepted it; do not follow it.")


# --- running a command ------------------------------------------------------------------------


class Output:
    """Where results go: tables and progress for people, one JSON document for scripts (then
    progress goes to stderr, so stdout stays parseable)."""

    def __init__(self, as_json: bool):
        self.as_json = as_json

    def result(self, text: str, body: Any) -> None:
        if self.as_json:
            click.echo(json.dumps(body, indent=2, sort_keys=True))
        else:
            click.echo(text)

    def progress(self, text: str) -> None:
        click.echo(text, err=self.as_json)


def _client(url: str | None) -> Client:
    if not url:
        raise click.ClickException(f"set {URL_VARIABLE} (or pass --url) to the installation's address, "
                                   "e.g. https://deploy.example.com")
    token = os.environ.get(TOKEN_VARIABLE, "").strip()
    if not token:
        raise click.ClickException(f"set {TOKEN_VARIABLE}: create a personal API token at {url.rstrip('/')}"
                                   "/tokens (or use the admin token)")
    return Client(url, token)


def client_command(func: Callable) -> click.Command:
    """Adds --url and --json, builds the client, and turns every ClientError into one line and
    exit status 1."""

    @click.option("--url", envvar=URL_VARIABLE, metavar="URL",
                  help=f"The installation's address [${URL_VARIABLE}].")
    @click.option("--json", "as_json", is_flag=True, help="Print the server's JSON (for scripts).")
    @functools.wraps(func)
    def run(url: str | None, as_json: bool, **kwargs: Any) -> None:
        client = _client(url)
        try:
            func(client, Output(as_json), **kwargs)
        except ClientError as exc:
            raise click.ClickException(str(exc)) from None

    return click.command(cls=ClientCommand)(run)


def _follow(client: Client, out: Output, app: str, deployment_id: int, started: float) -> None:
    """Show the deployment's steps until it ends; exit 1 unless it now serves."""
    out.progress(f"deployment {deployment_id}: {client.portal_link(app, deployment_id)}")
    progress = render.Progress()
    try:
        for event in client.events(deployment_id):
            for line in progress.lines(event.kind, event.data, time.monotonic() - started):
                out.progress(line)
    except KeyboardInterrupt:
        out.progress(f"stopped watching; the deployment goes on (release-pipeline logs {deployment_id} --follow)")
        sys.exit(130)
    final = client.get(path("deployments", deployment_id))
    final.pop("log", None)
    if out.as_json:
        out.result("", final)
    if final["status"] != "succeeded":
        sys.exit(1)


def _deployment_id(value: Any) -> int | None:
    """Actions answer `{"deployment": {...}}` (promote, rollback, deploy) or `{"deployment": id}`."""
    if isinstance(value, dict):
        return value.get("id")
    return value if isinstance(value, int) else None


def _act(client: Client, out: Output, app: str, api_path: str, request: dict | None, no_wait: bool) -> None:
    """Ask for an action, say what the server did, then follow its deployment (if any)."""
    started = time.monotonic()
    body = client.post(api_path, request)
    deployment_id = _deployment_id(body.get("deployment"))
    message = body.get("message") or (f"deployment {deployment_id} queued" if deployment_id else "done")
    if deployment_id is None or no_wait:
        if deployment_id is not None:
            message += f"\ndeployment {deployment_id}: {client.portal_link(app, deployment_id)}"
        out.result(message, body)
        return
    out.progress(message)
    _follow(client, out, app, deployment_id, started)


def _app_of(client: Client, deployment_id: int) -> str:
    return client.get(path("deployments", deployment_id))["app"]


# --- reading ----------------------------------------------------------------------------------


@client_command
def apps(client: Client, out: Output) -> None:
    """The apps you can see, with what each phase serves."""
    body = client.get(path("apps"))
    out.result(render.apps_table(body), body)


@client_command
@APP
def status(client: Client, out: Output, app: str) -> None:
    """An app's phases: version, health, URL, who deployed it, what is on its way."""
    body = client.get(path("apps", app))
    out.result(render.status_table(body), body)


@client_command
@APP
@PHASE
@click.option("--limit", type=click.IntRange(1, 200), default=20, show_default=True)
def history(client: Client, out: Output, app: str, phase: str, limit: int) -> None:
    """A phase's deployments, newest first."""
    body = client.get(path("apps", app, "deployments"), phase=phase, limit=limit)
    out.result(render.history_table(body["deployments"]), body)


@client_command
@DEPLOYMENT
@click.option("--follow", "-f", is_flag=True, help="Keep streaming until the deployment ends (exit 1 unless "
                                                   "it succeeded).")
def logs(client: Client, out: Output, deployment: int, follow: bool) -> None:
    """A deployment's build and rollout log."""
    if not follow:
        body = client.get(path("deployments", deployment))
        out.result("\n".join([*(render.log_line(line) for line in body["log"]), render.outcome(body)]), body)
        return
    final: dict = {}
    for event in client.events(deployment):
        if event.kind == "line":
            out.progress(render.log_line(event.data))
        elif event.kind == "done":
            final = event.data
    out.progress(render.outcome(final))
    if out.as_json:
        out.result("", final)
    if final.get("status") != "succeeded":
        sys.exit(1)


@client_command
@APP
@PHASE
@click.option("--lines", "-n", type=click.IntRange(1, 2000), default=50, show_default=True,
              help="How many of the last lines of each container to show.")
@click.option("--follow", "-f", is_flag=True, help="Then keep printing new lines until Ctrl-C.")
def output(client: Client, out: Output, app: str, phase: str, lines: int, follow: bool) -> None:
    """What a phase's running app container and backing services print (secrets masked)."""
    body = client.get(path("apps", app, "phases", phase, "logs"), lines=lines)
    out.result(render.output_lines(body["sources"]), body)
    if not follow:
        return
    last = max((render.moment(line["at"]) for source in body["sources"] for line in source["lines"]), default=None)
    try:  # from the last line shown, so none falls between the two requests, and none twice
        for event in client.tail(app, phase, since=last):
            if event.kind == "line" and (last is None or render.moment(event.data["at"]) > last):
                out.progress(render.output_line(event.data))
    except KeyboardInterrupt:
        sys.exit(130)


@client_command
def whoami(client: Client, out: Output) -> None:
    """Who the token acts as."""
    body = client.get(path("me"))
    out.result(f"{body['login']} ({body['signed_in_with']})", body)


# --- acting -----------------------------------------------------------------------------------


@client_command
@APP
@PHASE
@click.argument("sha")
@NO_WAIT
def deploy(client: Client, out: Output, app: str, phase: str, sha: str, no_wait: bool) -> None:
    """Build a commit and deploy it to PHASE, and wait until it serves.

    SHA is the full commit sha, e.g. $(git rev-parse HEAD).
    """
    _act(client, out, app, path("apps", app, "phases", phase, "deploy"), {"sha": sha}, no_wait)


@client_command
@APP
@PHASE
@click.argument("version", required=False)
@click.option("--as", "rename_to", metavar="NEW", help="The version's name on PHASE (e.g. a1b2c3d → v1.4.0).")
@click.option("--force", metavar="REASON", help="Admins: deploy into a frozen phase once, giving the reason.")
@NO_WAIT
def promote(client: Client, out: Output, app: str, phase: str, version: str | None, rename_to: str | None,
            force: str | None, no_wait: bool) -> None:
    """Push to PHASE what the previous phase serves (or VERSION), and wait until it serves."""
    body = {key: value for key, value in (("version", version), ("rename_to", rename_to), ("force", force))
            if value is not None}
    _act(client, out, app, path("apps", app, "phases", phase, "promote"), body, no_wait)


@client_command
@APP
@PHASE
@click.option("--to", "to_version", metavar="VERSION", help="An earlier version of PHASE (default: the one "
                                                             "before what it serves).")
@NO_WAIT
def rollback(client: Client, out: Output, app: str, phase: str, to_version: str | None, no_wait: bool) -> None:
    """Redeploy an earlier deployment of PHASE: its image and its profile."""
    _act(client, out, app, path("apps", app, "phases", phase, "rollback"),
         {"to_version": to_version} if to_version else None, no_wait)


@client_command
@APP
@PHASE
@NO_WAIT
def redeploy(client: Client, out: Output, app: str, phase: str, no_wait: bool) -> None:
    """Deploy again what PHASE serves (e.g. to apply an edited profile)."""
    _act(client, out, app, path("apps", app, "phases", phase, "redeploy"), None, no_wait)


@client_command
@DEPLOYMENT
@NO_WAIT
def retry(client: Client, out: Output, deployment: int, no_wait: bool) -> None:
    """Try a failed deployment again."""
    app = _app_of(client, deployment)
    _act(client, out, app, path("apps", app, "deployments", deployment, "retry"), None, no_wait)


@client_command
@DEPLOYMENT
def cancel(client: Client, out: Output, deployment: int) -> None:
    """Cancel a queued or building deployment (the previous version keeps serving)."""
    app = _app_of(client, deployment)
    body = client.post(path("apps", app, "deployments", deployment, "cancel"))
    out.result(body.get("message") or f"deployment {deployment} cancelled", body)


@client_command
@APP
@PHASE
@click.argument("reason", nargs=-1)
def freeze(client: Client, out: Output, app: str, phase: str, reason: tuple[str, ...]) -> None:
    """Refuse every deployment into PHASE until unfrozen (REASON is shown to whoever tries)."""
    body = client.post(path("apps", app, "phases", phase, "freeze"),
                          {"reason": " ".join(reason)} if reason else {})
    out.result(body.get("message") or f"{phase} is frozen", body)


@client_command
@APP
@PHASE
def unfreeze(client: Client, out: Output, app: str, phase: str) -> None:
    """Allow deployments into PHASE again."""
    body = client.delete(path("apps", app, "phases", phase, "freeze"))
    out.result(body.get("message") or f"{phase} is no longer frozen", body)


COMMANDS = [apps, status, history, deploy, promote, rollback, redeploy, retry, cancel, logs, output, freeze,
            unfreeze, whoami]


def register(group: click.Group) -> None:
    for command in COMMANDS:
        group.add_command(command)

