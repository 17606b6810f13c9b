"""The app registry: which repositories this installation serves, under which slug."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import App, Installation
from app.plans import Repo, SyncInstallation


def slugify(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if not slug or not slug[0].isalpha():
        slug = "app-" + slug
    return slug[:30].rstrip("-")


def ensure_app(session: Session, repo: Repo) -> App:
    """The App for a repository, created on first sight; its clone data kept current."""
    app = session.scalar(select(App).where(App.full_name == repo.full_name))
    if app is None:
        owner, _, name = repo.full_name.partition("/")
        slug = slugify(name)
        if session.scalar(select(App.id).where(App.name == slug)) is not None:
            slug = slugify(f"{owner}-{name}")
        app = App(full_name=repo.full_name, name=slug)
        session.add(app)
    if repo.clone_url:
        app.clone_url = repo.clone_url
    if repo.html_url:
        app.html_url = repo.html_url
    if repo.installation_id:
        app.installation_id = repo.installation_id
    app.default_branch = repo.default_branch or app.default_branch
    app.active = True
    session.flush()
    return app


def sync_installation(session: Session, plan: SyncInstallation) -> None:
    installation = session.get(Installation, plan.installation_id)
    if installation is None:
        installation = Installation(id=plan.installation_id, account=plan.account)
        session.add(installation)
    installation.account = plan.account
    installation.suspended = plan.action == "suspend"
    for repo in plan.added:
        app = session.scalar(select(App).where(App.full_name == repo.full_name))
        if app is None:
            ensure_app(session, repo)
        else:
            app.installation_id, app.active = plan.installation_id, True
    removed = list(plan.removed)
    if plan.action == "deleted":
        removed += session.scalars(
            select(App.full_name).where(App.installation_id == plan.installation_id)
        ).all()
    for full_name in removed:
        app = session.scalar(select(App).where(App.full_name == full_name))
        if app is not None:
            app.active = False
    session.flush()
