"""The text formats both processes speak, each defined once: credential and monitor ids, slugs (location and engine
ids), the credential placeholder in monitor definitions, and the shape of an API token.

The id patterns are anchored with ``^…$``: callers that use ``match`` keep their rules as they were, those that must
refuse a trailing newline use ``fullmatch``.
"""

from __future__ import annotations

import re

__all__ = [
    "CREDENTIAL_ID",
    "CREDENTIAL_ID_PREFIX",
    "MONITOR_ID",
    "MONITOR_ID_PREFIX",
    "PLACEHOLDER",
    "SLUG",
    "SLUG_RULE",
    "TOKEN_PREFIX",
    "TOKEN_PUBLIC_ID_CHARS",
    "placeholder",
]

CREDENTIAL_ID_PREFIX = "CREDENTIALS_VAULT-"
CREDENTIAL_ID = re.compile(r"^CREDENTIALS_VAULT-[0-9A-F]{16}$")
MONITOR_ID_PREFIX = "SYNTHETIC_TEST-"
MONITOR_ID = re.compile(r"^SYNTHETIC_TEST-[0-9A-F]{16}$")

# Location and engine ids (also the path segments of an engine's SPIFFE ID).
SLUG = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
SLUG_RULE = "1-63 characters a-z, 0-9 and '-', not starting or ending with '-'"

# A reference to a credential's value in a URL, header value or body: the token, or a pair's username or password.
PLACEHOLDER = re.compile(r"\{\{(CREDENTIALS_VAULT-[0-9A-F]{16})(?:\.(username|password))?\}\}")

# An API token is ``cv0c01.<public id>.<secret>``; ``cv0c01.<public id>`` is the token's id.
TOKEN_PREFIX = "cv0c01"
TOKEN_PUBLIC_ID_CHARS = 24


def placeholder(credential_id: str, field: str | None = None) -> str:
    """The placeholder of a credential's value (``field``: ``"username"`` or ``"password"`` of a pair)."""
    return f"{{{{{credential_id}.{field}}}}}" if field else f"{{{{{credential_id}}}}}"
