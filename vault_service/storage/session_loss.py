"""Database loss: which failures mean a session is gone (killed by pg_terminate_backend, a server restart or crash,
the network), and the ledger that says whether a call that lost its session may run again.

A lost session is reported as :class:`errors.Unavailable` with one fixed message (never the driver's text). Whether
a call may be retried is decided by what it sent: a statement that failed because its session was lost was rolled
back, unless it was a COMMIT or an autocommit write that the server may have applied just before the session went
(the reply is what is lost, not necessarily the work). So a call is run again only if it sent neither.
"""

from __future__ import annotations

import dataclasses

import asyncpg

DATABASE_UNAVAILABLE = "the database is unavailable; retry"

# The session is gone or was never there. InternalClientError is asyncpg's protocol state machine finding a message
# it did not expect: in practice the FATAL of a terminated backend that arrived on an idle connection (the next
# statement then fails with "cannot switch to state N; another operation (2) is in progress"); whatever its cause,
# the connection's protocol state is no longer known, so it is not used again.
_LOST = (
    OSError,
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08, and ConnectionDoesNotExistError
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InternalClientError,
)


def is_session_loss(exc: BaseException, conn: object | None) -> bool:
    """``exc`` (raised while using ``conn``, or while checking one out if None) means the session is unusable."""
    if isinstance(exc, _LOST):
        return True
    return isinstance(exc, asyncpg.InterfaceError) and (conn is None or _closed(conn))


def _closed(conn: object) -> bool:
    try:
        return bool(conn.is_closed())  # type: ignore[attr-defined]
    except asyncpg.InterfaceError:  # a pool proxy already given back (its connection was discarded)
        return True


@dataclasses.dataclass
class CallLedger:
    """What one call (one bound connection) did that decides whether it may run again after losing its session."""

    may_have_committed: bool = False  # it sent (or was about to send) a COMMIT or an autocommit write
    lost: bool = False  # its connection was discarded: nothing more is sent on it
