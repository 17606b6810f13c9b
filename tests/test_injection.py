"""Injection (issue 8, item 2): hostile branch names, tags, versions, comment text, repository
names and paths are refused or handled as plain data everywhere — the planner and webhook, the
slash-command grammar, git, Docker names and labels, the router, app slugs, versions, and every
page the portal renders.

Shell injections here name a marker file with a random suffix; every test that could run one
checks afterwards that the marker was never created.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rq import Queue
from sqlalchemy import select

from app.adapters import git as gitadapter
from app.adapters.docker import ContainerSpec, Engine
from app.adapters.router import CaddyRouter, DirectRouter
from app.commands import Command, Malformed, parse
from app.exceptions import BuildFailed, CloneFailed, CloneRefused, DeployFailed, InvalidVersion, RouterError
from app.models import App, Deployment
from app.registry import slugify
from app.versions import is_release_tag, short_sha, validate_version, version_from_title
from tests.conftest import load_payload, recorded
from tests.support.dockerkit import make_sample_repo
from tests.support.portal_data import sign_in_as

MARKER = Path("/tmp") / f"pwned-{secrets.token_hex(6)}"
FILE_RULES = {"allowed_host": "github.com", "allow_file": True}
PHASES = ["demo", "stage", "live"]


@pytest.fixture(autouse=True)
def no_marker():
    """Nothing in this module may ever create the marker file."""
    MARKER.unlink(missing_ok=True)
    yield
    assert not MARKER.exists(), f"an injection ran: {MARKER} was created"


# The hostile words: shell, option and path-traversal injection, control characters, lookalikes.
SHELL = [
    f"$(touch {MARKER})", f"`touch {MARKER}`", f";touch {MARKER}", f"|touch {MARKER}", f"&& touch {MARKER}",
    f"$(touch${{IFS}}{MARKER})", f"`touch${{IFS}}{MARKER}`", f";touch${{IFS}}{MARKER}", "${IFS}", "$HOME",
]
OPTIONS = [f"--upload-pack=touch {MARKER}", f"--upload-pack=touch${{IFS}}{MARKER}", "-u", "--output=/tmp/x",
           f"-c core.sshCommand=touch${{IFS}}{MARKER}", "--exec=id"]
TRAVERSAL = ["../../etc/passwd", "..", "../", "/etc/passwd", "a/../../b", "..\\..\\windows", "%2e%2e%2f",
             "....//....//etc"]
CONTROL = ["main\n", "main\nrm -rf /", "v1.0.0\x00", "a\rb", "\x1b[31mred", "tab\there", "nul\x00byte"]
LOOKALIKES = ["ｖ1.0.0", "v１.２.３", "mаin", "v1.0.0\u200b", "\u202ev1.0.0", "v1.0.0\ufeff", "ⅼive", "dеmo"]
LONG = ["v" + "1" * 300, "a" * 10_000, "refs/heads/" + "x/" * 200]
HOSTILE = SHELL + OPTIONS + TRAVERSAL + CONTROL + LOOKALIKES + LONG + ["", " ", "'", '"', "\\", ";rm -rf /", "`id`"]


# --- the planner and the webhook ------------------------------------------------------------


def queued(redis_conn) -> list[str]:
    return [job for name in ("deploys", "commands", "reports") for job in Queue(name, connection=redis_conn).job_ids]


def _push(ref: str, sha: str = "a" * 40) -> dict:
    payload = load_payload("push/with-installation")
    payload.update(ref=ref, after=sha, deleted=False, head_commit={"id": sha})
    return payload


@pytest.mark.parametrize("branch", ["master$(touch x)", f"master$(touch${{IFS}}{MARKER})", "master;ls",
                                    "master`id`", "master\n", "../master", "--upload-pack=x", "ｍaster"])
def test_a_hostile_branch_is_just_another_branch(post_delivery, redis_conn, ctx, branch):
    response = post_delivery("push", _push(f"refs/heads/{branch}"))
    assert response.status_code == 202
    assert "deploys nothing" in recorded(ctx, response).reason
    assert queued(redis_conn) == []


@pytest.mark.parametrize("tag", ["v1.0.0;ls", "v1.0.0$(id)", "v1.0.0`id`", "v1.0.0 ", "v1.0.0\n", "v1.0.0/../x",
                                 "--upload-pack=v1.0.0", "v1.0", "v01.0.0", "ｖ1.0.0", "v1.0.0\u200b", "v" + "1" * 80])
def test_a_hostile_tag_is_not_a_release_tag(post_delivery, redis_conn, ctx, tag):
    assert not is_release_tag(tag)
    pushed = post_delivery("push", _push(f"refs/tags/{tag}"))
    create = load_payload("create/with-installation")
    create.update(ref=tag, ref_type="tag")
    created = post_delivery("create", create)
    release = load_payload("release/published")
    release["release"]["tag_name"] = tag
    released = post_delivery("release", release)
    for response in (pushed, created, released):
        assert response.status_code == 202, response.get_json()
        assert "not a release tag" in recorded(ctx, response).reason
    assert queued(redis_conn) == []
    with ctx.db.session() as session:
        assert session.scalars(select(Deployment)).all() == []


def test_a_hostile_default_branch_is_stored_as_plain_data(post_delivery, redis_conn, ctx):
    """The branch is the repository's default, so it deploys: the ref is data, git gets the sha."""
    branch = f"main$(touch${{IFS}}{MARKER})"
    payload = _push(f"refs/heads/{branch}")
    payload["repository"]["default_branch"] = branch
    response = post_delivery("push", payload)
    assert response.status_code == 202 and recorded(ctx, response).reason == "deploying aaaaaaa to demo"
    with ctx.db.session() as session:
        deployment = session.scalar(select(Deployment))
        assert (deployment.ref, deployment.sha, deployment.version) == (f"refs/heads/{branch}", "a" * 40, "aaaaaaa")


