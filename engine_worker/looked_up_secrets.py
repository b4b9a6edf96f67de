"""The secret values of the credentials one monitor execution looked up, to scrub them from what it reports.

Both executors (:mod:`engine_worker.http_execution`, :mod:`engine_worker.browser_execution`) make one
:class:`LookedUpSecrets` per execution, look every credential up through it, scrub each reason and URL they report
with it (a second line behind reasons built from the definition), and clear it when the execution ends.
"""

from __future__ import annotations

from credvault.secret_scrub import Scrubber, secrets_of
from credvault.v1 import credentials_pb2
from engine_worker.config_store import ConfigStore

__all__ = ["MAX_SCRUBBED", "LookedUpSecrets"]

# Characters of a scrubbed text (after its whitespace is collapsed); longer ones are clipped with "…".
MAX_SCRUBBED = 500


class LookedUpSecrets:
    """The secret values of the credentials one execution looked up, each with the placeholder to show instead."""

    __slots__ = ("_secrets",)

    def __init__(self) -> None:
        self._secrets: dict[str, str] = {}

    def add(self, credential_id: str, details: credentials_pb2.CredentialDetails) -> None:
        for value, shown_as in secrets_of(credential_id, details).items():
            self._secrets.setdefault(value, shown_as)

    def look_up(self, store: ConfigStore, credential_id: str) -> credentials_pb2.CredentialDetails | None:
        """The credential's contents (remembered to scrub), or None when the engine does not hold it."""
        held = store.credential(credential_id)
        if held is None:
            return None
        details = held.details()
        self.add(credential_id, details)
        return details

    def scrub(self, text: str) -> str:
        """``text`` without any of the values, in any form (see credvault.secret_scrub), then clipped."""
        return _short(Scrubber(self._secrets).scrub(text)) if self._secrets else _short(text)

    def clear(self) -> None:
        self._secrets.clear()

    def __repr__(self) -> str:
        return f"LookedUpSecrets({len(self._secrets)} values, redacted)"


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_SCRUBBED else text[: MAX_SCRUBBED - 1] + "…"
