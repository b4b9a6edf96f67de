"""SQL of the change log (mixed into ``Queries``): what changed for which locations, in commit order, and the
NOTIFY that wakes every replica's follower."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from vault_service.models import ChangeKind
from vault_service.storage.connection import Connection

CHANGES_CHANNEL = "credvault_changes"


@dataclasses.dataclass(frozen=True)
class Change:
    revision: int
    kind: ChangeKind
    object_id: str
    location_ids: tuple[str, ...]
    # When the change's transaction began, on this process's time.monotonic() clock (None: unknown).
    committed_at: float | None = None


def append_change_ctes(kind: ChangeKind, source: str, args: list[Any]) -> list[str]:
    """The change-log append of ``ChangeQueries.append_change`` as CTEs of a statement whose CTE ``source``
    returns ``id`` and ``user_locations`` (sorted, distinct): a change for those locations when there are any.
    The head row is locked (until commit) only then. Appends its parameters to ``args``; the statement must read
    the CTE ``change_notified`` for the notification to be sent."""
    args += [kind.value, CHANGES_CHANNEL]
    n = len(args)
    return [
        f"change_rev AS (UPDATE change_head SET revision = revision + 1"
        f" WHERE EXISTS (SELECT 1 FROM {source} WHERE cardinality({source}.user_locations) > 0) RETURNING revision)",
        f"change_row AS (INSERT INTO change_log (revision, kind, object_id, location_ids)"
        f" SELECT change_rev.revision, ${n - 1}, {source}.id, {source}.user_locations FROM change_rev, {source}"
        f" RETURNING revision)",
        f"change_notified AS (SELECT pg_notify(${n}, revision::text) FROM change_row)",
    ]


class ChangeQueries:
    conn: Connection

    async def location_head(self, location_id: str) -> int:
        value = await self.conn.fetchval(
            "SELECT max(revision) FROM change_log WHERE $1 = ANY(location_ids)", location_id
        )
        return int(value or 0)

    async def append_change(self, kind: ChangeKind, object_id: str, location_ids: list[str]) -> int:
        """Append a change; the head row's lock, held until commit, keeps revisions in commit order.
        Listeners are told at commit (NOTIFY is transactional)."""
        revision = int(await self.conn.fetchval("UPDATE change_head SET revision = revision + 1 RETURNING revision"))
        await self.conn.execute(
            "INSERT INTO change_log (revision, kind, object_id, location_ids) VALUES ($1, $2, $3, $4)",
            revision,
            kind.value,
            object_id,
            sorted(set(location_ids)),
        )
        await self.conn.execute("SELECT pg_notify($1, $2)", CHANGES_CHANNEL, str(revision))
        return revision

    async def changes_since(self, revision: int, limit: int) -> list[Change]:
        """The changes after ``revision``. Each one's age is measured on the database's clock alone and turned into
        a time on this process's monotonic clock, so no clock skew between the hosts enters push latencies."""
        rows = await self.conn.fetch(
            "SELECT revision, kind, object_id, location_ids, extract(epoch FROM clock_timestamp() - at)::float8 AS age"
            " FROM change_log WHERE revision > $1 ORDER BY revision LIMIT $2",
            revision,
            limit,
        )
        now = time.monotonic()
        return [
            Change(
                r["revision"], ChangeKind(r["kind"]), r["object_id"], tuple(r["location_ids"]), now - max(0.0, r["age"])
            )
            for r in rows
        ]

    async def head_revision(self) -> int:
        return int(await self.conn.fetchval("SELECT revision FROM change_head"))
