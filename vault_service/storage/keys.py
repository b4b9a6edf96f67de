"""SQL of key-encryption keys (mixed into ``Queries``): the check blob of each KEK, re-wrapping credentials' data keys
under another KEK (the rotation reads and writes only the sealed columns), the active KEK every replica follows, and
what each replica has loaded."""

from __future__ import annotations

import dataclasses
import datetime

from vault_service.crypto import SealedContents
from vault_service.storage.connection import Connection
from vault_service.storage.credentials import SEALED_COLUMNS, sealed_contents


@dataclasses.dataclass(frozen=True)
class ReplicaKeys:
    """A replica's report: the KEKs it has loaded and the one it wraps new data keys with."""

    replica_id: str
    kek_ids: tuple[str, ...]
    active_kek: str
    seen_at: datetime.datetime
    live: bool


class KeyQueries:
    conn: Connection

    async def active_kek(self) -> str | None:
        value: str | None = await self.conn.fetchval("SELECT kek_id FROM kek_active")
        return value

    async def seed_active_kek(self, kek_id: str) -> str:
        """The active KEK, ``kek_id`` if none was chosen yet (the first replica's keyring decides)."""
        await self.conn.execute("INSERT INTO kek_active (kek_id) VALUES ($1) ON CONFLICT DO NOTHING", kek_id)
        value: str = await self.conn.fetchval("SELECT kek_id FROM kek_active")
        return value

    async def set_active_kek(self, kek_id: str) -> None:
        await self.conn.execute(
            "INSERT INTO kek_active (kek_id) VALUES ($1)"
            " ON CONFLICT (singleton) DO UPDATE SET kek_id = EXCLUDED.kek_id, activated_at = now()",
            kek_id,
        )

    async def report_replica(self, replica_id: str, kek_ids: list[str], active_kek: str, lease_seconds: float) -> None:
        await self.conn.execute(
            "INSERT INTO vault_replicas (replica_id, kek_ids, active_kek, live_until)"
            " VALUES ($1, $2, $3, now() + make_interval(secs => $4))"
            " ON CONFLICT (replica_id) DO UPDATE SET kek_ids = EXCLUDED.kek_ids, active_kek = EXCLUDED.active_kek,"
            " seen_at = now(), live_until = EXCLUDED.live_until",
            replica_id,
            kek_ids,
            active_kek,
            lease_seconds,
        )

    async def forget_replica(self, replica_id: str) -> None:
        await self.conn.execute("DELETE FROM vault_replicas WHERE replica_id = $1", replica_id)

    async def replicas(self) -> list[ReplicaKeys]:
        rows = await self.conn.fetch(
            "SELECT replica_id, kek_ids, active_kek, seen_at, live_until > now() AS live FROM vault_replicas"
            " ORDER BY replica_id"
        )
        return [
            ReplicaKeys(r["replica_id"], tuple(r["kek_ids"]), r["active_kek"], r["seen_at"], r["live"]) for r in rows
        ]

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
