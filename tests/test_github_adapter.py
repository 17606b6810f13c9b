"""The GitHub adapter against a real HTTP stand-in: auth, shared tokens, bodies, error mapping.

These pin what GitHub must see (exact JSON bodies, one POST per call, never a leaked token)
because the reporting jobs rely on it: they retry `TransientGitHubError`s themselves.
"""

from __future__ import annotations

import logging
import socket

import pytest
import redis

from app.adapters.github import GitHubApp
from app.exceptions import GitHubError, TransientGitHubError
from app.settings import load_settings
from tests.support.github_standin import SECONDARY_RATE_LIMIT_MESSAGE, generate_private_key_pem

REDIS_URL = "redis://127.0.0.1:6379/12"
REPO = "acme/shop"
INSTALLATION = 31
SHA = "a" * 40


@pytest.fixture
def redis_db():
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def settings_for(github, **overrides):
    environ = {
        **github.environ,
        "SECRET_KEY": "test-secret-key",
        "GITHUB_WEBHOOK_SECRET": "test-webhook-secret",
        **overrides,
    }
    return load_settings(environ=environ)


@pytest.fixture
def app(github, redis_db):
    return GitHubApp(settings_for(github), redis_db)


@pytest.fixture
def repo(app):
    return app.repo(INSTALLATION, REPO)


def test_app_endpoints_use_a_jwt_signed_with_the_app_key(github, app):
    github.installations[REPO] = INSTALLATION

    assert app.installation_for_repo(REPO) == INSTALLATION

    (call,) = github.calls_to("GET", f"/repos/{REPO}/installation")
    assert call.headers["Authorization"].startswith("Bearer ey")


def test_whoami_reads_the_app(github, app):
    assert app.whoami()["id"] == github.app_id


def test_a_wrong_private_key_is_refused_as_a_permanent_error(github, redis_db):
    impostor = GitHubApp(
        settings_for(github, GITHUB_PRIVATE_KEY=generate_private_key_pem()), redis_db
    )

    with pytest.raises(GitHubError) as raised:
        impostor.installation_token(INSTALLATION)

    assert not isinstance(raised.value, TransientGitHubError)
    assert "401" in str(raised.value)
    assert github.tokens_issued == 0


def test_an_uninstalled_repository_is_a_permanent_error(app):
    with pytest.raises(GitHubError, match="404") as raised:
        app.installation_for_repo("acme/unknown")
    assert not isinstance(raised.value, TransientGitHubError)


def test_two_workers_share_one_installation_token_through_redis(github, redis_db):
    settings = settings_for(github)
    first_worker = GitHubApp(settings, redis_db)
    second_worker = GitHubApp(settings, redis.Redis.from_url(REDIS_URL))

    first_worker.repo(INSTALLATION, REPO).create_status(SHA, state="pending", context="a")
    second_worker.repo(INSTALLATION, REPO).create_status(SHA, state="pending", context="b")

    assert github.tokens_issued == 1
    first, second = github.calls_to("POST", f"/repos/{REPO}/statuses/")
    assert first.headers["Authorization"] == second.headers["Authorization"]
    assert first.headers["Authorization"].startswith("token ghs_")


def test_the_cached_token_is_encrypted_and_expires_before_github_expires_it(app, redis_db):
    token = app.installation_token(INSTALLATION)

    key = f"rp:github:token:{INSTALLATION}"
    assert token.encode() not in redis_db.get(key)
    # GitHub grants an hour; the cache lets go five minutes early.
    assert 55 * 60 - 30 < redis_db.ttl(key) <= 55 * 60


def test_a_revoked_token_is_forgotten_so_the_retry_gets_a_new_one(github, repo):
    repo.create_status(SHA, state="pending", context="c")
    github.revoke_tokens()

    with pytest.raises(TransientGitHubError, match="401"):
        repo.create_status(SHA, state="pending", context="c")
    repo.create_status(SHA, state="pending", context="c")

    assert github.tokens_issued == 2


def test_commit_status_body_with_the_description_cut_to_140_characters(github, repo):
    repo.create_status(
        SHA,
        state="success",
        context="release-pipeline/demo",
        description="d" * 200,
        target_url="http://shop.demo.localhost",
    )

    (call,) = github.calls_to("POST", f"/repos/{REPO}/statuses/{SHA}")
    assert call.json == {
        "state": "success",
        "context": "release-pipeline/demo",
        "description": "d" * 140,
        "target_url": "http://shop.demo.localhost",
    }


