"""The portal's pages: apps, the pipeline board, history, deployments (live log), profiles.

Every page needs a signed-in user with at least read access to the app; every form posts
through `app.portal.changes`, the same functions the JSON API uses.
"""

from __future__ import annotations

import re
import time

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy import select
from werkzeug.exceptions import HTTPException

from app import previews
from app.actions import current, profile_differences, rollback_target
from app.exceptions import InvalidVersion, ReleasePipelineError
from app.freezes import frozen
from app.models import Deployment, DeploymentStatus, Profile
from app.permissions import Action, check
from app.portal import changes, live_log, queries, runtime_logs
from app.security import protect_forms
from app.portal.auth import current_user, role_for
from app.profiles import SIZING, resolve
from app.versions import validate_version

bp = Blueprint("portal", __name__)
bp.before_request(protect_forms)

LOG_PAGE_LINES = 5000
AUDIT_PAGE = 50


def _ctx():
    return current_app.extensions["release_pipeline"]


@bp.before_request
def require_sign_in():
    if current_user() is None:
        if request.endpoint in ("portal.deployment_events", "portal.apps_events", "portal.board_events",
                                "portal.phase_logs_events"):
            return {"error": "unauthorized", "reason": "sign in first"}, 401
        return redirect(url_for("auth.signin", next=request.full_path.rstrip("?")))
    return None


def _actor() -> str:
    return current_user().login


def _require_view(app) -> str:
    role = role_for(app)
    decision = check(role, Action.VIEW, None, _ctx().config.roles)
    if not decision.allowed:
        abort(403, description=f"You cannot see {app.full_name}: {decision.reason}.")
    return role


def _form_failure(exc: HTTPException, target: str):
    """A refused form: say why on the page the user came from (post/redirect/get)."""
    flash(exc.description, "error")
    return redirect(target, code=303)


# --- pages ----------------------------------------------------------------------------------------


def _visible_apps(session) -> list:
    return [app for app in queries.list_apps(session)
            if check(role_for(app), Action.VIEW, None, _ctx().config.roles).allowed]


@bp.get("/")
def apps():
    ctx = _ctx()
    with ctx.db.session() as session:
        visible = _visible_apps(session)
        index = queries.containers(ctx) if visible else {}
        rows = queries.summaries(ctx, session, visible, index)
        state = queries.fingerprint(session, [app.id for app in visible], new_apps=True)
    return render_template("apps.html", rows=rows, phases=ctx.config.phase_names, health_known=index is not None,
                           live_state=state, live_stream=url_for("portal.apps_events"))


@bp.get("/events")
def apps_events():
    """Server-sent events: `state` whenever what the apps list shows changes."""
    ctx = _ctx()
    with ctx.db.session() as session:
        ids = [app.id for app in _visible_apps(session)]
    return live_log.watch_response(ctx, ids, new_apps=True)


@bp.get("/apps/<name>/events")
def board_events(name: str):
    """Server-sent events: `state` whenever what the board (or a phase's history) shows changes."""
    ctx = _ctx()
    with ctx.db.session() as session:
        app = queries.get_app(session, name)
        _require_view(app)
        app_id = app.id
    return live_log.watch_response(ctx, [app_id])


@bp.get("/apps/<name>")
def board(name: str):
    ctx = _ctx()
    with ctx.db.session() as session:
        app = queries.get_app(session, name)
        role = _require_view(app)
        index = queries.containers(ctx, app.name)
        columns = queries.board(ctx, session, app, role, index)
        recent = queries.history(session, app, limit=12)
        app_id = app.id
        state = queries.fingerprint(session, [app_id])
    from app import services

    backing = services.describe_app(ctx, app_id)
    remove_services = {phase: check(role, Action.REMOVE_SERVICES, phase, ctx.config.roles) for phase in backing}
    return render_template("board.html", app=app, role=role, columns=columns, recent=recent,
                           health_known=index is not None, services=backing, remove_services=remove_services,
                           delete_app=check(role, Action.DELETE_APP, None, ctx.config.roles),
                           live_state=state, live_stream=url_for("portal.board_events", name=name))


@bp.get("/apps/<name>/previews")
def previews_page(name: str):
    """The app's pull request previews (README, Pull request previews): PR, state, URL, age, and a way to remove one."""
    ctx = _ctx()
    with ctx.db.session() as session:
        app = queries.get_app(session, name)
        role = _require_view(app)
        rows = previews.listing(session, app.id, include_gone=True)
    return render_template("previews.html", app=app, role=role, rows=rows, settings=ctx.config.previews,
                           can_remove=check(role, Action.REMOVE_PREVIEW, None, ctx.config.roles))


