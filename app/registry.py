"""The app registry: which repositories this installation serves, under which slug."""

from __future__ import annotations

import itertools
import re

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.models import App, Installation, utcnow
from app.plans import Repo, SyncInstallation


def slugify(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if not slug or not slug[0].isalpha():
        slug = "app-" + slug
    return slug[:30].rstrip("-")


def _free_slug(session: Session, owner: str, name: str) -> str:
    """The repository's name as a slug; its owner-name, or a numbered one, when that is taken.

    Slugs are cut to 30 characters, so long names sharing a prefix collide often.
    """
    base = slugify(f"{owner}-{name}")
    numbered = (f"{base[: 29 - len(str(n))].rstrip('-')}-{n}" for n in range(2, 10_000))
    for slug in itertools.chain((slugify(name), base), numbered):
        if session.scalar(select(App.id).where(App.name == slug)) is None:
            return slug
    raise ValueError(f"no free app name for {owner}/{name}")


def _insert_if_absent(session: Session, full_name: str) -> None:
    """Create the repository's row unless another transaction just did: concurrent first
    deliveries for one repository must not turn the unique violation into an outage (503)."""
    owner, _, name = full_name.partition("/")
    insert = {"postgresql": postgresql_insert, "sqlite": sqlite_insert}[session.get_bind().dialect.name]
    for _ in range(5):  # a concurrent new repository may take the same slug: pick again
        session.execute(insert(App).values(full_name=full_name, name=_free_slug(session, owner, name),
                                           default_branch="main", active=True, created_at=utcnow())
                        .on_conflict_do_nothing())
        if session.scalar(select(App.id).where(App.full_name == full_name)) is not None:
            return
    raise ValueError(f"no free app name for {full_name}")


def ensure_app(session: Session, repo: Repo) -> App:
    """The App for a repository, created on first sight; its clone data kept current."""
    app = session.scalar(select(App).where(App.full_name == repo.full_name))
    if app is None:
        _insert_if_absent(session, repo.full_name)
        app = session.scalar(select(App).where(App.full_name == repo.full_name))
    if repo.clone_url:
        app.clone_url = repo.clone_url
    if repo.html_url:
        app.html_url = repo.html_url
    if repo.installation_id:
        app.installation_id = repo.installation_id
    app.default_branch = repo.default_branch or app.default_branch
    app.active = app.deleted_at is None
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
            app.installation_id, app.active = plan.installation_id, app.deleted_at is None
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
