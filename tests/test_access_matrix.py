"""Access (issue 8, item 5): one permission matrix — role × phase × action — tested exhaustively
wherever someone can ask for a change: `app.permissions` itself, the actions behind slash-commands
and the portal, the slash-command job with roles read from the GitHub stand-in, promotion pull
requests (approvals, and a repository file that cannot weaken them), and the portal and API.

The expected matrix below is written out by hand, independently of `app.permissions.RULES`:
if either changes, this test says where they disagree. A reader can never change a phase.
"""

from __future__ import annotations

import itertools
import re

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from rq import Queue
from sqlalchemy import func, select

from app.actions import Actions
from app.context import Context
from app.exceptions import ConfigError
from app.models import App, AuditEntry, Deployment, Profile
from app.permissions import AT_LEAST, PHASE, ROLES, RULES, Action, check
from app.pipeline import PROTECTED_KEYS, parse_pipeline, parse_repo_config
from app.planner import plan
from app.web import create_app
from tests.conftest import load_payload
from tests.support.portal_data import StubEngine, add_app, add_deployment, csrf_from, sign_in_as

PHASES = ("demo", "stage", "live")
# config/pipeline.yml
PHASE_ROLE = {"demo": "write", "stage": "maintain", "live": "admin"}
CHANGES = (Action.DEPLOY, Action.PROMOTE, Action.ROLLBACK, Action.EDIT_PROFILE, Action.MERGE_PROMOTION,
           Action.REMOVE_SERVICES)

#: THE MATRIX for the default pipeline: the least role each action needs on each phase.
EXPECTED: dict[Action, dict[str, str]] = {
    Action.DEPLOY: {"demo": "write", "stage": "maintain", "live": "admin"},
    Action.PROMOTE: {"demo": "write", "stage": "maintain", "live": "admin"},
    Action.ROLLBACK: {"demo": "write", "stage": "maintain", "live": "admin"},
    Action.EDIT_PROFILE: {"demo": "write", "stage": "maintain", "live": "admin"},
    Action.MERGE_PROMOTION: {"demo": "write", "stage": "maintain", "live": "admin"},
    Action.REMOVE_SERVICES: {"demo": "maintain", "stage": "maintain", "live": "admin"},
    Action.REDEPLOY: {"demo": "write", "stage": "maintain", "live": "admin"},
    Action.RETRY: {"demo": "write", "stage": "maintain", "live": "admin"},
    Action.CANCEL: {"demo": "write", "stage": "maintain", "live": "admin"},
    Action.FREEZE: {"demo": "write", "stage": "maintain", "live": "admin"},
    Action.UNFREEZE: {"demo": "write", "stage": "maintain", "live": "admin"},
    Action.OVERRIDE_FREEZE: {"demo": "admin", "stage": "admin", "live": "admin"},
    Action.STATUS: {"demo": "read", "stage": "read", "live": "read"},
    Action.HELP: {"demo": "read", "stage": "read", "live": "read"},
    Action.VIEW: {"demo": "read", "stage": "read", "live": "read"},
    Action.DELETE_APP: {"demo": "admin", "stage": "admin", "live": "admin"},
    # Pull request previews (README, Pull request previews): running a PR's (maybe a fork's) code needs previews.fork_role
    # (write by default, never less); removing a preview loses nothing a push cannot bring back.
    Action.DEPLOY_PREVIEW: {"demo": "write", "stage": "write", "live": "write"},
    Action.REMOVE_PREVIEW: {"demo": "write", "stage": "write", "live": "write"},
}
#: What GitHub may answer as a role, and the role we must treat it as.
ACTUAL_ROLES = {**{role: role for role in ROLES}, "pull": "read", "push": "write", "ADMIN": "admin",
                "Maintain": "maintain", "owner": "none", "custom-release-manager": "none", "": "none"}


def allowed(actual: str, required: str) -> bool:
    return ROLES.index(ACTUAL_ROLES.get(actual, actual)) >= ROLES.index(required)


@pytest.fixture(scope="module")
def config():
    from app.pipeline import load_pipeline
    from app.settings import PROJECT_ROOT

    loaded = load_pipeline(PROJECT_ROOT / "config" / "pipeline.yml")
    assert loaded.roles == PHASE_ROLE and loaded.phase("live").approvals >= 1
    return loaded


