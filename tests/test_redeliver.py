"""Missed webhook deliveries are asked for again (GitHub never retries by itself).

Against the GitHub stand-in over HTTP: the sweep lists the App's deliveries (following
GitHub's cursor pages back to the redelivery window), and asks for each failed event once.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from app.context import Context
from app.exceptions import TransientGitHubError
from workers.redeliver import MAX_ATTEMPTS, redeliver_failed

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def delivery(delivery_id: int, guid: str, *, ago: timedelta, status_code: int, redelivery: bool = False) -> dict:
    """A row of GET /app/hook/deliveries as GitHub returns it."""
    return {
        "id": delivery_id,
        "guid": guid,
        "delivered_at": (NOW - ago).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "redelivery": redelivery,
        "duration": 0.12,
        "status": "OK" if 200 <= status_code < 300 else f"Invalid HTTP Response: {status_code}",
        "status_code": status_code,
        "event": "push",
        "action": None,
        "installation_id": 77,
        "repository_id": 1296269,
        "throttled_at": None,
    }


def newest_first(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda row: row["delivered_at"], reverse=True)


@pytest.fixture
def ctx(make_settings, database_url, redis_conn, github) -> Context:
    return Context.from_settings(make_settings(DATABASE_URL=database_url, **github.environ))


def asked(github) -> list[int]:
    return [int(c.path.split("/")[4]) for c in github.calls_to("POST", "/app/hook/deliveries/")]


def test_failed_events_in_the_window_are_redelivered_once(ctx, github):
    minutes = lambda n: timedelta(minutes=n)  # noqa: E731
    github.deliveries = newest_first([
        delivery(1, "failed", ago=minutes(10), status_code=503),
        delivery(2, "recovered", ago=minutes(30), status_code=502),
        delivery(3, "recovered", ago=minutes(20), status_code=202, redelivery=True),
        delivery(4, "fine", ago=minutes(5), status_code=202),
        delivery(5, "too-old", ago=timedelta(days=3, minutes=1), status_code=500),
        delivery(6, "twice", ago=minutes(50), status_code=500),
        delivery(7, "twice", ago=minutes(40), status_code=0, redelivery=True),  # no answer (timeout)
        delivery(8, "refused", ago=minutes(15), status_code=400),  # our deliberate answer: asking again is futile
        delivery(9, "bad-signature", ago=minutes(15), status_code=401),  # the secret was being rotated
        *(delivery(20 + i, "hopeless", ago=minutes(60 - i), status_code=500, redelivery=i > 0)
          for i in range(MAX_ATTEMPTS)),
    ])

    assert sorted(redeliver_failed(ctx, now=NOW)) == [1, 7, 9]
    assert sorted(asked(github)) == [1, 7, 9]

    # A sweep that runs before GitHub lists the new attempts does not ask for the same ones again.
    github.calls.clear()
    github.deliveries = [d for d in github.deliveries if d["id"] < 1000]  # the stand-in's new attempts
    assert redeliver_failed(ctx, now=NOW) == []
    assert asked(github) == []


def test_a_redelivery_that_failed_again_is_asked_for_once_more(ctx, github):
    github.deliveries = [delivery(1, "event", ago=timedelta(minutes=3), status_code=503)]
    github.redelivery_status_code = 503  # we were still down

    (first,) = redeliver_failed(ctx, now=NOW)
    (second,) = redeliver_failed(ctx, now=NOW)  # the failed redelivery is a new attempt
    github.redelivery_status_code = 202
    (third,) = redeliver_failed(ctx, now=NOW)

    assert first == 1 and second != first and third not in (first, second)
    assert redeliver_failed(ctx, now=NOW) == []  # it finally got through
    assert [d["status_code"] for d in github.deliveries][:1] == [202]


def test_a_transient_error_leaves_the_event_for_the_next_sweep(ctx, github):
    github.deliveries = [delivery(1, "event", ago=timedelta(minutes=3), status_code=500)]
    github.fail_next(1, status=502, path="/app/hook/deliveries/1/attempts")

    with pytest.raises(TransientGitHubError):
        redeliver_failed(ctx, now=NOW)

    assert redeliver_failed(ctx, now=NOW) == [1]
    assert len(github.calls_to("POST", "/app/hook/deliveries/1/attempts")) == 2


def test_a_permanent_refusal_is_logged_and_the_sweep_goes_on(ctx, github, caplog):
    github.deliveries = newest_first([
        delivery(1, "gone", ago=timedelta(minutes=3), status_code=500),
        delivery(2, "other", ago=timedelta(minutes=4), status_code=500),
    ])
    github.fail_next(1, status=422, message="Validation Failed", path="/app/hook/deliveries/1/attempts")

    assert redeliver_failed(ctx, now=NOW) == [2]
    assert "GitHub refused to redeliver gone" in caplog.text
    assert redeliver_failed(ctx, now=NOW) == []  # not asked again every sweep


def test_every_page_back_to_the_window_is_read_and_no_further(ctx, github):
    recent = [delivery(1000 + i, f"ok-{i}", ago=timedelta(minutes=i + 1), status_code=202) for i in range(230)]
    missed = delivery(5000, "missed", ago=timedelta(hours=20), status_code=503)
    old = [delivery(9000 + i, f"old-{i}", ago=timedelta(days=4, minutes=i), status_code=500) for i in range(200)]
    github.deliveries = newest_first([*recent, missed, *old])

    assert redeliver_failed(ctx, now=NOW) == [5000]
    pages = github.calls_to("GET", "/app/hook/deliveries")
    assert len(pages) == 3  # 231 rows inside the window; the third page reaches past it
    assert [page.query.get("cursor") for page in pages] == [None, "v1_100", "v1_200"]


def test_nothing_is_asked_without_a_github_app(make_settings, database_url, redis_conn, github):
    ctx = Context.from_settings(make_settings(DATABASE_URL=database_url))
    github.deliveries = [delivery(1, "event", ago=timedelta(minutes=3), status_code=500)]

    assert redeliver_failed(ctx, now=NOW) == []
    assert github.calls == []
