"""Every SQL statement of the vault. The domain layer calls these; nothing else talks SQL.

``Store`` owns the pool; ``Tx`` is bound to one connection (inside a transaction for writes) and holds the queries,
so that a change and its audit row always commit together.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime
import enum
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeAlias, TypeVar

import asyncpg

from vault_service.certificates import CertificateInfo
from vault_service.crypto import SealedContents
from vault_service.errors import AlreadyExists, AuthenticationChanged, Unavailable
from vault_service.models import (
    USED_BY_SHOWN,
    Access,
    AccessLevel,
    AppEngineAccess,
    AuditEvent,
    AuthCheck,
    Credential,
    CredentialScope,
    CredentialType,
    Permission,
    TokenInfo,
    TokenKind,
    TokenScope,
    User,
)
from vault_service.storage.monitor_queries import MonitorQueries, append_change_ctes
from vault_service.storage.result_queries import ResultQueries
from vault_service.storage.session_loss import DATABASE_UNAVAILABLE, CallLedger, is_session_loss

log = logging.getLogger(__name__)


class Visibility(enum.Enum):
    """Which credentials a caller may see; decided by the policy module, translated to SQL here."""

    EVERYTHING = "EVERYTHING"
    PUBLIC_OWN_AND_SHARED = "PUBLIC_OWN_AND_SHARED"
    PUBLIC_ONLY = "PUBLIC_ONLY"
    NOTHING = "NOTHING"


@dataclasses.dataclass(frozen=True)
class CredentialFilter:
    type: CredentialType | None = None
    name_contains: str | None = None
    access_level: AccessLevel | None = None
    owner: str | None = None
    scope: CredentialScope | None = None


@dataclasses.dataclass(frozen=True)
class AuditFilter:
    """Which audit events to list; every set field must match (times: since <= at < until)."""

    actor: str | None = None
    action: str | None = None
    target: str | None = None
    since: datetime.datetime | None = None
    until: datetime.datetime | None = None


@dataclasses.dataclass(frozen=True)
class AuditEntry:
    """An audit row written together with the change it records (never a secret value in it)."""

    actor: str
    token_id: str | None
    action: str
    detail: Mapping[str, object]


@dataclasses.dataclass(frozen=True)
class TokenAuthRecord:
    """A token row joined with its owner, for authentication. Present or not, it has the same shape, and the
    parts beyond the hash are decoded only after the secret matched (so failures cost the same)."""

    secret_hash: bytes | None
    _row: asyncpg.Record

    @property
    def scopes(self) -> frozenset[TokenScope]:
        return frozenset(TokenScope(s) for s in self._row["scopes"])

    @property
    def expires_at(self) -> datetime.datetime | None:
        value: datetime.datetime | None = self._row["expires_at"]
        return value

    @property
    def revoked_at(self) -> datetime.datetime | None:
        value: datetime.datetime | None = self._row["revoked_at"]
        return value

    @property
    def last_used_at(self) -> datetime.datetime | None:
        value: datetime.datetime | None = self._row["last_used_at"]
        return value

    def auth_check(self, token_id: str) -> AuthCheck:
        """What a statement compares to re-check this authentication later (after the secret matched: a failed
        lookup costs the same whether the id exists or not)."""
        return AuthCheck(token_id, tuple(self._row[c] for c in _AUTH_CHECK_COLUMNS))

    def user(self) -> User:
        return _user(self._row, "u_")


_CREDENTIAL_COLUMNS = (
    "id, name, description, type, scopes, owner, access_level, shared_with, app_allowed_apps, app_contextless,"
    " cert_subject, cert_issuer, cert_not_after, cert_fingerprint, version, created_at, updated_at"
)
_SEALED_COLUMNS = "kek_id, wrapped_key, ciphertext"
# "Used by": the first USED_BY_SHOWN monitors (by id) that reference a credential, and how many do, fetched with it
# (no second round trip; the index on (credential_id, monitor_id) stops the scan after the first ones).
_USED_BY_COLUMN = (
    "ARRAY(SELECT m.id || ':' || m.type FROM monitor_credentials u JOIN monitors m ON m.id = u.monitor_id"
    f" WHERE u.credential_id = credentials.id ORDER BY u.monitor_id LIMIT {USED_BY_SHOWN}) AS used_by,"
    " (SELECT count(*) FROM monitor_credentials u WHERE u.credential_id = credentials.id) AS used_by_count"
)
_MONITOR_TYPES = {"HTTP": 1, "BROWSER": 2}  # credvault.v1.MonitorType numbers
_TOKEN_COLUMNS = "public_id, owner, name, scopes, kind, created_at, expires_at, last_used_at, revoked_at"
_USER_COLUMNS = "username, permissions, zone_permissions, created_at, updated_at"
# Everything a principal is made of, as the lookup returns it, and how a statement compares it again (over ``t``
# and ``u``, the token and its user): each equal, the token neither revoked nor expired by now.
_AUTH_CHECK_COLUMNS = (
    "u_username",  # the token's owner
    "scopes",
    "expires_at",
    "revoked_at",
    "u_permissions",
    "u_zone_permissions",
    "u_created_at",
    "u_updated_at",
)
_AUTH_CHECK_SQL = (
    "t.owner = ${} AND t.scopes = ${}::text[] AND t.expires_at IS NOT DISTINCT FROM ${}::timestamptz"
    " AND t.revoked_at IS NOT DISTINCT FROM ${}::timestamptz AND u.permissions = ${}::text[]"
    " AND u.zone_permissions = ${}::jsonb AND u.created_at = ${}::timestamptz AND u.updated_at = ${}::timestamptz"
)


def _auth_guard(check: AuthCheck | None, args: list[Any]) -> str:
    """SQL that is true when the remembered authentication ``check`` still holds in the statement's snapshot: the
    token and its user unchanged, the token neither revoked nor expired now. Appends its parameters to ``args``.
    Without a check (the principal was looked up during this call) it is plain true."""
    if check is None:
        return "true"
    first = len(args) + 1
    args += [check.token_id, *check.state]
    compared = _AUTH_CHECK_SQL.format(*range(first + 1, first + 1 + len(check.state)))
    return (
        f"EXISTS (SELECT 1 FROM api_tokens t JOIN users u ON u.username = t.owner WHERE t.public_id = ${first}"
        f" AND {compared} AND (t.revoked_at IS NULL OR t.revoked_at > now())"
        f" AND (t.expires_at IS NULL OR t.expires_at > now()))"
    )


def _require_auth(row: asyncpg.Record | None) -> None:
    if row is None or not row["auth_ok"]:
        raise AuthenticationChanged("the authentication changed since it was remembered")


def _user(row: asyncpg.Record, prefix: str = "") -> User:
    zones = row[prefix + "zone_permissions"]
    if isinstance(zones, str):
        zones = json.loads(zones)
    return User(
        username=row[prefix + "username"],
        permissions=frozenset(Permission(p) for p in row[prefix + "permissions"]),
        zone_permissions={z: frozenset(Permission(p) for p in ps) for z, ps in zones.items()},
        created_at=row[prefix + "created_at"],
        updated_at=row[prefix + "updated_at"],
    )


# Enum members by stored value: a dictionary lookup, not an Enum call (a List decodes hundreds per call).
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
    )


def _used_by(row: asyncpg.Record) -> tuple[tuple[str, int], ...]:
    entries = row.get("used_by")
    if not entries:
        return ()
    pairs = (entry.rpartition(":") for entry in entries)
    return tuple((monitor_id, _MONITOR_TYPES[kind]) for monitor_id, _, kind in pairs)


def _sealed(row: asyncpg.Record) -> SealedContents:
    return SealedContents(row["kek_id"], bytes(row["wrapped_key"]), bytes(row["ciphertext"]))


def _token(row: asyncpg.Record) -> TokenInfo:
    return TokenInfo(
        id=row["public_id"],
        name=row["name"],
        owner=row["owner"],
        scopes=frozenset(TokenScope(s) for s in row["scopes"]),
        kind=TokenKind(row["kind"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


def _zones_json(zones: dict[str, frozenset[Permission]]) -> str:
    return json.dumps({z: sorted(p.value for p in ps) for z, ps in sorted(zones.items())})


Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"


class Tx(MonitorQueries, ResultQueries):
    """Queries on one connection."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    # --- users ---------------------------------------------------------------------------------------------------

    async def insert_user(
        self, username: str, permissions: frozenset[Permission], zones: dict[str, frozenset[Permission]]
    ) -> User:
        if await self.conn.fetchval("SELECT 1 FROM retired_usernames WHERE username = $1", username):
            raise AlreadyExists(
                f"username {username!r} belonged to a deleted user and cannot be reused: credentials may still name"
                " it as their owner"
            )
        try:
            row = await self.conn.fetchrow(
                f"INSERT INTO users (username, permissions, zone_permissions) VALUES ($1, $2, $3::jsonb)"
                f" RETURNING {_USER_COLUMNS}",
                username,
                sorted(p.value for p in permissions),
                _zones_json(zones),
            )
        except asyncpg.UniqueViolationError:
            raise AlreadyExists(f"user {username!r} exists already") from None
        assert row is not None
        return _user(row)

    async def get_user(self, username: str) -> User | None:
        row = await self.conn.fetchrow(f"SELECT {_USER_COLUMNS} FROM users WHERE username = $1", username)
        return _user(row) if row else None

    async def list_users(self, after: str, limit: int) -> list[User]:
        rows = await self.conn.fetch(
            f"SELECT {_USER_COLUMNS} FROM users WHERE username > $1 ORDER BY username LIMIT $2", after, limit
        )
        return [_user(r) for r in rows]

    async def set_user_permissions(
        self, username: str, permissions: frozenset[Permission], zones: dict[str, frozenset[Permission]]
    ) -> User | None:
        row = await self.conn.fetchrow(
            f"UPDATE users SET permissions = $2, zone_permissions = $3::jsonb, updated_at = now()"
            f" WHERE username = $1 RETURNING {_USER_COLUMNS}",
            username,
            sorted(p.value for p in permissions),
            _zones_json(zones),
        )
        return _user(row) if row else None

    async def delete_user(self, username: str) -> bool:
        """Delete the user (its tokens go with it) and retire the name for good."""
        status = await self.conn.execute("DELETE FROM users WHERE username = $1", username)
        if status != "DELETE 1":
            return False
        await self.conn.execute("INSERT INTO retired_usernames (username) VALUES ($1)", username)
        return True

    async def count_users(self) -> int:
        return int(await self.conn.fetchval("SELECT count(*) FROM users"))

    # --- tokens --------------------------------------------------------------------------------------------------

    async def insert_token(
        self,
        public_id: str,
        owner: str,
        name: str,
        scopes: frozenset[TokenScope],
        kind: TokenKind,
        secret_hash: bytes,
        expires_at: datetime.datetime | None,
    ) -> TokenInfo:
        row = await self.conn.fetchrow(
            f"INSERT INTO api_tokens (public_id, owner, name, scopes, kind, secret_hash, expires_at)"
            f" VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_TOKEN_COLUMNS}",
            public_id,
            owner,
            name,
            sorted(s.value for s in scopes),
            kind.value,
            secret_hash,
            expires_at,
        )
        assert row is not None
        return _token(row)

    async def get_token_for_auth(self, public_id: str) -> TokenAuthRecord:
        """Always one row, whether the id exists or not (LEFT JOINs from the id itself)."""
        row = await self.conn.fetchrow(
            "SELECT t.secret_hash, t.scopes, t.expires_at, t.revoked_at, t.last_used_at,"
            " u.username AS u_username, u.permissions AS u_permissions, u.zone_permissions AS u_zone_permissions,"
            " u.created_at AS u_created_at, u.updated_at AS u_updated_at"
            " FROM (VALUES ($1::text)) AS q (id)"
            " LEFT JOIN api_tokens t ON t.public_id = q.id LEFT JOIN users u ON u.username = t.owner",
            public_id,
        )
        assert row is not None
        digest = row["secret_hash"]
        return TokenAuthRecord(bytes(digest) if digest is not None else None, row)

    async def touch_token(self, public_id: str) -> None:
        """Record a use, unless the token is dead by now (a remembered authentication may be late to know)."""
        await self.conn.execute(
            "UPDATE api_tokens SET last_used_at = now() WHERE public_id = $1"
            " AND (revoked_at IS NULL OR revoked_at > now()) AND (expires_at IS NULL OR expires_at > now())",
            public_id,
        )

    async def get_token(self, public_id: str) -> TokenInfo | None:
        row = await self.conn.fetchrow(f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE public_id = $1", public_id)
        return _token(row) if row else None

    async def lock_user_tokens(self, owner: str) -> None:
        """Serialize token creation per user (the personal-token limit is checked under this lock)."""
        await self.conn.execute("SELECT 1 FROM users WHERE username = $1 FOR UPDATE", owner)

    async def count_live_tokens(self, owner: str, kind: TokenKind) -> int:
        return int(
            await self.conn.fetchval(
                "SELECT count(*) FROM api_tokens WHERE owner = $1 AND kind = $2"
                " AND (revoked_at IS NULL OR revoked_at > now()) AND (expires_at IS NULL OR expires_at > now())",
                owner,
                kind.value,
            )
        )

    async def list_tokens(self, owner: str, after: str, limit: int) -> list[TokenInfo]:
        rows = await self.conn.fetch(
            f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE owner = $1 AND public_id > $2 ORDER BY public_id LIMIT $3",
            owner,
            after,
            limit,
        )
        return [_token(r) for r in rows]

    async def revoke_token(self, public_id: str, at: datetime.datetime | None) -> TokenInfo | None:
        """Revoke at ``at`` (None: now); never moves an earlier revocation later."""
        row = await self.conn.fetchrow(
            f"UPDATE api_tokens SET revoked_at = LEAST(COALESCE(revoked_at, 'infinity'), COALESCE($2, now()))"
            f" WHERE public_id = $1 RETURNING {_TOKEN_COLUMNS}",
            public_id,
            at,
        )
        return _token(row) if row else None

    # --- credentials ---------------------------------------------------------------------------------------------

    async def insert_credential(
        self, cred: Credential, sealed: SealedContents, audit: AuditEntry, check: AuthCheck | None = None
    ) -> Credential:
        """Insert the credential and its audit row in one statement: atomic without a transaction round trip. With a
        remembered authentication, only if it still holds (else AuthenticationChanged, nothing written)."""
        args: list[Any] = [
            cred.id,
            cred.name,
            cred.description,
            cred.type.value,
            sorted(s.value for s in cred.scopes),
            cred.owner,
            cred.access.level.value,
            list(cred.access.users),
            *_app_engine_args(cred.app_engine),
            *_cert_args(cred.certificate_info),
            cred.version,
            sealed.kek_id,
            sealed.wrapped_key,
            sealed.ciphertext,
            audit.actor,
            audit.token_id,
            audit.action,
            json.dumps(audit.detail, sort_keys=True),
        ]
        guard = _auth_guard(check, args)
        try:
            row = await self.conn.fetchrow(
                f"WITH c AS (INSERT INTO credentials (id, name, description, type, scopes, owner, access_level,"
                f" shared_with, app_allowed_apps, app_contextless, cert_subject, cert_issuer, cert_not_after,"
                f" cert_fingerprint, version, kek_id, wrapped_key, ciphertext)"
                f" SELECT $1::text, $2::text, $3::text, $4::text, $5::text[], $6::text, $7::text, $8::text[],"
                f" $9::text[], $10::boolean, $11::text, $12::text, $13::timestamptz, $14::text, $15::bigint,"
                f" $16::text, $17::bytea, $18::bytea WHERE {guard}"
                f" RETURNING {_CREDENTIAL_COLUMNS}),"
                f" a AS (INSERT INTO audit_log (actor, token_id, action, target, outcome, detail)"
                f" SELECT $19, $20, $21, c.id, 'ok', $22::jsonb FROM c)"
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
        guard = _auth_guard(check, args)
        row = await self.conn.fetchrow(
            f"SELECT {guard} AS auth_ok, c.* FROM (VALUES (1)) AS q (one) LEFT JOIN"
            f" (SELECT {_CREDENTIAL_COLUMNS}, {_USED_BY_COLUMN} FROM credentials WHERE id = $1{lock}) AS c ON true",
            *args,
        )
        _require_auth(row)
        assert row is not None
        return _credential(row) if row["id"] is not None else None

    async def get_credential_sealed(
        self, credential_id: str, *, for_update: bool = False
    ) -> tuple[Credential, SealedContents] | None:
        lock = " FOR UPDATE" if for_update else ""
        row = await self.conn.fetchrow(
            f"SELECT {_CREDENTIAL_COLUMNS}, {_SEALED_COLUMNS} FROM credentials WHERE id = $1{lock}", credential_id
        )
        return (_credential(row), _sealed(row)) if row else None

    async def credentials_sealed(self, credential_ids: list[str]) -> dict[str, tuple[Credential, SealedContents, int]]:
        """id -> (metadata, sealed contents, resource version) for the push."""
        rows = await self.conn.fetch(
            f"SELECT {_CREDENTIAL_COLUMNS}, {_SEALED_COLUMNS}, resource_version FROM credentials WHERE id = ANY($1)",
            credential_ids,
        )
        return {r["id"]: (_credential(r), _sealed(r), int(r["resource_version"])) for r in rows}

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
        guard = _auth_guard(check, args)
        rows = await self.conn.fetch(
            f"SELECT g.auth_ok, g.total, p.* FROM"
            f" (SELECT {guard} AS auth_ok, (SELECT count(*) FROM credentials WHERE {where}) AS total) AS g"
            f" LEFT JOIN LATERAL (SELECT {_CREDENTIAL_COLUMNS}, {_USED_BY_COLUMN} FROM credentials"
            f" WHERE g.auth_ok AND {page_where} ORDER BY name, id LIMIT ${limit_arg}) AS p ON true",
            *args,
        )
        _require_auth(rows[0] if rows else None)
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
        args: list[Any] = [
            cred.id,
            expected_version,
            cred.name,
            cred.description,
            sorted(s.value for s in cred.scopes),
            cred.owner,
            cred.access.level.value,
            list(cred.access.users),
            *_app_engine_args(cred.app_engine),
            *_cert_args(cred.certificate_info),
            sealed.kek_id,
            sealed.wrapped_key,
            sealed.ciphertext,
        ]
        guard = _auth_guard(check, args)
        ctes = [
            f"g AS (SELECT {guard} AS auth_ok)",
            f"w AS (UPDATE credentials SET name = $3, description = $4, scopes = $5, owner = $6, access_level = $7,"
            f" shared_with = $8, app_allowed_apps = $9, app_contextless = $10, cert_subject = $11,"
            f" cert_issuer = $12, cert_not_after = $13, cert_fingerprint = $14, version = version + 1,"
            f" updated_at = now(), kek_id = $15, wrapped_key = $16, ciphertext = $17{bump}"
            f" WHERE id = $1 AND version = $2 AND (SELECT auth_ok FROM g)"
            f" RETURNING {_CREDENTIAL_COLUMNS}, {_USED_BY_COLUMN},"
            f" ARRAY(SELECT DISTINCT unnest(m.location_ids) FROM monitor_credentials u JOIN monitors m"
            f" ON m.id = u.monitor_id WHERE u.credential_id = credentials.id AND m.enabled ORDER BY 1)"
            f" AS user_locations)",
        ]
        if audit is not None:
            args += [audit.actor, audit.token_id, audit.action, json.dumps(audit.detail, sort_keys=True)]
            n = len(args)
            ctes.append(
                f"a AS (INSERT INTO audit_log (actor, token_id, action, target, outcome, detail)"
                f" SELECT ${n - 3}, ${n - 2}, ${n - 1}, w.id, 'ok', ${n}::jsonb FROM w)"
            )
        notified = "0"
        if new_contents:
            ctes += append_change_ctes("credential", "w", args)
            notified = "(SELECT count(*) FROM change_notified)"
        row = await self.conn.fetchrow(
            f"WITH {', '.join(ctes)} SELECT g.auth_ok, {notified} AS notified, w.* FROM g LEFT JOIN w ON true", *args
        )
        _require_auth(row)
        assert row is not None
        if row["id"] is None:
            return None
        return _credential(row), list(row["user_locations"])

    async def delete_credential(self, credential_id: str) -> bool:
        status = await self.conn.execute("DELETE FROM credentials WHERE id = $1", credential_id)
        return bool(status == "DELETE 1")

    async def sealed_not_under(self, kek_id: str, after: str, limit: int) -> list[tuple[str, int, SealedContents]]:
        rows = await self.conn.fetch(
            f"SELECT id, version, {_SEALED_COLUMNS} FROM credentials WHERE kek_id <> $1 AND id > $2"
            f" ORDER BY id LIMIT $3",
            kek_id,
            after,
            limit,
        )
        return [(r["id"], r["version"], _sealed(r)) for r in rows]

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

    # --- KEK checks ----------------------------------------------------------------------------------------------

    async def kek_checks(self) -> dict[str, bytes]:
        rows = await self.conn.fetch("SELECT kek_id, check_blob FROM kek_checks")
        return {r["kek_id"]: bytes(r["check_blob"]) for r in rows}

    async def insert_kek_check(self, kek_id: str, check: bytes) -> None:
        await self.conn.execute(
            "INSERT INTO kek_checks (kek_id, check_blob) VALUES ($1, $2) ON CONFLICT (kek_id) DO NOTHING", kek_id, check
        )

    async def delete_kek_check(self, kek_id: str) -> None:
        await self.conn.execute("DELETE FROM kek_checks WHERE kek_id = $1", kek_id)

    # --- audit ---------------------------------------------------------------------------------------------------

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
            json.dumps(detail or {}, sort_keys=True),
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
    if isinstance(detail, str):
        detail = json.loads(detail)
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


def _app_engine_args(app: AppEngineAccess | None) -> list[Any]:
    return [list(app.allowed_apps), app.allow_contextless_access] if app else [None, None]


def _cert_args(info: CertificateInfo | None) -> list[Any]:
    if info is None:
        return [None, None, None, None]
    return [info.subject, info.issuer, info.not_after, info.sha256_fingerprint]


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


async def _keep_session(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """Pool reset: asyncpg already rolls back an open transaction. Nothing here leaves other session state
    (no LISTEN or SET on pooled connections; the migration's advisory lock is released in a finally), so the
    full RESET ALL / UNLISTEN / CLOSE ALL round trip on every release is skipped."""


# Every statement here is short. PostgreSQL compiles a statement with LLVM (JIT) once its estimated cost passes
# jit_above_cost, which a "used by" over 10,000 monitors does: the compilation took 250 ms of a 550 ms statement that
# runs in 25 ms without it. Off for the vault's sessions; the server's default stays for everything else.
SESSION_SETTINGS = {"jit": "off"}

# Attempts of one call when its session is lost before it could have committed anything (see Store.call).
CALL_ATTEMPTS = 3

R = TypeVar("R")


@dataclasses.dataclass
class _Bound:
    conn: Connection
    ledger: CallLedger


# The connection bound to the current RPC (see Store.bound): one pool checkout per call, not one per query group.
_bound: contextvars.ContextVar[_Bound | None] = contextvars.ContextVar("credvault_bound_connection", default=None)


class Store:
    """The connection pool, and the way in to queries. A lost database session surfaces as ``Unavailable`` (with
    one fixed message), and the pool heals: the broken connection is discarded and the others are replaced on
    their next checkout (a killed session rarely comes alone: a restart or fail-over ends them all)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, dsn: str, *, min_size: int = 2, max_size: int = 20) -> Store:
        try:
            pool = await asyncpg.create_pool(
                dsn, min_size=min_size, max_size=max_size, reset=_keep_session, server_settings=SESSION_SETTINGS
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise Unavailable(f"cannot connect to PostgreSQL: {type(exc).__name__}") from None
        assert pool is not None
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()

    async def call(self, work: Callable[[], Awaitable[R]]) -> R:
        """``work`` on one bound connection (see ``bound``); run again on a fresh one, up to CALL_ATTEMPTS times in
        all, while its session is lost before it sent anything that may commit (reads, and transactions that
        failed before their COMMIT, were rolled back by the server: running them again cannot apply anything
        twice). Otherwise the loss reaches the caller as Unavailable."""
        attempt = 1
        while True:
            async with self.bound() as ledger:
                try:
                    return await work()
                except Unavailable:
                    if not ledger.lost or ledger.may_have_committed or attempt == CALL_ATTEMPTS:
                        raise
            attempt += 1
            log.info("database session lost before anything could commit; running the call again")

    @contextlib.asynccontextmanager
    async def bound(self) -> AsyncIterator[CallLedger]:
        """Bind one pooled connection to the current task for the duration: every read and transaction inside
        uses it (an RPC authenticates and works on one checkout). Yields what the call did that decides whether
        it may run again (the outermost binding's, when nested)."""
        outer = _bound.get()
        if outer is not None:
            yield outer.ledger
            return
        async with self._checkout() as conn:
            bound = _Bound(conn, CallLedger())
            token = _bound.set(bound)
            try:
                yield bound.ledger
            finally:
                _bound.reset(token)

    @contextlib.asynccontextmanager
    async def _checkout(self) -> AsyncIterator[Connection]:
        """A pooled connection; a session lost at checkout or in use becomes Unavailable. One that breaks after
        the work is done does not fail the work: the pool discards it at release."""
        try:
            conn = await self.pool.acquire()
        except Exception as exc:
            if await self._discard_if_lost(exc, None):
                raise Unavailable(DATABASE_UNAVAILABLE) from None
            raise
        try:
            yield conn
        except Exception as exc:
            if await self._discard_if_lost(exc, conn):
                raise Unavailable(DATABASE_UNAVAILABLE) from None
            raise
        finally:
            try:
                await self.pool.release(conn)
            except Exception as exc:
                if not await self._discard_if_lost(exc, None):
                    raise

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        bound = _bound.get()
        if bound is None:
            async with self._checkout() as conn:
                yield conn
            return
        if bound.ledger.lost:  # discarded earlier in this call: nothing more is sent on it
            raise Unavailable(DATABASE_UNAVAILABLE)
        try:
            yield bound.conn
        except Exception as exc:
            if await self._discard_if_lost(exc, bound.conn):
                bound.ledger.lost = True
                raise Unavailable(DATABASE_UNAVAILABLE) from None
            raise

    async def _discard_if_lost(self, exc: Exception, conn: Connection | None) -> bool:
        """Whether ``exc`` means the session is lost; if so, ``conn`` is discarded and the pool replaces its other
        connections on their next checkout. The driver's text stays out of the log and the caller's message."""
        if not is_session_loss(exc, conn):
            return False
        log.warning("database session lost (%s); discarding the pool's connections", type(exc).__name__)
        if conn is not None:
            with contextlib.suppress(asyncpg.InterfaceError):  # a proxy already given back
                conn.terminate()
        await self.pool.expire_connections()
        return True

    def _may_commit(self) -> None:
        bound = _bound.get()
        if bound is not None:
            bound.ledger.may_have_committed = True

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        async with self._connection() as conn, conn.transaction():
            yield Tx(conn)
            self._may_commit()  # the body succeeded: COMMIT is sent next

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[Tx]:
        """A read-only transaction that sees one consistent state (REPEATABLE READ)."""
        async with self._connection() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            yield Tx(conn)

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[Tx]:
        """Autocommit statements that read, or write idempotently (a touch, a status upsert): a call whose
        session was lost may run them again (see ``call``). Writes that must not be repeated use ``write``."""
        async with self._connection() as conn:
            yield Tx(conn)

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[Tx]:
        """Autocommit statements that may write something a repetition would write again (each statement commits
        on its own): a call that entered one is not run again after losing its session."""
        self._may_commit()
        async with self._connection() as conn:
            yield Tx(conn)
