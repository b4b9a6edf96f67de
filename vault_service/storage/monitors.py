"""SQL of locations, engines and monitors (mixed into ``Queries``).

Monitors go in and come out as ``credvault.v1`` protobuf messages, on purpose: the domain works on them too, and
mirroring the large monitor schema as dataclasses would only duplicate it (see ``vault_service.models``)."""

from __future__ import annotations

import datetime

import asyncpg
from google.protobuf import json_format

from credvault.v1 import monitors_pb2 as mpb
from vault_service.errors import AlreadyExists
from vault_service.models import EngineStatus
from vault_service.storage.connection import Connection

_MONITOR_COLUMNS = (
    "id, name, type, enabled, disabled_reason, frequency_minutes, location_ids, management_zone, script, version,"
    " revision, created_by, created_at, updated_at"
)
MONITOR_TYPES = {"HTTP": mpb.MONITOR_TYPE_HTTP, "BROWSER": mpb.MONITOR_TYPE_BROWSER}
_REASONS = {
    None: mpb.DISABLED_REASON_UNSPECIFIED,
    "BY_USER": mpb.DISABLED_REASON_BY_USER,
    "CREDENTIAL_DELETED": mpb.DISABLED_REASON_CREDENTIAL_DELETED,
}


def _monitor(row: asyncpg.Record, credential_ids: list[str]) -> mpb.Monitor:
    m = mpb.Monitor()
    json_format.ParseDict(row["script"], m)
    m.id = row["id"]
    m.name = row["name"]
    m.type = MONITOR_TYPES[row["type"]]
    m.enabled = row["enabled"]
    m.disabled_reason = _REASONS[row["disabled_reason"]]
    m.frequency_minutes = row["frequency_minutes"]
    m.location_ids.extend(row["location_ids"])
    m.management_zone = row["management_zone"]
    m.credential_ids.extend(sorted(credential_ids))
    m.version = row["version"]
    m.revision = row["revision"]
    m.create_time.FromDatetime(row["created_at"])
    m.update_time.FromDatetime(row["updated_at"])
    return m


def _script_doc(m: mpb.Monitor) -> dict[str, object]:
    script = mpb.Monitor()
    if m.WhichOneof("script") == "http":
        script.http.CopyFrom(m.http)
    else:
        script.browser.CopyFrom(m.browser)
    return json_format.MessageToDict(script)


def _type_name(m: mpb.Monitor) -> str:
    return "HTTP" if m.type == mpb.MONITOR_TYPE_HTTP else "BROWSER"


def _reason_name(reason: int) -> str | None:
    for name, value in _REASONS.items():
        if value == reason:
            return name
    return None