def test_a_merged_promotion_with_a_hostile_head_branch_and_title_deploys_a_safe_version(post_delivery, ctx):
    payload = load_payload("pull_request/closed")
    pr = payload["pull_request"]
    pr.update(merged=True, title=f"Release $(touch {MARKER}) v1.2.3;ls")
    pr["base"]["ref"] = "live"
    pr["head"].update(ref=f"promote/live/$(touch {MARKER})", sha="c" * 40)
    response = post_delivery("pull_request", payload)
    assert response.status_code == 202, response.get_json()
    with ctx.db.session() as session:
        deployment = session.scalar(select(Deployment))
        assert deployment.version == "v1.2.3" and deployment.trigger == "pull_request"


@pytest.mark.parametrize("field, value", [
    ("html_url", "javascript:alert(document.cookie)"),
    ("html_url", "data:text/html,<script>alert(1)</script>"),
    ("full_name", "acme/" + "x" * 300),
    ("full_name", "acme/\ud800"),
    ("clone_url", {"url": "ext::sh"}),
])
def test_repository_fields_that_cannot_be_data_are_refused(post_delivery, redis_conn, ctx, field, value):
    payload = _push("refs/heads/master")
    payload["repository"][field] = value
    response = post_delivery("push", payload)
    assert response.status_code == 202  # the request does not plan: the drainer refuses it
    delivery = recorded(ctx, response)
    assert delivery.outcome == "malformed" and delivery.reason
    assert queued(redis_conn) == []
    with ctx.db.session() as session:
        assert session.scalars(select(App)).all() == []


@pytest.mark.parametrize("name", ["../../etc/passwd", "$(touch x)", "acme/..", "acme/-rm -rf", "acme/ＳＨＯＰ",
                                  "acme/.git", "acme/a;b|c&d", "acme/" + "ü" * 40, "acme/\u202eevil"])
def test_app_slugs_from_hostile_repository_names(post_delivery, ctx, name):
    payload = _push("refs/heads/master")
    payload["repository"]["full_name"] = name
    assert post_delivery("push", payload).status_code == 202
    with ctx.db.session() as session:
        app = session.scalar(select(App))
        assert re.fullmatch(r"[a-z][a-z0-9-]{0,29}", app.name) and not app.name.endswith("-"), app.name
        assert app.full_name == name