# --- the table itself ----------------------------------------------------------------------------


@pytest.mark.parametrize("fork_role, who", [("write", "write"), ("maintain", "maintain"), ("admin", "admin")])
def test_deploy_preview_needs_the_configured_fork_role(fork_role, who):
    for actual in ACTUAL_ROLES:
        decision = check(actual, Action.DEPLOY_PREVIEW, None, PHASE_ROLE, fork_role=fork_role)
        assert decision.required == who and decision.allowed == allowed(actual, who), (actual, fork_role)


def test_a_fork_role_below_write_is_refused_by_the_pipeline():
    for low in ("read", "triage"):
        with pytest.raises(ConfigError, match="previews/fork_role"):
            parse_pipeline(f"phases: {{demo: {{trigger: push}}}}\npreviews: {{fork_role: {low}}}\n")


def test_every_action_is_in_the_matrix_and_in_the_rules():
    assert set(EXPECTED) == set(RULES) == set(Action)


@pytest.mark.parametrize("action", list(Action))
def test_the_rules_match_the_matrix_for_every_role_and_phase(config, action):
    for actual, phase in itertools.product(ACTUAL_ROLES, PHASES):
        decision = check(actual, action, phase, config.roles)
        required = EXPECTED[action][phase]
        assert decision.required == required, (actual, action, phase)
        assert decision.allowed == allowed(actual, required), (actual, action, phase)
        if not decision.allowed:
            assert f"needs the {required} role" in decision.reason


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(roles=st.fixed_dictionaries({p: st.sampled_from(["read", "triage", "write", "maintain", "admin"])
                                    for p in PHASES}))
def test_no_phase_configuration_lets_a_reader_change_a_phase(roles):
    """Floors under the configured roles: even a phase configured as `read` needs triage to change."""
    for action, phase in itertools.product(CHANGES, PHASES):
        for reader in ("none", "read", "pull", "custom-role", "READ"):
            assert not check(reader, action, phase, roles).allowed, (reader, action, phase, roles)
        required = check("admin", action, phase, roles).required
        assert ROLES.index(required) >= ROLES.index(roles[phase])  # configuration can only raise it
        assert ROLES.index(required) >= ROLES.index(AT_LEAST.get(action, "none"))
        assert RULES[action] == PHASE


def test_a_role_typo_in_the_pipeline_is_refused_not_read_as_none():
    text = "phases:\n  demo:\n    trigger: push\n    role: wirte\n"
    with pytest.raises(ConfigError, match="phases/demo/role"):
        parse_pipeline(text)


# --- the actions behind slash-commands and the portal --------------------------------------------


def seed(ctx) -> int:
    """Two successful deployments per phase, so every allowed action has something to act on."""
    app_id = add_app(ctx)
    for phase in PHASES:
        add_deployment(ctx, app_id, phase, "v1.0.0", "a", minutes_ago=60)
        add_deployment(ctx, app_id, phase, "v1.1.0", "b", minutes_ago=30)
    return app_id


#: What an allowed action does, per phase (live needs an approved promotion PR).
ALLOWED_OUTCOME = {
    ("promote", "demo"): "first phase", ("promote", "stage"): "scheduled", ("promote", "live"): "promotion PR",
    ("rollback", "demo"): "scheduled", ("rollback", "stage"): "scheduled", ("rollback", "live"): "scheduled",
    ("deploy", "demo"): "scheduled", ("deploy", "stage"): "scheduled", ("deploy", "live"): "needs approvals",
    ("redeploy", "demo"): "scheduled", ("redeploy", "stage"): "scheduled", ("redeploy", "live"): "scheduled",
    ("freeze", "demo"): "froze", ("freeze", "stage"): "froze", ("freeze", "live"): "froze",
}
ACTION_OF = {"promote": Action.PROMOTE, "rollback": Action.ROLLBACK, "deploy": Action.DEPLOY,
             "redeploy": Action.REDEPLOY, "freeze": Action.FREEZE}


