"""JSON API v1: apps, phases, deployments, profiles and actions (OpenAPI at /api/v1/openapi.json).

Authentication: `Authorization: Bearer <token>` (the admin token, or a personal API token,
which acts with its owner's repository roles), or the portal's signed-in session (then
unsafe methods also need the session's CSRF token in `X-CSRFToken`). Permissions and
actions go through `app.portal.changes`, exactly like the portal's forms. Errors are JSON
`{"error", "reason"}` with 400/401/403/404/409.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, current_app, g, jsonify, request
from flask_wtf.csrf import generate_csrf
from sqlalchemy import select

from app import previews, shipped
from app.actions import Outcome, profile_differences, rollback_refusal, rollback_target
from app.exceptions import ReleasePipelineError
from app.models import App, Deployment, Profile
from app.permissions import Action, check
from app.api import shapes
from app.crypto import MASK
from app.portal import auth, changes, live_log, queries, runtime_logs
from app.security import csrf, UNSAFE
from app.profiles import SIZING, resolve

bp = Blueprint("api_v1", __name__, url_prefix="/api/v1")

PUBLIC = {"api_v1.openapi"}
MAX_LIMIT = 200


def _ctx():
    return current_app.extensions["release_pipeline"]


@bp.before_request
def authenticate():
    if request.endpoint in PUBLIC:
        return
    user = auth.user_from_bearer()
    if user is not None:
        g.user = user
        return
    if auth.current_user() is None:
        abort(401, description="sign in, or send Authorization: Bearer <admin token or personal API token>")
    if request.method in UNSAFE:
        csrf.protect()  # a session cookie alone must not be enough to act


def _actor() -> str:
    return auth.current_user().login


def _view(app) -> str:
    role = auth.role_for(app)
    decision = check(role, Action.VIEW, None, _ctx().config.roles)
    if not decision.allowed:
        abort(403, description=decision.reason)
    return role


def _int_arg(name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        abort(400, description=f"{name}: must be a whole number")
    if not low <= value <= high:
        abort(400, description=f"{name}: must be from {low} to {high}")
    return value


def _body(allowed: set[str]) -> dict[str, Any]:
    """The JSON object sent (empty when nothing was), with only the fields we know."""
    if not request.get_data(cache=True):
        return {}
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        abort(400, description="the body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        abort(400, description=f"{', '.join(unknown)}: not a known field (known: {', '.join(sorted(allowed))})")
    return body


def _optional_str(body: dict, key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        abort(400, description=f"{key}: must be a string")
    return value


# --- reading ------------------------------------------------------------------------------------


@bp.get("/me")
def me():
    user = auth.current_user()
    body = {"login": user.login, "signed_in_with": user.description, "admin_everywhere": user.is_admin_everywhere}
    if auth.bearer_token() is None:
        # Session clients (scripts in the portal's own pages) send this back as X-CSRFToken.
        body["csrf_token"] = generate_csrf()
    return jsonify(body)


@bp.get("/apps")
def list_apps():
    ctx = _ctx()
    with ctx.db.session() as session:
        apps = [app for app in queries.list_apps(session)
                if check(auth.role_for(app), Action.VIEW, None, ctx.config.roles).allowed]
        index = queries.containers(ctx) if apps else {}
        out = []
        for row in queries.summaries(ctx, session, apps, index):
            out.append({
                **shapes.app_json(row.app),
                "phases": {
                    phase: {
                        "version": serving.version if serving else None,
                        "sha": serving.sha if serving else None,
                        "url": serving.url if serving else None,
                        "deployed_at": queries.iso(serving.finished_at) if serving else None,
                        "in_progress": moving.version if moving else None,
                        "health": health.state,
                        "last_failure": {"id": failed.id, "version": failed.version, "status": failed.status}
                        if (failed := row.failures.get(phase)) else None,
                    }
                    for phase, serving, moving, health in row.phases
                },
            })
    return jsonify({"apps": out, "phases": ctx.config.phase_names})


def _app_document(ctx, session, app, role: str) -> dict:
    index = queries.containers(ctx, app.name)
    columns = queries.board(ctx, session, app, role, index)
    return {**shapes.app_json(app), "your_role": role, "phases": [shapes.phase_json(app, view) for view in columns],
            "previews": [preview_json(row) for row in previews.listing(session, app.id)]}


@bp.get("/apps/<name>")
def app_detail(name: str):
    ctx = _ctx()
    with ctx.db.session() as session:
        app = queries.get_app(session, name)
        return jsonify(_app_document(ctx, session, app, _view(app)))


@bp.get("/apps/<name>/events")
def app_events(name: str):
    """Server-sent events: `state` with the app's document (as GET /apps/<name>) at once and
    whenever a deployment of it is queued, moves on or ends, or a freeze or profile changes."""
    ctx = _ctx()
    with ctx.db.session() as session:
        app = queries.get_app(session, name)
        role, app_id = _view(app), app.id  # the role as it is now: the stream outlives the request
    return live_log.watch_response(ctx, [app_id], lambda session: _app_document(ctx, session, session.get(App, app_id),
                                                                                role))


@bp.get("/apps/<name>/previews")
def list_previews(name: str):
    """The app's pull request previews; `?all=1` adds removed and closed ones."""
    ctx = _ctx()
    with ctx.db.session() as session:
        app = queries.get_app(session, name)
        _view(app)
        rows = previews.listing(session, app.id, include_gone=request.args.get("all") in ("1", "true"))
    return jsonify({"previews": [preview_json(row) for row in rows]})


