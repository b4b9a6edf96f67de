"""API tokens: format, hashing, authentication of calls, and the token operations.

A token is ``cv0c01.<24-character public id>.<64-character secret>``. ``cv0c01.<public id>`` is the token's id and
safe to log; the secret is shown once and stored only as a SHA-256 hash (it carries 320 random bits, so a fast hash
is the right one). An unknown public id and a wrong secret take the same path: one lookup, one hash, one
constant-time comparison against either the stored or a dummy hash, and the same error.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import hmac
import re
import secrets

from credvault.formats import TOKEN_PREFIX, TOKEN_PUBLIC_ID_CHARS
from vault_service import policy, validation
from vault_service.auth_cache import AuthCache, CachedAuth
from vault_service.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from vault_service.models import Page, Principal, TokenInfo, TokenKind, TokenScope
from vault_service.pagination import decode_page_token, encode_page_token, page_size
from vault_service.storage.pool import Store
from vault_service.storage.queries import Queries

SECRET_CHARS = 64
MAX_PERSONAL_TOKENS = 5
MAX_GRACE = datetime.timedelta(days=7)
# How often the last use is written at most: a tuning, not a rule. A second more or less cannot be told from a test
# without a wall-clock threshold (tests check 10 s and an hour).
LAST_USED_RESOLUTION = datetime.timedelta(seconds=60)  # pragma: no mutate: NumberReplacer
_TOKEN = re.compile(rf"^{TOKEN_PREFIX}\.([A-Z2-7]{{{TOKEN_PUBLIC_ID_CHARS}}})\.([A-Z2-7]{{{SECRET_CHARS}}})$")
_TOKEN_ID = re.compile(rf"^{TOKEN_PREFIX}\.[A-Z2-7]{{{TOKEN_PUBLIC_ID_CHARS}}}$")
_INVALID = "invalid API token: it is malformed, unknown, revoked or expired"
# Compared against when the public id is unknown, so both failures cost the same.
_DUMMY_HASH = hashlib.sha256(b"credvault dummy token hash").digest()


# Equivalent: repr=True would not replace the __repr__ below (a dataclass keeps one the class defines), and nothing
# assigns to an issued token, frozen or not.
@dataclasses.dataclass(frozen=True, repr=False)  # pragma: no mutate: FalseWithTrue, TrueWithFalse
class IssuedToken:
    info: TokenInfo
    token: str

    def __repr__(self) -> str:
        return f"IssuedToken(id={self.info.id!r}, token=<redacted>)"


def _b32(nbytes: int) -> str:
    return base64.b32encode(secrets.token_bytes(nbytes)).decode().rstrip("=")


def _hash(token_id: str, secret: str) -> bytes:
    return hashlib.sha256(f"{token_id}.{secret}".encode()).digest()


def new_token() -> tuple[str, str, bytes]:
    """(token id, full token, hash)."""
    token_id = f"{TOKEN_PREFIX}.{_b32(15)}"
    secret = _b32(40)
    return token_id, f"{token_id}.{secret}", _hash(token_id, secret)


def parse_scopes(field: str, values: list[str]) -> frozenset[TokenScope]:
    if not values:
        raise InvalidArgument(field, "must name at least one scope")
    out = set()
    for v in values:
        try:
            out.add(TokenScope(v))
        except ValueError:
            raise InvalidArgument(
                field, f"unknown scope {v!r}; known: {', '.join(s.value for s in TokenScope)}"
            ) from None
    return frozenset(out)


def _parse(token: str) -> tuple[str, str]:
    """(token id, secret) of a well-formed token."""
    m = _TOKEN.match(token)
    if not m:
        raise Unauthenticated(_INVALID)
    return f"{TOKEN_PREFIX}.{m.group(1)}", m.group(2)


def _live_now(found: CachedAuth) -> datetime.datetime | None:
    """Now, if the token is neither revoked nor expired now; else None."""
    now = datetime.datetime.now(datetime.UTC)
    # Here and below, < for <= (>= for >) against the clock: they differ only when a stored time is this call's
    # clock reading to the microsecond, which no caller can arrange: equivalent.
    if (found.revoked_at is not None and found.revoked_at <= now) or (  # pragma: no mutate: LtE_Lt
        found.expires_at is not None and found.expires_at <= now  # pragma: no mutate: LtE_Lt
    ):
        return None
    return now


def _use_due(found: CachedAuth, now: datetime.datetime) -> bool:
    return found.last_used_at is None or now - found.last_used_at > LAST_USED_RESOLUTION  # pragma: no mutate: Gt_GtE


async def _lookup(tx: Queries, token_id: str, digest: bytes) -> CachedAuth:
    """What the database holds for a token whose hash is ``digest``. Same path and error for unknown ids and
    wrong secrets: one lookup, one constant-time comparison against the stored or a dummy hash."""
    record = await tx.get_token_for_auth(token_id)
    expected = record.secret_hash if record.secret_hash is not None else _DUMMY_HASH
    matches = hmac.compare_digest(digest, expected)
    if record.secret_hash is None or not matches:
        raise Unauthenticated(_INVALID)
    principal = Principal(record.user(), token_id, record.scopes, record.auth_check(token_id))
    return CachedAuth(digest, principal, record.expires_at, record.revoked_at, record.last_used_at)


# Its one caller passes ``touch``: the default is never used, True or False.
async def _verify(tx: Queries, token: str, *, touch: bool = True) -> Principal:  # pragma: no mutate: TrueWithFalse
    """The principal of a valid token, from the database. ``touch`` records the use (last_used_at); a lookup of a
    token's metadata is not a use of it."""
    token_id, secret = _parse(token)
    found = await _lookup(tx, token_id, _hash(token_id, secret))
    now = _live_now(found)
    if now is None:
        raise Unauthenticated(_INVALID)
    if touch and _use_due(found, now):
        await tx.touch_token(token_id)
    return dataclasses.replace(found.principal, check=None)


