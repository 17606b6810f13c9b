"""`delete`: removing a branch or tag never undeploys anything."""

from app.plans import Ignore
from app.webhooks.router import Router

router = Router()


@router.register("delete")
def delete(payload, config):
    return Ignore(f"{payload['ref_type']} deletion ({payload['ref']}) deploys nothing")