def test_long_similar_repository_names_all_get_their_own_slug(post_delivery, ctx):
    """Slugs are cut to 30 characters: many names sharing that prefix must still register."""
    names = [f"acme/service-platform-backend-api-v{n}" for n in range(1, 6)]
    names += [f"acme-service/platform-backend-api-v{n}" for n in range(1, 3)]
    for name in names:
        payload = _push("refs/heads/master")
        payload["repository"]["full_name"] = name
        response = post_delivery("push", payload)
        assert response.status_code == 202, (name, response.get_json())
    with ctx.db.session() as session:
        slugs = session.scalars(select(App.name)).all()
    assert len(slugs) == len(set(slugs)) == len(names)
    assert all(re.fullmatch(r"[a-z][a-z0-9-]{0,29}", s) and not s.endswith("-") for s in slugs), slugs


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(st.text(max_size=80))
def test_slugify_yields_only_safe_names(text):
    slug = slugify(text)
    assert re.fullmatch(r"[a-z][a-z0-9-]{0,29}", slug), (text, slug)
    assert not slug.endswith("-") and "--" not in slug


# --- slash commands ---------------------------------------------------------------------------


@pytest.mark.parametrize("hostile", HOSTILE)
def test_slash_commands_never_carry_hostile_text(hostile):
    comments = [
        f"/promote stage {hostile}", f"/promote {hostile}", f"/promote stage v1.2.3 as {hostile}",
        f"/rollback live to {hostile}", f"/rollback {hostile}", f"/deploy {hostile}", f"/status {hostile}",
        f"/deploy demo{hostile}", f"/promote stage '{hostile}'", f'/promote stage "{hostile}"',
    ]
    for comment in comments:
        result = parse(comment, PHASES)
        if isinstance(result, Command):
            for value in vars(result).values():
                assert value is None or value in PHASES or validate_version(value) == value, (comment, result)
                assert value is None or hostile not in value or hostile == "" or value == hostile.strip(), comment
        else:
            assert result is None or isinstance(result, Malformed)


def test_a_command_with_a_hostile_version_gets_a_reply_not_a_command():
    for hostile in ("v1.0.0;ls", f"$(touch {MARKER})", "--upload-pack=x", "../../etc", "v1.0.0\x00"):
        result = parse(f"/promote live v1.0.0 as '{hostile}'", PHASES)
        assert isinstance(result, Malformed) and "not a valid version" in result.message
        assert "\x00" not in result.message


# --- versions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("hostile", HOSTILE + ["-v1", ".hidden", "v1.0.0+", "v1/0"])
def test_hostile_versions_are_invalid(hostile):
    with pytest.raises(InvalidVersion):
        validate_version(hostile)
    assert not is_release_tag(hostile)
    with pytest.raises(ValueError):
        short_sha(hostile)


@pytest.mark.parametrize("title", [f"Release $(touch {MARKER})", "v1.0.0;ls", "`v1.2.3`", "v1.2.3\nrm -rf /",
                                   "ｖ1.2.3", "v1.2.3.4", "xv1.2.3"])
def test_versions_read_from_titles_are_only_ever_semver(title):
    version = version_from_title(title)
    assert version is None or re.fullmatch(r"v[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.+-]*)?", version)
    assert version is None or validate_version(version) == version


# --- git ---------------------------------------------------------------------------------------


