"""`create`: GitHub's second report of a new tag; it plans the same single deployment."""

from app.plans import Ignore
from app.webhooks.common import repo_of, sender_of
from app.webhooks.router import Router
from app.webhooks.tags import deploy_tag

router = Router()


@router.register("create")
def create(payload, config):
    if payload["ref_type"] != "tag":
        return Ignore(f"creating a {payload['ref_type']} deploys nothing")
    # `create` carries no commit sha; the worker resolves the tag.
    return deploy_tag(config, repo_of(payload), payload["ref"], None, sender_of(payload), "create")
