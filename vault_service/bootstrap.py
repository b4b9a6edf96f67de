"""What an operator does on the database itself, with no token (`credvault admin ...`): create the first
administrator of an empty vault and its token (printed once); grant a scope that a later version added to the
tokens of existing users (a token's scopes are fixed when it is made, and no token can grant a scope it lacks)."""

from __future__ import annotations

from vault_service import validation
from vault_service.errors import FailedPrecondition, InvalidArgument, NotFound
from vault_service.models import Permission, TokenKind, TokenScope
from vault_service.storage.migrate import migrate
from vault_service.storage.pool import Store
from vault_service.tokens import IssuedToken, issue_token

OPERATOR = "<local operator>"  # the audit actor of what is done on the database itself


async def bootstrap_admin(store: Store, username: str) -> IssuedToken:
    username = validation.username("username", username)
    async with store.transaction() as tx:
        await tx.conn.execute("LOCK TABLE users IN EXCLUSIVE MODE")
        if await tx.count_users() > 0:
            raise FailedPrecondition("the vault has users already; bootstrap only sets up an empty vault")
        await tx.insert_user(username, frozenset(Permission), {})
        issued = await issue_token(tx, username, "bootstrap admin token", frozenset(TokenScope), TokenKind.API, None)
        await tx.insert_audit(OPERATOR, None, "admin.bootstrap", username, "ok", {"token": issued.info.id})
    return issued


OPERATOR = "<local operator>"


async def grant_scope(
    store: Store, scope: str, *, username: str | None = None, token_id: str | None = None
) -> list[str]:
    """Adds ``scope`` to every live token of ``username`` (or to the token ``token_id``), each change audited;
    returns the ids of the tokens that gained it. The user's permissions still bound what the scope allows."""
    try:
        granted = TokenScope(scope)
    except ValueError:
        known = ", ".join(s.value for s in TokenScope)
        raise InvalidArgument("scope", f"unknown scope {scope!r}; one of {known}") from None
    if (username is None) == (token_id is None):
        raise InvalidArgument("scope", "name a user or a token, one of them")
    async with store.transaction() as tx:
        if username is not None and await tx.get_user(username) is None:
            raise NotFound(f"user {username!r} not found")
        if token_id is not None and await tx.get_token(token_id) is None:
            raise NotFound(f"token {token_id!r} not found")
        changed = await tx.add_token_scope(granted.value, username, token_id)
        for changed_id in changed:
            await tx.insert_audit(OPERATOR, None, "token.scope_grant", changed_id, "ok", {"scope": granted.value})
    return changed


async def migrate_and_bootstrap(database_url: str, username: str) -> IssuedToken:
    """Migrates the database (under the migration lock) and creates its first administrator, on a pool of its own
    that is closed again: what `credvault admin bootstrap` does, and what tests and benchmarks set up with."""
    store = await Store.connect(database_url, min_size=1, max_size=2)
    try:
        async with store.pool.acquire() as conn:
            await migrate(conn)
        return await bootstrap_admin(store, username)
    finally:
        await store.close()