def _git(repo: Path, *args: str) -> str:
    env = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1", "PATH": "/usr/bin:/bin:/usr/local/bin",
           "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@x.test", "GIT_COMMITTER_NAME": "a",
           "GIT_COMMITTER_EMAIL": "a@x.test"}
    return subprocess.run(["git", "-C", str(repo), *args], env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture(scope="module")
def origin(tmp_path_factory) -> tuple[Path, str, str]:
    """A repository whose own path, branch and tag names are shell injections: (path, url, sha)."""
    path = tmp_path_factory.mktemp("inj") / f"repo;touch${{IFS}}{MARKER};$(touch${{IFS}}{MARKER})`id`"
    url, sha = make_sample_repo(path, version_text="1.0.0",
                                extra_files={"link-to-passwd": "placeholder"})
    # a symlink to a file outside the repository, committed as such
    (path / "link-to-passwd").unlink()
    (path / "link-to-passwd").symlink_to("/etc/passwd")
    _git(path, "add", "--all")
    _git(path, "commit", "--quiet", "-m", "symlink")
    sha = _git(path, "rev-parse", "HEAD")
    _git(path, "branch", f"main$(touch${{IFS}}{MARKER})")
    _git(path, "tag", "v1.0.0;ls")
    _git(path, "tag", f"v1.0.0$(touch${{IFS}}{MARKER})")
    return path, url, sha


@pytest.mark.parametrize("ref", SHELL + OPTIONS + TRAVERSAL + CONTROL + LONG + ["", "-", "main:refs/x", "a..b"])
def test_git_refuses_unsafe_refs_or_treats_them_as_names(origin, tmp_path, ref):
    _, url, _ = origin
    try:
        result = gitadapter.resolve_ref(url, ref, **FILE_RULES)
    except CloneRefused:
        with pytest.raises(CloneRefused):
            gitadapter.fetch_commit(url, ref, tmp_path / "co", **FILE_RULES)
        assert not (tmp_path / "co").exists()
        return
    # What git accepts as a ref name ("$", "(", "`" are legal) is looked up as a name, nothing more.
    assert re.fullmatch(r"[^\x00-\x20\x7f~^:?*\[\\]+", ref) and not ref.startswith("-"), ref
    assert result is None
    with pytest.raises(CloneFailed):
        gitadapter.fetch_commit(url, ref, tmp_path / "co", **FILE_RULES)


def test_git_fetches_branches_and_lists_tags_named_as_injections_as_plain_names(origin, tmp_path):
    path, url, sha = origin
    branch = f"main$(touch${{IFS}}{MARKER})"
    assert gitadapter.resolve_ref(url, branch, **FILE_RULES) == sha
    checkout = gitadapter.fetch_commit(url, f"refs/heads/{branch}", tmp_path / "co", **FILE_RULES)
    assert checkout.sha == sha
    tags = gitadapter.tags_at(url, sha, **FILE_RULES)
    assert "v1.0.0;ls" in tags and f"v1.0.0$(touch${{IFS}}{MARKER})" in tags
    assert not any(is_release_tag(tag) for tag in tags)


def test_git_reads_files_only_inside_the_repository(origin, tmp_path):
    _, url, sha = origin
    checkout = gitadapter.fetch_commit(url, sha, tmp_path / "co", **FILE_RULES)
    for path in TRAVERSAL[:-2] + ["/etc", "sub\\..\\..", "a\x00b"]:
        with pytest.raises(CloneRefused):
            gitadapter.read_file(checkout, path)
        with pytest.raises(CloneRefused):
            gitadapter.archive(checkout, path)
    # A committed symlink is read as the link it is, never followed out of the tree.
    assert gitadapter.read_file(checkout, "link-to-passwd") == "/etc/passwd"
    assert "root:" not in (gitadapter.read_file(checkout, "link-to-passwd") or "")


@pytest.mark.parametrize("url", [
    f"ext::sh -c touch% {MARKER}", f"ext::sh${{IFS}}-c${{IFS}}touch${{IFS}}{MARKER}", "ext::sh",
    "ssh://git@github.com/acme/shop.git", "git@github.com:acme/shop.git", "git://github.com/acme/shop.git",
    "http://github.com/acme/shop.git", "https://github.com@evil.example/acme/shop.git",
    "https://evil.example#@github.com/acme/shop.git", f"--upload-pack=touch${{IFS}}{MARKER}",
    f"-u{MARKER}", "file:///etc/../etc/passwd\n", "fd::17", "https://github.com/acme/shop.git\n--upload-pack=x",
    "\x00https://github.com/acme/shop.git",
])
def test_git_refuses_dangerous_transports(url, tmp_path):
    with pytest.raises(CloneRefused):
        gitadapter.fetch_commit(url, "main", tmp_path / "co", allowed_host="github.com", allow_file=False)
    with pytest.raises(CloneRefused):
        gitadapter.resolve_ref(url, "main", allowed_host="github.com", allow_file=True)
    with pytest.raises(CloneRefused):
        gitadapter.tags_at(url, "a" * 40, allowed_host="github.com", allow_file=True)
    assert not (tmp_path / "co").exists()


def test_git_itself_refuses_ext_even_past_the_url_check(tmp_path):
    """Defence in depth: GitPython refuses ext::, and the environment every git call gets
    (protocol.allow=never, then https and file only) makes git itself refuse it too."""
    from git.exc import UnsafeProtocolError

    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(tmp_path), **gitadapter._git_env(None, allow_file=True)}
    for url in (f"ext::sh -c touch% {MARKER}", f"ext::touch {MARKER}", f"ssh://-oProxyCommand=touch%20{MARKER}/x"):
        with pytest.raises((CloneFailed, UnsafeProtocolError)):
            gitadapter._ls_remote([url], token=None, allow_file=True)
        result = subprocess.run(["git", "ls-remote", url], env=env, cwd=tmp_path, capture_output=True, text=True,
                                timeout=30)
        assert result.returncode != 0 and "not allowed" in result.stderr, result.stderr


