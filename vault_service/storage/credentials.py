"""SQL of credentials (mixed into ``Queries``): metadata and sealed contents in one row, each write in one statement
with its audit row (and, for new contents, its change-log entry)."""

from __future__ import annotations

from typing import Any

import asyncpg

from vault_service.certificates import CertificateInfo
from vault_service.crypto import SealedContents
from vault_service.errors import AlreadyExists, AuthenticationChanged
from vault_service.models import (
    USED_BY_SHOWN,
    Access,
    AccessLevel,
    AppEngineAccess,
    AuthCheck,
    ChangeKind,
    Credential,
    CredentialFilter,
    CredentialScope,
    CredentialType,
    ExternalSource,
    SyncStatus,
    Visibility,
)
from vault_service.storage.audit import AuditEntry
from vault_service.storage.changes import append_change_ctes
from vault_service.storage.connection import Connection
from vault_service.storage.identity import auth_guard, require_auth
from vault_service.storage.monitors import MONITOR_TYPES

# The columns a write sets (an insert also sets id, type and version), with their SQL types, in the order of
# _written_values: written once here for the insert, the update and the reads.
_WRITTEN = (
    ("name", "text"),
    ("description", "text"),
    ("scopes", "text[]"),
    ("owner", "text"),
    ("access_level", "text"),
    ("shared_with", "text[]"),
    ("app_allowed_apps", "text[]"),
    ("app_contextless", "boolean"),
    ("cert_subject", "text"),
    ("cert_issuer", "text"),
    ("cert_not_after", "timestamptz"),
    ("cert_fingerprint", "text"),
    ("external_source", "jsonb"),
    ("kek_id", "text"),
    ("wrapped_key", "bytea"),
    ("ciphertext", "bytea"),
)
SEALED_COLUMNS = "kek_id, wrapped_key, ciphertext"
_SEALED = frozenset(SEALED_COLUMNS.split(", "))
# The synchronization's status: read with the metadata, written only by the synchronization (storage/sync.py).
SYNC_STATUS_COLUMNS = (
    "sync_last_attempt",
    "sync_last_success",
    "sync_last_error",
    "sync_external_version",
    "next_sync_at",
)
_CREDENTIAL_COLUMNS = ", ".join(
    (
        "id",
        "type",
        "version",
        "created_at",
        "updated_at",
        *(c for c, _ in _WRITTEN if c not in _SEALED),
        *SYNC_STATUS_COLUMNS,
    )
)
# Insert: $1 id, $2 type, $3 version, then the written columns, then the audit row's four.
_INSERTED = ", ".join(c for c, _ in _WRITTEN)
_INSERTED_VALUES = ", ".join(f"${n}::{t}" for n, (_, t) in enumerate(_WRITTEN, start=4))
_INSERT_AUDIT = 4 + len(_WRITTEN)
# Update: $1 id, $2 expected version, then the written columns.
_UPDATED = ", ".join(f"{c} = ${n}" for n, (c, _) in enumerate(_WRITTEN, start=3))
# "Used by": the first USED_BY_SHOWN monitors (by id) that reference a credential, and how many do, fetched with it
# (no second round trip; the index on (credential_id, monitor_id) stops the scan after the first ones).
_USED_BY_COLUMN = (
    "ARRAY(SELECT m.id || ':' || m.type FROM monitor_credentials u JOIN monitors m ON m.id = u.monitor_id"
    f" WHERE u.credential_id = credentials.id ORDER BY u.monitor_id LIMIT {USED_BY_SHOWN}) AS used_by,"
    " (SELECT count(*) FROM monitor_credentials u WHERE u.credential_id = credentials.id) AS used_by_count"
)

_TYPE_OF = {t.value: t for t in CredentialType}
_SCOPE_OF = {s.value: s for s in CredentialScope}
_LEVEL_OF = {a.value: a for a in AccessLevel}


def _credential(row: asyncpg.Record) -> Credential:
    app_engine = None
    if row["app_allowed_apps"] is not None:
        app_engine = AppEngineAccess(tuple(row["app_allowed_apps"]), bool(row["app_contextless"]))
    cert = None
    if row["cert_fingerprint"] is not None:
        cert = CertificateInfo(row["cert_subject"], row["cert_issuer"], row["cert_not_after"], row["cert_fingerprint"])
    return Credential(
        id=row["id"],
        name=row["name"],
        description=row["description"],
        type=_TYPE_OF[row["type"]],
        scopes=frozenset([_SCOPE_OF[s] for s in row["scopes"]]),
        access=Access(_LEVEL_OF[row["access_level"]], tuple(row["shared_with"])),
        owner=row["owner"],
        app_engine=app_engine,
        certificate_info=cert,
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        used_by=_used_by(row),
        used_by_count=int(row.get("used_by_count") or 0),
        **_synchronization(row),
    )