@bp.post("/apps/<name>/previews/<int:pr_number>/remove")
def remove_preview(name: str, pr_number: int):
    return _act(name, url_for("portal.previews_page", name=name), lambda: changes.remove_preview(
        _ctx(), name, pr_number, actor=_actor(), role_of=role_for, channel="in the Apps Portal"))


@bp.get("/apps/<name>/phases/<phase>")
def phase_history(name: str, phase: str):
    ctx = _ctx()
    before = request.args.get("before", type=queries.row_id)
    with ctx.db.session() as session:
        app = queries.get_app(session, name)
        role = _require_view(app)
        queries.require_phase(ctx.config, phase)
        rows = queries.history(session, app, phase, limit=50, before=before)
        serving = current(session, app.id, phase)
        audit = queries.audit_log(session, app, phase, limit=20)
        state = queries.fingerprint(session, [app.id])
    return render_template("history.html", app=app, role=role, phase=phase, rows=rows, serving=serving,
                           audit=audit, older=rows[-1].id if len(rows) == 50 else None,
                           live_state=state, live_stream=url_for("portal.board_events", name=name))


@bp.get("/apps/<name>/deployments/<id:deployment_id>")
def deployment(name: str, deployment_id: int):
    ctx = _ctx()
    with ctx.db.session() as session:
        app = queries.get_app(session, name)
        _require_view(app)
        d = queries.get_deployment(session, app, deployment_id)
        lines = queries.log_lines(session, d.id, limit=LOG_PAGE_LINES)
        source = session.get(Deployment, d.source_id) if d.source_id else None
        ahead = queries.queue_position(session, d)
    return render_template("deployment.html", app=app, d=d, lines=lines, source=source, ahead=ahead,
                           live=not queries.is_finished(d), last_id=lines[-1].id if lines else 0)


@bp.get("/apps/<name>/deployments/<id:deployment_id>/events")
def deployment_events(name: str, deployment_id: int):
    """Server-sent events: `line` per log line, `status` on each change, `done` at the end."""
    ctx = _ctx()
    with ctx.db.session() as session:
        app = queries.get_app(session, name)
        _require_view(app)
        queries.get_deployment(session, app, deployment_id)
    return live_log.response(ctx, deployment_id)


@bp.get("/apps/<name>/phases/<phase>/logs")
def phase_logs(name: str, phase: str):
    """The phase's own output: the last lines of its app container and services, then a live tail."""
    ctx = _ctx()
    lines = request.args.get("lines", runtime_logs.DEFAULT_LINES, type=int)
    lines = min(max(lines, 1), runtime_logs.MAX_LINES)
    since = time.time()  # the live tail goes on from here (a line may show twice, none is lost)
    try:
        app, found = runtime_logs.sources_for(ctx, name, phase, _require_view)
        shown, problem = runtime_logs.document(ctx, found, lines), None
    except ReleasePipelineError as exc:
        with ctx.db.session() as session:
            app = queries.get_app(session, name)
        shown, problem = {"lines": lines, "sources": []}, f"The output cannot be read: {exc}"
    return render_template("logs.html", app=app, phase=phase, shown=shown, problem=problem, since=since,
                           choices=(50, 200, 1000, runtime_logs.MAX_LINES))


@bp.get("/apps/<name>/phases/<phase>/logs/events")
def phase_logs_events(name: str, phase: str):
    """Server-sent events: each new line of the phase's containers, masked."""
    try:
        _, found = runtime_logs.sources_for(_ctx(), name, phase, _require_view)
    except ReleasePipelineError as exc:
        return {"error": "unavailable", "reason": f"the output cannot be read: {exc}"}, 503
    return runtime_logs.tail_response(_ctx(), found)


@bp.get("/apps/<name>/compare")
def compare(name: str):
    ctx = _ctx()
    names = ctx.config.phase_names
    default_source, default_target = (names[-2], names[-1]) if len(names) > 1 else (names[0], names[0])
    source = request.args.get("from", default_source)
    target = request.args.get("to", default_target)
    with ctx.db.session() as session:
        app = queries.get_app(session, name)
        _require_view(app)
        queries.require_phase(ctx.config, source)
        queries.require_phase(ctx.config, target)
        result = queries.compare(ctx, session, app, source, target)
    return render_template("compare.html", app=app, c=result, phases=names)


@bp.get("/apps/<name>/audit")
def audit(name: str):
    ctx = _ctx()
    before = request.args.get("before", type=int)
    with ctx.db.session() as session:
        app = queries.get_app(session, name)
        _require_view(app)
        entries = queries.audit_log(session, app, limit=AUDIT_PAGE, before=before)
    return render_template("audit.html", app=app, entries=entries, older=queries.next_page(entries, AUDIT_PAGE),
                           paged=before is not None)