def test_actions_for_every_role_phase_and_action(ctx, redis_conn):
    app_id = seed(ctx)
    actions = Actions(ctx.config)
    wrong = []
    for actual, phase, name in itertools.product(ACTUAL_ROLES, PHASES, tuple(ACTION_OF)):
        session = ctx.db._sessions()
        try:
            app = session.get(App, app_id)
            before = session.scalar(select(func.count()).select_from(Deployment))
            common = dict(actor="someone", role=actual, trigger="matrix")
            if name == "promote":
                outcome = actions.promote(session, app, phase, **common)
            elif name == "rollback":
                outcome = actions.rollback(session, app, phase, **common)
            elif name == "redeploy":
                outcome = actions.redeploy(session, app, phase, **common)
            elif name == "freeze":
                outcome = actions.freeze(session, app, phase, actor="someone", role=actual, reason="matrix")
            else:
                outcome = actions.deploy_commit(session, app, phase, sha="c" * 40, **common)
            session.flush()
            added = session.scalar(select(func.count()).select_from(Deployment)) - before
        finally:
            session.rollback()
            session.close()
        required = EXPECTED[ACTION_OF[name]][phase]
        if not allowed(actual, required):
            ok = (not outcome.ok and f"needs the {required} role" in outcome.message and added == 0
                  and outcome.promotion is None)
        else:
            expected = ALLOWED_OUTCOME[(name, phase)]
            if expected == "scheduled":
                ok = outcome.ok and outcome.deployment_id is not None and added == 1
            elif expected == "froze":
                ok = outcome.ok and outcome.message.startswith(f"froze {phase}") and added == 0
            elif expected == "promotion PR":
                ok = outcome.ok and outcome.promotion is not None and outcome.deployment_id is None and added == 0
            else:
                ok = not outcome.ok and expected in outcome.message and added == 0
        if not ok:
            wrong.append(f"{actual!r} {name} {phase}: {outcome}, {added} deployment(s) added")
    assert not wrong, "\n".join(wrong)
    assert Queue("deploys", connection=redis_conn).job_ids == []  # actions schedule rows; callers enqueue


# --- slash-commands, with the role GitHub reports ------------------------------------------------


@pytest.fixture
def command_ctx(github, make_settings, database_url, redis_conn):
    ctx = Context.from_settings(make_settings(DATABASE_URL=database_url, **github.environ), engine=StubEngine())
    github.installations["acme/shop"] = 77
    github.pulls[("acme/shop", 1)] = {"title": "Feature", "user": {"login": "alice", "id": 5, "type": "User"},
                                      "head": {"ref": "feature", "sha": "c" * 40}, "base": {"ref": "main"}}
    return ctx


COMMANDS = [(f"/{name} {phase}", name, phase) for name in ("deploy", "promote", "rollback") for phase in PHASES]


