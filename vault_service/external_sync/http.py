"""Outbound HTTPS of every provider: aiohttp sessions, one per connection (address, CA bundle, client certificate),
TLS verified, bounded timeouts and answer sizes; transport failures become a SyncFailure with a fixed message."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import ssl
from collections.abc import Iterator
from typing import Any

import aiohttp

from vault_service.external_sync import failure as f
from vault_service.external_sync.failure import SyncFailure

MAX_RESPONSE_BYTES = 1024 * 1024
# What a pipe holds without a reader (Linux: 64 KiB); a certificate chain and key are far smaller.
_MAX_PIPED = 60 * 1024


@dataclasses.dataclass(frozen=True, repr=False)
class ClientCertificate:
    """A TLS client certificate chain and key (from a CERTIFICATE credential); ``key`` names it in session caches
    (credential id and version, no secret)."""

    chain_pem: bytes
    key_pem: bytes
    key: tuple[object, ...]

    def __repr__(self) -> str:
        return f"ClientCertificate(key={self.key!r}, chain=<{len(self.chain_pem)} bytes>, private_key=<redacted>)"


@contextlib.contextmanager
def _piped(data: bytes) -> Iterator[str]:
    """A path that reads ``data`` once (a pipe's /dev/fd entry): ssl loads certificates and keys from paths only,
    and a private key must not touch a disk."""
    if len(data) > _MAX_PIPED:
        raise SyncFailure(f.COMPANION, "the client certificate credential is too large to use")
    read, write = os.pipe()
    try:
        os.write(write, data)
        os.close(write)
        write = -1
        yield f"/dev/fd/{read}"
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)


def tls_context(ca_pem: bytes | None, client: ClientCertificate | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca_pem:
        context = ssl.create_default_context(cadata=ca_pem.decode("ascii", errors="replace"))
    if client is not None:
        try:
            with _piped(client.chain_pem) as chain, _piped(client.key_pem) as key:
                context.load_cert_chain(chain, key)
        except (ssl.SSLError, OSError, ValueError):
            raise SyncFailure(f.COMPANION, "the client certificate credential cannot be used for TLS") from None
    return context


class Sessions:
    """aiohttp sessions by connection; ``close`` ends them all."""

    def __init__(self, timeout_seconds: float = 10.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds, connect=timeout_seconds)
        self._sessions: dict[tuple[object, ...], aiohttp.ClientSession] = {}

    def get(self, address: str, ca_pem: bytes | None, client: ClientCertificate | None = None) -> aiohttp.ClientSession:
        key = (address, hashlib.sha256(ca_pem or b"").hexdigest(), client.key if client else None)
        session = self._sessions.get(key)
        if session is None:
            session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(ssl=tls_context(ca_pem, client), limit=16),
                trust_env=False,
            )
            self._sessions[key] = session
        return session

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()


async def request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    address: str,
    *,
    headers: dict[str, str] | None = None,
    data: bytes | dict[str, str] | None = None,
) -> tuple[int, Any]:
    """Status and parsed JSON body (None if there is none or it is not JSON). Transport failures become
    SyncFailure with a fixed message (the exception's text may hold anything)."""
    try:
        async with session.request(method, url, headers=headers, data=data, allow_redirects=False) as resp:
            raw = await resp.content.read(MAX_RESPONSE_BYTES + 1)
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError, ssl.SSLError):
        raise SyncFailure(
            f.UNREACHABLE, f"the external vault at {address} is unreachable (connection, TLS or timeout)"
        ) from None
    if len(raw) > MAX_RESPONSE_BYTES:
        raise SyncFailure(f.ERROR, f"the external vault's answer is over {MAX_RESPONSE_BYTES} bytes")
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None
