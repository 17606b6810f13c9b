"""The files `up` keeps in var/ so that a first run needs no configuration, and `doctor` and
`simulate` see the same settings as the running `up`.

- `secret_key`, `webhook_secret`, `admin_token`: generated once (mode 0600) when the variable
  is unset (the admin token only without GitHub sign-in), so the portal can always be entered;
- `github-app.env`: the GitHub App registered through the manifest flow (app.github_setup);
- `up.env`: where the running `up` listens (BIND, PORT, PUBLIC_URL), rewritten at each start.

Variables set in the environment always win over the files.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import MutableMapping
from pathlib import Path

from app.github_setup import ENV_FILE, load_env_file
from app.settings import PROJECT_ROOT

VAR = PROJECT_ROOT / "var"
UP_ENV = VAR / "up.env"
SIGN_IN_LINK = VAR / "sign-in-link"
#: Setting → the file in var/ holding the generated value.
GENERATED = {"SECRET_KEY": "secret_key", "GITHUB_WEBHOOK_SECRET": "webhook_secret", "ADMIN_TOKEN": "admin_token"}


def load(environ: MutableMapping[str, str] | None = None, *, generate: bool = False) -> list[str]:
    """Fill `environ` (default: this process's) from var/; with `generate`, create the missing
    secrets first. Returns a line for each file that was used."""
    environ = os.environ if environ is None else environ
    used = []
    if load_env_file(ENV_FILE, environ):
        used.append(f"GitHub App settings loaded from {ENV_FILE}")
    if load_env_file(UP_ENV, environ):
        used.append(f"listening settings of `up` loaded from {UP_ENV}")
    for name, filename in GENERATED.items():
        if environ.get(name) or (name == "GITHUB_WEBHOOK_SECRET" and environ.get("PIPELINE_DEV")) or (
                name == "ADMIN_TOKEN" and environ.get("GITHUB_CLIENT_ID")):
            continue
        path = VAR / filename
        if generate and not path.exists():
            write_private(path, secrets.token_urlsafe(32))
            used.append(f"{name} generated into {path}")
        if path.exists():
            environ[name] = path.read_text().strip()
    return used


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, never readable by others even for an instant."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    path.chmod(0o600)
