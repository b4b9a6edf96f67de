"""Opaque page tokens and page sizes.

A page token carries the last key of the previous page and a fingerprint of the query it belongs to, so a token
used with other filters is rejected instead of silently skipping or repeating entries.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence

from vault_service.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size", "must not be negative")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    if requested > MAX_PAGE_SIZE:
        raise InvalidArgument("page_size", f"is {requested}; at most {MAX_PAGE_SIZE} are allowed")
    return requested


def _fingerprint(query: Sequence[object]) -> str:
    return hashlib.sha256(json.dumps([str(q) for q in query]).encode()).hexdigest()[:16]


def encode_page_token(query: Sequence[object], *key: str) -> str:
    doc = {"q": _fingerprint(query), "k": list(key)}
    return base64.urlsafe_b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_page_token(token: str, query: Sequence[object], parts: int) -> list[str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        doc = json.loads(raw)
        key = doc["k"]
        if (
            doc["q"] != _fingerprint(query)
            or not isinstance(key, list)
            or len(key) != parts
            or not all(isinstance(k, str) for k in key)
        ):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument(
            "page_token", "is not a token returned by a previous call with the same filters"
        ) from None
    return key
