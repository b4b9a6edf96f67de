"""SQL of users and API tokens (mixed into ``Queries``), and the guard by which a statement re-checks a remembered
authentication in its own snapshot."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import asyncpg

from vault_service.errors import AlreadyExists, AuthenticationChanged
from vault_service.models import AuthCheck, Permission, TokenInfo, TokenKind, TokenScope, User
from vault_service.storage.connection import Connection


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


def auth_guard(check: AuthCheck | None, args: list[Any]) -> str:
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


def require_auth(row: asyncpg.Record | None) -> None:
    if row is None or not row["auth_ok"]:
        raise AuthenticationChanged("the authentication changed since it was remembered")


def _user(row: asyncpg.Record, prefix: str = "") -> User:
    zones = row[prefix + "zone_permissions"]
    return User(
        username=row[prefix + "username"],
        permissions=frozenset(Permission(p) for p in row[prefix + "permissions"]),
        zone_permissions={z: frozenset(Permission(p) for p in ps) for z, ps in zones.items()},
        created_at=row[prefix + "created_at"],
        updated_at=row[prefix + "updated_at"],
    )


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


def _user_values(
    username: str, permissions: frozenset[Permission], zones: dict[str, frozenset[Permission]]
) -> tuple[str, list[str], dict[str, list[str]]]:
    """$1 username, $2 permissions, $3 zone permissions: what a new user and a permission change write."""
    return (
        username,
        sorted(p.value for p in permissions),
        {z: sorted(p.value for p in ps) for z, ps in sorted(zones.items())},
    )


class IdentityQueries:
    conn: Connection

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
                *_user_values(username, permissions, zones),
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
            *_user_values(username, permissions, zones),
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

    async def add_token_scope(self, scope: str, owner: str | None, public_id: str | None) -> list[str]:
        """Adds ``scope`` to the live tokens of ``owner`` (or the one token ``public_id``) that lack it; their ids."""
        rows = await self.conn.fetch(
            "UPDATE api_tokens SET scopes = ARRAY(SELECT DISTINCT s FROM unnest(scopes || $1::text) AS s ORDER BY s)"
            " WHERE NOT ($1 = ANY (scopes)) AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"
            " AND (owner = $2 OR public_id = $3) RETURNING public_id",
            scope,
            owner,
            public_id,
        )
        return sorted(r["public_id"] for r in rows)

    async def revoke_token(self, public_id: str, at: datetime.datetime | None) -> TokenInfo | None:
        """Revoke at ``at`` (None: now); never moves an earlier revocation later."""
        row = await self.conn.fetchrow(
            f"UPDATE api_tokens SET revoked_at = LEAST(COALESCE(revoked_at, 'infinity'), COALESCE($2, now()))"
            f" WHERE public_id = $1 RETURNING {_TOKEN_COLUMNS}",
            public_id,
            at,
        )
        return _token(row) if row else None