@bp.get("/notifications")
def notifications():
    ctx = _ctx()
    user = current_user()
    with ctx.db.session() as session:
        visible, may_test = changes.notification_access(ctx, session, admin_everywhere=user.is_admin_everywhere,
                                                        role_of=role_for)
        targets = queries.notification_targets(ctx, session, visible, limit=20)
    return render_template("notifications.html", targets=targets, may_test=may_test)


@bp.post("/notifications/<target>/test")
def test_notification(target: str):
    user = current_user()
    try:
        changes.send_test_notification(_ctx(), target, actor=user.login, admin_everywhere=user.is_admin_everywhere,
                                       role_of=role_for)
    except HTTPException as exc:
        flash(exc.description, "error")
    else:
        flash(f"Test event queued for {target}: its delivery appears below.", "success")
    return redirect(url_for("portal.notifications"))


# --- actions --------------------------------------------------------------------------------------


@bp.get("/apps/<name>/phases/<phase>/promote")
def promote_preview(name: str, phase: str, field_error: str | None = None, status: int = 200):
    """The confirmation step of "Push to <phase>": what it will put there, and what changes."""
    ctx = _ctx()
    rename_to = (request.values.get("rename_to") or "").strip()
    if field_error is None and rename_to:
        try:
            validate_version(rename_to)
        except InvalidVersion as exc:
            field_error, status = str(exc), 422
    with ctx.db.session() as session:
        app = queries.get_app(session, name)
        role = _require_view(app)
        queries.require_phase(ctx.config, phase)
        earlier = ctx.config.previous_phases(phase)
        if not earlier:
            abort(404, description=f"{phase} is the first phase: nothing is pushed into it")
        source_phase = earlier[0]
        c = queries.compare(ctx, session, app, source_phase, phase)
        target_profile = resolve(session, ctx.config, app.id, phase).snapshot()
        running = c.target_current.profile_snapshot if c.target_current and c.target_current.profile_snapshot else {}
        differences = _differences(running, target_profile) if c.target_current else []
        freeze = frozen(session, ctx.config, app.id, phase)
    decision = check(role, Action.PROMOTE, phase, ctx.config.roles)
    return render_template("promote.html", app=app, phase=phase, c=c, rename_to=rename_to, field_error=field_error,
                           differences=differences, decision=decision, freeze=freeze,
                           needs_pr=ctx.config.phase(phase).approvals > 0), status


@bp.post("/apps/<name>/phases/<phase>/promote")
def promote(name: str, phase: str):
    back = url_for("portal.board", name=name)
    try:
        result = changes.promote(_ctx(), name, phase, actor=_actor(), role_of=role_for,
                                 rename_to=request.form.get("rename_to"))
    except HTTPException as exc:
        if exc.code == 404:
            raise
        if exc.code == 400 and (exc.description or "").startswith("rename_to: "):
            # Said next to the field it is about, on the confirmation page.
            return promote_preview(name, phase, field_error=exc.description.removeprefix("rename_to: "), status=422)
        return _form_failure(exc, back)
    if result.deployment_id is None:
        flash(result.message, "info")
        return redirect(back, code=303)
    flash(result.message[:1].upper() + result.message[1:] + ".", "success")
    return redirect(url_for("portal.deployment", name=name, deployment_id=result.deployment_id), code=303)


def _act(name: str, back: str, act) -> Response:
    """Run a portal form's change; the outcome (or why not) is flashed on the page it leads to."""
    try:
        result = act()
    except HTTPException as exc:
        if exc.code == 404:
            raise
        return _form_failure(exc, back)
    flash(result.message[:1].upper() + result.message[1:] + ".", "success")
    if result.deployment_id is not None:
        return redirect(url_for("portal.deployment", name=name, deployment_id=result.deployment_id), code=303)
    return redirect(back, code=303)


@bp.post("/apps/<name>/phases/<phase>/freeze")
def freeze(name: str, phase: str):
    return _act(name, url_for("portal.board", name=name), lambda: changes.freeze(
        _ctx(), name, phase, actor=_actor(), role_of=role_for, reason=(request.form.get("reason") or "")[:300]))


@bp.post("/apps/<name>/phases/<phase>/unfreeze")
def unfreeze(name: str, phase: str):
    return _act(name, url_for("portal.board", name=name), lambda: changes.unfreeze(
        _ctx(), name, phase, actor=_actor(), role_of=role_for))


