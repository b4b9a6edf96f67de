"""The digest of what an engine holds, computed the same way by the engine and by the vault (anti-entropy).

A held set is a set of (resource kind, id, version). Its digest is the sum, modulo 2**64, of a 64-bit hash of each
member, so it does not depend on order and is kept current in O(1) per change: add a member's hash when it is
held, subtract it when it is let go. The engine reports the digest of what it holds with its ACKs and heartbeats;
the vault compares it with the digest of what that engine should hold and, when they differ, asks it for the full
list and sends the difference. Ids and versions only: no contents ever enter a digest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["HeldDigest", "member_hash"]

_MASK = (1 << 64) - 1


def member_hash(kind: int, resource_id: str, version: int) -> int:
    """A 64-bit hash of one held resource."""
    data = f"{kind}\x00{resource_id}\x00{version}".encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class HeldDigest:
    """The running digest of a held set. The caller adds and removes members as it holds and lets go of them."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def add(self, kind: int, resource_id: str, version: int) -> None:
        self.value = (self.value + member_hash(kind, resource_id, version)) & _MASK

    def remove(self, kind: int, resource_id: str, version: int) -> None:
        self.value = (self.value - member_hash(kind, resource_id, version)) & _MASK

    def without(self, members: Iterable[tuple[int, str, int]]) -> int:
        """The digest of the set less ``members`` (which must be in it)."""
        value = self.value
        for kind, resource_id, version in members:
            value = (value - member_hash(kind, resource_id, version)) & _MASK
        return value

    def clear(self) -> None:
        self.value = 0

    def __repr__(self) -> str:
        return f"HeldDigest({self.value:016x})"
