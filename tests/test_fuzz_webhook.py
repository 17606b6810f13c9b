"""Hostile input at the webhook (issue 8, item 1): property-based tests over headers and bodies.

Every example goes through the real app (test client), the real signature check, the inbox,
then the intake drainer (planner, intake), SQLite database and Redis queue. The properties,
for every request:

- never a 5xx (the database and Redis are up, so 503 is as wrong as 500);
- anything not validly signed gets 401, and then nothing is enqueued and no Delivery is recorded;
- a validly signed but malformed delivery gets 400 (bad JSON, headers) or is recorded as
  malformed by the drainer (a body the planner cannot read), and enqueues nothing;
- the drainer records every accepted delivery and never sets one aside (a crash in planning);
- every 4xx (and every 2xx) answer is JSON with a non-empty "reason".

The budget is fixed (derandomized, `max_examples` per target) so CI runs the same ≥ 10,000 cases
every time in well under a minute; the last test checks that count.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from app.context import Context
from app.jobs import QUEUES
from app.models import Delivery
from app.settings import load_settings
from app.web import create_app
from tests.conftest import FIXTURES, REDIS_URL, SECRET_KEY, WEBHOOK_SECRET, _fresh_database, drain_inbox, load_payload

ENDPOINT = "/api/github/webhooks"
#: Examples run per target, and requests actually sent; the final test asserts the total.
EXECUTED: collections.Counter[str] = collections.Counter()
REQUESTS: collections.Counter[str] = collections.Counter()
#: (target, status, first words of the reason): shows the fuzz reaches deep paths, not only the 400s.
OUTCOMES: collections.Counter[tuple[str, int, str]] = collections.Counter()
MINIMUM_TOTAL = 10_000

FUZZ = dict(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)

RECORDED = sorted(p.relative_to(FIXTURES).as_posix() for p in FIXTURES.rglob("*.json"))
EVENTS = sorted({name.split("/")[0] for name in RECORDED} | {"installation_repositories", "check_run", "star"})

# --- the service under test, once per module ------------------------------------------------


class Service:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.client = create_app(context=ctx).test_client()
        self.redis = ctx.redis

    def queued(self) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for name in QUEUES:
            pipe.llen(f"rq:queue:{name}")
        return sum(pipe.execute())

    def deliveries(self) -> int:
        with self.ctx.db.session() as session:
            return session.scalar(select(func.count()).select_from(Delivery))

    def post(self, body: bytes, headers: dict[str, str]):
        REQUESTS["sent"] += 1
        return self.client.post(ENDPOINT, data=body, headers=headers)

    def reset(self) -> None:
        self.redis.flushdb()
        _fresh_database(self.ctx.settings.database_url)


@pytest.fixture(scope="module")
def service(tmp_path_factory, request) -> Service:
    """On SQLite by default; TEST_FUZZ_DATABASE=postgresql runs the same budget on PostgreSQL,
    which is stricter about types and lengths."""
    work = tmp_path_factory.mktemp("fuzz-webhook")
    memory = None
    if os.environ.get("TEST_FUZZ_DATABASE") == "postgresql":
        url = request.getfixturevalue("postgres_url")
    else:
        # Thousands of commits: on a RAM disk when there is one, so fsync does not set the pace.
        shm = Path("/dev/shm")
        memory = Path(tempfile.mkdtemp(prefix="rp-fuzz-", dir=shm)) if shm.is_dir() and os.access(shm, os.W_OK) else None
        url = f"sqlite:///{(memory or work) / 'state.db'}"
    _fresh_database(url)
    settings_ = load_settings({
        "GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "SECRET_KEY": SECRET_KEY,
        "REDIS_URL": REDIS_URL,
        "DATABASE_URL": url,
        "PIPELINE_INSTANCE": "tfuzz",
        "ROUTER": "direct",
        "WORK_DIR": str(work / "work"),
        "PUBLIC_URL": "http://portal.test",
    })
    svc = Service(Context.from_settings(settings_))
    svc.reset()
    yield svc
    svc.redis.flushdb()
    svc.ctx.db.engine.dispose()
    if memory is not None:
        shutil.rmtree(memory, ignore_errors=True)


@pytest.fixture
def svc(service) -> Service:
    service.reset()
    return service


@pytest.fixture
def unsigned(svc) -> Service:
    """For targets where nothing is validly signed: afterwards the database holds no Delivery and
    Redis holds nothing at all. (Rows only ever accumulate, so checking once after all the examples
    covers each of them, at a fraction of the cost of a query per example.)"""
    yield svc
    assert svc.deliveries() == 0
    assert svc.redis.dbsize() == 0


# --- helpers ----------------------------------------------------------------------------------


def signature(body: bytes, secret: str = WEBHOOK_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def headers_for(event_name: str, body: bytes, /, **extra: str | None) -> dict[str, str]:
    """Headers GitHub would send, signed; `extra` replaces (or, with None, drops) some of them."""
    sent = {
        "X-GitHub-Event": event_name,
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": signature(body),
        "Content-Type": "application/json",
    }
    for name, value in extra.items():
        key = {"event": "X-GitHub-Event", "delivery": "X-GitHub-Delivery",
               "signature": "X-Hub-Signature-256", "content_type": "Content-Type"}[name]
        if value is None:
            sent.pop(key, None)
        else:
            sent[key] = value
    return sent


def reason_of(response) -> str:
    body = response.get_json(silent=True)
    assert isinstance(body, dict), (response.status_code, response.get_data()[:300])
    reason = body.get("reason")
    assert isinstance(reason, str) and reason.strip(), (response.status_code, body)
    return reason


def assert_refused_unsigned(svc: Service, response) -> None:
    """401 with a reason, and nothing enqueued (nothing recorded either: see `unsigned`)."""
    assert response.status_code == 401, (response.status_code, response.get_data()[:300])
    assert "signature" in reason_of(response).lower() or "X-Hub-Signature-256" in reason_of(response)
    assert svc.queued() == 0


def assert_answered_signed(svc: Service, response, queued_before: int, target: str) -> None:
    """Never a 5xx; 4xx with a reason and no new work; 2xx with a reason; what was accepted is
    recorded by the drainer (a malformed one with its reason, and no new work)."""
    status = response.status_code
    assert status in (200, 202, 400, 413), (status, response.get_data()[:500])
    reason = reason_of(response)
    if status == 202 and reason.startswith("accepted"):
        [outcome] = drain_inbox(svc.ctx)
        status, reason = outcome.status, outcome.body["reason"]
        assert status in (202, 400) and reason.strip(), outcome.body
        assert svc.ctx.inbox.set_aside_count() == 0
    OUTCOMES[(target, status, " ".join(reason.split()[:1]))] += 1
    if status >= 400:
        assert svc.queued() == queued_before


# --- strategies -------------------------------------------------------------------------------

HOSTILE_STRINGS = [
    "", " ", "\x00", "\n", "\r\n", "\ud800", "\udfff", "\ud83d\ude00", "\u202e", "\ufeff", "é", "Ω", "𝔪𝔞𝔦𝔫",
    "main", "master", "refs/heads/main", "refs/heads/master", "refs/tags/v1.0.0", "refs/tags/v1.0.0;ls",
    "refs/heads/main$(touch x)", "v1.2.3", "v１.２.３", "--upload-pack=touch /tmp/pwned", "../../etc/passwd",
    "$(id)", "`id`", ";rm -rf /", "a" * 40, "0" * 40, "A" * 41, "x" * 5000, "/promote live", "/deploy",
    "/rollback stage to v0.0.1", "Codertocat/Hello-World", "a/b/c", "/", "file:///etc", "ext::sh -c id",
    "https://evil.example/x.git", "https://github.com/a/b.git", "live", "tag", "branch", "closed",
    "created", "deleted", "Bot", "APPROVED", "{}", "[]", "null", "NaN", "1e999",
]
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**63, -(2**63) - 1, 10**30, 0, -1, 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(HOSTILE_STRINGS),
)
JSON_VALUES = st.recursive(
    LEAVES,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)

# Known fields the handlers read, by event.
KNOWN_FIELDS = [
    ("action",), ("ref",), ("after",), ("before",), ("deleted",), ("created",), ("ref_type",),
    ("repository",), ("repository", "full_name"), ("repository", "clone_url"), ("repository", "html_url"),
    ("repository", "default_branch"), ("repository", "master_branch"), ("installation",), ("installation", "id"),
    ("installation", "account"), ("installation", "account", "login"), ("sender",), ("sender", "login"),
    ("pusher",), ("pusher", "name"), ("head_commit",), ("head_commit", "id"), ("release",),
    ("release", "tag_name"), ("pull_request",), ("pull_request", "base"), ("pull_request", "base", "ref"),
    ("pull_request", "head"), ("pull_request", "head", "sha"), ("pull_request", "head", "ref"),
    ("pull_request", "merged"), ("pull_request", "merged_by"), ("pull_request", "merged_by", "login"),
    ("pull_request", "number"), ("pull_request", "title"), ("pull_request", "user"), ("number",),
    ("issue",), ("issue", "number"), ("issue", "pull_request"), ("comment",), ("comment", "id"),
    ("comment", "body"), ("comment", "user"), ("comment", "user", "type"), ("repositories",),
    ("repositories_added",), ("repositories_removed",), ("zen",), ("hook_id",),
]


def _interesting_payloads() -> dict[str, tuple[str, dict]]:
    """Recorded payloads rewritten to reach the deepest paths (deploys, commands, installations)."""
    sha = "a" * 40
    push = load_payload("push/with-installation")
    push.update(ref="refs/heads/master", after=sha, deleted=False, head_commit={"id": sha})
    tag = json.loads(json.dumps(push))
    tag["ref"] = "refs/tags/v1.2.3"
    create = load_payload("create/with-installation")
    create.update(ref="v1.2.3", ref_type="tag")
    release = load_payload("release/published")
    release["release"]["tag_name"] = "v2.0.0"
    merged = load_payload("pull_request/closed")
    merged["pull_request"].update(merged=True, title="Release v1.2.3")
    merged["pull_request"]["base"]["ref"] = "live"
    merged["pull_request"]["head"]["sha"] = "b" * 40
    comment = load_payload("issue_comment/created.with-installation")
    comment["issue"]["pull_request"] = {"url": "https://api.github.com/repos/x/y/pulls/1"}
    comment["comment"]["body"] = "/promote stage v1.2.3"
    malformed_command = json.loads(json.dumps(comment))
    malformed_command["comment"]["body"] = "/promote nowhere"
    installation = load_payload("installation/created")
    return {
        "push-main": ("push", push),
        "push-tag": ("push", tag),
        "create-tag": ("create", create),
        "release": ("release", release),
        "merged-into-live": ("pull_request", merged),
        "command": ("issue_comment", comment),
        "malformed-command": ("issue_comment", malformed_command),
        "installation": ("installation", installation),
    }


INTERESTING = _interesting_payloads()
RECORDED_PAYLOADS = {name: (name.split("/")[0], json.loads((FIXTURES / name).read_text())) for name in RECORDED}
BASES = {**RECORDED_PAYLOADS, **INTERESTING}
BASE_NAMES = sorted(BASES)
INTERESTING_NAMES = sorted(INTERESTING)
RECORDED_BODIES = {name: json.dumps(payload).encode() for name, (_, payload) in BASES.items()}


def _set(payload: dict, path: tuple[str, ...], value) -> None:
    node = payload
    for key in path[:-1]:
        child = node.get(key) if isinstance(node, dict) else None
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


@st.composite
def mutated_payloads(draw, names=BASE_NAMES):
    name = draw(st.sampled_from(names))
    event, payload = BASES[name]
    payload = json.loads(RECORDED_BODIES[name])
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(KNOWN_FIELDS))
        if draw(st.integers(min_value=0, max_value=9)) == 0:
            # a missing field rather than a wrong one
            node = payload
            for key in path[:-1]:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(path[-1], None)
        else:
            _set(payload, path, draw(JSON_VALUES))
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        event = draw(st.sampled_from(EVENTS))  # the payload of one event sent as another
    return event, payload


HEADER_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"), max_size=120
)

# --- the fuzz targets -------------------------------------------------------------------------


@settings(max_examples=3000, **FUZZ)
@given(
    body=st.one_of(st.binary(max_size=400), st.sampled_from(BASE_NAMES).map(RECORDED_BODIES.get)),
    event=st.one_of(st.sampled_from(EVENTS), HEADER_TEXT),
    bad=st.one_of(
        st.just(("missing", None)),
        HEADER_TEXT.map(lambda text: ("header", text)),
        st.text(alphabet="0123456789abcdef", max_size=70).map(lambda h: ("header", "sha256=" + h)),
        st.text(alphabet="0123456789abcdefABCDEF", min_size=64, max_size=64).map(lambda h: ("header", "sha256=" + h)),
        st.text(alphabet="0123456789abcdef", min_size=40, max_size=40).map(lambda h: ("header", "sha1=" + h)),
        st.sampled_from(["wrong-secret", "", " " + WEBHOOK_SECRET, WEBHOOK_SECRET + "\n", WEBHOOK_SECRET.upper(),
                         WEBHOOK_SECRET[:-1]]).map(lambda secret: ("secret", secret)),
    ),
)
def test_anything_not_validly_signed_is_401_and_records_nothing(unsigned, body, event, bad):
    svc = unsigned
    EXECUTED["unsigned"] += 1
    kind, value = bad
    if kind == "missing":
        sent = headers_for(event, body, signature=None)
    elif kind == "header":
        sent = headers_for(event, body, signature=value)
    else:
        sent = headers_for(event, body, signature=signature(body, value))  # signed with another secret
    if sent.get("X-Hub-Signature-256") == signature(body):
        return  # astronomically unlikely; a valid signature is not what this target is about
    assert_refused_unsigned(svc, svc.post(body, sent))


@settings(max_examples=2000, **FUZZ)
@given(
    name=st.sampled_from(BASE_NAMES),
    tamper=st.sampled_from(["flip-body", "flip-signature", "truncate-signature", "uppercase", "sha1",
                            "other-body", "append-byte", "prefix-space"]),
    position=st.integers(min_value=0, max_value=10**6),
)
def test_recorded_payloads_with_invalid_signatures_are_refused(unsigned, name, tamper, position):
    svc = unsigned
    EXECUTED["tampered"] += 1
    event, _ = BASES[name]
    body = RECORDED_BODIES[name]
    good = signature(body)
    sent_body, sig = body, good
    if tamper == "flip-body":
        at = position % len(body)
        sent_body = body[:at] + bytes([body[at] ^ 0x01]) + body[at + 1:]
    elif tamper == "flip-signature":
        at = 7 + position % 64
        sig = good[:at] + ("0" if good[at] != "0" else "1") + good[at + 1:]
    elif tamper == "truncate-signature":
        sig = good[: position % len(good)]
    elif tamper == "uppercase":
        sig = "sha256=" + good[7:].upper()
        if sig == good:
            return
    elif tamper == "sha1":
        sig = "sha1=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha1).hexdigest()
    elif tamper == "other-body":
        other = RECORDED_BODIES[BASE_NAMES[position % len(BASE_NAMES)]]
        if other == body:
            return
        sig = signature(other)
    elif tamper == "append-byte":
        sent_body = body + b" "
    elif tamper == "prefix-space":
        sig = " " + good
    response = svc.post(sent_body, headers_for(event, sent_body, signature=sig))
    assert_refused_unsigned(svc, response)


@settings(max_examples=2000, **FUZZ)
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.text(max_size=200).map(str.encode),
        JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        st.tuples(st.sampled_from(BASE_NAMES), st.integers(min_value=0, max_value=10**6)).map(
            lambda t: RECORDED_BODIES[t[0]][: t[1] % len(RECORDED_BODIES[t[0]])]),  # truncated JSON
        st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n + b"]" * n),  # deep nesting
        st.integers(min_value=1, max_value=3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
        st.sampled_from([b"", b"null", b"true", b"1", b'"x"', b"[]", b"{}", b"NaN", b"Infinity", b"-Infinity",
                         b"\xef\xbb\xbf{}", b"{}\x00", b"\xff\xfe{\x00}\x00", b'{"a":1,"a":2}',
                         b'{"ref":"\\ud800"}', b"1e999999", b"9" * 5000]),
    ),
    event=st.sampled_from(EVENTS),
)
def test_validly_signed_nonsense_gets_a_reasoned_answer_never_a_5xx(svc, body, event):
    EXECUTED["signed-nonsense"] += 1
    before = svc.queued()
    response = svc.post(body, headers_for(event, body))
    assert_answered_signed(svc, response, before, "signed-nonsense")


@settings(max_examples=1800, **FUZZ)
@given(mutated=mutated_payloads())
def test_wrong_types_in_known_fields_never_cause_a_5xx(svc, mutated):
    EXECUTED["wrong-types"] += 1
    event, payload = mutated
    body = json.dumps(payload).encode()
    before = svc.queued()
    response = svc.post(body, headers_for(event, body))
    assert_answered_signed(svc, response, before, "wrong-types")


@settings(max_examples=600, **FUZZ)
@given(
    name=st.sampled_from(INTERESTING_NAMES),
    event=st.one_of(st.none(), st.sampled_from(EVENTS), HEADER_TEXT),
    delivery=st.one_of(st.none(), st.uuids().map(str), HEADER_TEXT,
                       st.sampled_from(["../../etc", "a" * 101, "a" * 100, "x;y", "é", " ", "-", "0"])),
    content_type=st.one_of(st.none(), st.sampled_from(["application/json", "text/plain",
                                                        "application/x-www-form-urlencoded",
                                                        "multipart/form-data; boundary=x"]), HEADER_TEXT),
)
def test_hostile_headers_on_signed_payloads(svc, name, event, delivery, content_type):
    EXECUTED["headers"] += 1
    _, payload = INTERESTING[name]
    body = RECORDED_BODIES[name]
    sent = headers_for("push", body, event=event, delivery=delivery, content_type=content_type)
    if event is None:
        sent.pop("X-GitHub-Event", None)
    before = svc.queued()
    response = svc.post(body, sent)
    assert_answered_signed(svc, response, before, "headers")


REF_TEXT = st.one_of(
    st.text(max_size=60),
    st.sampled_from(HOSTILE_STRINGS),
    st.builds(lambda a, b: a + b, st.sampled_from(["refs/heads/", "refs/tags/", "refs/tags/v", ""]),
              st.text(max_size=40)),
)


@settings(max_examples=800, **FUZZ)
@given(kind=st.sampled_from(["push-main", "push-tag", "create-tag", "release", "merged-into-live"]),
       ref=REF_TEXT)
def test_unicode_and_hostile_refs_are_data(svc, kind, ref):
    EXECUTED["refs"] += 1
    event, _ = INTERESTING[kind]
    payload = json.loads(RECORDED_BODIES[kind])
    if kind.startswith("push"):
        payload["ref"] = ref
    elif kind == "create-tag":
        payload["ref"] = ref
    elif kind == "release":
        payload["release"]["tag_name"] = ref
    else:
        payload["pull_request"]["head"]["ref"] = ref
        payload["pull_request"]["title"] = ref
    body = json.dumps(payload, ensure_ascii=bool(len(ref) % 2)).encode("utf-8", "surrogatepass")
    before = svc.queued()
    response = svc.post(body, headers_for(event, body))
    assert_answered_signed(svc, response, before, "refs")


def test_huge_bodies_are_capped_before_anything_else(svc):
    cap = svc.ctx.settings.max_body_bytes
    assert cap == 25 * 1024 * 1024  # GitHub's own cap on deliveries
    huge = b'{"pad": "' + b"x" * cap + b'"}'
    for sent in (headers_for("push", huge), headers_for("push", huge, signature="sha256=" + "0" * 64)):
        response = svc.post(huge, sent)
        assert response.status_code == 413
        assert reason_of(response)
    assert svc.queued() == 0 and svc.deliveries() == 0
    EXECUTED["huge"] += 2


def test_the_fuzz_budget_was_spent():
    """At least 10,000 requests sent per run (only meaningful when the whole module ran)."""
    targets = {"unsigned", "tampered", "signed-nonsense", "wrong-types", "headers", "refs"}
    if not targets <= set(EXECUTED):
        pytest.skip("only part of the fuzz module ran")
    assert REQUESTS["sent"] >= MINIMUM_TOTAL, (dict(REQUESTS), dict(EXECUTED))
    # The signed targets reached deployments and commands, not only refusals.
    reached = {(target, reason) for target, status, reason in OUTCOMES if status == 202}
    assert ("wrong-types", "deploying") in reached and ("wrong-types", "command") in reached, OUTCOMES
    assert ("refs", "deploying") in reached, OUTCOMES
    assert any(t == "wrong-types" and status == 400 for t, status, _ in OUTCOMES), OUTCOMES


