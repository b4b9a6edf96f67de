"""Database loss: the sessions of the vault's pool are killed (pg_terminate_backend) under calls. Every call ends OK
or UNAVAILABLE (never INTERNAL or UNKNOWN), a read is run again on a fresh session, nothing is applied twice, and
the pool serves afterwards."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import asyncpg
import grpc

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import identity_pb2 as ipb
from tests.conftest import Client
from tests.helpers import create_req
from tests.vault_service.test_access_rules import outcome

# Every session on the test's database but the asking one: the vault's pool (the test's vault has no engine port,
# so no change follower is listening).
_OTHER_SESSIONS = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"


@contextlib.asynccontextmanager
async def _session(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()


async def _waiting_on_a_lock(conn: asyncpg.Connection) -> int:
    async def look() -> int:
        while True:
            pid = await conn.fetchval(f"{_OTHER_SESSIONS} AND wait_event_type = 'Lock'")
            if pid is not None:
                return int(pid)
            await asyncio.sleep(0.01)

    return await asyncio.wait_for(look(), 30)


async def test_a_read_whose_session_is_killed_runs_again_on_a_fresh_one(admin: Client, database_url: str) -> None:
    cred = (await admin.CreateCredential(create_req("kept"))).credential
    async with _session(database_url) as locker, _session(database_url) as killer:
        held = locker.transaction()
        await held.start()
        await locker.execute("LOCK TABLE credentials IN ACCESS EXCLUSIVE MODE")
        call = asyncio.ensure_future(admin.GetCredential(cpb.GetCredentialRequest(id=cred.id)))
        pid = await _waiting_on_a_lock(killer)  # the read is in the database, on its session
        assert await killer.fetchval("SELECT pg_terminate_backend($1, 30000)", pid)  # returns once it is gone
        await held.rollback()
        got = await asyncio.wait_for(call, 30)
    assert got.credential.id == cred.id


async def _outcomes(calls: list[Awaitable[Any]]) -> list[grpc.StatusCode]:
    return [await outcome(c) for c in calls]


async def test_calls_under_killed_sessions_end_ok_or_unavailable_and_the_pool_heals(
    admin: Client, database_url: str
) -> None:
    kept = (await admin.CreateCredential(create_req("kept"))).credential
    workers, rounds = 6, 10
    done = asyncio.Event()
    kills = 0

    async def kill_sessions() -> None:
        nonlocal kills
        async with _session(database_url) as killer:
            while not done.is_set():
                kills += len(await killer.fetch(f"SELECT pg_terminate_backend(pid) FROM ({_OTHER_SESSIONS}) AS s"))
                await asyncio.sleep(0.05)

    async def work(worker: int) -> list[grpc.StatusCode]:
        codes = []
        for i in range(rounds):
            name = f"w{worker}-{i}"
            codes += await _outcomes(
                [
                    admin.GetCredential(cpb.GetCredentialRequest(id=kept.id)),
                    admin.ListCredentials(cpb.ListCredentialsRequest()),
                    admin.CreateCredential(create_req(name)),  # one autocommit statement: never run twice
                    admin.CreateUser(ipb.CreateUserRequest(username=name, permissions=[])),  # a transaction
                ]
            )
        return codes

    killing = asyncio.ensure_future(kill_sessions())
    try:
        results = await asyncio.gather(*(work(w) for w in range(workers)))
    finally:
        done.set()
        await killing
    codes = collections.Counter(code for r in results for code in r)
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes  # no ALREADY_EXISTS: none twice
    assert kills > 0
    assert codes[grpc.StatusCode.OK] > 0

    async with _session(database_url) as conn:
        names = collections.Counter(r["name"] for r in await conn.fetch("SELECT name FROM credentials"))
    assert max(names.values()) == 1, names  # no create applied twice

    healed = await _outcomes([admin.GetCredential(cpb.GetCredentialRequest(id=kept.id)) for _ in range(20)])
    assert healed == [grpc.StatusCode.OK] * 20
