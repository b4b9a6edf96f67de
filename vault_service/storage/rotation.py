"""SQL of token rotation with write-back (mixed into ``Queries``): a token's rotation policy (jsonb, no secret), when
it is next due, and the lease that lets one replica run a token's scheduled rotation at a time. The tokens themselves
are written by the token statements of ``identity``."""

from __future__ import annotations

import datetime
from typing import Any

from vault_service.storage.connection import Connection

_FREE = "(rotation_lease_until IS NULL OR rotation_lease_until < now())"


class RotationQueries:
    conn: Connection

    async def get_rotation(self, public_id: str, *, for_update: bool = False) -> dict[str, Any] | None:
        """The rotation policy document of a token (None: it has none, or there is no such token)."""
        lock = " FOR UPDATE" if for_update else ""
        row = await self.conn.fetchrow(f"SELECT rotation FROM api_tokens WHERE public_id = $1{lock}", public_id)
        if row is None or row["rotation"] is None:
            return None
        doc: dict[str, Any] = row["rotation"]
        return doc

    async def set_rotation(self, public_id: str, doc: dict[str, Any] | None, next_at: datetime.datetime | None) -> None:
        await self.conn.execute(
            "UPDATE api_tokens SET rotation = $2::jsonb, next_rotation_at = $3 WHERE public_id = $1",
            public_id,
            doc,
            next_at,
        )

    async def claim_due_rotations(self, owner: str, lease_seconds: float, limit: int) -> list[str]:
        """Take the lease of up to ``limit`` live tokens whose rotation is due; rows another replica is claiming
        right now are skipped, not waited for."""
        rows = await self.conn.fetch(
            "UPDATE api_tokens SET rotation_owner = $1, rotation_lease_until = now() + make_interval(secs => $2)"
            " WHERE public_id IN (SELECT public_id FROM api_tokens WHERE rotation IS NOT NULL AND revoked_at IS NULL"
            " AND (expires_at IS NULL OR expires_at > now())"
            f" AND next_rotation_at <= now() AND {_FREE} ORDER BY next_rotation_at LIMIT $3 FOR UPDATE SKIP LOCKED)"
            f" AND {_FREE} RETURNING public_id",
            owner,
            float(lease_seconds),
            limit,
        )
        return [r["public_id"] for r in rows]

    async def claim_rotation(self, public_id: str, owner: str, lease_seconds: float) -> bool:
        """Take the lease of one token's rotation, due or not; False when another holder has it."""
        row = await self.conn.fetchrow(
            "UPDATE api_tokens SET rotation_owner = $2, rotation_lease_until = now() + make_interval(secs => $3)"
            f" WHERE public_id = $1 AND {_FREE} RETURNING public_id",
            public_id,
            owner,
            float(lease_seconds),
        )
        return row is not None

    async def finish_rotation(self, public_id: str, owner: str, next_in_seconds: float | None) -> None:
        """Release the lease ``owner`` holds; ``next_in_seconds`` (after a failure) moves the next attempt."""
        await self.conn.execute(
            "UPDATE api_tokens SET rotation_owner = NULL, rotation_lease_until = NULL,"
            " next_rotation_at = CASE WHEN $3::float8 IS NULL THEN next_rotation_at"
            " ELSE now() + make_interval(secs => $3::float8) END"
            " WHERE public_id = $1 AND rotation_owner = $2",
            public_id,
            owner,
            next_in_seconds,
        )

    async def release_rotations(self, owner: str) -> None:
        await self.conn.execute(
            "UPDATE api_tokens SET rotation_owner = NULL, rotation_lease_until = NULL WHERE rotation_owner = $1", owner
        )
