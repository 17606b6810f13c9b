"""Signed GitHub deliveries built from the recorded payloads, and the sample app's repositories."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import secrets
import subprocess
from pathlib import Path

import requests

from bench.env import ROOT

PAYLOADS = ROOT / "tests" / "fixtures" / "github-payloads"
#: The sample app answers its health check on /healthz (its default would be "/").
REPO_FILE = {".release-pipeline.yml": "port: 8080\nhealthcheck: /healthz\n"}


def recorded(name: str) -> dict:
    return copy.deepcopy(json.loads((PAYLOADS / f"{name}.payload.json").read_text()))


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def intake_push() -> bytes:
    """The recorded push (a tag deletion) rewritten to a push to the default branch, as the
    README's curl example does."""
    payload = recorded("push/with-installation")
    payload.update(ref=f"refs/heads/{payload['repository']['default_branch']}", deleted=False,
                   after="6113728f27ae82c7b1a177c8d03f9e96e0adf246")
    payload["head_commit"] = {**(payload.get("head_commit") or {}), "id": payload["after"]}
    return json.dumps(payload, separators=(",", ":")).encode()


class Repo:
    """A file:// repository holding the busybox sample app (tests/support/dockerkit)."""

    def __init__(self, path: Path, full_name: str):
        self.path = path
        self.full_name = full_name
        self.name = full_name.split("/", 1)[1]
        self.clone_url = ""

    def commit(self, version_text: str, tag: str | None = None) -> str:
        from tests.support.dockerkit import make_sample_repo

        self.clone_url, sha = make_sample_repo(self.path, version_text=version_text, tag=tag, extra_files=REPO_FILE)
        return sha

    def tag(self, tag: str) -> tuple[str, str]:
        """Annotate HEAD with `tag`: (tag object sha, commit sha)."""
        from tests.support.dockerkit import _git

        _git(self.path, "tag", "-a", tag, "-m", f"Release {tag}")
        return _git(self.path, "rev-parse", tag), _git(self.path, "rev-parse", f"{tag}^{{commit}}")

    def _repository(self, payload: dict) -> dict:
        payload["repository"].update(full_name=self.full_name, name=self.name, clone_url=self.clone_url,
                                     default_branch="main", html_url=f"https://github.com/{self.full_name}")
        payload.pop("installation", None)
        return payload

    def push_payload(self, sha: str) -> dict:
        payload = self._repository(recorded("push/with-installation"))
        payload.update(ref="refs/heads/main", after=sha, deleted=False, created=False)
        payload["head_commit"] = {**(payload.get("head_commit") or {}), "id": sha}
        payload["pusher"] = {"name": "bench", "email": "bench@example.test"}
        return payload

    def tag_payloads(self, tag: str, tag_object: str, commit: str) -> list[tuple[str, dict]]:
        """A release tag as GitHub reports it: `push` (refs/tags/…) and `create`."""
        push = self._repository(recorded("push/with-installation"))
        push.update(ref=f"refs/tags/{tag}", after=tag_object, deleted=False, created=True, base_ref=None)
        push["head_commit"] = {**(push.get("head_commit") or {}), "id": commit}
        push["pusher"] = {"name": "bench", "email": "bench@example.test"}
        create = self._repository(recorded("create/with-installation"))
        create.update(ref=tag, ref_type="tag")
        return [("push", push), ("create", create)]


class Sender:
    """POSTs signed deliveries to the webhook endpoint (one new connection each, as GitHub does)
    and, with the service's `ctx`, waits until the intake drainer recorded each."""

    def __init__(self, url: str, secret: str, ctx=None):
        self.url = url
        self.secret = secret
        self.ctx = ctx

    def deliver(self, event: str, payload: dict) -> dict:
        """The answer, with what the drainer recorded: its reason and "deployment" (if it planned one)."""
        body = json.dumps(payload).encode()
        delivery = "bench-" + secrets.token_hex(12)
        response = requests.post(self.url, data=body, timeout=10, headers={
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": sign(body, self.secret),
            "Content-Type": "application/json",
        })
        if response.status_code not in (200, 202):
            raise RuntimeError(f"delivery refused: {response.status_code} {response.text[:300]}")
        answer = response.json()
        if response.status_code == 202 and self.ctx is not None:
            answer.update(self.recorded(delivery))
        return answer

    def recorded(self, delivery_id: str) -> dict:
        from app.simulate import recorded

        return recorded(self.ctx.db, delivery_id, pause=0.005)


def git(path: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True, text=True).stdout.strip()
