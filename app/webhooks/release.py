"""`release`: publishing a release for a tag plans the same single deployment as the tag."""

from app.plans import Ignore
from app.webhooks.common import repo_of, sender_of
from app.webhooks.router import Router
from app.webhooks.tags import deploy_tag

router = Router()


@router.register("release")
def release(payload, config):
    if payload.get("action") not in ("published", "created", "released"):
        return Ignore(f"release {payload.get('action')} deploys nothing")
    tag = payload["release"]["tag_name"]
    return deploy_tag(config, repo_of(payload), tag, None, sender_of(payload), "release")
