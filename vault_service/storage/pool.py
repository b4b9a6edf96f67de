"""``Store``: the connection pool, and the ways to get ``Queries`` on one of its connections: in a transaction (so
that a change and its audit row commit together), in a read-only snapshot, or autocommit.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import asyncpg

from vault_service.errors import Unavailable
from vault_service.storage.connection import Connection
from vault_service.storage.queries import Queries
from vault_service.storage.session_loss import DATABASE_UNAVAILABLE, CallLedger, is_session_loss

log = logging.getLogger(__name__)


async def register_codecs(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """Set up a new connection: jsonb values are Python objects both ways (json.dumps and json.loads), for every
    statement on it."""
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


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
                dsn,
                min_size=min_size,
                max_size=max_size,
                init=register_codecs,
                reset=_keep_session,
                server_settings=SESSION_SETTINGS,
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
    async def transaction(self) -> AsyncIterator[Queries]:
        async with self._connection() as conn, conn.transaction():
            yield Queries(conn)
            self._may_commit()  # the body succeeded: COMMIT is sent next

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[Queries]:
        """A read-only transaction that sees one consistent state (REPEATABLE READ)."""
        async with self._connection() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            yield Queries(conn)

    @contextlib.asynccontextmanager
    async def autocommit(self) -> AsyncIterator[Queries]:
        """One connection, no transaction: each statement commits on its own. For statements that read, or write
        idempotently (a touch, a status upsert): a call whose session was lost may run them again (see ``call``).
        Writes that must not be repeated use ``write``."""
        async with self._connection() as conn:
            yield Queries(conn)

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[Queries]:
        """Autocommit statements that may write something a repetition would write again (each statement commits
        on its own): a call that entered one is not run again after losing its session."""
        self._may_commit()
        async with self._connection() as conn:
            yield Queries(conn)