def _synchronization(row: asyncpg.Record) -> dict[str, Any]:
    if row["external_source"] is None:
        return {}
    status = SyncStatus(
        row["sync_last_attempt"],
        row["sync_last_success"],
        row["sync_last_error"],
        row["sync_external_version"],
        row["next_sync_at"],
    )
    return {"external_source": ExternalSource.from_json(row["external_source"]), "sync_status": status}


def _used_by(row: asyncpg.Record) -> tuple[tuple[str, int], ...]:
    entries = row.get("used_by")
    if not entries:
        return ()
    pairs = (entry.rpartition(":") for entry in entries)
    return tuple((monitor_id, MONITOR_TYPES[kind]) for monitor_id, _, kind in pairs)


def sealed_contents(row: asyncpg.Record) -> SealedContents:
    return SealedContents(row["kek_id"], bytes(row["wrapped_key"]), bytes(row["ciphertext"]))


def _written_values(cred: Credential, sealed: SealedContents) -> list[Any]:
    """The values of the _WRITTEN columns, in their order."""
    app, info = cred.app_engine, cred.certificate_info
    return [
        cred.name,
        cred.description,
        sorted(s.value for s in cred.scopes),
        cred.owner,
        cred.access.level.value,
        list(cred.access.users),
        *([list(app.allowed_apps), app.allow_contextless_access] if app else [None, None]),
        *([info.subject, info.issuer, info.not_after, info.sha256_fingerprint] if info else [None, None, None, None]),
        cred.external_source.to_json() if cred.external_source else None,
        sealed.kek_id,
        sealed.wrapped_key,
        sealed.ciphertext,
    ]


def _credential_where(visibility: Visibility, username: str, flt: CredentialFilter) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if visibility is Visibility.NOTHING:
        clauses.append("false")
    elif visibility is Visibility.PUBLIC_ONLY:
        clauses.append("access_level = 'ALL'")
    elif visibility is Visibility.PUBLIC_OWN_AND_SHARED:
        u = arg(username)
        clauses.append(f"(access_level = 'ALL' OR owner = {u} OR (access_level = 'SHARED' AND {u} = ANY(shared_with)))")
    if flt.type is not None:
        clauses.append(f"type = {arg(flt.type.value)}")
    if flt.name_contains:
        escaped = flt.name_contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        clauses.append(f"name ILIKE {arg('%' + escaped + '%')}")
    if flt.access_level is not None:
        clauses.append(f"access_level = {arg(flt.access_level.value)}")
    if flt.owner:
        clauses.append(f"owner = {arg(flt.owner)}")
    if flt.scope is not None:
        clauses.append(f"{arg(flt.scope.value)} = ANY(scopes)")
    return (" AND ".join(clauses) or "true"), args


