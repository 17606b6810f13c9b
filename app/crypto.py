"""Secrets at rest: Fernet with a key derived from SECRET_KEY; plaintext only in memory."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken

from app.exceptions import SettingsError

#: What a secret's value is shown as, wherever it would appear (API, portal, deployment log).
MASK = "••••••••"


def mask(text: str, hidden: list[str]) -> str:
    """`text` with every value in `hidden` (a phase's secrets, passwords) replaced by MASK: the
    one way output shown to people hides secrets (deployment log, runtime logs)."""
    for value in hidden:
        if value:
            text = text.replace(value, MASK)
    return text


class SecretBox:
    def __init__(self, key: bytes):
        self._fernet = Fernet(key)

    def seal(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def open(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise SettingsError("a stored secret cannot be decrypted: was SECRET_KEY changed?") from None
