"""The systems bench/credentials_api.py measures besides OpenBao (bench/_openbao.py): credvault through its gRPC
API over TLS (a ``credvault serve`` process on the run's database), baseline (a) raw asyncpg in this process, baseline
(b) the grpc.aio unary ceiling (bench/_grpc_echo_server.py over mutual TLS). All on the run's one PKI."""

from __future__ import annotations

import asyncio
import os
import pathlib
import random
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import grpc
from _credentials_api_phase import payload, run_phase
from _harness import child_env
from _processes import Resources, Vault, note, wait_for_log

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import credentials_pb2_grpc as cgrpc
from tests.local_pki import LocalPki

BENCH_DIR = pathlib.Path(__file__).resolve().parent
ROW_SECRET_BYTES = 200  # a credvault row holds ~60 bytes of wrapped key + ~130 bytes of ciphertext for this payload
CHANNEL_OPTIONS = [("grpc.keepalive_time_ms", 60_000)]


# --- credvault ---------------------------------------------------------------------------------------------------


def credvault_channel(vault: Vault, p: LocalPki) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(f"127.0.0.1:{vault.api_port}", p.channel_credentials(), options=CHANNEL_OPTIONS)


def up_contents(n: int) -> cpb.CredentialContents:
    username, password = payload(n)
    return cpb.CredentialContents(username_password=cpb.UsernamePassword(username=username, password=password))