@bp.post("/apps/<name>/phases/<phase>/redeploy")
def redeploy(name: str, phase: str):
    return _act(name, url_for("portal.board", name=name), lambda: changes.redeploy(
        _ctx(), name, phase, actor=_actor(), role_of=role_for))


@bp.post("/apps/<name>/deployments/<int:deployment_id>/retry")
def retry(name: str, deployment_id: int):
    return _act(name, url_for("portal.deployment", name=name, deployment_id=deployment_id),
                lambda: changes.retry(_ctx(), name, deployment_id, actor=_actor(), role_of=role_for))


@bp.post("/apps/<name>/deployments/<int:deployment_id>/cancel")
def cancel(name: str, deployment_id: int):
    back = url_for("portal.deployment", name=name, deployment_id=deployment_id)
    try:
        result = changes.cancel(_ctx(), name, deployment_id, actor=_actor(), role_of=role_for)
    except HTTPException as exc:
        if exc.code == 404:
            raise
        return _form_failure(exc, back)
    flash(result.message[:1].upper() + result.message[1:] + ".", "success")
    return redirect(back, code=303)


@bp.route("/apps/<name>/phases/<phase>/rollback", methods=["GET", "POST"])
def rollback(name: str, phase: str):
    ctx = _ctx()
    if request.method == "POST":
        back = url_for("portal.rollback", name=name, phase=phase)
        try:
            result = changes.rollback(ctx, name, phase, actor=_actor(), role_of=role_for,
                                      to_version=request.form.get("to_version"))
        except HTTPException as exc:
            if exc.code == 404:
                raise
            return _form_failure(exc, back)
        flash(result.message[:1].upper() + result.message[1:] + ".", "success")
        return redirect(url_for("portal.deployment", name=name, deployment_id=result.deployment_id), code=303)
    wanted = (request.args.get("to") or "").strip() or None
    with ctx.db.session() as session:
        app = queries.get_app(session, name)
        role = _require_view(app)
        queries.require_phase(ctx.config, phase)
        now, target = rollback_target(session, app.id, phase, to_version=wanted)
        choices = []
        if now is not None:
            seen = {now.version}
            for d in queries.history(session, app, phase, limit=200):
                if d.status == DeploymentStatus.SUCCEEDED.value and d.id < now.id and d.version not in seen:
                    seen.add(d.version)
                    choices.append(d)
        differences = _differences(now.profile_snapshot or {}, target.profile_snapshot or {}) if now and target else []
    decision = check(role, Action.ROLLBACK, phase, ctx.config.roles)
    return render_template("rollback.html", app=app, phase=phase, now=now, target=target, choices=choices,
                           wanted=wanted, differences=differences, decision=decision)


def _differences(before: dict, after: dict) -> list[str]:
    """Profile changes as the previews list them (secrets by name only)."""
    return [
        # A snapshot without a sizing value ran with none set; say so rather than "None".
        re.sub(r"\bNone\b", "not set", change) if change.split(" ", 1)[0] in SIZING else change
        for change in profile_differences(before, after)
    ]


@bp.post("/apps/<name>/phases/<phase>/services/remove")
def remove_services(name: str, phase: str):
    """The board's confirmed "Remove services and data" form (same path as the API's DELETE)."""
    back = url_for("portal.board", name=name)
    try:
        removed = changes.remove_services(_ctx(), name, phase, confirm=(request.form.get("confirm") or "").strip(),
                                          actor=_actor(), role_of=role_for)
    except HTTPException as exc:
        if exc.code == 404:
            raise
        return _form_failure(exc, back)
    flash(f"Removed the {phase} services ({', '.join(removed) or 'none'}) and their data. "
          f"The next deployment to {phase.capitalize()} creates new, empty ones.", "success")
    return redirect(back, code=303)


@bp.post("/apps/<name>/delete")
def delete_app(name: str):
    """The board's confirmed "Delete this app" form (same path as the API's DELETE)."""
    back = url_for("portal.board", name=name)
    try:
        changes.delete_app(_ctx(), name, confirm=(request.form.get("confirm") or "").strip(), actor=_actor(),
                           role_of=role_for)
    except HTTPException as exc:
        if exc.code == 404:
            raise
        return _form_failure(exc, back)
    flash(f"Deleted {name}: its containers, images, routes and backing services are gone. "
          "Its history stays readable here.", "success")
    return redirect(back, code=303)