def test_a_file_url_with_injection_in_its_path_is_only_a_path(origin, tmp_path):
    path, url, sha = origin
    raw = f"file://{path}"  # unencoded: ; $ ( ) ` as they are
    assert gitadapter.resolve_ref(raw, "main", **FILE_RULES) == sha
    assert gitadapter.fetch_commit(url, "main", tmp_path / "co", **FILE_RULES).sha == sha
    missing = f"file:///tmp/nothing-here;touch${{IFS}}{MARKER}$(touch${{IFS}}{MARKER})"
    with pytest.raises(CloneFailed):
        gitadapter.fetch_commit(missing, "main", tmp_path / "co2", **FILE_RULES)


def test_tags_at_refuses_anything_but_a_sha(origin):
    _, url, _ = origin
    for sha in HOSTILE[:12] + ["main", "a" * 39, "g" * 40]:
        with pytest.raises(CloneRefused):
            gitadapter.tags_at(url, sha, **FILE_RULES)


# --- Docker names, labels and environment -----------------------------------------------------


def _spec(**changes) -> ContainerSpec:
    values = dict(app="shop", phase="demo", version="v1.2.3", sha="b" * 40, deployment_id=1,
                  image="sha256:" + "0" * 64, env={"GREETING": "hello"}, port=8080)
    values.update(changes)
    return ContainerSpec(**values)


@pytest.fixture
def engine() -> tuple[Engine, mock.MagicMock]:
    client = mock.MagicMock(name="docker client")
    return Engine(instance="tinj", client=client), client


NAMES = ["../x", "x/../../y", "shop;rm -rf /", "shop$(id)", "Shop", "shop:latest", "shop@sha256:00", "-shop",
         "shop name", "shop\n", "", "a" * 64, "ｓhop", "shop/evil", "shop.evil", "shop_x"]


@pytest.mark.parametrize("field, value", [
    *[("app", name) for name in NAMES],
    *[("phase", name) for name in NAMES],
    *[("version", v) for v in ["v1;ls", f"$(touch {MARKER})", "--rm", "a b", "v1\n", "", "x" * 65, "../v1"]],
    *[("sha", s) for s in ["$(id)", "b" * 39 + "g", "--x", "b" * 40 + "\n"]],
    ("env", {"A=B": "x"}), ("env", {"": "x"}), ("env", {"A\x00": "x"}), ("env", {"1A": "x"}),
    ("env", {"A": "x\x00y"}), ("env", {"A B": "x"}),
])
def test_docker_refuses_unsafe_names_labels_and_environment(engine, field, value):
    engine, client = engine
    with pytest.raises(DeployFailed, match="refused"):
        engine.run_container(_spec(**{field: value}))
    assert client.mock_calls == []


