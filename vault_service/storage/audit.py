"""SQL of the audit log (mixed into ``Queries``): append-only rows, listed newest first."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import asyncpg

from vault_service.models import AuditEvent, AuditFilter
from vault_service.storage.connection import Connection


@dataclasses.dataclass(frozen=True)
class AuditEntry:
    """An audit row written together with the change it records (never a secret value in it)."""

    actor: str
    token_id: str | None
    action: str
    detail: Mapping[str, object]


class AuditQueries:
    conn: Connection

    async def insert_audit(
        self,
        actor: str,
        token_id: str | None,
        action: str,
        target: str | None,
        outcome: str,
        detail: Mapping[str, object] | None = None,
    ) -> None:
        await self.conn.execute(
            "INSERT INTO audit_log (actor, token_id, action, target, outcome, detail)"
            " VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
            actor,
            token_id,
            action,
            target,
            outcome,
            detail or {},
        )

    async def list_audit(self, limit: int = 1000) -> list[dict[str, Any]]:
        rows = await self.conn.fetch(
            "SELECT id, at, actor, token_id, action, target, outcome, detail FROM audit_log ORDER BY id DESC LIMIT $1",
            limit,
        )
        return [dict(r) for r in rows]

    async def list_audit_events(self, flt: AuditFilter, before_id: int | None, limit: int) -> list[AuditEvent]:
        """Newest first (by id, the order of the log), from just before ``before_id``."""
        clauses: list[str] = []
        args: list[Any] = []
        for column, op, value in (
            ("actor", "=", flt.actor),
            ("action", "=", flt.action),
            ("target", "=", flt.target),
            ("at", ">=", flt.since),
            ("at", "<", flt.until),
            ("id", "<", before_id),
        ):
            if value is not None:
                args.append(value)
                clauses.append(f"{column} {op} ${len(args)}")
        args.append(limit)
        rows = await self.conn.fetch(
            f"SELECT id, at, actor, token_id, action, target, outcome, detail FROM audit_log"
            f" WHERE {' AND '.join(clauses) or 'true'} ORDER BY id DESC LIMIT ${len(args)}",
            *args,
        )
        return [_audit_event(r) for r in rows]


def _audit_event(row: asyncpg.Record) -> AuditEvent:
    detail = row["detail"]
    return AuditEvent(
        id=row["id"],
        at=row["at"],
        actor=row["actor"],
        token_id=row["token_id"],
        action=row["action"],
        target=row["target"],
        outcome=row["outcome"],
        detail={k: v if isinstance(v, str) else json.dumps(v) for k, v in detail.items() if v is not None},
    )