def preview_json(row: dict) -> dict:
    return {**row, "created_at": queries.iso(row["created_at"]), "active_at": queries.iso(row["active_at"])}


@bp.delete("/apps/<name>/previews/<int:pr_number>")
def remove_preview(name: str, pr_number: int):
    _body(set())
    result = changes.remove_preview(_ctx(), name, pr_number, actor=_actor(), role_of=auth.role_for,
                                    channel="through the API")
    return jsonify({"message": result.message}), 202


@bp.get("/apps/<name>/deployments")
def deployments(name: str):
    ctx = _ctx()
    phase = request.args.get("phase") or None
    limit = _int_arg("limit", 50, 1, MAX_LIMIT)
    before = _int_arg("before", None, 1, 2**62)
    with ctx.db.session() as session:
        app = queries.get_app(session, name)
        _view(app)
        if phase is not None:
            queries.require_phase(ctx.config, phase)
        rows = queries.history(session, app, phase, limit=limit, before=before)
        return jsonify({
            "deployments": [shapes.deployment_json(app, d) for d in rows],
            "next_before": rows[-1].id if len(rows) == limit else None,
        })


@bp.get("/apps/<name>/deployments/<id:deployment_id>")
def deployment_detail(name: str, deployment_id: int):
    ctx = _ctx()
    after = _int_arg("after", 0, 0, 2**62)
    with ctx.db.session() as session:
        app = queries.get_app(session, name)
        _view(app)
        d = queries.get_deployment(session, app, deployment_id)
        lines = queries.log_lines(session, d.id, after=after, limit=5000)
        return jsonify({
            **shapes.deployment_json(app, d),
            "evidence": d.evidence or {},
            "log": [{"id": line.id, "stream": line.stream, "text": line.text, "at": queries.iso(line.at)}
                    for line in lines],
        })


@bp.get("/apps/<name>/deployments/<id:deployment_id>/events")
def deployment_events(name: str, deployment_id: int):
    """The live log as server-sent events (`line`, `status`, `done`), as the portal shows it."""
    ctx = _ctx()
    with ctx.db.session() as session:
        app = queries.get_app(session, name)
        _view(app)
        queries.get_deployment(session, app, deployment_id)
    return live_log.response(ctx, deployment_id)


def _app_of(deployment_id: int) -> str:
    """Deployment ids are unique across apps: the command line names a deployment by id alone."""
    with _ctx().db.session() as session:
        d = session.get(Deployment, deployment_id)
        if d is None:
            abort(404, description=f"there is no deployment {deployment_id}")
        return d.app.name


@bp.get("/deployments/<id:deployment_id>")
def any_deployment(deployment_id: int):
    return deployment_detail(_app_of(deployment_id), deployment_id)


@bp.get("/deployments/<id:deployment_id>/events")
def any_deployment_events(deployment_id: int):
    return deployment_events(_app_of(deployment_id), deployment_id)


