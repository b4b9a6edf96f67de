"""SQL of the external synchronization (mixed into ``Queries``): the lease that lets exactly one replica synchronize
a credential at a time, and the synchronization's status. The contents a sync changes are written by
``update_credential`` in the same transaction as ``finish_sync``."""

from __future__ import annotations

from vault_service.storage.connection import Connection

# A lease is free when nobody holds it or its holder let it expire (died, or hung past it).
_FREE = "(sync_lease_until IS NULL OR sync_lease_until < now())"


class SyncQueries:
    conn: Connection

    async def claim_due_syncs(self, owner: str, lease_seconds: float, limit: int) -> list[str]:
        """Take the lease of up to ``limit`` due synchronized credentials (never synchronized, or their next run
        passed); rows another replica is claiming right now are skipped, not waited for."""
        rows = await self.conn.fetch(
            "UPDATE credentials SET sync_owner = $1, sync_lease_until = now() + make_interval(secs => $2)"
            " WHERE id IN (SELECT id FROM credentials WHERE external_source IS NOT NULL"
            f" AND (next_sync_at IS NULL OR next_sync_at <= now()) AND {_FREE}"
            " ORDER BY next_sync_at NULLS FIRST LIMIT $3 FOR UPDATE SKIP LOCKED)"
            f" AND {_FREE} RETURNING id",
            owner,
            lease_seconds,
            limit,
        )
        return [r["id"] for r in rows]

    async def claim_sync(self, credential_id: str, owner: str, lease_seconds: float) -> bool:
        """Take the lease of one synchronized credential, due or not; False when another holder has it."""
        row = await self.conn.fetchrow(
            "UPDATE credentials SET sync_owner = $2, sync_lease_until = now() + make_interval(secs => $3)"
            f" WHERE id = $1 AND external_source IS NOT NULL AND {_FREE} RETURNING id",
            credential_id,
            owner,
            lease_seconds,
        )
        return row is not None

    async def finish_sync(
        self,
        credential_id: str,
        owner: str,
        *,
        error: str,
        external_version: str | None,
        interval_seconds: float,
        backoff_base_seconds: float,
    ) -> bool:
        """Record an attempt (``error`` empty: a success) and release the lease, if ``owner`` still holds it; False
        if it lost the lease. ``external_version`` None keeps the one recorded. The next run: one interval after the
        run that was due (a fixed rate: the time a sync waited for its tick and took does not add up cycle after
        cycle; if that is past already, at once), or one interval from now for a run made before it was due
        (SyncCredential); after a failure the exponential backoff from now (base, 2 x base, ... up to the interval)."""
        row = await self.conn.fetchrow(
            "UPDATE credentials SET sync_last_attempt = now(),"
            " sync_last_success = CASE WHEN $3 = '' THEN now() ELSE sync_last_success END,"
            " sync_last_error = $3, sync_external_version = coalesce($4, sync_external_version),"
            " next_sync_at = CASE WHEN $3 = '' AND next_sync_at <= now()"
            " THEN greatest(next_sync_at + make_interval(secs => $5), now())"
            " ELSE now() + make_interval(secs => CASE WHEN $3 = '' THEN $5"
            " ELSE least($5, $6 * power(2, least(sync_failures, 30))) END) END,"
            " sync_failures = CASE WHEN $3 = '' THEN 0 ELSE sync_failures + 1 END,"
            " sync_owner = NULL, sync_lease_until = NULL"
            " WHERE id = $1 AND sync_owner = $2 RETURNING id",
            credential_id,
            owner,
            error,
            external_version,
            float(interval_seconds),
            float(backoff_base_seconds),
        )
        return row is not None

    async def restart_sync(self, credential_id: str) -> None:
        """A new source: due at once, with a fresh status; the lease of a synchronization of the old source is
        revoked (if another replica holds it, ``finish_sync`` finds it lost and that run writes nothing)."""
        await self.conn.execute(
            "UPDATE credentials SET next_sync_at = NULL, sync_failures = 0, sync_last_error = '',"
            " sync_external_version = '', sync_owner = NULL, sync_lease_until = NULL WHERE id = $1",
            credential_id,
        )

    async def release_syncs(self, owner: str) -> None:
        """Give up the leases ``owner`` holds (a replica shutting down): others may take them at once."""
        await self.conn.execute(
            "UPDATE credentials SET sync_owner = NULL, sync_lease_until = NULL WHERE sync_owner = $1", owner
        )

    async def sync_ages(self) -> dict[str, float]:
        """By provider, the seconds since the least recently synchronized of its credentials was last synchronized
        well (one never synchronized well counts from its creation)."""
        rows = await self.conn.fetch(
            "SELECT external_source->>'provider' AS provider,"
            " extract(epoch FROM now() - min(coalesce(sync_last_success, created_at)))::float8 AS age"
            " FROM credentials WHERE external_source IS NOT NULL GROUP BY 1"
        )
        return {r["provider"]: max(0.0, r["age"]) for r in rows}
