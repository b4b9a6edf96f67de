"""Versioned SQL migrations, applied under a PostgreSQL advisory lock so that replicas starting together are safe."""

from __future__ import annotations

import importlib.resources
import logging
import re

from vault_service.storage.connection import Connection

log = logging.getLogger(__name__)

# Any fixed 64-bit number: held for the duration of a migration run, across every replica.
MIGRATION_LOCK_ID = 0x63726564_7661756C  # "credvaul"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def available_migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) in order."""
    folder = importlib.resources.files("vault_service.storage") / "migrations"
    found = []
    for entry in folder.iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append((int(m.group(1)), entry.name, entry.read_text()))
    found.sort()
    versions = [v for v, _, _ in found]
    if versions != list(range(1, len(versions) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n without gaps, found {versions}")
    return found


async def migrate(conn: Connection) -> list[int]:
    """Apply the migrations this database lacks; returns the versions applied now."""
    applied_now: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        known = available_migrations()
        unknown = done - {v for v, _, _ in known}
        if unknown:
            raise RuntimeError(
                f"the database has migrations {sorted(unknown)} this build does not know: it is older than the schema"
            )
        for version, name, sql in known:
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
            log.info("applied migration %s", name)
            applied_now.append(version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    return applied_now