@pytest.mark.parametrize("app, tree, sha", [
    ("../evil", "a" * 40, "b" * 40), ("shop:latest", "a" * 40, "b" * 40), ("other/repo", "a" * 40, "b" * 40),
    ("shop", "a" * 12 + ":latest", "b" * 40), ("shop", "../../", "b" * 40), ("shop", "a" * 40, "$(id)"),
])
def test_docker_build_refuses_unsafe_tags(engine, app, tree, sha):
    engine, client = engine
    with pytest.raises(BuildFailed):
        engine.build_image(app=app, tree=tree, sha=sha, context_tar=b"", on_line=lambda line: None)
    assert client.mock_calls == []


def test_docker_gets_safe_values_verbatim(engine):
    engine, client = engine
    client.containers.create.return_value.ports = {"8080/tcp": [{"HostPort": "32001"}]}
    running = engine.run_container(_spec(env={"NOTE": f"$(touch {MARKER}) is only text"}))
    assert running.name == "tinj-shop-demo-1" and running.host_port == 32001
    kwargs = client.containers.create.call_args.kwargs
    assert kwargs["name"] == "tinj-shop-demo-1"
    assert kwargs["labels"]["release-pipeline.version"] == "v1.2.3"
    assert kwargs["environment"]["NOTE"] == f"$(touch {MARKER}) is only text"
    assert "command" in kwargs and kwargs["command"] is None  # the image's own command, no shell line of ours


# --- router ------------------------------------------------------------------------------------


@pytest.mark.parametrize("app, phase", [*[(name, "demo") for name in NAMES if name not in ("a" * 64,)],
                                         *[("shop", name) for name in NAMES if name not in ("a" * 64,)]])
def test_routers_refuse_unsafe_slugs(app, phase):
    from app.adapters.router import Slots

    # Nothing listens on the admin URL: a request sent would fail as unreachable, not as a slug.
    caddy = CaddyRouter("http://127.0.0.1:9", 8088, instance="tinj")
    direct = DirectRouter()
    for router in (caddy, direct):
        with pytest.raises(RouterError, match="is not a slug"):
            router.ensure_route(app, phase, Slots(32000, 32001), serving=32000)
        with pytest.raises(RouterError, match="is not a slug"):
            router.remove(app, phase)
        with pytest.raises(RouterError, match="is not a slug"):
            router.url_for(app, phase, 32000)
    assert direct.routes() == {}


@pytest.mark.parametrize("ports", [("80", 81), (True, 2), (0, 1), (70000, 1), (1, 1), (-1, 5), (1.5, 2), (None, 2)])
def test_router_slots_are_tcp_ports_only(ports):
    from app.adapters.router import Slots

    with pytest.raises(RouterError):
        Slots(*ports)


def test_router_instance_must_be_a_slug():
    with pytest.raises(RouterError):
        CaddyRouter("http://127.0.0.1:9", 8088, instance="../../config")


# --- the portal escapes everything it shows ----------------------------------------------------

XSS = {
    "version": "<script>alert('v')</script>",
    "actor": '"><img src=x onerror=alert(1)>',
    "reason": "<iframe src=javascript:alert(2)>",
    "log": "</pre><script>alert(3)</script>",
    "env": "<svg onload=alert(4)>",
    "full_name": "acme/<b onmouseover=alert(5)>shop",
    "audit": "<marquee>",
}


@pytest.fixture
def portal(make_settings, database_url, redis_conn):
    from app.context import Context
    from app.web import create_app
    from tests.support.portal_data import ADMIN_TOKEN, StubEngine

    ctx = Context.from_settings(make_settings(DATABASE_URL=database_url, ADMIN_TOKEN=ADMIN_TOKEN), engine=StubEngine())
    client = create_app(context=ctx).test_client()
    sign_in_as(client, ctx, "admin", "token")
    return ctx, client


