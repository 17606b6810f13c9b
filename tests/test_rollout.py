"""The deploy job's bookkeeping without an engine: what it does with a deployment it cannot run."""

from __future__ import annotations

from app.deployments import schedule
from app.models import Deployment
from app.plans import Deploy, Repo
from app.registry import ensure_app
from workers.deploy import Rollout, load_snapshot


def test_a_missing_or_finished_deployment_is_nothing_to_do(ctx):
    assert Rollout(ctx, 424242).run() == "nothing to do"
    repo = Repo("acme/shop", None, "main")
    with ctx.db.session() as session:
        deployment = schedule(session, ensure_app(session, repo), Deploy(
            repo=repo, phase="demo", ref="a" * 40, sha="a" * 40, version="aaaaaaa", trigger="push", actor="dora"))
        session.flush()
        deployment.status, deployment_id = "cancelled", deployment.id
    assert Rollout(ctx, deployment_id).run() == "nothing to do"
    with ctx.db.session() as session:
        assert session.get(Deployment, deployment_id).status == "cancelled"
        snap = load_snapshot(session, deployment_id)
    assert (snap.app_name, snap.phase, snap.sha, snap.source, snap.serving_id) == ("shop", "demo", "a" * 40, None, None)
