"""Migrations that change existing rows, applied to a database that has some."""

from __future__ import annotations

import uuid

import asyncpg

from tests.conftest import with_database
from vault_service.storage.migrate import available_migrations, migrate


async def test_existing_monitors_keep_their_version_as_their_revision(pg_url: str) -> None:
    """0007: a monitor's version had been taken from the vault-wide sequence; it becomes its revision (what engines
    hold it at, so they re-receive nothing), and its version goes on from there. New monitors start at version 1."""
    name = f"credvault_mig_rev_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(with_database(pg_url, "postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(with_database(pg_url, name))
        try:
            before = [(v, sql) for v, _, sql in available_migrations() if v < 7]
            for _, sql in before:
                await conn.execute(sql)
            await conn.execute(
                "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            await conn.executemany(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", [(v, f"{v}") for v, _ in before]
            )
            await conn.execute("SELECT nextval('resource_versions') FROM generate_series(1, 4)")
            insert = (
                "INSERT INTO monitors (id, name, type, enabled, frequency_minutes, location_ids, script, created_by)"
                " VALUES ($1, 'm', 'HTTP', true, 1, '{}', '{}', 'admin') RETURNING version"
            )
            old = await conn.fetchval(insert, "SYNTHETIC_TEST-00000000000000A1")
            assert old == 5
            assert await migrate(conn) == [v for v, _, _ in available_migrations() if v >= 7]
            row = await conn.fetchrow("SELECT version, revision FROM monitors")
            assert row is not None
            assert (row["version"], row["revision"]) == (5, 5)
            new = await conn.fetchrow(insert + ", revision", "SYNTHETIC_TEST-00000000000000A2")
            assert new is not None
            assert (new["version"], new["revision"]) == (1, 6)
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
