"""`ping`: GitHub checking that the hook works."""

from app.plans import Pong
from app.webhooks.router import Router

router = Router()


@router.register("ping")
def ping(payload, config):
    return Pong(zen=str(payload.get("zen", "")))