def test_deployment_never_auto_merges_nor_waits_for_our_own_pending_status(github, repo):
    repo.create_status(SHA, state="pending", context="release-pipeline/stage")

    deployment_id = repo.create_deployment(
        ref=SHA,
        environment="stage",
        payload={"version": "1.2.0"},
        description="Deploy 1.2.0 to stage",
        production_environment=False,
    )

    assert deployment_id in github.deployments
    (call,) = github.calls_to("POST", f"/repos/{REPO}/deployments")
    assert call.json == {
        "ref": SHA,
        "environment": "stage",
        "payload": {"version": "1.2.0"},
        "description": "Deploy 1.2.0 to stage",
        "production_environment": False,
        "transient_environment": False,
        "auto_merge": False,
        "required_contexts": [],
    }


def test_deployment_status_bodies(github, repo):
    deployment_id = repo.create_deployment(
        ref=SHA, environment="live", payload={}, description="", production_environment=True
    )

    repo.create_deployment_status(deployment_id, state="in_progress")
    repo.create_deployment_status(
        deployment_id,
        state="success",
        environment_url="http://shop.localhost",
        log_url="http://portal.localhost/deployments/7",
        description="Live 1.2.0",
    )

    in_progress, success = github.calls_to("POST", f"/repos/{REPO}/deployments/{deployment_id}/")
    assert in_progress.json == {"state": "in_progress", "auto_inactive": True}
    assert success.json == {
        "state": "success",
        "auto_inactive": True,
        "environment_url": "http://shop.localhost",
        "log_url": "http://portal.localhost/deployments/7",
        "description": "Live 1.2.0",
    }


def test_comment_update_and_reaction_bodies(github, repo):
    comment_id = repo.create_comment(12, "Deploying 1.2.0 to stage…")
    repo.update_comment(comment_id, "Deployed 1.2.0 to stage.")
    repo.add_reaction(555, "rocket")

    assert github.calls_to("POST", f"/repos/{REPO}/issues/12/comments")[0].json == {
        "body": "Deploying 1.2.0 to stage…"
    }
    assert github.calls_to("PATCH", f"/repos/{REPO}/issues/comments/{comment_id}")[0].json == {
        "body": "Deployed 1.2.0 to stage."
    }
    assert github.calls_to("POST", f"/repos/{REPO}/issues/comments/555/reactions")[0].json == {
        "content": "rocket"
    }
    assert github.comments[comment_id]["body"] == "Deployed 1.2.0 to stage."


def test_a_server_error_is_transient_and_the_post_is_sent_only_once(github, repo):
    repo.create_status(SHA, state="pending", context="warm-up")
    github.fail_next(1, status=502)

    with pytest.raises(TransientGitHubError, match="502"):
        repo.create_comment(12, "hello")

    assert len(github.calls_to("POST", f"/repos/{REPO}/issues/12/comments")) == 1


def test_an_outage_is_transient(github, repo):
    github.down(True)
    with pytest.raises(TransientGitHubError):
        repo.create_status(SHA, state="pending", context="c")

    github.down(False)
    repo.create_status(SHA, state="pending", context="c")


def test_a_secondary_rate_limit_carries_retry_after(github, repo):
    repo.create_status(SHA, state="pending", context="warm-up")
    github.rate_limit_next(1, retry_after=7)

    with pytest.raises(TransientGitHubError) as raised:
        repo.create_deployment(
            ref=SHA, environment="demo", payload={}, description="", production_environment=False
        )

    assert raised.value.retry_after == 7
    assert len(github.calls_to("POST", f"/repos/{REPO}/deployments")) == 1


def test_a_primary_rate_limit_waits_until_the_reset(github, repo):
    repo.create_status(SHA, state="pending", context="warm-up")
    github.rate_limit_next(1, retry_after=30, primary=True)

    with pytest.raises(TransientGitHubError) as raised:
        repo.create_status(SHA, state="pending", context="c")

    assert 25 <= raised.value.retry_after <= 30