class CredentialQueries:
    conn: Connection

    async def insert_credential(
        self, cred: Credential, sealed: SealedContents, audit: AuditEntry, check: AuthCheck | None = None
    ) -> Credential:
        """Insert the credential and its audit row in one statement: atomic without a transaction round trip. With a
        remembered authentication, only if it still holds (else AuthenticationChanged, nothing written)."""
        args: list[Any] = [
            cred.id,
            cred.type.value,
            cred.version,
            *_written_values(cred, sealed),
            audit.actor,
            audit.token_id,
            audit.action,
            audit.detail,
        ]
        guard = auth_guard(check, args)
        n = _INSERT_AUDIT
        try:
            row = await self.conn.fetchrow(
                f"WITH c AS (INSERT INTO credentials (id, type, version, {_INSERTED})"
                f" SELECT $1::text, $2::text, $3::bigint, {_INSERTED_VALUES} WHERE {guard}"
                f" RETURNING {_CREDENTIAL_COLUMNS}),"
                f" a AS (INSERT INTO audit_log (actor, token_id, action, target, outcome, detail)"
                f" SELECT ${n}, ${n + 1}, ${n + 2}, c.id, 'ok', ${n + 3}::jsonb FROM c)"
                f" SELECT * FROM c",
                *args,
            )
        except asyncpg.UniqueViolationError:
            raise AlreadyExists(f"credential {cred.id} exists already") from None
        if row is None:
            raise AuthenticationChanged("the authentication changed since it was remembered")
        return _credential(row)

    async def get_credential(
        self, credential_id: str, *, for_update: bool = False, check: AuthCheck | None = None
    ) -> Credential | None:
        """With "used by". With a remembered authentication, AuthenticationChanged unless it still holds."""
        lock = " FOR UPDATE" if for_update else ""
        args: list[Any] = [credential_id]
        guard = auth_guard(check, args)
        row = await self.conn.fetchrow(
            f"SELECT {guard} AS auth_ok, c.* FROM (VALUES (1)) AS q (one) LEFT JOIN"
            f" (SELECT {_CREDENTIAL_COLUMNS}, {_USED_BY_COLUMN} FROM credentials WHERE id = $1{lock}) AS c ON true",
            *args,
        )
        require_auth(row)
        assert row is not None
        return _credential(row) if row["id"] is not None else None

    async def get_credential_sealed(
        self, credential_id: str, *, for_update: bool = False
    ) -> tuple[Credential, SealedContents] | None:
        lock = " FOR UPDATE" if for_update else ""
        row = await self.conn.fetchrow(
            f"SELECT {_CREDENTIAL_COLUMNS}, {SEALED_COLUMNS} FROM credentials WHERE id = $1{lock}", credential_id
        )
        return (_credential(row), sealed_contents(row)) if row else None

    async def credentials_sealed(self, credential_ids: list[str]) -> dict[str, tuple[Credential, SealedContents, int]]:
        """id -> (metadata, sealed contents, resource version) for the push."""
        rows = await self.conn.fetch(
            f"SELECT {_CREDENTIAL_COLUMNS}, {SEALED_COLUMNS}, resource_version FROM credentials WHERE id = ANY($1)",
            credential_ids,
        )
        return {r["id"]: (_credential(r), sealed_contents(r), int(r["resource_version"])) for r in rows}

    async def list_credentials(
        self,
        visibility: Visibility,
        username: str,
        flt: CredentialFilter,
        after: tuple[str, str] | None,
        limit: int,
        check: AuthCheck | None = None,
    ) -> tuple[list[Credential], int]:
        """One page and the total count, in one statement (one snapshot). With a remembered authentication,
        AuthenticationChanged unless it still holds."""
        where, args = _credential_where(visibility, username, flt)
        page_where = where
        if after is not None:
            args = [*args, after[0], after[1]]
            page_where += f" AND (name, id) > (${len(args) - 1}, ${len(args)})"
        args.append(limit)
        limit_arg = len(args)
        guard = auth_guard(check, args)
        rows = await self.conn.fetch(
            f"SELECT g.auth_ok, g.total, p.* FROM"
            f" (SELECT {guard} AS auth_ok, (SELECT count(*) FROM credentials WHERE {where}) AS total) AS g"
            f" LEFT JOIN LATERAL (SELECT {_CREDENTIAL_COLUMNS}, {_USED_BY_COLUMN} FROM credentials"
            f" WHERE g.auth_ok AND {page_where} ORDER BY name, id LIMIT ${limit_arg}) AS p ON true",
            *args,
        )
        require_auth(rows[0] if rows else None)
        return [_credential(r) for r in rows if r["id"] is not None], int(rows[0]["total"])

    async def update_credential(
        self,
        cred: Credential,
        sealed: SealedContents,
        expected_version: int,
        *,
        new_contents: bool,
        audit: AuditEntry | None = None,
        check: AuthCheck | None = None,
    ) -> tuple[Credential, list[str]] | None:
        """Write ``cred`` and its sealed contents if the row is still at ``expected_version``, in one statement.
        New contents get a new resource version (what engines see), and then the change log gets the change for
        the locations of the enabled monitors that use it (engines there must get the new contents). With
        ``audit``, its row is written by the same statement (target: the credential). With a remembered
        authentication, nothing is written unless it still holds (else AuthenticationChanged).
        Returns the stored credential and those locations, or None if the version moved."""
        bump = ", resource_version = nextval('resource_versions')" if new_contents else ""
        args: list[Any] = [cred.id, expected_version, *_written_values(cred, sealed)]
        guard = auth_guard(check, args)
        ctes = [
            f"g AS (SELECT {guard} AS auth_ok)",
            f"w AS (UPDATE credentials SET {_UPDATED}, version = version + 1, updated_at = now(){bump}"
            f" WHERE id = $1 AND version = $2 AND (SELECT auth_ok FROM g)"
            f" RETURNING {_CREDENTIAL_COLUMNS}, {_USED_BY_COLUMN},"
            f" ARRAY(SELECT DISTINCT unnest(m.location_ids) FROM monitor_credentials u JOIN monitors m"
            f" ON m.id = u.monitor_id WHERE u.credential_id = credentials.id AND m.enabled ORDER BY 1)"
            f" AS user_locations)",
        ]
        if audit is not None:
            args += [audit.actor, audit.token_id, audit.action, audit.detail]
            n = len(args)
            ctes.append(
                f"a AS (INSERT INTO audit_log (actor, token_id, action, target, outcome, detail)"
                f" SELECT ${n - 3}, ${n - 2}, ${n - 1}, w.id, 'ok', ${n}::jsonb FROM w)"
            )
        notified = "0"
        if new_contents:
            ctes += append_change_ctes(ChangeKind.CREDENTIAL, "w", args)
            notified = "(SELECT count(*) FROM change_notified)"
        row = await self.conn.fetchrow(
            f"WITH {', '.join(ctes)} SELECT g.auth_ok, {notified} AS notified, w.* FROM g LEFT JOIN w ON true", *args
        )
        require_auth(row)
        assert row is not None
        if row["id"] is None:
            return None
        return _credential(row), list(row["user_locations"])

    async def delete_credential(self, credential_id: str) -> bool:
        status = await self.conn.execute("DELETE FROM credentials WHERE id = $1", credential_id)
        return bool(status == "DELETE 1")