@bp.get("/apps/<name>/compare")
def compare(name: str):
    ctx = _ctx()
    names = ctx.config.phase_names
    source = request.args.get("from", names[-2] if len(names) > 1 else names[0])
    target = request.args.get("to", names[-1])
    with ctx.db.session() as session:
        app = queries.get_app(session, name)
        _view(app)
        queries.require_phase(ctx.config, source)
        queries.require_phase(ctx.config, target)
        c = queries.compare(ctx, session, app, source, target)
        return jsonify({
            "from": {"phase": source, "current": shapes.deployment_json(app, c.source_current)
                     if c.source_current else None},
            "to": {"phase": target, "current": shapes.deployment_json(app, c.target_current)
                   if c.target_current else None},
            "pending": [{**shapes.deployment_json(app, p.deployment), "was_in_target": p.was_in_target}
                        for p in c.pending],
            "profile_differences": [{"name": p.name, "kind": p.kind, "from": p.source, "to": p.target}
                                    for p in c.profile],
            "compare_url": c.compare_url,
            "commits": [{**commit, "url": shipped.commit_url(app.html_url, commit["sha"])} for commit in c.commits],
        })


@bp.get("/apps/<name>/audit")
def audit(name: str):
    ctx = _ctx()
    phase = request.args.get("phase") or None
    limit = _int_arg("limit", 100, 1, MAX_LIMIT)
    before = _int_arg("before", None, 1, 2**62)
    with ctx.db.session() as session:
        app = queries.get_app(session, name)
        _view(app)
        if phase is not None:
            queries.require_phase(ctx.config, phase)
        rows = queries.audit_log(session, app, phase, limit, before=before)
        return jsonify({
            "entries": [{"id": e.id, "at": queries.iso(e.at), "actor": e.actor, "phase": e.phase,
                         "action": e.action, "detail": e.detail} for e in rows],
            "next_before": queries.next_page(rows, limit),
        })


# --- notifications ------------------------------------------------------------------------------


@bp.get("/notifications")
def notifications():
    ctx = _ctx()
    limit = _int_arg("limit", 10, 1, MAX_LIMIT)
    user = auth.current_user()
    with ctx.db.session() as session:
        visible, may_test = changes.notification_access(ctx, session, admin_everywhere=user.is_admin_everywhere,
                                                        role_of=auth.role_for)
        targets = queries.notification_targets(ctx, session, visible, limit=limit)
        return jsonify({"can_send_test": may_test, "targets": [shapes.target_json(t) for t in targets]})


@bp.post("/notifications/<target>/test")
def test_notification(target: str):
    _body(set())
    notification_id = changes.send_test_notification(
        _ctx(), target, actor=_actor(), admin_everywhere=auth.current_user().is_admin_everywhere,
        role_of=auth.role_for)
    return jsonify({"notification": notification_id,
                    "message": f"test event queued for {target}; its delivery shows in GET /api/v1/notifications"}), 202


# --- runtime logs -------------------------------------------------------------------------------


def _runtime_sources(name: str, phase: str) -> runtime_logs.Sources:
    try:
        return runtime_logs.sources_for(_ctx(), name, phase, _view)[1]
    except ReleasePipelineError as exc:
        abort(503, description=f"the output cannot be read: {exc}")


@bp.get("/apps/<name>/phases/<phase>/logs")
def phase_logs(name: str, phase: str):
    """The last `lines` lines of the phase's app container and each backing service, masked."""
    lines = _int_arg("lines", runtime_logs.DEFAULT_LINES, 1, runtime_logs.MAX_LINES)
    found = _runtime_sources(name, phase)
    try:
        return jsonify({"app": name, "phase": phase, **runtime_logs.document(_ctx(), found, lines)})
    except ReleasePipelineError as exc:
        abort(503, description=f"the output cannot be read: {exc}")


@bp.get("/apps/<name>/phases/<phase>/logs/events")
def phase_logs_events(name: str, phase: str):
    """Server-sent events: `line` (source, at, text) for each new line, as `logs --tail` shows."""
    return runtime_logs.tail_response(_ctx(), _runtime_sources(name, phase))


# --- profiles -----------------------------------------------------------------------------------


def _profile_document(name: str, phase: str) -> dict:
    ctx = _ctx()
    with ctx.db.session() as session:
        app = queries.get_app(session, name)
        role = _view(app)
        queries.require_phase(ctx.config, phase)
        own = session.scalar(select(Profile).where(Profile.app_id == app.id, Profile.phase == phase))
        return {
            "app": app.name,
            "phase": phase,
            "inherits_from": ctx.config.previous_phases(phase),
            "can_edit": check(role, Action.EDIT_PROFILE, phase, ctx.config.roles).allowed,
            "effective": shapes.profile_json(resolve(session, ctx.config, app.id, phase)),
            "own": {
                "env": dict(sorted((own.env or {}).items())) if own else {},
                "secrets": {k: MASK for k in sorted(own.secrets or {})} if own else {},
                **{k: getattr(own, k) if own else None for k in SIZING},
            },
            "updated_by": own.updated_by if own else None,
            "updated_at": queries.iso(own.updated_at) if own else None,
        }


