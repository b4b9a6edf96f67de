"""SQL of key-encryption keys (mixed into ``Queries``): the check blob of each KEK, and re-wrapping credentials'
data keys under another KEK (the rotation reads and writes only the sealed columns)."""

from __future__ import annotations

from vault_service.crypto import SealedContents
from vault_service.storage.connection import Connection
from vault_service.storage.credentials import SEALED_COLUMNS, sealed_contents


class KeyQueries:
    conn: Connection

    async def sealed_not_under(self, kek_id: str, after: str, limit: int) -> list[tuple[str, int, SealedContents]]:
        rows = await self.conn.fetch(
            f"SELECT id, version, {SEALED_COLUMNS} FROM credentials WHERE kek_id <> $1 AND id > $2"
            f" ORDER BY id LIMIT $3",
            kek_id,
            after,
            limit,
        )
        return [(r["id"], r["version"], sealed_contents(r)) for r in rows]

    async def replace_sealed(self, credential_id: str, version: int, old_kek: str, sealed: SealedContents) -> bool:
        """Re-wrap in place, only if nobody changed the row meanwhile (a concurrent overwrite wins)."""
        status = await self.conn.execute(
            "UPDATE credentials SET kek_id = $4, wrapped_key = $5, ciphertext = $6"
            " WHERE id = $1 AND version = $2 AND kek_id = $3",
            credential_id,
            version,
            old_kek,
            sealed.kek_id,
            sealed.wrapped_key,
            sealed.ciphertext,
        )
        return bool(status == "UPDATE 1")

    async def kek_usage(self) -> dict[str, int]:
        rows = await self.conn.fetch("SELECT kek_id, count(*) AS n FROM credentials GROUP BY kek_id")
        return {r["kek_id"]: int(r["n"]) for r in rows}

    async def kek_checks(self) -> dict[str, bytes]:
        rows = await self.conn.fetch("SELECT kek_id, check_blob FROM kek_checks")
        return {r["kek_id"]: bytes(r["check_blob"]) for r in rows}

    async def insert_kek_check(self, kek_id: str, check: bytes) -> None:
        await self.conn.execute(
            "INSERT INTO kek_checks (kek_id, check_blob) VALUES ($1, $2) ON CONFLICT (kek_id) DO NOTHING", kek_id, check
        )

    async def delete_kek_check(self, kek_id: str) -> None:
        await self.conn.execute("DELETE FROM kek_checks WHERE kek_id = $1", kek_id)
