"""Reconcile tidies what a killed worker leaves besides containers: builds and scratch clones."""

from __future__ import annotations

import os
import time

import pytest
from sqlalchemy import select

from app.deployments import schedule
from app.jobs import DEPLOY_TIMEOUT
from app.locks import take
from app.models import Build
from app.plans import Deploy, Repo
from app.registry import ensure_app
from workers.reconcile import reconcile

pytestmark = pytest.mark.docker


def test_interrupted_builds_fail_and_old_scratch_clones_are_swept(ctx):
    with ctx.db.session() as session:
        idle = ensure_app(session, Repo("acme/idle", None, "main"))
        busy = ensure_app(session, Repo("acme/busy", None, "main"))
        session.add_all([Build(app_id=idle.id, tree_sha="a" * 40, commit_sha="a" * 40),
                         Build(app_id=busy.id, tree_sha="b" * 40, commit_sha="b" * 40)])
        running = schedule(session, busy, Deploy(repo=Repo("acme/busy", None, "main"), phase="demo", ref="b" * 40,
                                                 sha="b" * 40, version="bbbbbbb", trigger="push", actor="x"))
        running.status = "building"
    # the busy app's deploy holds its lock: it is really in progress
    take(ctx.redis, "busy", "demo", "deployment 1", expires=60)
    work = ctx.settings.work_dir
    old, fresh, other = work / "clone-old", work / "clone-fresh", work / "keep-me"
    for path in (old, fresh, other):
        path.mkdir(parents=True)
    long_ago = time.time() - DEPLOY_TIMEOUT - 60
    os.utime(old, (long_ago, long_ago))
    os.utime(other, (long_ago, long_ago))

    findings = reconcile(ctx)

    with ctx.db.session() as session:
        states = {b.app_id: (b.status, b.reason) for b in session.scalars(select(Build))}
    assert states[idle.id] == ("failed", "the build was interrupted")
    assert states[busy.id][0] == "building"
    assert findings.removed_work_dirs == ["clone-old"]
    assert not old.exists() and fresh.exists() and other.exists()