async def issue_token(
    tx: Queries,
    owner: str,
    name: str,
    scopes: frozenset[TokenScope],
    kind: TokenKind,
    expires_at: datetime.datetime | None,
) -> IssuedToken:
    token_id, token, digest = new_token()
    info = await tx.insert_token(token_id, owner, name, scopes, kind, digest, expires_at)
    return IssuedToken(info, token)


class TokenService:
    def __init__(self, store: Store, cache: AuthCache | None = None) -> None:
        self._store = store
        self._cache = cache

    async def authenticate(self, authorization: str | None, *, remembered: bool = False) -> Principal:
        """The principal of an ``authorization: Api-Token <token>`` header value.

        With ``remembered``, the principal may come from the cache: then it carries a ``check`` that the caller's
        statements must re-check (and on ``AuthenticationChanged``, or any error decided on it, the caller asks
        again without ``remembered``). Otherwise it is looked up now, and its ``check`` is None."""
        if not authorization:
            raise Unauthenticated("missing API token: send the metadata 'authorization: Api-Token <token>'")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "api-token" or not token:
            raise Unauthenticated("malformed authorization: expected 'Api-Token <token>'")
        token_id, secret = _parse(token.strip())
        digest = _hash(token_id, secret)
        cache = self._cache
        if cache is not None and remembered:
            # Keyed by the whole token's hash: only a token that matched in the database can hit. The comparison
            # is the same constant-time one as the database path's (every accepted token passes exactly one).
            cached = cache.get(digest)
            if cached is not None and hmac.compare_digest(digest, cached.secret_hash):
                now = _live_now(cached)
                if now is not None:
                    await self._touch_if_due(cached, now)
                    return cached.principal
                # Revoked or expired by its remembered times: the database decides (and says the same).
        async with self._store.autocommit() as tx:
            found = await _lookup(tx, token_id, digest)
            now = _live_now(found)
            if now is None:
                raise Unauthenticated(_INVALID)
            if cache is not None:
                cache.put(found)
            await self._touch_if_due(found, now, tx)
        return dataclasses.replace(found.principal, check=None)

    async def _touch_if_due(self, found: CachedAuth, now: datetime.datetime, tx: Queries | None = None) -> None:
        """Record the use at most once per LAST_USED_RESOLUTION (not once per concurrent call)."""
        if not _use_due(found, now):
            return
        found.last_used_at = now
        if tx is not None:
            await tx.touch_token(found.principal.token_id)
            return
        async with self._store.autocommit() as own:
            await own.touch_token(found.principal.token_id)

    async def create(
        self,
        principal: Principal,
        *,
        name: str,
        scopes: list[str],
        kind: TokenKind,
        owner: str,
        expires_at: datetime.datetime | None,
    ) -> IssuedToken:
        name = validation.text("name", name, max_len=validation.MAX_NAME, required=True)
        wanted = parse_scopes("scopes", scopes)
        if kind is TokenKind.PERSONAL:
            policy.require_scope(principal, TokenScope.API_TOKENS_WRITE)
            if owner and owner != principal.username:
                raise PermissionDenied("a personal access token can only be created for yourself")
            owner = principal.username
        else:
            policy.require_api_token_issue(principal)
            owner = validation.username("owner", owner) if owner else principal.username
        excess = wanted - policy.grantable_scopes(principal)
        if excess:
            raise PermissionDenied(
                f"cannot grant scopes the calling token lacks: {', '.join(sorted(s.value for s in excess))}"
            )
        if expires_at is not None and expires_at <= datetime.datetime.now(datetime.UTC):  # pragma: no mutate: LtE_Lt
            raise InvalidArgument("expire_time", "must be in the future")
        async with self._store.transaction() as tx:
            if await tx.get_user(owner) is None:
                raise NotFound(f"user {owner!r} not found")
            await tx.lock_user_tokens(owner)
            if kind is TokenKind.PERSONAL and await tx.count_live_tokens(owner, kind) >= MAX_PERSONAL_TOKENS:
                raise FailedPrecondition(
                    f"user {owner!r} has {MAX_PERSONAL_TOKENS} personal access tokens already, the most allowed;"
                    " revoke one first"
                )
            issued = await issue_token(tx, owner, name, wanted, kind, expires_at)
            await tx.insert_audit(principal.username, principal.token_id, "token.create", issued.info.id, "ok")
        return issued

    async def list(self, principal: Principal, owner: str, size: int, page_token: str) -> Page[TokenInfo]:
        owner = validation.username("owner", owner) if owner else principal.username
        policy.require_token_access(principal, TokenScope.API_TOKENS_READ, owner)
        limit = page_size(size)
        # The key has exactly the one part asked for (decode_page_token checks): its [0] is its [-1].
        after = (
            decode_page_token(page_token, ("tokens", owner), 1)[0]  # pragma: no mutate: NumberReplacer
            if page_token
            else ""
        )
        async with self._store.autocommit() as tx:
            # One row more than the page tells whether more follow; any number more (limit + 2, limit << 1 with
            # limit >= 1) tells the same, reading more rows: equivalent. (The pragma skips limit + 0 too.)
            items = await tx.list_tokens(owner, after, limit + 1)  # pragma: no mutate: Add_LShift, NumberReplacer
        more = len(items) > limit
        items = items[:limit]
        nxt = encode_page_token(("tokens", owner), items[-1].id) if more else ""
        return Page(items, nxt, len(items))

    async def lookup(self, principal: Principal, token: str) -> TokenInfo:
        policy.require_scope(principal, TokenScope.API_TOKENS_READ)
        async with self._store.autocommit() as tx:
            try:
                looked_up = await _verify(tx, token.strip(), touch=False)
            except Unauthenticated:
                raise NotFound("token not found (malformed, unknown, revoked or expired)") from None
            policy.require_token_access(principal, TokenScope.API_TOKENS_READ, looked_up.username)
            info = await tx.get_token(looked_up.token_id)
        assert info is not None
        return info

    async def accessible(self, tx: Queries, principal: Principal, token_id: str) -> TokenInfo:
        """A token the caller may change (apiTokens.write on its owner's tokens)."""
        return await self._get_accessible(tx, principal, token_id)

    async def _get_accessible(self, tx: Queries, principal: Principal, token_id: str) -> TokenInfo:
        if not _TOKEN_ID.match(token_id):
            raise InvalidArgument("id", f"must look like {TOKEN_PREFIX}.<{TOKEN_PUBLIC_ID_CHARS} characters A-Z, 2-7>")
        info = await tx.get_token(token_id)
        if info is None or (
            info.owner != principal.username and not policy.has_env(principal.user, policy.ENVIRONMENT)
        ):
            raise NotFound(f"token {token_id} not found")
        policy.require_token_access(principal, TokenScope.API_TOKENS_WRITE, info.owner)
        return info

    async def revoke(self, principal: Principal, token_id: str) -> TokenInfo:
        async with self._store.transaction() as tx:
            await self._get_accessible(tx, principal, token_id)
            info = await tx.revoke_token(token_id, None)
            await tx.insert_audit(principal.username, principal.token_id, "token.revoke", token_id, "ok")
        assert info is not None
        return info

    async def rotate(
        self, principal: Principal, token_id: str, grace: datetime.timedelta
    ) -> tuple[IssuedToken, TokenInfo]:
        if grace < datetime.timedelta(0) or grace > MAX_GRACE:
            raise InvalidArgument("grace_period", f"must be between 0 and {MAX_GRACE.days} days")
        async with self._store.transaction() as tx:
            old = await self._get_accessible(tx, principal, token_id)
            now = datetime.datetime.now(datetime.UTC)
            if old.revoked_at is not None and old.revoked_at <= now:  # pragma: no mutate: LtE_Lt
                raise FailedPrecondition(f"token {token_id} is revoked; create a new one instead")
            if old.expires_at is not None and old.expires_at <= now:  # pragma: no mutate: LtE_Lt
                # The new token would inherit the expiry and be dead on arrival.
                raise FailedPrecondition(f"token {token_id} has expired; create a new one instead")
            if old.kind is TokenKind.PERSONAL and grace:
                # During the grace period both tokens are live: that must fit under the personal-token limit,
                # or chained rotations would mint any number of live personal tokens.
                await tx.lock_user_tokens(old.owner)
                if await tx.count_live_tokens(old.owner, TokenKind.PERSONAL) >= MAX_PERSONAL_TOKENS:
                    raise FailedPrecondition(
                        f"user {old.owner!r} has {MAX_PERSONAL_TOKENS} live personal access tokens, the most allowed;"
                        " rotate with a grace period of zero, or revoke one first"
                    )
            issued = await issue_token(tx, old.owner, old.name, old.scopes, old.kind, old.expires_at)
            previous = await tx.revoke_token(token_id, now + grace if grace else None)
            await tx.insert_audit(
                principal.username, principal.token_id, "token.rotate", token_id, "ok", {"new": issued.info.id}
            )
        assert previous is not None
        return issued, previous