class MonitorQueries:
    conn: Connection

    # --- locations and engines -----------------------------------------------------------------------------------

    async def insert_location(self, location_id: str, name: str) -> datetime.datetime:
        try:
            created: datetime.datetime = await self.conn.fetchval(
                "INSERT INTO locations (id, name) VALUES ($1, $2) RETURNING created_at", location_id, name
            )
        except asyncpg.UniqueViolationError:
            raise AlreadyExists(f"location {location_id!r} exists already") from None
        return created

    async def list_locations(self) -> list[tuple[str, str, datetime.datetime]]:
        rows = await self.conn.fetch("SELECT id, name, created_at FROM locations ORDER BY id")
        return [(r["id"], r["name"], r["created_at"]) for r in rows]

    async def existing_locations(self, location_ids: list[str]) -> set[str]:
        rows = await self.conn.fetch("SELECT id FROM locations WHERE id = ANY($1)", location_ids)
        return {r["id"] for r in rows}

    async def count_monitors_in(self, location_id: str) -> int:
        return int(await self.conn.fetchval("SELECT count(*) FROM monitors WHERE $1 = ANY(location_ids)", location_id))

    async def delete_location(self, location_id: str) -> bool:
        return bool(await self.conn.execute("DELETE FROM locations WHERE id = $1", location_id) == "DELETE 1")

    async def insert_engine(self, location_id: str, engine_id: str) -> None:
        try:
            await self.conn.execute(
                "INSERT INTO engines (location_id, engine_id) VALUES ($1, $2)", location_id, engine_id
            )
        except asyncpg.UniqueViolationError:
            raise AlreadyExists(f"engine {engine_id!r} of location {location_id!r} exists already") from None

    async def list_engines(
        self, location_id: str | None, engine_id: str | None = None, *, lease_seconds: float | None = None
    ) -> list[EngineStatus]:
        """With ``lease_seconds``, an engine whose replica has not renewed its lease for that long shows
        disconnected (connected_since None): the replica is gone, whatever the row still says."""
        rows = await self.conn.fetch(
            "SELECT location_id, engine_id, revoked_at, applied_revision, rejected,"
            " CASE WHEN $3::float8 IS NULL OR lease_renewed_at > now() - make_interval(secs => $3::float8)"
            " THEN connected_since END AS connected_since FROM engines"
            " WHERE ($1::text IS NULL OR location_id = $1) AND ($2::text IS NULL OR engine_id = $2)"
            " ORDER BY location_id, engine_id",
            location_id,
            engine_id,
            lease_seconds,
        )
        return [
            EngineStatus(
                r["location_id"],
                r["engine_id"],
                r["revoked_at"],
                r["connected_since"],
                r["applied_revision"],
                r["rejected"],
            )
            for r in rows
        ]

    async def revoke_engine(self, location_id: str, engine_id: str) -> bool:
        status = await self.conn.execute(
            "UPDATE engines SET revoked_at = COALESCE(revoked_at, now()), connected_since = NULL"
            " WHERE location_id = $1 AND engine_id = $2",
            location_id,
            engine_id,
        )
        return bool(status == "UPDATE 1")

    # --- monitors ------------------------------------------------------------------------------------------------

    async def insert_monitor(self, m: mpb.Monitor, created_by: str) -> mpb.Monitor:
        row = await self.conn.fetchrow(
            f"INSERT INTO monitors (id, name, type, enabled, disabled_reason, frequency_minutes, location_ids,"
            f" management_zone, script, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10)"
            f" RETURNING {_MONITOR_COLUMNS}",
            m.id,
            m.name,
            _type_name(m),
            m.enabled,
            None if m.enabled else "BY_USER",
            m.frequency_minutes,
            list(m.location_ids),
            m.management_zone,
            _script_doc(m),
            created_by,
        )
        assert row is not None
        await self._set_refs(m.id, list(m.credential_ids))
        return _monitor(row, list(m.credential_ids))

    async def _set_refs(self, monitor_id: str, credential_ids: list[str]) -> None:
        await self.conn.execute("DELETE FROM monitor_credentials WHERE monitor_id = $1", monitor_id)
        await self.conn.execute(
            "INSERT INTO monitor_credentials (monitor_id, credential_id) SELECT $1, unnest($2::text[])",
            monitor_id,
            credential_ids,
        )

    async def get_monitor(self, monitor_id: str, *, for_update: bool = False) -> mpb.Monitor | None:
        lock = " FOR UPDATE" if for_update else ""
        row = await self.conn.fetchrow(f"SELECT {_MONITOR_COLUMNS} FROM monitors WHERE id = $1{lock}", monitor_id)
        if row is None:
            return None
        refs = await self.conn.fetch("SELECT credential_id FROM monitor_credentials WHERE monitor_id = $1", monitor_id)
        return _monitor(row, [r["credential_id"] for r in refs])

    async def list_monitors(
        self, location_id: str | None, credential_id: str | None, after: str, limit: int
    ) -> list[mpb.Monitor]:
        rows = await self.conn.fetch(
            f"SELECT {_MONITOR_COLUMNS}, ARRAY(SELECT credential_id FROM monitor_credentials c"
            f" WHERE c.monitor_id = m.id) AS refs FROM monitors m"
            f" WHERE id > $1 AND ($2::text IS NULL OR $2 = ANY(location_ids))"
            f" AND ($3::text IS NULL OR EXISTS (SELECT 1 FROM monitor_credentials c"
            f" WHERE c.monitor_id = m.id AND c.credential_id = $3)) ORDER BY id LIMIT $4",
            after,
            location_id,
            credential_id,
            limit,
        )
        return [_monitor(r, list(r["refs"])) for r in rows]

    async def enabled_monitors_in(self, location_id: str) -> list[mpb.Monitor]:
        rows = await self.conn.fetch(
            f"SELECT {_MONITOR_COLUMNS}, ARRAY(SELECT credential_id FROM monitor_credentials c"
            f" WHERE c.monitor_id = m.id) AS refs FROM monitors m WHERE enabled AND $1 = ANY(location_ids)",
            location_id,
        )
        return [_monitor(r, list(r["refs"])) for r in rows]

    async def monitors_by_id(self, monitor_ids: list[str]) -> dict[str, mpb.Monitor]:
        rows = await self.conn.fetch(
            f"SELECT {_MONITOR_COLUMNS}, ARRAY(SELECT credential_id FROM monitor_credentials c"
            f" WHERE c.monitor_id = m.id) AS refs FROM monitors m WHERE id = ANY($1)",
            monitor_ids,
        )
        return {r["id"]: _monitor(r, list(r["refs"])) for r in rows}

    async def get_engine_state(self, location_id: str, engine_id: str) -> EngineStatus | None:
        rows = await self.list_engines(location_id, engine_id)
        return rows[0] if rows else None

    async def engine_connected(self, location_id: str, engine_id: str, replica: str) -> None:
        await self.conn.execute(
            "UPDATE engines SET connected_since = now(), lease_renewed_at = now(), connected_replica = $3"
            " WHERE location_id = $1 AND engine_id = $2",
            location_id,
            engine_id,
            replica,
        )

    async def engine_disconnected(self, location_id: str, engine_id: str, replica: str) -> None:
        """Clears the connection only if ``replica`` still holds it: the engine may already be on another one."""
        await self.conn.execute(
            "UPDATE engines SET connected_since = NULL, lease_renewed_at = NULL, connected_replica = NULL"
            " WHERE location_id = $1 AND engine_id = $2 AND connected_replica = $3",
            location_id,
            engine_id,
            replica,
        )

    async def renew_engine_leases(self, replica: str) -> int:
        """Renew the lease of every engine connected to ``replica``, in one statement; how many there are."""
        status = await self.conn.execute(
            "UPDATE engines SET lease_renewed_at = now() WHERE connected_replica = $1 AND connected_since IS NOT NULL",
            replica,
        )
        return int(status.split()[-1])

    async def engines_acked(self, rows: list[tuple[str, str, int, str]]) -> None:
        """(location id, engine id, applied revision, rejected monitors as JSON) for many engines, in one statement
        (rows sorted by engine, so that two replicas never lock the same rows in opposite orders).

        Committed without waiting for the WAL flush (synchronous_commit off for this statement's transaction only):
        this is status, which the engine's next Hello restates, so a database crash may lose the last fraction of a
        second of it but never leaves it inconsistent; the wait was most of the statement's 1.4 ms here."""
        await self.conn.execute(
            "WITH async_commit AS (SELECT set_config('synchronous_commit', 'off', true))"
            " UPDATE engines e SET applied_revision = GREATEST(e.applied_revision, v.revision),"
            " rejected = v.rejected::jsonb"
            " FROM async_commit, unnest($1::text[], $2::text[], $3::bigint[], $4::text[])"
            "  AS v (location_id, engine_id, revision, rejected)"
            " WHERE e.location_id = v.location_id AND e.engine_id = v.engine_id",
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            [r[3] for r in rows],
        )

    async def update_monitor(self, m: mpb.Monitor, expected_version: int) -> mpb.Monitor | None:
        """Write the definition (new version) if still at ``expected_version``."""
        row = await self.conn.fetchrow(
            f"UPDATE monitors SET name = $3, enabled = $4, disabled_reason = $5, frequency_minutes = $6,"
            f" location_ids = $7, management_zone = $8, script = $9::jsonb, version = version + 1,"
            f" revision = nextval('resource_versions'), updated_at = now() WHERE id = $1 AND version = $2"
            f" RETURNING {_MONITOR_COLUMNS}",
            m.id,
            expected_version,
            m.name,
            m.enabled,
            _reason_name(m.disabled_reason) if not m.enabled else None,
            m.frequency_minutes,
            list(m.location_ids),
            m.management_zone,
            _script_doc(m),
        )
        if row is None:
            return None
        await self._set_refs(m.id, list(m.credential_ids))
        return _monitor(row, list(m.credential_ids))

    async def delete_monitor(self, monitor_id: str) -> bool:
        return bool(await self.conn.execute("DELETE FROM monitors WHERE id = $1", monitor_id) == "DELETE 1")

    async def renew_revisions_of_monitors_using(self, credential_id: str) -> list[tuple[str, list[str]]]:
        """A new revision (not a new version: the definition is unchanged) for every monitor using the credential,
        so that engines, which rejected them while it had no contents, are sent them again; (id, location ids)."""
        rows = await self.conn.fetch(
            "UPDATE monitors SET revision = nextval('resource_versions') WHERE id IN"
            " (SELECT monitor_id FROM monitor_credentials WHERE credential_id = $1) RETURNING id, location_ids",
            credential_id,
        )
        return sorted((r["id"], list(r["location_ids"])) for r in rows)

    async def monitors_using(self, credential_id: str, *, for_update: bool = False) -> list[mpb.Monitor]:
        lock = " FOR UPDATE OF m" if for_update else ""
        rows = await self.conn.fetch(
            f"SELECT {_MONITOR_COLUMNS}, ARRAY(SELECT credential_id FROM monitor_credentials c"
            f" WHERE c.monitor_id = m.id) AS refs FROM monitors m"
            f" WHERE EXISTS (SELECT 1 FROM monitor_credentials c WHERE c.monitor_id = m.id AND c.credential_id = $1)"
            f" ORDER BY id{lock}",
            credential_id,
        )
        return [_monitor(r, list(r["refs"])) for r in rows]