@bp.route("/apps/<name>/phases/<phase>/profile", methods=["GET", "POST"])
def profile(name: str, phase: str):
    ctx = _ctx()
    if request.method == "POST":
        here = url_for("portal.profile", name=name, phase=phase)
        try:
            changed = changes.update_profile(ctx, name, phase, _profile_change_from_form(), actor=_actor(),
                                             role_of=role_for)
        except HTTPException as exc:
            if exc.code == 404:
                raise
            if exc.code == 400:  # about a field: said next to it, with what was typed kept
                return _profile_page(name, phase, error=exc.description or "invalid input", submitted=request.form)
            return _form_failure(exc, here)
        if changed:
            flash(f"Saved the {phase} profile: " + "; ".join(changed) + ". "
                  "It applies from the next deployment to this phase.", "success")
        else:
            flash("Nothing changed.", "info")
        return redirect(here, code=303)
    return _profile_page(name, phase)


def _profile_page(name: str, phase: str, *, error: str | None = None, submitted=None):
    """The profile editor; after a refused save, the server's message next to the field it
    names (`sizing/memory: …`, `env/NAME: …`) and the typed values (never secret values) kept."""
    ctx = _ctx()
    with ctx.db.session() as session:
        app = queries.get_app(session, name)
        role = _require_view(app)
        queries.require_phase(ctx.config, phase)
        resolved = resolve(session, ctx.config, app.id, phase)
        own = session.scalar(select(Profile).where(Profile.app_id == app.id, Profile.phase == phase))
        audit = queries.audit_log(session, app, phase, limit=10)
    decision = check(role, Action.EDIT_PROFILE, phase, ctx.config.roles)
    inherited_sizing = _inherited_sizing(ctx, name, phase)
    own_sizing = {k: getattr(own, k) for k in SIZING} if own else {}
    new_env: list[tuple[str, str]] = []
    new_secrets: list[str] = []
    field, message = None, None
    if error is not None:
        field, _, message = error.partition(": ") if re.match(r"(sizing|env|secrets)/[^:]*: ", error) else \
            (None, "", error)
        own_sizing.update({k: submitted.get(k, "") for k in SIZING})
        known = set(resolved.env)
        new_env = [(n.strip(), v) for n, v in zip(submitted.getlist("env_name"), submitted.getlist("env_value"),
                                                  strict=False) if (n.strip() or v) and n.strip() not in known]
        new_secrets = [n.strip() for n in submitted.getlist("secret_name") if n.strip()]
    return render_template(
        "profile.html", app=app, phase=phase, resolved=resolved, decision=decision, audit=audit,
        own_env=dict(sorted((own.env or {}).items())) if own else {},
        own_secrets=sorted((own.secrets or {}).keys()) if own else [],
        own_sizing=own_sizing, inherited_sizing=inherited_sizing, previous=ctx.config.previous_phases(phase),
        error=error, error_field=field, error_message=message, new_env=new_env, new_secrets=new_secrets,
    ), 422 if error else 200


def _inherited_sizing(ctx, name: str, phase: str) -> dict:
    """What each sizing field would be without this phase's own value (for placeholders)."""
    previous = ctx.config.previous_phases(phase)
    with ctx.db.session() as session:
        app = queries.get_app(session, name)
        rows = {p.phase: p for p in session.scalars(select(Profile).where(Profile.app_id == app.id))}
    out = {}
    for key in SIZING:
        for earlier in previous:
            row = rows.get(earlier)
            if row is not None and getattr(row, key) is not None:
                out[key] = (getattr(row, key), earlier)
                break
        else:
            for pipeline_profile in (ctx.config.phase(phase).profile, ctx.config.defaults.profile):
                if getattr(pipeline_profile, key) is not None:
                    out[key] = (getattr(pipeline_profile, key), "pipeline")
                    break
    return out


def _profile_change_from_form() -> changes.ProfileChange:
    form = request.form
    removed = set(form.getlist("env_remove"))
    env: dict[str, str] = {}
    for raw_name, value in zip(form.getlist("env_name"), form.getlist("env_value"), strict=False):
        name = raw_name.strip()
        if not name or name in removed:
            continue
        if name in env:
            abort(400, description=f"env/{name}: given twice")
        env[name] = value
    secrets_set: dict[str, str] = {}
    for name, value in zip(form.getlist("secret_update_name"), form.getlist("secret_update_value"), strict=False):
        if value:
            secrets_set[name] = value
    for raw_name, value in zip(form.getlist("secret_name"), form.getlist("secret_value"), strict=False):
        name = raw_name.strip()
        if not name and not value:
            continue
        if not value:
            abort(400, description=f"secrets/{name}: needs a value")
        secrets_set[name] = value
    return changes.ProfileChange(
        env=env,
        secrets_set=secrets_set,
        secrets_remove=set(form.getlist("secret_remove")) - set(secrets_set),
        sizing={key: form.get(key, "") for key in SIZING},
    )