def test_the_portal_escapes_hostile_versions_actors_and_logs(portal):
    from app.models import AuditEntry
    from tests.support.portal_data import add_app, add_deployment, add_log, set_profile

    ctx, client = portal
    app_id = add_app(ctx, full_name=XSS["full_name"])
    first = add_deployment(ctx, app_id, "demo", "a1b2c3d", "a", minutes_ago=30, actor=XSS["actor"])
    hostile = add_deployment(ctx, app_id, "demo", XSS["version"], "b", actor=XSS["actor"], reason=XSS["reason"])
    add_deployment(ctx, app_id, "stage", XSS["version"], "b", actor=XSS["actor"])
    failed = add_deployment(ctx, app_id, "live", XSS["version"], "c", status="failed", reason=XSS["reason"],
                            actor=XSS["actor"])
    add_log(ctx, hostile, XSS["log"], "line two\n\nevent: done\ndata: {}")
    set_profile(ctx, app_id, "demo", env={"GREETING": XSS["env"]})
    with ctx.db.session() as session:
        session.add(AuditEntry(actor=XSS["actor"], app_id=app_id, phase="demo", action="promote",
                               detail={"version": XSS["version"], "note": XSS["audit"]}))
    pages = [
        "/", "/apps/shop", "/apps/shop/phases/demo", "/apps/shop/phases/stage", "/apps/shop/phases/live",
        f"/apps/shop/deployments/{hostile}", f"/apps/shop/deployments/{failed}", f"/apps/shop/deployments/{first}",
        "/apps/shop/compare", "/apps/shop/audit", "/apps/shop/phases/demo/profile", "/apps/shop/phases/demo/rollback",
        f"/apps/shop/phases/demo/rollback?to={XSS['version']}",
    ]
    for page in pages:
        response = client.get(page)
        assert response.status_code == 200, (page, response.status_code)
        html = response.get_data(as_text=True)
        for what, raw in XSS.items():
            assert raw not in html, (page, what)
        assert "<script>alert" not in html and "onerror=alert" not in html.replace("onerror=alert(1)&gt;", "")
    board = client.get("/apps/shop").get_data(as_text=True)
    assert "&lt;script&gt;alert(" in board and "&lt;img src=x onerror=alert(1)&gt;" in board
    log = client.get(f"/apps/shop/deployments/{hostile}").get_data(as_text=True)
    assert "&lt;/pre&gt;&lt;script&gt;alert(3)&lt;/script&gt;" in log


def test_the_live_log_stream_cannot_be_broken_out_of(portal):
    from tests.support.portal_data import add_app, add_deployment, add_log

    ctx, client = portal
    app_id = add_app(ctx)
    deployment = add_deployment(ctx, app_id, "demo", "a1b2c3d", status="failed", reason="boom\n\nevent: done")
    add_log(ctx, deployment, XSS["log"], "two\n\nevent: status\ndata: {\"status\": \"succeeded\"}", "id: 999")
    stream = client.get(f"/apps/shop/deployments/{deployment}/events").get_data(as_text=True)
    events = [block for block in stream.split("\n\n") if block.strip()]
    kinds = [re.search(r"^event: (\w+)$", block, re.M).group(1) for block in events if "event:" in block]
    assert kinds == ["line", "line", "line", "status", "done"]
    for block in events:
        for line in block.splitlines():
            assert re.match(r"(id|event|data|retry): |: ", line), line
        data = [line.removeprefix("data: ") for line in block.splitlines() if line.startswith("data: ")]
        assert len(data) <= 1 and (not data or json.loads(data[0]))


def test_the_api_answers_hostile_values_as_json_strings(portal):
    from tests.support.portal_data import ADMIN_TOKEN, add_app, add_deployment

    ctx, client = portal
    app_id = add_app(ctx, full_name=XSS["full_name"])
    add_deployment(ctx, app_id, "demo", XSS["version"], actor=XSS["actor"])
    response = client.get("/api/v1/apps/shop", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.get_json()["phases"][0]["current"]["version"] == XSS["version"]
