"""Metrics and logs of the real processes: the web server (`release-pipeline serve`) and an RQ worker
(`release-pipeline worker`) deploy a pushed commit; /metrics then shows what they counted."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from app.metrics import prepare_directory
from app.settings import PROJECT_ROOT
from tests.conftest import delivery_headers
from tests.support.dockerkit import free_port
from tests.support.faults import WorkerProcess, wait_for

TOKEN = "metrics-admin-token"


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
def pipeline_extra_env(tmp_path, metrics_port) -> dict[str, str]:
    return {"ADMIN_TOKEN": TOKEN, "LOG_FORMAT": "json", "METRICS_PORT": str(metrics_port),
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}


class Serve:
    """`release-pipeline serve` with the test's environment, on a port of its own."""

    def __init__(self, log: Path):
        self.port = free_port()
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port), "--workers", "2"],
                cwd=PROJECT_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)

        def answers() -> bool:
            assert self.process.poll() is None, self.log.read_text()
            try:
                return requests.get(f"{self.url}/metrics", headers=self.auth, timeout=10).status_code == 200
            except (requests.ConnectionError, requests.Timeout):  # still booting
                return False

        wait_for(answers, 60, "gunicorn answering", details=lambda: self.log.read_text()[-3000:])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    auth = {"Authorization": f"Bearer {TOKEN}"}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(scraped: dict, name: str, **labels) -> float | None:
    return scraped.get((name, frozenset(labels.items())))


