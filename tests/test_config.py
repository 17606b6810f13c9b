"""Configuration and settings errors say what to fix, naming the path or variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.exceptions import ConfigError, SettingsError
from app.pipeline import load_pipeline, parse_pipeline, parse_repo_config
from app.settings import load_settings

ROOT = Path(__file__).parent.parent


def test_default_pipeline_is_demo_stage_live_with_spec_roles():
    config = load_pipeline(ROOT / "config" / "pipeline.yml")
    assert config.phase_names == ["demo", "stage", "live"]
    assert config.roles == {"demo": "write", "stage": "maintain", "live": "admin"}
    assert config.phase("live").approvals == 1 and config.phase("live").branch == "live"
    assert config.url_template("stage") == "http://{app}-{phase}.localhost:{port}"
    assert config.health_timeout("demo") == 30
    assert config.next_phase("stage") == "live" and config.next_phase("live") is None
    assert config.previous_phases("live") == ["stage", "demo"]


@pytest.mark.parametrize(
    "text,message",
    [
        ("phases: {live: {trigger: pull_request, branch: live, approvals: -1}}", "phases/live/approvals: must be an integer ≥ 0"),
        ("phases: {live: {trigger: pull_request, branch: live, approvals: many}}", "phases/live/approvals: must be an integer ≥ 0"),
        ("phases: {live: {trigger: pull_request}}", "phases/live: a pull_request phase needs the branch"),
        ("phases: {demo: {trigger: push, role: owner}}", "phases/demo/role: Input should be 'read'"),
        ("phases: {demo: {trigger: push, rol: write}}", "phases/demo/rol: is not a known setting"),
        ("phases: {Demo: {trigger: push}}", "phases/Demo: names must be lowercase"),
        ("phases: {demo: {trigger: sometimes}}", "phases/demo/trigger:"),
        ("phases: {demo: {trigger: push, profile: {memory: lots}}}", "phases/demo/profile/memory:"),
        ("phases: {}", "phases: at least one phase is needed"),
        ('phases: {demo: {trigger: push, url: "http://{app}-{stage}.example"}}',
         "phases/demo/url: unknown placeholder {stage} (use {app}, {phase}, {port})"),
        ('phases: {demo: {trigger: push, url: "http://demo.example"}}',
         "phases/demo/url: must contain {app}: every app needs a URL of its own"),
        ('phases: {demo: {trigger: push, url: "ftp://{app}.example"}}',
         "phases/demo/url: must be an http:// or https:// URL template"),
        ('defaults: {url: "http://{app}.example"}\nphases: {demo: {trigger: push}, stage: {trigger: tag}}',
         "phases demo and stage would be served at the same URL"),
        ("defaults: {}", "phases: Field required"),
        ("- a list", "must be a mapping"),
        ("phases: [", "not valid YAML (line 1)"),
    ],
)
def test_pipeline_errors_name_the_path(text, message):
    with pytest.raises(ConfigError) as error:
        parse_pipeline(text)
    assert message in str(error.value)


def test_missing_pipeline_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_pipeline(tmp_path / "nope.yml")


def test_repo_config_defaults_and_values():
    assert parse_repo_config(None).port == 8080
    config = parse_repo_config("dockerfile: docker/Dockerfile\ncontext: web\nport: 3000\nhealthcheck: /healthz\n")
    assert (config.dockerfile, config.context, config.port, config.healthcheck) == ("docker/Dockerfile", "web", 3000, "/healthz")


@pytest.mark.parametrize(
    "text,message",
    [
        ("approvals: 0", "approvals: cannot be set from the repository"),
        ("phases: {live: {approvals: 0}}", "phases: cannot be set from the repository"),
        ("role: read", "role: cannot be set from the repository"),
        ("port: http", "port: must be an integer"),
        ("port: 70000", "port: Input should be less than or equal to 65535"),
        ("dockerfile: ../../etc/passwd", "dockerfile: must be a relative path inside the repository"),
        ("context: /", "context: must be a relative path"),
        ("healthcheck: healthz", "healthcheck: must be a URL path starting with /"),
        ("services: {db: {port: 5432}}", "services/db: set exactly one of image or build"),
        ("servics: {}", "servics: is not a known setting"),
    ],
)
def test_repo_config_errors(text, message):
    with pytest.raises(ConfigError) as error:
        parse_repo_config(text)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "environ,message",
    [
        ({}, "GITHUB_WEBHOOK_SECRET is required"),
        ({"GITHUB_WEBHOOK_SECRET": "s", "GITHUB_APP_ID": "12"}, "neither GITHUB_PRIVATE_KEY nor GITHUB_PRIVATE_KEY_PATH"),
        ({"GITHUB_WEBHOOK_SECRET": "s", "ROUTER_PORT": "eighty"}, "ROUTER_PORT: Input should be a valid integer"),
        ({"GITHUB_WEBHOOK_SECRET": "s", "GITHUB_API_URL": "ftp://x"}, "GITHUB_API_URL: must be an http(s) URL"),
        ({"GITHUB_WEBHOOK_SECRET": "s", "ROUTER": "nginx"}, "ROUTER: Input should be 'caddy' or 'direct'"),
        ({"GITHUB_WEBHOOK_SECRET": "s", "PIPELINE_INSTANCE": "Bad Name"}, "PIPELINE_INSTANCE"),
        ({"GITHUB_WEBHOOK_SECRET": "s", "RUNTIME": "kubernetes"}, "RUNTIME: Input should be 'docker' or 'swarm'"),
        ({"GITHUB_WEBHOOK_SECRET": "s", "RUNTIME": "swarm", "ROUTER": "direct"}, "RUNTIME=swarm needs ROUTER=caddy"),
        ({"GITHUB_WEBHOOK_SECRET": "s", "REGISTRY_URL": "127.0.0.1:5000"}, "REGISTRY_URL is used only with RUNTIME=swarm"),
        ({"GITHUB_WEBHOOK_SECRET": "s", "REGISTRY_URL": "http://x/y z"}, "REGISTRY_URL: String should match pattern"),
    ],
)
def test_settings_errors_name_the_variable(environ, message):
    with pytest.raises(SettingsError) as error:
        load_settings(environ)
    assert message in str(error.value)


def test_settings_defaults_and_key_from_file(tmp_path):
    key = tmp_path / "app.pem"
    key.write_text("-----BEGIN RSA PRIVATE KEY-----\nabc\n-----END RSA PRIVATE KEY-----\n")
    settings = load_settings({"GITHUB_WEBHOOK_SECRET": "s", "GITHUB_APP_ID": "7", "GITHUB_PRIVATE_KEY_PATH": str(key)})
    assert settings.private_key.startswith("-----BEGIN") and settings.reporting_enabled
    assert settings.github_api_url == "https://api.github.com" and settings.redis_url == "redis://localhost:6379/0"
    assert "webhook" not in repr(settings).lower() or "SecretStr('**********')" in repr(settings)
    dev = load_settings({"PIPELINE_DEV": "1"})
    assert dev.webhook_secret is None and not dev.reporting_enabled
