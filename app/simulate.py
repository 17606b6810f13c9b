"""`release-pipeline simulate`: deploy a repository on this machine with no GitHub at all.

It sends the running installation the deliveries GitHub would send — a push of the checked-out
branch, a push of a release tag, a merged promotion pull request — signed with the webhook
secret, then waits for the deployment they start and says where it serves. The payloads carry
only the fields Release Pipeline reads (`app.webhooks`); the app is named after the directory.

Deciding (the payloads, pure) is kept apart from doing (`send`, `wait`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import select

from app.adapters import http
from app.adapters.git import LocalRepository
from app.models import App, Deployment, DeploymentStatus

OWNER = "local"
WAIT_SECONDS = 600


@dataclass(frozen=True)
class Delivery:
    event: str
    payload: dict

    @property
    def body(self) -> bytes:
        return json.dumps(self.payload, separators=(",", ":")).encode()

    def headers(self, secret: str) -> dict[str, str]:
        return {
            "X-GitHub-Event": self.event,
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), self.body, hashlib.sha256).hexdigest(),
            "Content-Type": "application/json",
            "User-Agent": "release-pipeline-simulate",
        }


def full_name(repo: LocalRepository) -> str:
    return f"{OWNER}/{repo.path.name}"


def _repository(repo: LocalRepository) -> dict:
    # No html_url: the portal links only to http(s) pages.
    return {"name": repo.path.name, "full_name": full_name(repo), "owner": {"login": OWNER},
            "clone_url": repo.clone_url, "default_branch": repo.branch}


def _user() -> dict:
    return {"login": OWNER, "type": "User"}


def push(repo: LocalRepository, ref: str, sha: str) -> Delivery:
    """A push of `ref` (refs/heads/… or refs/tags/…) whose head is `sha`."""
    return Delivery("push", {
        "ref": ref, "before": "0" * 40, "after": sha, "created": True, "deleted": False, "forced": False,
        "head_commit": {"id": sha}, "repository": _repository(repo), "pusher": {"name": OWNER},
        "sender": _user(),
    })


def pr_merge(repo: LocalRepository, *, number: int, base: str, phase: str, version: str, sha: str) -> Delivery:
    """A promotion pull request for `version` (as `/promote` opens them) merged into `base`."""
    pull = {
        "number": number, "state": "closed", "merged": True, "merged_by": _user(), "user": _user(),
        "title": f"Promote {version} to {phase.capitalize()}",
        "base": {"ref": base, "repo": _repository(repo)},
        "head": {"ref": f"promote/{phase}/{version}", "sha": sha, "repo": _repository(repo)},
    }
    return Delivery("pull_request", {"action": "closed", "number": number, "pull_request": pull,
                                     "repository": _repository(repo), "sender": _user()})


def send(url: str, secret: str, delivery: Delivery) -> dict:
    """POST the delivery to the webhook endpoint; the receiver's answer (raises on non-2xx)."""
    response = http.post(f"{url}/api/github/webhooks", delivery.body, delivery.headers(secret), timeout=30,
                         via_proxy=True)
    if response.status is None:
        raise RuntimeError(f"the webhook endpoint could not be reached: {response.words}")
    try:
        answer = json.loads(response.body)
    except ValueError:
        answer = {"reason": response.body.decode("utf-8", "replace")[:200]}
    if not 200 <= response.status < 300:
        raise RuntimeError(f"the webhook endpoint answered {response.status}: {answer.get('reason', answer)}")
    return answer


def recorded(db, delivery_id: str, pause: float = 0.01, timeout: float = 60) -> dict:
    """What the intake drainer recorded for an accepted delivery: its reason and the
    deployment it planned ("deployment", when it planned one). Raises once `timeout` passed."""
    from app.intake import planned_deployment
    from app.models import Delivery as Recorded

    deadline = time.monotonic() + timeout
    while True:
        with db.session() as session:
            row = session.get(Recorded, delivery_id)
        if row is not None:
            deployment = planned_deployment(row)
            return {"reason": row.reason, **({"deployment": deployment} if deployment else {})}
        if time.monotonic() > deadline:
            raise RuntimeError(f"delivery {delivery_id} was accepted but not recorded within {timeout:g} s: "
                               "is the intake drainer (release-pipeline intake) running?")
        time.sleep(pause)


def wait(db, deployment_id: int, pause: float = 0.5, timeout: float = WAIT_SECONDS) -> Deployment:
    """The deployment once it finished (succeeded, failed, refused, superseded)."""
    deadline = time.monotonic() + timeout
    while True:
        with db.session() as session:
            deployment = session.get(Deployment, deployment_id)
            if DeploymentStatus(deployment.status).finished or time.monotonic() > deadline:
                return deployment
        time.sleep(pause)


def serving(db, repo: LocalRepository, phase: str) -> Deployment | None:
    """What `phase` of the repository's app serves now."""
    from app.actions import current

    with db.session() as session:
        app = session.scalar(select(App).where(App.full_name == full_name(repo)))
        return current(session, app.id, phase) if app is not None else None
