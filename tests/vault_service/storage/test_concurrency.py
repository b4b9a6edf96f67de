"""Optimistic versioning and safe concurrent start-up."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import grpc

from credvault.v1 import credentials_pb2 as cpb
from tests.conftest import Client, with_database
from tests.helpers import create_req, up
from vault_service.storage.migrate import available_migrations, migrate
from vault_service.storage.pool import Store


async def test_concurrent_overwrites_lose_no_update(admin: Client) -> None:
    cred = (await admin.CreateCredential(create_req())).credential
    n = 20
    results = await asyncio.gather(
        *(
            admin.OverwriteCredential(cpb.OverwriteCredentialRequest(id=cred.id, contents=up("u", f"p{i}")))
            for i in range(n)
        )
    )
    versions = sorted(r.credential.version for r in results)
    assert versions == list(range(2, n + 2))  # each succeeded, one version each
    final = (await admin.GetCredential(cpb.GetCredentialRequest(id=cred.id))).credential
    assert final.version == n + 1


async def test_concurrent_overwrites_at_one_expected_version_one_wins(admin: Client) -> None:
    cred = (await admin.CreateCredential(create_req())).credential
    calls = [
        admin.OverwriteCredential(
            cpb.OverwriteCredentialRequest(id=cred.id, contents=up("u", f"p{i}"), expected_version=cred.version)
        )
        for i in range(10)
    ]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    ok = [o for o in outcomes if isinstance(o, cpb.OverwriteCredentialResponse)]
    aborted = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError) and o.code() == grpc.StatusCode.ABORTED]
    assert len(ok) == 1
    assert len(aborted) == 9
    assert ok[0].credential.version == cred.version + 1


async def test_two_replicas_migrating_at_once(pg_url: str) -> None:
    name = f"credvault_mig_race_{uuid.uuid4().hex[:12]}"  # unique: two runs on one server never collide
    admin = await asyncpg.connect(with_database(pg_url, "postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        conns = [await asyncpg.connect(with_database(pg_url, name)) for _ in range(4)]
        try:
            applied = await asyncio.gather(*(migrate(c) for c in conns))
            everything = [v for v, _, _ in available_migrations()]
            assert sorted(v for a in applied for v in a) == everything  # each applied exactly once
            rows = await conns[0].fetch("SELECT version FROM schema_migrations ORDER BY version")
            assert [r["version"] for r in rows] == everything
            assert await migrate(conns[0]) == []  # idempotent
        finally:
            for c in conns:
                await c.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_vault_sessions_never_jit_compile(store: Store) -> None:
    """Short statements only: PostgreSQL's JIT compilation (cost-triggered) is off on every pooled session."""
    async with store.autocommit() as tx:
        assert await tx.conn.fetchval("SHOW jit") == "off"
