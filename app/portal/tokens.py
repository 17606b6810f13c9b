"""The portal's page for personal API tokens: create (shown once), see last use, revoke."""

from __future__ import annotations

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for

from app import api_tokens
from app.security import protect_forms
from app.portal.auth import Kind, current_user

bp = Blueprint("tokens", __name__)
bp.before_request(protect_forms)


@bp.before_request
def require_sign_in():
    if current_user() is None:
        return redirect(url_for("auth.signin", next=request.full_path.rstrip("?")))
    return None


def _ctx():
    return current_app.extensions["release_pipeline"]


def _page(new_token: str | None = None, status: int = 200):
    user = current_user()
    with _ctx().db.session() as session:
        tokens = api_tokens.owned_by(session, user.login) if user.kind != Kind.TOKEN else []
    response = current_app.make_response((render_template(
        "tokens.html", tokens=tokens, new_token=new_token, can_create=user.kind != Kind.TOKEN,
        api_url=_ctx().settings.public_url), status))
    if new_token:
        response.headers["Cache-Control"] = "no-store"  # the one showing must not be kept anywhere
    return response


@bp.get("/tokens")
def tokens():
    return _page()


@bp.post("/tokens")
def create():
    user = current_user()
    if user.kind == Kind.TOKEN:
        abort(400, description="You signed in with the admin token: send it as the bearer token itself.")
    try:
        with _ctx().db.session() as session:
            _, plaintext = api_tokens.create(session, login=user.login, kind=user.kind,
                                             name=request.form.get("name", ""))
    except api_tokens.TokenError as exc:
        flash(f"{str(exc)[:1].upper()}{str(exc)[1:]}.", "error")
        return _page(status=400)
    return _page(new_token=plaintext, status=201)


@bp.post("/tokens/<id:token_id>/revoke")
def revoke(token_id: int):
    try:
        with _ctx().db.session() as session:
            row = api_tokens.revoke(session, login=current_user().login, token_id=token_id)
            name = row.name
    except api_tokens.TokenError:
        abort(404, description="You have no such token.")
    flash(f"Revoked “{name}”: it no longer works.", "success")
    return redirect(url_for("tokens.tokens"), code=303)
