"""A replica's short memory of authentications: the full token hash -> the principal the database gave for it.

It saves the token lookup of the hot credential calls without ever trusting a remembered principal on its own:

- Keyed by the hash of the whole token (id and secret): only a token that matched in the database can hit, so an
  unknown id and a wrong secret both miss and take the one database path.
- A remembered principal carries an ``AuthCheck`` (the token id and a fingerprint of its token and user rows).
  The statement that does the call's work re-checks it in the same snapshot (``vault_service.storage.identity``),
  so a revocation, expiry, deletion or permission change committed anywhere before that statement, by any
  replica or by hand, refuses the call as if nothing had been remembered. No notification is relied upon.
- Revocation and expiry times are also checked at every call; an entry lives at most ``ttl`` seconds.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable

from vault_service.models import Principal


class CachedAuth:
    """What a successful lookup found. ``last_used_at`` is updated in place when the use is recorded."""

    __slots__ = ("expires_at", "last_used_at", "principal", "revoked_at", "secret_hash", "stored_at")

    def __init__(
        self,
        secret_hash: bytes,
        principal: Principal,
        expires_at: datetime.datetime | None,
        revoked_at: datetime.datetime | None,
        last_used_at: datetime.datetime | None,
    ) -> None:
        self.secret_hash = secret_hash
        self.principal = principal
        self.expires_at = expires_at
        self.revoked_at = revoked_at
        self.last_used_at = last_used_at
        self.stored_at = 0.0

    def __repr__(self) -> str:
        return f"CachedAuth(token_id={self.principal.token_id!r}, user={self.principal.username!r})"


class AuthCache:
    def __init__(self, ttl: float, *, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._entries: dict[bytes, CachedAuth] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, secret_hash: bytes) -> CachedAuth | None:
        entry = self._entries.get(secret_hash)
        if entry is not None and self._clock() - entry.stored_at >= self.ttl:
            del self._entries[secret_hash]
            entry = None
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def put(self, entry: CachedAuth) -> None:
        self._entries.pop(entry.secret_hash, None)
        while len(self._entries) >= self._max:
            del self._entries[next(iter(self._entries))]  # the oldest
        entry.stored_at = self._clock()
        self._entries[entry.secret_hash] = entry

    def discard(self, secret_hash: bytes) -> None:
        self._entries.pop(secret_hash, None)