@bp.get("/apps/<name>/phases/<phase>/profile")
def get_profile(name: str, phase: str):
    return jsonify(_profile_document(name, phase))


@bp.route("/apps/<name>/phases/<phase>/profile", methods=["PUT", "PATCH"])
def change_profile(name: str, phase: str):
    body = _body({"env", "secrets", *SIZING})
    if not body:
        abort(400, description="send a JSON object with env, secrets, " + ", ".join(SIZING))
    replace = request.method == "PUT"
    env = body.get("env", {} if replace else None)
    secrets = body.get("secrets", {})
    if env is not None and not isinstance(env, dict):
        abort(400, description="env: must be an object of NAME: value")
    if not isinstance(secrets, dict):
        abort(400, description="secrets: must be an object of NAME: value (null removes)")
    change = changes.ProfileChange(
        secrets_set={k: v for k, v in secrets.items() if v is not None},
        secrets_remove={k for k, v in secrets.items() if v is None},
        sizing={k: body.get(k) for k in SIZING} if replace else {k: body[k] for k in SIZING if k in body},
    )
    if replace:
        change.env = env
    elif env is not None:
        change.env_set = {k: v for k, v in env.items() if v is not None}
        change.env_remove = {k for k, v in env.items() if v is None}
    changed = changes.update_profile(_ctx(), name, phase, change, actor=_actor(), role_of=auth.role_for)
    return jsonify({"changes": changed, "profile": _profile_document(name, phase)})


# --- actions ------------------------------------------------------------------------------------


def _action_response(name: str, result: Outcome):
    if result.deployment_id is None:
        p = result.promotion
        return jsonify({"message": result.message, "deployment": None, "promotion": {
            "phase": p.phase, "version": p.version, "sha": p.sha, "source_deployment": p.source_id,
            "head_branch": p.head_branch, "base_branch": p.branch, "title": p.title} if p else None}), 200
    with _ctx().db.session() as session:
        app = queries.get_app(session, name)
        d = queries.get_deployment(session, app, result.deployment_id)
        return jsonify({"message": result.message, "deployment": shapes.deployment_json(app, d),
                        "promotion": None}), 202


@bp.post("/apps/<name>/phases/<phase>/deploy")
def deploy(name: str, phase: str):
    body = _body({"sha"})
    result = changes.deploy(_ctx(), name, phase, sha=_optional_str(body, "sha"), actor=_actor(),
                            role_of=auth.role_for)
    return _action_response(name, result)


@bp.post("/apps/<name>/phases/<phase>/promote")
def promote(name: str, phase: str):
    body = _body({"version", "rename_to", "force"})
    result = changes.promote(_ctx(), name, phase, actor=_actor(), role_of=auth.role_for,
                             version=_optional_str(body, "version"), rename_to=_optional_str(body, "rename_to"),
                             force=_optional_str(body, "force"))
    return _action_response(name, result)


def _deployment_response(name: str, result: Outcome, status: int):
    """`{"deployment": id, ...}`: the contract the CLI (#17) reads."""
    with _ctx().db.session() as session:
        app = queries.get_app(session, name)
        d = queries.get_deployment(session, app, result.deployment_id)
        return jsonify({"deployment": d.id, "message": result.message, "phase": d.phase, "version": d.version,
                        "status": d.status, "details": shapes.deployment_json(app, d)}), status


@bp.post("/apps/<name>/phases/<phase>/redeploy")
def redeploy(name: str, phase: str):
    _body(set())
    result = changes.redeploy(_ctx(), name, phase, actor=_actor(), role_of=auth.role_for)
    return _deployment_response(name, result, 202)


@bp.post("/apps/<name>/deployments/<int:deployment_id>/retry")
def retry(name: str, deployment_id: int):
    _body(set())
    result = changes.retry(_ctx(), name, deployment_id, actor=_actor(), role_of=auth.role_for)
    return _deployment_response(name, result, 202)