def test_a_rate_limit_message_without_headers_waits_a_minute(github, repo):
    repo.create_status(SHA, state="pending", context="warm-up")
    github.fail_next(1, status=403, message=SECONDARY_RATE_LIMIT_MESSAGE)

    with pytest.raises(TransientGitHubError) as raised:
        repo.create_status(SHA, state="pending", context="c")

    assert raised.value.retry_after == 60


def test_an_unreadable_private_key_is_a_permanent_error(github, redis_db):
    app = GitHubApp(settings_for(github, GITHUB_PRIVATE_KEY="not a key"), redis_db)

    with pytest.raises(GitHubError) as raised:
        app.whoami()

    assert not isinstance(raised.value, TransientGitHubError)
    assert github.calls == []


def test_an_unreachable_github_is_transient(github, redis_db):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    app = GitHubApp(
        settings_for(github, GITHUB_API_URL=f"http://127.0.0.1:{closed_port}"), redis_db
    )

    with pytest.raises(TransientGitHubError, match="unreachable"):
        app.installation_for_repo(REPO)


def test_a_validation_error_is_permanent_and_names_status_and_path(repo):
    with pytest.raises(GitHubError) as raised:
        repo.create_ref("heads", SHA)

    assert not isinstance(raised.value, TransientGitHubError)
    assert f"POST /repos/{REPO}/git/refs: 422" in str(raised.value)


@pytest.mark.parametrize("role", ["admin", "maintain", "write", "triage", "read"])
def test_collaborator_permission_keeps_maintain_and_triage(github, repo, role):
    github.permissions[(REPO, "alice")] = role
    assert repo.collaborator_permission("alice") == role


def test_collaborator_permission_of_a_stranger_is_none(repo):
    assert repo.collaborator_permission("mallory") == "none"


def test_list_reviews_reads_every_page(github, repo):
    github.reviews[(REPO, 12)] = [
        {"id": n, "user": f"user{n}", "state": "APPROVED", "submitted_at": "2024-05-01T10:00:00Z",
         "commit_id": f"{n % 10}" * 40}
        for n in range(150)
    ]

    reviews = repo.list_reviews(12)

    assert len(reviews) == 150
    assert reviews[149] == {  # the commit each review approved: an approval counts for that commit only
        "id": 149, "user": "user149", "state": "APPROVED", "submitted_at": "2024-05-01T10:00:00Z",
        "commit_id": "9" * 40,
    }
    assert len(github.calls_to("GET", f"/repos/{REPO}/pulls/12/reviews")) == 2


def test_release_branch_and_pull_request(github, repo):
    repo.create_ref("refs/heads/release-1.2", SHA)
    assert repo.find_open_pull("release-1.2", "main") is None

    number, html_url = repo.create_pull(
        title="Release 1.2", head="release-1.2", base="main", body="Promote 1.2 to Live"
    )

    assert repo.find_open_pull("release-1.2", "main") == (number, html_url)
    assert html_url.endswith(f"/{REPO}/pull/{number}")
    pull = repo.get_pull(number)
    assert (pull.number, pull.title, pull.head_ref, pull.base_ref, pull.html_url) == (
        number, "Release 1.2", "release-1.2", "main", html_url)
    assert github.refs[(REPO, "refs/heads/release-1.2")] == SHA
    (listing, _) = github.calls_to("GET", f"/repos/{REPO}/pulls?")
    assert listing.query["head"] == "acme:release-1.2"


def test_hook_deliveries_and_redelivery(github, app):
    github.deliveries = [{"id": 9, "guid": "g-9", "status_code": 500, "event": "push"}]

    assert app.list_hook_deliveries() == github.deliveries
    app.redeliver(9)

    assert len(github.calls_to("POST", "/app/hook/deliveries/9/attempts")) == 1


def test_no_token_in_exception_messages_or_logs(github, app, repo, caplog):
    caplog.set_level(logging.DEBUG)
    token = app.installation_token(INSTALLATION)
    github.fail_next(1, status=422, message=f"Bad credentials: {token}")
    github.fail_next(1, status=503)
    github.rate_limit_next(1)

    errors = []
    for _ in range(3):
        with pytest.raises(GitHubError) as raised:
            repo.create_comment(1, "x")
        errors.append(raised.value)

    for error in errors:
        assert token not in str(error)
        assert error.__cause__ is None and error.__suppress_context__
    assert "[redacted]" in str(errors[0])
    assert token not in caplog.text
