"""Reporting to GitHub end to end: a signed push, the deploy job on a real queue, a real container,
and every report sent to the GitHub stand-in over HTTP by its own RQ job.

Pins what GitHub sees (the exact sequence and bodies the README promises: commit statuses and GitHub Deployments), that transient failures are
retried (502, `Retry-After`), that one installation token serves many jobs, that an outage of
GitHub never fails a deployment and that its reports catch up afterwards, that reporting off
records and logs what would have been sent, and that no credential ever reaches a log line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import timezone

import pytest
from rq import Queue, Retry, SimpleWorker, Worker
from rq.registry import FailedJobRegistry, ScheduledJobRegistry
from sqlalchemy import select

import app.jobs
from app.context import Context
from app.jobs import DEPLOYS, QUEUES, REPORTS
from app.models import App, Deployment, DeploymentStatus, Report, ReportState
from app.reporting import DESCRIPTION_LIMIT, Reports, short
from app.settings import PROJECT_ROOT
from tests.conftest import SECRET_KEY, WEBHOOK_SECRET
from tests.support.dockerkit import make_sample_repo, remove_instance_objects, require_engine
from tests.support.pipeline_e2e import INSTALLATION, REPO, REPO_FILE, Pipeline, service_environment
from workers import report as report_job
from workers import runtime

PORTAL = "http://portal.test"


@pytest.fixture
def make_pipeline(github, database_url, redis_conn, instance, tmp_path, monkeypatch) -> Iterator:
    """The service wired to the stand-in (or with reporting off), a fresh database, Redis, Docker."""
    engine = require_engine(instance)

    def make(*, reporting: bool = True, health_timeout: int | None = None) -> Pipeline:
        extra = {}
        if health_timeout is not None:
            config = (PROJECT_ROOT / "config" / "pipeline.yml").read_text()
            path = tmp_path / "pipeline.yml"
            path.write_text(config.replace("health_timeout: 30", f"health_timeout: {health_timeout}"))
            extra["PIPELINE_CONFIG"] = str(path)
        settings = service_environment(monkeypatch, database_url=database_url, instance=instance,
                                       tmp_path=tmp_path, github=github if reporting else None, **extra)
        return Pipeline(ctx=Context.from_settings(settings), github=github, redis_conn=redis_conn,
                        repo_path=tmp_path / "repo")

    try:
        yield make
    finally:
        runtime.reset()
        remove_instance_objects(engine.instance)


@pytest.fixture
def quick_retries(monkeypatch):
    """Report jobs retried after 1 s (production waits 5 s, then longer)."""
    monkeypatch.setitem(app.jobs.ReportJob.options, "retry", Retry(max=3, interval=[1]))


def run_queues(redis_conn, queues=QUEUES, *, with_scheduler: bool = False) -> dict[str, list[str]]:
    """A burst worker in this process; returns the ids of failed jobs per queue."""
    rq_queues = [Queue(name, connection=redis_conn) for name in queues]
    SimpleWorker(rq_queues, connection=redis_conn).work(burst=True, with_scheduler=with_scheduler)
    return {q.name: FailedJobRegistry(queue=q).get_job_ids() for q in rq_queues}


def github_calls(github) -> list[tuple[str, str]]:
    """What the app asked GitHub, minus token minting."""
    return [(c.method, c.path) for c in github.calls if not c.path.endswith("/access_tokens")]


def reports_of(pipeline: Pipeline) -> list[Report]:
    with pipeline.ctx.db.session() as session:
        return list(session.scalars(select(Report).order_by(Report.id)))


def credentials(github) -> list[str]:
    """Every secret that must never be written anywhere: tokens, JWTs, the private key."""
    jwts = {c.headers.get("Authorization", "").partition(" ")[2] for c in github.calls}
    key_body = "".join(github.private_key_pem.strip().splitlines()[1:-1])
    return [*github.issued_tokens, *(j for j in jwts if j), key_body[:64], key_body[-64:]]


def assert_no_credentials(github, *texts: str) -> None:
    secrets_ = credentials(github)
    assert len(secrets_) >= 3
    for text in texts:
        for secret in secrets_:
            assert secret not in text


def test_push_to_demo_reports_pending_deployment_and_success_in_order(make_pipeline, github, caplog):
    caplog.set_level(logging.DEBUG)
    pipeline = make_pipeline()
    sha = pipeline.commit("1.0.0")

    pipeline.push(sha)
    pipeline.work()

    (deployment,) = pipeline.deployments()
    assert deployment.status == DeploymentStatus.SUCCEEDED.value
    page = f"{PORTAL}/apps/shop/deployments/{deployment.id}"
    (gh_id,) = github.deployments
    repo = f"/repos/{REPO}"
    assert github_calls(github) == [
        ("POST", f"{repo}/statuses/{sha}"),
        ("POST", f"{repo}/deployments"),
        ("POST", f"{repo}/deployments/{gh_id}/statuses"),
        ("POST", f"{repo}/statuses/{sha}"),
        ("POST", f"{repo}/deployments/{gh_id}/statuses"),
    ]
    bodies = [c.json for c in github.calls if not c.path.endswith("/access_tokens")]
    version = deployment.version
    assert bodies[0] == {"state": "pending", "context": "release-pipeline/demo",
                         "description": f"{version} queued for demo", "target_url": page}
    assert bodies[1] == {
        "ref": sha, "environment": "demo",
        "payload": {"version": version, "deployment": deployment.id, "app": "shop"},
        "description": f"{version} to demo", "production_environment": False, "transient_environment": False,
        "auto_merge": False, "required_contexts": [],
    }
    assert bodies[2] == {"state": "in_progress", "log_url": page, "auto_inactive": True}
    assert bodies[3] == {"state": "success", "context": "release-pipeline/demo",
                         "description": f"{version} live", "target_url": deployment.url}
    assert bodies[4] == {"state": "success", "environment_url": deployment.url, "log_url": page,
                         "description": f"{version} live", "auto_inactive": True}
    # The phase URL GitHub links to really serves the version.
    assert pipeline.fetch(deployment.url, "/version").strip() == "1.0.0"
    assert [s["state"] for s in github.statuses[(REPO, sha)]] == ["pending", "success"]
    assert [s["state"] for s in github.deployments[gh_id]["statuses"]] == ["in_progress", "success"]
    assert all(r.state == ReportState.SENT.value for r in reports_of(pipeline))
    # One token for the clone and every report job.
    assert github.tokens_issued == 1
    assert_no_credentials(github, caplog.text)


def test_the_next_push_makes_the_earlier_github_deployment_inactive(make_pipeline, github):
    pipeline = make_pipeline()
    pipeline.push(pipeline.commit("1.0.0"))
    pipeline.work()
    pipeline.push(pipeline.commit("1.0.1"))
    pipeline.work()

    first, second = sorted(github.deployments)
    assert [s["state"] for s in github.deployments[first]["statuses"]] == ["in_progress", "success", "inactive"]
    assert [s["state"] for s in github.deployments[second]["statuses"]] == ["in_progress", "success"]
    assert all(c.json["auto_inactive"] is True for c in github.calls if c.path.endswith("/statuses")
               and "/deployments/" in c.path)


def test_a_failed_health_check_reports_failure_linking_the_portal(make_pipeline, github):
    pipeline = make_pipeline(health_timeout=2)
    pipeline.clone_url, sha = make_sample_repo(pipeline.repo_path, version_text="1.0.0", healthy=False,
                                               extra_files=REPO_FILE)

    pipeline.push(sha)
    pipeline.work()

    (deployment,) = pipeline.deployments()
    assert deployment.status == DeploymentStatus.FAILED.value
    page = f"{PORTAL}/apps/shop/deployments/{deployment.id}"
    final = github.statuses[(REPO, sha)][-1]
    assert final["state"] == "failure"
    assert final["target_url"] == page
    assert final["description"].startswith("health check failed: 404")
    assert "/healthz" in final["description"]
    assert len(final["description"]) <= DESCRIPTION_LIMIT
    (gh_deployment,) = github.deployments.values()
    assert [s["state"] for s in gh_deployment["statuses"]] == ["in_progress", "failure"]
    assert gh_deployment["statuses"][-1]["log_url"] == page
    assert gh_deployment["statuses"][-1]["environment_url"] == ""


def test_a_502_is_retried_by_rq_and_sent_once_it_passes(make_pipeline, github, redis_conn, quick_retries):
    pipeline = make_pipeline()
    sha = pipeline.commit("1.0.0")
    pipeline.push(sha)
    assert run_queues(redis_conn, (DEPLOYS,)) == {DEPLOYS: []}
    github.fail_next(1, status=502)

    failed = run_queues(redis_conn, (REPORTS,))

    # The first report job met the 502 and waits for its RQ retry; the next job sent the
    # pending status first (never overtaking it), then its own report, and so on.
    assert failed == {REPORTS: []}
    queue = Queue(REPORTS, connection=redis_conn)
    assert ScheduledJobRegistry(queue=queue).get_job_ids() == ["report-1"]
    reports = reports_of(pipeline)
    assert all(r.state == ReportState.SENT.value for r in reports)
    assert reports[0].kind == "status" and reports[0].attempts == 2 and reports[0].last_error == ""
    status_posts = [c for c in github.calls if c.path == f"/repos/{REPO}/statuses/{sha}"]
    assert [c.json["state"] for c in status_posts] == ["pending", "pending", "success"]  # the 502, the resend
    calls_before_retry = len(github.calls)

    time.sleep(1.2)
    assert run_queues(redis_conn, (REPORTS,), with_scheduler=True) == {REPORTS: []}

    retried = queue.fetch_job("report-1")
    assert retried.get_status() == "finished" and retried.return_value() == "nothing to send"
    assert len(github.calls) == calls_before_retry  # nothing sent twice
    assert [s["state"] for s in github.statuses[(REPO, sha)]] == ["pending", "success"]
    assert len(github.deployments) == 1


def test_a_rate_limit_is_retried_no_sooner_than_retry_after(make_pipeline, github, redis_conn, quick_retries):
    pipeline = make_pipeline()
    sha = pipeline.commit("1.0.0")
    pipeline.push(sha)
    assert run_queues(redis_conn, (DEPLOYS,)) == {DEPLOYS: []}
    github.rate_limit_next(1, retry_after=3)

    before = time.time()
    # Only the pending status's job: the others would wait behind it anyway.
    queue = Queue(REPORTS, connection=redis_conn)
    first_job = queue.job_ids[0]
    SimpleWorker([queue], connection=redis_conn).execute_job(queue.fetch_job(first_job), queue)

    scheduled = ScheduledJobRegistry(queue=queue)
    assert first_job in scheduled.get_job_ids()
    due = scheduled.get_scheduled_time(first_job).replace(tzinfo=timezone.utc).timestamp()
    # RQ keeps whole seconds; the interval of 1 s was stretched to GitHub's Retry-After of 3 s.
    assert due >= before + 3 - 1
    first_report = reports_of(pipeline)[0]
    assert first_report.state == ReportState.PENDING.value and "rate limited" in first_report.last_error

    time.sleep(max(0.0, due - time.time()) + 0.2)
    assert run_queues(redis_conn, (REPORTS,), with_scheduler=True) == {REPORTS: []}
    assert all(r.state == ReportState.SENT.value for r in reports_of(pipeline))
    assert [s["state"] for s in github.statuses[(REPO, sha)]] == ["pending", "success"]


def test_one_installation_token_serves_report_jobs_in_separate_processes(make_pipeline, github, redis_conn):
    pipeline = make_pipeline()
    pipeline.push(pipeline.commit("1.0.0"))
    assert run_queues(redis_conn, (DEPLOYS,)) == {DEPLOYS: []}
    # The clone minted the token; forget it so the report jobs have to share one among themselves.
    redis_conn.delete(*redis_conn.keys("rp:github:token:*"))
    queue = Queue(REPORTS, connection=redis_conn)
    assert len(queue.job_ids) == 4

    Worker([queue], connection=redis_conn).work(burst=True)  # forks a work horse per job

    assert FailedJobRegistry(queue=queue).get_job_ids() == []
    assert all(r.state == ReportState.SENT.value for r in reports_of(pipeline))
    assert github.tokens_issued == 2  # the clone's, then one for all four report jobs
    report_calls = [c for c in github.calls if c.path.startswith(f"/repos/{REPO}/")]
    tokens = {c.headers["Authorization"] for c in report_calls}
    assert len(tokens) == 1


def test_github_down_for_the_whole_deploy_then_the_reports_catch_up(make_pipeline, github, redis_conn, caplog,
                                                                     monkeypatch):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setitem(app.jobs.ReportJob.options, "retry", Retry(max=1, interval=0))  # RQ gives up quickly
    pipeline = make_pipeline()
    sha = pipeline.commit("1.0.0")
    github.down()

    pipeline.push(sha)
    failed = run_queues(redis_conn)

    (deployment,) = pipeline.deployments()
    assert deployment.status == DeploymentStatus.SUCCEEDED.value, deployment.reason
    assert pipeline.fetch(deployment.url, "/version").strip() == "1.0.0"
    assert failed[DEPLOYS] == [] and len(failed[REPORTS]) == 4
    reports = reports_of(pipeline)
    assert [(r.kind, r.state) for r in reports] == [
        ("status", "pending"), ("deployment", "pending"), ("status", "pending"), ("deployment_status", "pending"),
    ]
    assert all(r.attempts >= 1 and "502" in r.last_error for r in reports[:1])
    assert github.statuses == {} and github.deployments == {}

    github.down(False)
    assert report_job.catch_up(older_than_seconds=0) == 4
    assert run_queues(redis_conn, (REPORTS,)) == {REPORTS: []}

    assert all(r.state == ReportState.SENT.value for r in reports_of(pipeline))
    assert [s["state"] for s in github.statuses[(REPO, sha)]] == ["pending", "success"]
    (gh_deployment,) = github.deployments.values()
    assert [s["state"] for s in gh_deployment["statuses"]] == ["in_progress", "success"]
    assert gh_deployment["statuses"][-1]["environment_url"] == deployment.url
    # Nothing sent twice, and the deployment was never touched by the outage.
    assert len([c for c in github.calls if c.path == f"/repos/{REPO}/deployments"]) == 1
    with pipeline.ctx.db.session() as session:
        assert session.get(Deployment, deployment.id).status == DeploymentStatus.SUCCEEDED.value
    # No credential in any log line, stored error or failed job's traceback.
    texts = [caplog.text, *(r.last_error for r in reports)]
    for job_id in failed[REPORTS]:
        job = Queue(REPORTS, connection=redis_conn).fetch_job(job_id)
        texts.append((job.latest_result().exc_string if job and job.latest_result() else "") or "")
    assert_no_credentials(github, *texts)


def test_catch_up_leaves_reports_that_rq_will_still_retry(make_pipeline, github, redis_conn, quick_retries):
    pipeline = make_pipeline()
    pipeline.push(pipeline.commit("1.0.0"))
    run_queues(redis_conn, (DEPLOYS,))
    github.down()
    run_queues(redis_conn, (REPORTS,))  # every job now waits for its retry
    queue = Queue(REPORTS, connection=redis_conn)
    waiting = set(ScheduledJobRegistry(queue=queue).get_job_ids())
    assert len(waiting) == 4

    assert report_job.catch_up(older_than_seconds=0) == 4
    assert queue.job_ids == []  # no duplicate jobs: RQ's retries are still coming
    assert set(ScheduledJobRegistry(queue=queue).get_job_ids()) == waiting


def test_reporting_off_records_and_logs_what_would_have_been_sent(make_pipeline, github, caplog):
    caplog.set_level(logging.INFO, logger="app.reporting")
    pipeline = make_pipeline(reporting=False)
    sha = pipeline.commit("1.0.0")

    pipeline.push(sha)
    pipeline.work()

    (deployment,) = pipeline.deployments()
    assert deployment.status == DeploymentStatus.SUCCEEDED.value
    assert github.calls == []
    reports = reports_of(pipeline)
    assert [(r.kind, r.state) for r in reports] == [
        ("status", "recorded"), ("deployment", "recorded"), ("status", "recorded"), ("deployment_status", "recorded"),
    ]
    assert reports[2].body["state"] == "success" and reports[2].body["target_url"] == deployment.url
    lines = [r.getMessage() for r in caplog.records if r.name == "app.reporting"]
    assert len(lines) == 4
    assert all("would have sent" in line for line in lines)
    assert f"commit status pending release-pipeline/demo on {REPO}@{sha[:7]}" in lines[0]
    assert "GitHub deployment" in lines[1] and "to demo" in lines[1]
    assert f"commit status success release-pipeline/demo on {REPO}@{sha[:7]}" in lines[2]
    assert deployment.url in lines[2]
    assert "deployment status success" in lines[3] and f"environment_url {deployment.url}" in lines[3]
    assert SECRET_KEY not in caplog.text and WEBHOOK_SECRET not in caplog.text


# -- what is reported, without GitHub or Docker ----------------------------------------------------


@pytest.fixture
def recorded(ctx):
    """A deployment in the database and a Reports writer with reporting on."""
    reports = Reports(public_url=PORTAL + "/", enabled=True, last_phase="live")
    with ctx.db.session() as session:
        application = App(name="shop", full_name=REPO, installation_id=INSTALLATION)
        session.add(application)
        session.flush()
        yield reports, session, application


def _deployment(session, application, **fields) -> Deployment:
    values = dict(app_id=application.id, phase="live", version="v1.4.0", ref="refs/tags/v1.4.0", sha="c" * 40,
                  trigger="pull_request", status=DeploymentStatus.QUEUED.value, actor="maya")
    values.update(fields)
    deployment = Deployment(**values)
    session.add(deployment)
    session.flush()
    return deployment


def test_the_last_phase_is_a_production_environment_and_gets_its_pending_status_when_started(recorded):
    reports, session, application = recorded
    deployment = _deployment(session, application)
    assert reports.queued(session, application, _deployment(session, application, sha=None)) == []

    started = reports.started(session, application, deployment)

    assert [r.kind for r in started] == ["status", "deployment"]
    assert started[0].body["description"] == "v1.4.0 deploying to live"
    assert started[1].body["production_environment"] is True
    assert started[1].body["payload"]["version"] == "v1.4.0"


def test_outcome_descriptions_and_states(recorded):
    reports, session, application = recorded
    live = _deployment(session, application, status=DeploymentStatus.SUCCEEDED.value,
                       url="http://shop-live.example")
    reports.started(session, application, live)
    assert [r.body for r in reports.finished(session, application, live) if r.kind == "status"][0] == {
        "sha": "c" * 40, "state": "success", "context": "release-pipeline/live", "description": "v1.4.0 live",
        "target_url": "http://shop-live.example",
    }

    reason = "health check failed: 503 Service Unavailable on /healthz after 30s " + "x" * 200
    failed = _deployment(session, application, status=DeploymentStatus.FAILED.value, reason=reason[:300])
    out = reports.finished(session, application, failed)
    assert [r.kind for r in out] == ["status", "deployment", "deployment_status"]  # failed before starting
    status = out[0].body
    assert status["state"] == "failure"
    assert status["target_url"] == f"{PORTAL}/apps/shop/deployments/{failed.id}"
    assert len(status["description"]) == DESCRIPTION_LIMIT and status["description"].endswith("…")
    assert status["description"].startswith("health check failed: 503 Service Unavailable on /healthz")
    assert out[2].body["state"] == "failure" and out[2].body["environment_url"] is None

    superseded = _deployment(session, application, status=DeploymentStatus.SUPERSEDED.value,
                             reason="superseded by deployment 9")
    out = reports.finished(session, application, superseded)
    assert [(r.kind, r.body.get("state")) for r in out if r.kind != "comment"] == [("status", "error")]

    internal = _deployment(session, application, status=DeploymentStatus.FAILED.value,
                           reason="internal error: KeyError")
    assert reports.finished(session, application, internal)[0].body["state"] == "error"
    refused = _deployment(session, application, status=DeploymentStatus.REFUSED.value,
                          reason="not deployed: 0 of 1 approvals")
    assert [(r.kind, r.body.get("state")) for r in reports.finished(session, application, refused)
            if r.kind != "comment"] == [("status", "failure")]


def test_short_keeps_one_line_within_the_limit():
    assert short("a\nb  c") == "a b c"
    assert len(short("y" * 500)) == DESCRIPTION_LIMIT
    assert short("y" * DESCRIPTION_LIMIT) == "y" * DESCRIPTION_LIMIT


def test_reports_are_never_sent_twice_by_concurrent_jobs(recorded, make_settings, database_url, github,
                                                         monkeypatch):
    """Two jobs for one app take turns (a Redis lock); the second finds the work done."""
    reports, session, application = recorded
    github.installations[REPO] = INSTALLATION
    deployment = _deployment(session, application, phase="demo", trigger="push")
    ids = [r.id for r in reports.started(session, application, deployment)]
    session.commit()
    sender_ctx = Context.from_settings(make_settings(DATABASE_URL=database_url, **github.environ))
    lock = sender_ctx.redis.lock(report_job.SEND_LOCK.format(app_id=application.id), timeout=5)
    assert lock.acquire()
    monkeypatch.setattr(report_job, "SEND_LOCK_WAIT_SECONDS", 0.2)
    with pytest.raises(report_job.TransientGitHubError, match="another job"):
        report_job.Sender(sender_ctx).send_up_to(ids[-1])
    lock.release()

    sender = report_job.Sender(sender_ctx)
    assert sender.send_up_to(ids[-1]) == f"sent {len(ids)}"
    assert sender.send_up_to(ids[0]) == "nothing to send"
    assert [c.path for c in github.calls if c.method == "POST"].count(f"/repos/{REPO}/deployments") == 1
