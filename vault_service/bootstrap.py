"""`credvault admin bootstrap`: the first administrator of an empty vault, and its token (printed once)."""

from __future__ import annotations

from vault_service import validation
from vault_service.errors import FailedPrecondition
from vault_service.models import Permission, TokenKind, TokenScope
from vault_service.storage.migrate import migrate
from vault_service.storage.pool import Store
from vault_service.tokens import IssuedToken, issue_token


async def bootstrap_admin(store: Store, username: str) -> IssuedToken:
    username = validation.username("username", username)
    async with store.transaction() as tx:
        await tx.conn.execute("LOCK TABLE users IN EXCLUSIVE MODE")
        if await tx.count_users() > 0:
            raise FailedPrecondition("the vault has users already; bootstrap only sets up an empty vault")
        await tx.insert_user(username, frozenset(Permission), {})
        issued = await issue_token(tx, username, "bootstrap admin token", frozenset(TokenScope), TokenKind.API, None)
        await tx.insert_audit("<local operator>", None, "admin.bootstrap", username, "ok", {"token": issued.info.id})
    return issued


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