async def seed_credvault(stub: cgrpc.CredentialsServiceAsyncStub, vault: Vault, count: int) -> list[str]:
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> str:
        async with sem:
            resp = await stub.CreateCredential(
                cpb.CreateCredentialRequest(
                    name=f"seed-{i:05d}", scopes=[cpb.CREDENTIAL_SCOPE_SYNTHETIC], contents=up_contents(i)
                ),
                metadata=vault.metadata,
            )
            return resp.credential.id

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def bench_credvault(
    stub: cgrpc.CredentialsServiceAsyncStub,
    vault: Vault,
    ids: list[str],
    db_url: str,
    concurrency: int,
    warmup: float,
    seconds: float,
    ceiling: Callable[[], Awaitable[dict[str, Any]]] | None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    md = vault.metadata
    rng = random.Random(concurrency)
    out: dict[str, Any] = {}

    async def get(w: int, n: int) -> None:
        await stub.GetCredential(cpb.GetCredentialRequest(id=rng.choice(ids)), metadata=md)

    out["get"] = await run_phase(f"c={concurrency} credvault get", get, concurrency, warmup, seconds)
    # The ceiling right after Get, so that both see the machine in the same state.
    ceiling_result = await ceiling() if ceiling else None

    page_tokens = [""] * concurrency

    async def list_page(w: int, n: int) -> None:
        resp = await stub.ListCredentials(
            cpb.ListCredentialsRequest(page_size=100, page_token=page_tokens[w]), metadata=md
        )
        if not resp.credentials:
            raise RuntimeError("ListCredentials returned an empty page")
        page_tokens[w] = resp.next_page_token

    out["list"] = await run_phase(f"c={concurrency} credvault list", list_page, concurrency, warmup, seconds)

    # Each worker overwrites its own credentials: concurrent overwrites of one row would measure the row lock.
    mine = [ids[w::concurrency] or [ids[w % len(ids)]] for w in range(concurrency)]

    async def overwrite(w: int, n: int) -> None:
        cid = mine[w][n % len(mine[w])]
        await stub.OverwriteCredential(cpb.OverwriteCredentialRequest(id=cid, contents=up_contents(n)), metadata=md)

    out["overwrite"] = await run_phase(f"c={concurrency} credvault overwrite", overwrite, concurrency, warmup, seconds)

    async def create(w: int, n: int) -> None:
        await stub.CreateCredential(
            cpb.CreateCredentialRequest(
                name=f"zz-created-c{concurrency}-w{w}-{n}",
                scopes=[cpb.CREDENTIAL_SCOPE_SYNTHETIC],
                contents=up_contents(n),
            ),
            metadata=md,
        )

    out["create"] = await run_phase(f"c={concurrency} credvault create", create, concurrency, warmup, seconds)

    # Back to the seeded vault, so that Get and List at the next level see the same few hundred credentials.
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("DELETE FROM credentials WHERE name LIKE 'zz-created-%'")
        await conn.execute("VACUUM ANALYZE credentials")
    finally:
        await conn.close()
    return out, ceiling_result


# --- baseline (a): raw asyncpg -----------------------------------------------------------------------------------

BASELINE_TABLE = """
CREATE TABLE IF NOT EXISTS bench_rows (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    owner       text NOT NULL,
    type        text NOT NULL,
    secret      bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
)
"""
INSERT_ROW = "INSERT INTO bench_rows (id, name, owner, type, secret) VALUES ($1, $2, $3, $4, $5)"
SELECT_ROW = "SELECT id, name, owner, type, secret, created_at FROM bench_rows WHERE id = $1"


async def pool_size_for(db_url: str, wanted: int, vault_pool: int) -> int:
    """``wanted`` connections, or fewer if max_connections would not leave room for them and the vault's pool."""
    conn = await asyncpg.connect(db_url)
    try:
        limit = int(await conn.fetchval("SHOW max_connections"))
        superuser = int(await conn.fetchval("SHOW superuser_reserved_connections"))
        used = int(await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"))
        # Connections to this database other than this one are the vault's: its pool may still grow by the rest.
        vault_open = int(
            await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        )
    finally:
        await conn.close()
    available = limit - superuser - used - max(0, vault_pool - (vault_open - 1)) - 1
    if available < wanted:
        note(f"asyncpg pool: {available} connections instead of {wanted} (max_connections {limit}, in use {used})")
    return max(2, min(wanted, available))


async def bench_asyncpg(
    db_url: str, concurrency: int, warmup: float, seconds: float, seed: int, vault_pool: int
) -> dict[str, Any]:
    size = await pool_size_for(db_url, concurrency, vault_pool)
    pool = await asyncpg.create_pool(db_url, min_size=size, max_size=size)
    assert pool is not None
    try:
        await pool.execute(BASELINE_TABLE)
        ids = [f"SEED-{concurrency}-{i:05d}" for i in range(seed)]
        await pool.executemany(
            INSERT_ROW,
            [
                (i, f"seed-{n}", "bench-admin", "USERNAME_PASSWORD", os.urandom(ROW_SECRET_BYTES))
                for n, i in enumerate(ids)
            ],
        )
        rng = random.Random(concurrency)
        secret = os.urandom(ROW_SECRET_BYTES)

        async def select(w: int, n: int) -> None:
            if await pool.fetchrow(SELECT_ROW, rng.choice(ids)) is None:
                raise RuntimeError("row not found")

        async def insert(w: int, n: int) -> None:
            # One statement outside a transaction block: one commit (one WAL flush) per row, as a credential create.
            await pool.execute(
                INSERT_ROW, f"C{concurrency}-{w}-{n}", f"created-{n}", "bench-admin", "USERNAME_PASSWORD", secret
            )

        out = {
            "select": await run_phase(f"c={concurrency} asyncpg select", select, concurrency, warmup, seconds),
            "insert": await run_phase(f"c={concurrency} asyncpg insert", insert, concurrency, warmup, seconds),
            "pool_size": size,
        }
        await pool.execute("TRUNCATE bench_rows")
        return out
    finally:
        await pool.close()


# --- baseline (b): grpc.aio unary ceiling ------------------------------------------------------------------------


async def start_echo(res: Resources, p: LocalPki, response_bytes: int) -> int:
    """The echo server on the run's server certificate, requiring a client certificate of the engine CA."""
    argv = [
        sys.executable,
        str(BENCH_DIR / "_grpc_echo_server.py"),
        "--cert",
        str(p.server_pem),
        "--key",
        str(p.server_key),
        "--client-ca",
        str(p.engine_ca_pem),
        "--response-bytes",
        str(response_bytes),
    ]
    child = res.spawn("gRPC echo server", argv, child_env(), res.root / "echo.log")
    m = await wait_for_log(child, r"PORT (\d+)", 30)
    return int(m.group(1))


def echo_channel(port: int, p: LocalPki) -> grpc.aio.Channel:
    """Mutual TLS: the client presents a certificate of the engine CA (the echo server checks only its chain)."""
    creds = p.channel_credentials(client=p.engine("bench", "echo-client"))
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=CHANNEL_OPTIONS)
