"""What the command line prints, decided from API answers (pure), and how it reads the live log."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from app.adapters.pipeline_api import Event, parse_events, path
from app.client.render import Progress, apps_table, history_table, outcome, status_table, table

NOW = datetime(2026, 12, 1, 21, 0, tzinfo=timezone.utc)


def test_tables_pad_columns_and_show_empty_cells_as_a_dash():
    assert table(["A", "LONGER"], [["x", None], ["wider", 3]]) == "A      LONGER\nx      -\nwider  3"


def test_apps_table_has_one_column_per_phase_with_version_health_and_what_is_moving():
    body = {"phases": ["demo", "live"], "apps": [{"name": "shop", "repository": "acme/shop", "phases": {
        "demo": {"version": "a1b2c3d", "health": "healthy", "in_progress": "e4f5a6b"},
        "live": {"version": None, "health": "idle", "in_progress": None}}}]}
    assert apps_table(body).splitlines() == [
        "APP   REPOSITORY  DEMO                         LIVE",
        "shop  acme/shop   a1b2c3d (healthy) → e4f5a6b  -"]
    assert apps_table({"phases": [], "apps": []}).startswith("no apps you can see")


def test_status_and_history_tables():
    deployment = {"id": 7, "version": "v1.2.0", "sha": "b" * 40, "status": "succeeded", "trigger": "portal",
                  "actor": "mo", "queued_at": "2026-12-01T20:55:00Z", "finished_at": "2026-12-01T20:50:00Z",
                  "reason": ""}
    body = {"name": "shop", "repository": "acme/shop", "your_role": "write", "phases": [
        {"name": "stage", "current": deployment, "in_progress": {**deployment, "id": 8, "status": "building"},
         "health": {"label": "Running"}, "url": "http://shop-stage.localhost:8088"}]}
    assert status_table(body, NOW).splitlines() == [
        "shop (acme/shop), your role: write", "",
        "PHASE  VERSION  SHA      HEALTH   URL                               DEPLOYED    BY  IN PROGRESS",
        "stage  v1.2.0   bbbbbbb  Running  http://shop-stage.localhost:8088  10 min ago  mo  v1.2.0 (building, #8)"]
    assert history_table([deployment], NOW).splitlines()[1] == (
        "7   v1.2.0   bbbbbbb  succeeded  portal   mo  5 min ago  -")


def test_progress_shows_status_changes_and_rollout_steps_once_with_elapsed_time_not_build_output():
    progress = Progress()
    events = [("status", {"status": "queued"}, 0.1), ("status", {"status": "building"}, 0.5),
              ("line", {"stream": "build", "text": "Step 1/5 : FROM scratch"}, 0.7),
              ("status", {"status": "building"}, 0.8),  # a resumed stream says the status again
              ("line", {"stream": "deploy", "text": "healthy: 200 OK"}, 1.25),
              ("line", {"stream": "deploy", "text": "succeeded"}, 1.3),
              ("status", {"status": "succeeded", "url": "http://u"}, 1.3),
              ("done", {"status": "succeeded", "url": "http://u"}, 1.31)]
    shown = [line for kind, data, elapsed in events for line in progress.lines(kind, data, elapsed)]
    assert shown == ["   0.1s  queued", "   0.5s  building", "   1.2s  healthy: 200 OK", "   1.3s  succeeded",
                     "succeeded after 1.3s: serving at http://u"]


def test_outcome_names_the_reason_of_a_failure():
    assert outcome({"status": "failed", "reason": "health check failed"}) == "failed: health check failed"
    assert outcome({"status": "succeeded", "url": "http://u"}, 2.04) == "succeeded after 2.0s: serving at http://u"


def test_server_sent_events_are_parsed_as_the_server_writes_them():
    stream = ["retry: 2000", "", "id: 41", "event: line", 'data: {"id": 41, "text": "hi"}', "",
              ": still here", "", "event: status", 'data: {"status": "deploying"}', "",
              "event: done", "data: not json", ""]
    assert list(parse_events(iter(stream))) == [
        Event("line", {"id": 41, "text": "hi"}, "41"), Event("status", {"status": "deploying"}), Event("done", {})]


def test_api_paths_quote_every_part():
    assert path("apps", "shop", "phases", "../admin") == "/api/v1/apps/shop/phases/..%2Fadmin"


def test_help_lists_operator_and_client_commands_in_two_sections():
    executable = str(Path(sys.executable).with_name("release-pipeline"))
    text = subprocess.run([executable, "--help"], capture_output=True, text=True, check=True).stdout
    operator = text.split("Operator commands")[1].split("Client commands")[0]
    client = text.split("Client commands")[1].split("Client settings")[0]
    assert all(f"  {name} " in operator for name in ("up", "serve", "worker", "scheduler", "migrate", "doctor"))
    assert all(f"  {name} " in client for name in ("apps", "status", "history", "deploy", "promote", "rollback",
                                                   "redeploy", "cancel", "logs", "freeze", "unfreeze"))
    assert "  promote " not in operator and "  serve " not in client
    assert "RELEASE_PIPELINE_TOKEN" in text


def test_shell_completion_script_comes_from_click():
    executable = str(Path(sys.executable).with_name("release-pipeline"))
    script = subprocess.run([executable], env={"_RELEASE_PIPELINE_COMPLETE": "bash_source", "PATH": "/usr/bin"},
                            capture_output=True, text=True).stdout
    assert "_release_pipeline_completion" in script and "complete -o nosort -F" in script


def test_client_commands_say_what_is_missing_and_exit_1():
    executable = str(Path(sys.executable).with_name("release-pipeline"))
    no_url = subprocess.run([executable, "apps"], env={"PATH": "/usr/bin"}, capture_output=True, text=True)
    assert no_url.returncode == 1 and "set RELEASE_PIPELINE_URL (or pass --url)" in no_url.stderr
    no_token = subprocess.run([executable, "apps", "--url", "http://127.0.0.1:9"], env={"PATH": "/usr/bin"},
                              capture_output=True, text=True)
    assert no_token.returncode == 1
    assert "set RELEASE_PIPELINE_TOKEN: create a personal API token at http://127.0.0.1:9/tokens" in no_token.stderr
