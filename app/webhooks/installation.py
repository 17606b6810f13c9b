"""`installation` and `installation_repositories`: keep the app registry current."""

from app.plans import Repo, SyncInstallation
from app.webhooks.router import Router

router = Router()


def _repos(items, installation_id: int) -> tuple[Repo, ...]:
    # Installation payloads list names only; clone URL and default branch arrive with the first push.
    return tuple(
        Repo(
            full_name=item["full_name"],
            clone_url=None,
            default_branch="main",
            installation_id=installation_id,
        )
        for item in items or ()
    )


@router.register("installation")
def installation(payload, config):
    inst = payload["installation"]
    installation_id = int(inst["id"])
    account = inst["account"]["login"]
    action = payload["action"]
    repositories = payload.get("repositories") or []
    if action == "deleted":
        return SyncInstallation(installation_id, account, action, removed=tuple(r["full_name"] for r in repositories))
    return SyncInstallation(installation_id, account, action, added=_repos(repositories, installation_id))


@router.register("installation_repositories")
def installation_repositories(payload, config):
    inst = payload["installation"]
    installation_id = int(inst["id"])
    account = inst["account"]["login"]
    return SyncInstallation(
        installation_id,
        account,
        payload["action"],
        added=_repos(payload.get("repositories_added"), installation_id),
        removed=tuple(r["full_name"] for r in payload.get("repositories_removed") or ()),
    )