@pytest.mark.parametrize("body, name, phase", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_slash_commands_for_every_role(command_ctx, github, redis_conn, body, name, phase):
    from workers.command import CommandJob

    ctx = command_ctx
    app_id = seed(ctx)
    outcomes = {}
    for index, role in enumerate(ROLES):
        login = f"user-{role}"
        if role != "none":  # "none": GitHub answers 404, as for someone who is not a collaborator
            github.permissions[("acme/shop", login)] = role
        outcomes[role] = CommandJob(ctx, app_id=app_id, pr_number=1, comment_id=5000 + index, actor=login,
                                    body=body).run()
    required = EXPECTED[ACTION_OF[name]][phase]
    with ctx.db.session() as session:
        queued = session.scalars(select(Deployment).where(Deployment.status == "queued")).all()
        actors = sorted(d.actor for d in queued)
    for role, outcome in outcomes.items():
        assert (outcome == "refused") == (not allowed(role, required)), (role, outcome)
    if ALLOWED_OUTCOME[(name, phase)] == "scheduled":
        assert actors == sorted(f"user-{r}" for r in ROLES if allowed(r, required))
        assert len(Queue("deploys", connection=redis_conn).job_ids) == len(actors)
    else:
        assert actors == [] and Queue("deploys", connection=redis_conn).job_ids == []
    assert all(d.phase == phase for d in queued)


# --- promotion pull requests: approvals gate them; a repository file cannot weaken that ----------


def _merged_into(base: str, *, author: str = "alice", merger: str = "maya") -> dict:
    payload = load_payload("pull_request/closed")
    pr = payload["pull_request"]
    pr.update(merged=True, title="Release v2.0.0", user={**pr["user"], "login": author},
              merged_by={**pr["user"], "login": merger})
    pr["base"]["ref"] = base
    pr["head"]["sha"] = "d" * 40
    return payload


def test_a_merged_promotion_into_live_always_carries_the_pipeline_s_approvals(config):
    decided = plan("pull_request", _merged_into("live"), config)
    assert decided.phase == "live" and decided.required_approvals == config.phase("live").approvals >= 1
    # a PR into any other branch deploys nothing, whatever it says about itself
    for base in ("main", "stage", "Live", "live ", "refs/heads/live"):
        assert type(plan("pull_request", _merged_into(base), config)).__name__ == "Ignore"


@pytest.mark.parametrize("reviews, enough", [
    ([], False),
    ([("alice", "APPROVED")], False),  # the author
    ([("ALICE", "APPROVED")], False),
    ([("bob", "COMMENTED")], False),
    ([("bob", "APPROVED"), ("bob", "CHANGES_REQUESTED")], False),
    ([("bob", "APPROVED"), ("bob", "DISMISSED")], False),
    ([("bob", "APPROVED")], True),
    ([("bob", "CHANGES_REQUESTED"), ("bob", "APPROVED"), ("bob", "COMMENTED")], True),
])
def test_a_merged_promotion_deploys_only_with_enough_approvals(command_ctx, github, config, reviews, enough):
    from workers.deploy import Refused, Rollout, load_snapshot

    ctx = command_ctx
    app_id = add_app(ctx)
    decided = plan("pull_request", _merged_into("live"), config)
    github.pulls[("acme/shop", decided.pr_number)] = {
        "title": "Release v2.0.0", "user": {"login": "alice", "id": 5, "type": "User"},
        "head": {"ref": "feature", "sha": "d" * 40}, "base": {"ref": "live"}}
    github.reviews[("acme/shop", decided.pr_number)] = [{"user": u, "state": s} for u, s in reviews]
    github.permissions[("acme/shop", "maya")] = "admin"  # merges: live needs admin
    github.permissions[("acme/shop", "bob")] = "write"   # reviews: approvals count from write up
    deployment_id = add_deployment(ctx, app_id, "live", "v2.0.0", "d", status="queued", trigger="pull_request",
                                   actor="maya", pr_number=decided.pr_number,
                                   required_approvals=decided.required_approvals)
    with ctx.db.session() as session:
        deployment = load_snapshot(session, deployment_id)
    rollout = Rollout(ctx, deployment_id)
    if enough:
        rollout.check_approvals(77, "acme/shop", deployment)
    else:
        with pytest.raises(Refused, match="required approvals"):
            rollout.check_approvals(77, "acme/shop", deployment)


@pytest.mark.parametrize("text", [
    *[yaml.safe_dump({key: 0}) for key in sorted(PROTECTED_KEYS)],
    yaml.safe_dump({"approvals": 0, "port": 8080}),
    yaml.safe_dump({"phases": {"live": {"approvals": 0, "role": "read", "trigger": "push"}}}),
    yaml.safe_dump({"roles": {"live": "read"}}),
    yaml.safe_dump({"defaults": {"profile": {"memory": "64g"}}}),
    "base: &weak {approvals: 0, role: read}\n<<: *weak\nport: 8080\n",
    yaml.safe_dump({"Approvals": 0}), yaml.safe_dump({"ROLE": "read"}),
    yaml.safe_dump({"services": {"db": {"image": "x", "port": 1, "approvals": 0}}}),
    yaml.safe_dump({"services": {"db": {"image": "x", "port": 1, "role": "read"}}}),
    yaml.safe_dump({"live": {"approvals": 0}}),
    yaml.safe_dump({"branch": "main"}), yaml.safe_dump({"trigger": "push"}),
])
def test_a_repository_file_cannot_weaken_roles_or_approvals(text):
    with pytest.raises(ConfigError):
        parse_repo_config(text)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(extra=st.dictionaries(st.sampled_from(sorted(PROTECTED_KEYS)), st.one_of(st.integers(), st.text(max_size=5),
                                                                                 st.none(), st.booleans()),
                             min_size=1),
       allowed_part=st.fixed_dictionaries({}, optional={"port": st.integers(1, 65535), "dockerfile": st.just("Dockerfile")}))
def test_any_protected_key_refuses_the_whole_file(extra, allowed_part):
    with pytest.raises(ConfigError, match="cannot be set from the repository"):
        parse_repo_config(yaml.safe_dump({**allowed_part, **extra}))


# --- the portal and the API -----------------------------------------------------------------------


@pytest.fixture
def portal_for(github, make_settings, database_url, redis_conn):
    """A portal client signed in with GitHub as a user holding `role` on acme/shop; with
    `via="token"`, an API client sending a personal token that user made in the portal instead."""
    ctx = Context.from_settings(make_settings(DATABASE_URL=database_url, GITHUB_CLIENT_ID="Iv1.client",
                                              GITHUB_CLIENT_SECRET="client-secret", **github.environ),
                                engine=MatrixEngine())
    flask_app = create_app(context=ctx)

    def make(role: str, via: str = "session"):
        login = f"user-{role}"
        if role != "none":
            github.permissions[("acme/shop", login)] = role
        client = flask_app.test_client()
        sign_in_as(client, ctx, login)
        csrf = csrf_from(client.get("/").get_data(as_text=True))
        if via == "session":
            return client, csrf
        made = client.post("/tokens", data={"name": "matrix", "csrf_token": csrf}).get_data(as_text=True)
        api = flask_app.test_client()
        api.environ_base["HTTP_AUTHORIZATION"] = "Bearer " + re.search(r'id="new-token">([^<]+)<', made).group(1)
        return api, ""

    return ctx, make


class MatrixEngine(StubEngine):
    """The portal's engine stub, with no backing services anywhere."""

    def service_containers(self, app, phase):
        return []

    def service_volumes(self, app, phase):
        return []


# (method, path under /api/v1/apps/shop/phases/<phase>/, action, body; "{phase}" is filled in)
API_ACTIONS = [
    ("POST", "deploy", Action.DEPLOY, {"sha": "d" * 40}),
    ("POST", "promote", Action.PROMOTE, {}),
    ("POST", "rollback", Action.ROLLBACK, {}),
    ("PATCH", "profile", Action.EDIT_PROFILE, {"memory": "1g", "env": {"CHANGED": "yes"}}),
    ("DELETE", "services", Action.REMOVE_SERVICES, {"confirm": "shop/{phase}"}),
]
#: The portal's form for each (deploying a commit is the API's and the command line's only), and what it posts.
PORTAL_FORMS = {"promote": ("promote", {}), "rollback": ("rollback", {}), "profile": ("profile", {"memory": "2g"}),
                "services": ("services/remove", {"confirm": "shop/{phase}"})}


#: A profile edit of a phase that later phases inherit (they set nothing themselves) needs the
#: role of every one of them (README: "Who may edit a profile").
INHERITED_EDIT = {"demo": "admin", "stage": "admin", "live": "admin"}
#: The same edit when every later phase sets the edited values itself: only the phase's own role.
OVERRIDDEN_EDIT = {"demo": "write", "stage": "maintain", "live": "admin"}


def refused_by(role: str, path: str, phase: str) -> str:
    """The role named in the refusal: the first phase the request reaches that `role` may not change."""
    reached = PHASES[PHASES.index(phase):] if path == "profile" else (phase,)
    if path == "services":
        return EXPECTED[Action.REMOVE_SERVICES][phase]
    return next(PHASE_ROLE[p] for p in reached if not allowed(role, PHASE_ROLE[p]))


def _filled(body: dict, phase: str) -> dict:
    return {k: v.format(phase=phase) if isinstance(v, str) else v for k, v in body.items()}


def _state(ctx) -> tuple:
    with ctx.db.session() as session:
        return (
            sorted((d.phase, d.version, d.status) for d in session.scalars(select(Deployment))),
            sorted((p.phase, p.memory, sorted((p.env or {}).items())) for p in session.scalars(select(Profile))),
            session.scalar(select(func.count()).select_from(AuditEntry)),
        )


@pytest.mark.parametrize("via", ["session", "token"])
def test_the_api_and_portal_for_every_role_phase_and_action(portal_for, redis_conn, via):
    ctx, make = portal_for
    seed(ctx)
    wrong = []
    changed_by_allowed = set()
    for role in ROLES:
        client, token = make(role, via)
        view = client.get("/api/v1/apps/shop")
        if (view.status_code == 200) != allowed(role, "read"):
            wrong.append(f"{role}: GET app {view.status_code}")
        for (method, path, action, body), phase in itertools.product(API_ACTIONS, PHASES):
            required = EXPECTED[action][phase]
            if path == "profile":  # nothing is set on later phases: the edit reaches them all
                required = INHERITED_EDIT[phase]
            before = _state(ctx), list(Queue("deploys", connection=redis_conn).job_ids)
            response = client.open(f"/api/v1/apps/shop/phases/{phase}/{path}", method=method,
                                   json=_filled(body, phase), headers={"X-CSRFToken": token})
            after = _state(ctx), list(Queue("deploys", connection=redis_conn).job_ids)
            reason = (response.get_json(silent=True) or {}).get("reason", "")
            if allowed(role, required):
                # 409: the first phase has nothing to promote from; 200: live opens a promotion PR
                if response.status_code not in (200, 202, 409):
                    wrong.append(f"{role} {method} {phase}/{path}: {response.status_code} {reason}")
                changed_by_allowed.add((path, phase, after != before))
            else:
                if response.status_code != 403 or after != before:
                    wrong.append(f"{role} {method} {phase}/{path}: {response.status_code} {reason}; "
                                 f"changed: {after != before}")
                elif allowed(role, "read") and f"needs the {refused_by(role, path, phase)} role" not in reason:
                    wrong.append(f"{role} {method} {phase}/{path}: reason {reason!r}")
            # the portal's own forms, same rule (a token is for the API only)
            if path not in PORTAL_FORMS or via == "token":
                continue
            form_path, form = PORTAL_FORMS[path]
            before = _state(ctx), list(Queue("deploys", connection=redis_conn).job_ids)
            page = client.post(f"/apps/shop/phases/{phase}/{form_path}",
                               data={"csrf_token": token, **_filled(form, phase)}, follow_redirects=True)
            after = _state(ctx), list(Queue("deploys", connection=redis_conn).job_ids)
            if not allowed(role, required):
                text = page.get_data(as_text=True)
                if after != before or (allowed(role, "read")
                                       and f"needs the {refused_by(role, path, phase)} role" not in text):
                    wrong.append(f"{role} portal {phase}/{path}: {page.status_code}, changed: {after != before}")
    assert not wrong, "\n".join(wrong)
    # allowed requests really acted: rollbacks, stage promotions and profile edits changed state
    assert {("rollback", "live", True), ("promote", "stage", True), ("profile", "demo", True),
            ("deploy", "stage", True)} <= changed_by_allowed


def test_a_reader_can_never_change_a_phase(portal_for, redis_conn):
    ctx, make = portal_for
    seed(ctx)
    for role in ("none", "read"):
        client, token = make(role)
        before = _state(ctx)
        for phase in PHASES:
            for method, path, _, body in API_ACTIONS:
                for version in (None, "v1.0.0", "v1.1.0"):
                    sent = {**body, "to_version": version} if path == "rollback" and version else _filled(body, phase)
                    if path == "promote" and version:
                        sent = {"version": version, "rename_to": "v9.9.9"}
                    response = client.open(f"/api/v1/apps/shop/phases/{phase}/{path}", method=method, json=sent,
                                           headers={"X-CSRFToken": token})
                    assert response.status_code == 403, (role, phase, path, response.get_json())
            for form_path, form in PORTAL_FORMS.values():
                client.post(f"/apps/shop/phases/{phase}/{form_path}",
                            data={"csrf_token": token, **_filled(form, phase), "memory": "9g"})
        assert _state(ctx) == before
        assert Queue("deploys", connection=redis_conn).job_ids == []


# --- a profile edit of a phase that others inherit ------------------------------------------------


@pytest.mark.parametrize("overridden", [False, True], ids=["inherited", "overridden-later"])
def test_a_profile_edit_needs_the_role_of_every_phase_it_reaches(portal_for, overridden):
    """Live has no profile of its own and inherits Demo's: a writer's Demo edit must not reach it.
    When every later phase sets the value itself, the edit reaches nobody else."""
    from tests.support.portal_data import set_profile

    ctx, make = portal_for
    app_id = seed(ctx)
    expected = OVERRIDDEN_EDIT if overridden else INHERITED_EDIT
    if overridden:
        for phase in PHASES:
            set_profile(ctx, app_id, phase, env={"LEVEL": phase}, memory="1g")
    wrong = []
    for phase, role in itertools.product(PHASES, ROLES):
        client, token = make(role)
        response = client.patch(f"/api/v1/apps/shop/phases/{phase}/profile",
                                json={"env": {"LEVEL": f"{role}-{phase}"}, "memory": "2g"},
                                headers={"X-CSRFToken": token})
        if (response.status_code == 200) != allowed(role, expected[phase]):
            wrong.append(f"{role} edits {phase}: {response.status_code} {(response.get_json() or {}).get('reason')}")
    assert not wrong, "\n".join(wrong)


# --- git events: push, tag, merged promotion PR -----------------------------------------------------

#: The least role of whoever caused a git-triggered deployment (written out by hand). A push to
#: Demo needs write, which GitHub itself proves by accepting the push: the sender is not asked about
#: ("none"), so a GitHub outage never stops Demo.
GIT_PATHS = {("push", "demo"): "none", ("tag", "stage"): "maintain", ("pull_request", "live"): "admin",
             ("promotion", "live"): "admin", ("push", "stage"): "maintain", ("tag", "live"): "admin"}


@pytest.mark.parametrize("trigger, phase", sorted(GIT_PATHS), ids=[f"{t}-{p}" for t, p in sorted(GIT_PATHS)])
def test_git_triggered_deploys_check_the_sender_s_role(command_ctx, github, trigger, phase):
    from workers.deploy import Refused, Rollout, load_snapshot

    ctx = command_ctx
    app_id = add_app(ctx)
    wrong = []
    for role in ACTUAL_ROLES:
        login = f"user-{role or 'blank'}"
        github.permissions[("acme/shop", login)] = role
        deployment_id = add_deployment(ctx, app_id, phase, "v9.9.9", "e", status="queued", trigger=trigger,
                                       actor=login)
        with ctx.db.session() as session:
            deployment = load_snapshot(session, deployment_id)
        try:
            Rollout(ctx, deployment_id).check_actor(77, "acme/shop", deployment)
            refused = None
        except Refused as exc:
            refused = str(exc)
        required = GIT_PATHS[(trigger, phase)]
        if required == "none" and github.calls_to("GET", f"/repos/acme/shop/collaborators/{login}/permission"):
            wrong.append(f"{trigger} → {phase}: asked GitHub for {login}'s role")
        if (refused is None) != allowed(role, required):
            wrong.append(f"{role!r} {trigger} → {phase}: {refused}")
        elif refused is not None and f"needs the {required} role" not in refused:
            wrong.append(f"{role!r} {trigger} → {phase}: reason {refused!r}")
    assert not wrong, "\n".join(wrong)


def test_commands_portal_api_and_rollbacks_are_not_checked_again_at_deploy_time():
    """Their role was checked when asked (the tests above); a deployment they queued keeps that."""
    from app import gates

    assert {t: gates.actor_action(t) for t in ("push", "tag", "pull_request", "promotion")} == {
        "push": Action.DEPLOY, "tag": Action.DEPLOY, "pull_request": Action.MERGE_PROMOTION,
        "promotion": Action.MERGE_PROMOTION}
    for trigger in ("command", "portal", "api", "rollback", "restore"):
        assert gates.actor_action(trigger) is None


# --- the informational commands -------------------------------------------------------------------


@pytest.mark.parametrize("body", ["/status", "/help"])
def test_status_and_help_need_read(command_ctx, github, body):
    from workers.command import CommandJob

    ctx = command_ctx
    app_id = seed(ctx)
    for index, role in enumerate(ROLES):
        login = f"user-{role}"
        if role != "none":
            github.permissions[("acme/shop", login)] = role
        outcome = CommandJob(ctx, app_id=app_id, pr_number=1, comment_id=7000 + index, actor=login, body=body).run()
        assert (outcome == "refused") == (not allowed(role, "read")), (role, outcome)