@bp.post("/apps/<name>/deployments/<int:deployment_id>/cancel")
def cancel(name: str, deployment_id: int):
    _body(set())
    result = changes.cancel(_ctx(), name, deployment_id, actor=_actor(), role_of=auth.role_for)
    return _deployment_response(name, result, 200)


def _freeze_response(name: str, phase: str, message: str):
    from app.freezes import frozen

    ctx = _ctx()
    with ctx.db.session() as session:
        app = queries.get_app(session, name)
        freeze = frozen(session, ctx.config, app.id, phase)
        return jsonify({"phase": phase, "frozen": freeze is not None, "freeze": shapes.freeze_json(freeze),
                        "message": message})


@bp.post("/apps/<name>/phases/<phase>/freeze")
def freeze(name: str, phase: str):
    body = _body({"reason"})
    reason = _optional_str(body, "reason") or ""
    if len(reason) > 300 or "\x00" in reason:
        abort(400, description="reason: must be at most 300 characters, without NUL")
    result = changes.freeze(_ctx(), name, phase, actor=_actor(), role_of=auth.role_for, reason=reason)
    return _freeze_response(name, phase, result.message)


@bp.delete("/apps/<name>/phases/<phase>/freeze")
def unfreeze(name: str, phase: str):
    _body(set())
    result = changes.unfreeze(_ctx(), name, phase, actor=_actor(), role_of=auth.role_for)
    return _freeze_response(name, phase, result.message)


@bp.get("/apps/<name>/phases/<phase>/rollback")
def rollback_preview(name: str, phase: str):
    ctx = _ctx()
    wanted = request.args.get("to_version") or None
    with ctx.db.session() as session:
        app = queries.get_app(session, name)
        role = _view(app)
        queries.require_phase(ctx.config, phase)
        now, target = rollback_target(session, app.id, phase, to_version=wanted)
        refused = rollback_refusal(phase, now, target, wanted)
        if refused:
            abort(409, description=refused)
        return jsonify({
            "phase": phase,
            "allowed": check(role, Action.ROLLBACK, phase, ctx.config.roles).allowed,
            "current": shapes.deployment_json(app, now),
            "target": shapes.deployment_json(app, target),
            "changes": {
                "version": [now.version, target.version],
                "sha": [now.sha, target.sha],
                "image": [now.image_id, target.image_id],
                "profile": profile_differences(now.profile_snapshot or {}, target.profile_snapshot or {}),
            },
        })


@bp.post("/apps/<name>/phases/<phase>/rollback")
def rollback(name: str, phase: str):
    body = _body({"to_version"})
    result = changes.rollback(_ctx(), name, phase, actor=_actor(), role_of=auth.role_for,
                              to_version=_optional_str(body, "to_version"))
    return _action_response(name, result)


# --- backing services ---------------------------------------------------------------------------


@bp.get("/apps/<name>/phases/<phase>/services")
def list_services(name: str, phase: str):
    from app import services

    ctx = _ctx()
    with ctx.db.session() as session:
        app = queries.get_app(session, name)
        role = _view(app)
        queries.require_phase(ctx.config, phase)
        app_id = app.id
    return jsonify({
        "app": name,
        "phase": phase,
        "can_remove": check(role, Action.REMOVE_SERVICES, phase, ctx.config.roles).allowed,
        "services": services.describe(ctx, app_id, phase),
    })


@bp.delete("/apps/<name>/phases/<phase>/services")
def remove_services(name: str, phase: str):
    body = _body({"confirm"})
    removed = changes.remove_services(_ctx(), name, phase, confirm=_optional_str(body, "confirm"),
                                      actor=_actor(), role_of=auth.role_for)
    return jsonify({"removed": removed,
                    "message": f"removed the {phase} services ({', '.join(removed) or 'none'}) and their data; "
                               f"the next deployment to {phase} creates new ones"})


@bp.delete("/apps/<name>")
def delete_app(name: str):
    body = _body({"confirm"})
    removed = changes.delete_app(_ctx(), name, confirm=_optional_str(body, "confirm"), actor=_actor(),
                                 role_of=auth.role_for)
    return jsonify({"removed": removed, "message": f"deleted {name}: its containers, images, routes and backing "
                                                   "services are gone; its history stays readable"})


@bp.get("/openapi.json")
def openapi():
    from app.api.openapi import document

    return jsonify(document(_ctx().settings.public_url, _ctx().config.phase_names))