def json_lines(path: Path) -> list[dict]:
    """Every line of the log, parsed: a line that is not one JSON object fails the test."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


@pytest.mark.docker
@pytest.mark.slow
def test_metrics_after_deploys_through_gunicorn_and_rq(pipeline, tmp_path, metrics_port):
    web = Serve(tmp_path / "web.log")
    worker = WorkerProcess(dict(os.environ), tmp_path / "worker.log")
    drainer = WorkerProcess(dict(os.environ), tmp_path / "intake.log", command="intake")
    try:
        for n, text in enumerate(("1.0.0", "1.0.1"), start=1):
            sha = pipeline.commit(text)
            body = json.dumps(pipeline.push_payload(sha)).encode()
            answer = requests.post(f"{web.url}/api/github/webhooks", data=body,
                                   headers=delivery_headers("push", body), timeout=10)
            assert answer.status_code == 202, answer.text
            wait_for(lambda: [d for d in pipeline.deployments() if d.sha == sha and d.status == "succeeded"],
                     120, f"deployment {n} to succeed",
                     details=lambda: f"{[(d.id, d.status, d.reason) for d in pipeline.deployments()]}\n"
                                     f"{worker.tail()}")
        assert requests.get(f"{web.url}/metrics", timeout=5).status_code == 401
        assert requests.get(f"{web.url}/metrics", headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 401
        scraped = samples(requests.get(f"{web.url}/metrics", headers=web.auth, timeout=10).text)
        loopback = samples(requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text)
    finally:
        drainer.stop()
        worker.stop()
        web.stop()

    # Counted in the gunicorn workers (intake) and in two RQ work horses (the two deploys).
    assert value(scraped, "release_pipeline_deliveries_total", event="push", outcome="accepted") == 2
    assert value(scraped, "release_pipeline_deployments_total", phase="demo", outcome="succeeded") == 2
    for step in ("clone", "build", "health", "switch"):
        assert value(scraped, "release_pipeline_deploy_step_seconds_count", step=step) == 2, step
        assert value(scraped, "release_pipeline_deploy_step_seconds_bucket", step=step, le="+Inf") == 2, step
    assert value(scraped, "release_pipeline_push_to_url_seconds_count", phase="demo") == 2
    assert value(scraped, "release_pipeline_push_to_url_seconds_sum", phase="demo") > 0
    assert value(scraped, "release_pipeline_github_api_calls_total", outcome="ok") >= 2
    assert value(scraped, "release_pipeline_serving_phases", phase="demo") == 1
    for queue in ("deploys", "commands", "reports", "notifications"):
        assert value(scraped, "release_pipeline_queue_depth", queue=queue) is not None, queue
    assert value(scraped, "release_pipeline_deployments_in_progress", status="queued") == 0
    # METRICS_PORT (loopback, no token) serves the same counters from the web server's main process.
    assert value(loopback, "release_pipeline_deployments_total", phase="demo", outcome="succeeded") == 2

    # Work horses share their worker's files, so samples do not pile up one file set per job.
    horse_files = sorted(p.name for p in (tmp_path / "metrics").glob(f"*_{worker.pid}h.db"))
    assert horse_files and all(name.startswith(("counter_", "histogram_")) for name in horse_files)

    # LOG_FORMAT=json: every line of the three processes is one JSON object, naming its ids.
    worker_lines = json_lines(tmp_path / "worker.log")
    deployment_ids = {d.id for d in pipeline.deployments()}
    assert {line.get("deployment_id") for line in worker_lines} >= deployment_ids
    intake_lines = json_lines(tmp_path / "intake.log")  # the drainer records the deliveries
    assert {line.get("deployment_id") for line in intake_lines if line.get("delivery_id")} >= deployment_ids
    web_lines = json_lines(tmp_path / "web.log")
    assert any(line["logger"] == "release_pipeline.access" for line in web_lines)


def test_prepare_directory_keeps_live_processes_files(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    try:
        for name in (f"counter_{sleeper.pid}.db", f"counter_{sleeper.pid}h.db", f"counter_{gone.pid}.db",
                     f"gauge_livesum_{gone.pid}h.db", "histogram_notapid.db"):
            (tmp_path / name).write_bytes(b"")
        assert prepare_directory(tmp_path) == 3
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [f"counter_{sleeper.pid}.db", f"counter_{sleeper.pid}h.db"])
    finally:
        sleeper.kill()
        sleeper.wait()


def test_metrics_endpoint_needs_the_admin_token(make_settings, database_url, redis_conn):
    from app.context import Context
    from app.web import create_app

    ctx = Context.from_settings(make_settings(DATABASE_URL=database_url, ADMIN_TOKEN=TOKEN))
    client = create_app(context=ctx).test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    scraped = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert scraped.status_code == 200 and scraped.mimetype == "text/plain"
    assert "release_pipeline_queue_depth" in scraped.get_data(as_text=True)


def test_the_grafana_dashboard_uses_only_metrics_we_serve(ctx):
    from app import metrics

    for family in (metrics.DEPLOY_STEP, metrics.PUSH_TO_URL):
        family.labels("x").observe(0)  # histograms and counters show their names once observed
    for counter in (metrics.DELIVERIES, metrics.GITHUB_CALLS, metrics.DEPLOYMENTS, metrics.NOTIFICATIONS):
        counter.labels(*["x"] * len(counter._labelnames)).inc(0)
    served = {family.name for family in text_string_to_metric_families(metrics.exposition(ctx).decode())}
    dashboard = json.loads((PROJECT_ROOT / "config" / "grafana-dashboard.json").read_text())
    used = {re.sub(r"_(total|bucket|count|sum)$", "", name)
            for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"release_pipeline_[a-z_]+", target["expr"])}
    assert used and used <= served, used - served


def test_json_log_lines_carry_the_ids_of_their_context():
    import io
    import logging

    from app.logs import JsonFormatter, log_context

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.json-lines")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    with log_context(delivery_id="d-1"):
        with log_context(deployment_id=7):
            logger.info("inside %s", "both")
        logger.warning("only the delivery", extra={"deployment_id": 8})
    logger.info("outside")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(j["message"], j["level"], j.get("delivery_id"), j.get("deployment_id")) for j in lines] == [
        ("inside both", "info", "d-1", 7), ("only the delivery", "warning", "d-1", 8), ("outside", "info", None, None)]


def test_serve_refuses_a_metrics_port_in_use(tmp_path, database_url):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = {"PATH": os.environ["PATH"], "PIPELINE_DEV": "1", "DATABASE_URL": database_url, "SECRET_KEY": "k" * 32,
               "REDIS_URL": "redis://127.0.0.1:6379/8", "METRICS_PORT": str(port),
               "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
        run = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--port", str(free_port())],
                             cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        f"Error: METRICS_PORT: cannot listen on 127.0.0.1:{port} (Address already in use)"]
