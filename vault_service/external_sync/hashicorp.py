"""The HashiCorp Vault / OpenBao HTTP API, as a synchronization needs it: AppRole login
(``POST /v1/auth/<mount>/login``), KV v2 reads (``GET /v1/<mount>/data/<path>``, with ``data.metadata.version``) and
KV v1 reads (``GET /v1/<mount>/<path>``), over aiohttp: one session per connection (address and CA), TLS verified,
bounded timeouts. Client tokens live in this process's memory only and are obtained again before they expire (or
when the vault refuses one)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import ssl
import time
import urllib.parse
from typing import Any

import aiohttp

from vault_service.external_sync import failure as f
from vault_service.external_sync.failure import SyncFailure
from vault_service.models import KvVersion

MAX_RESPONSE_BYTES = 1024 * 1024
# A token is obtained again once this share of its lifetime has passed (and when the vault refuses it).
RENEW_AFTER_SHARE = 2 / 3
# A token without a lifetime (lease_duration 0) is still obtained again after this long.
UNLIMITED_TOKEN_REUSE_SECONDS = 3600.0


@dataclasses.dataclass(frozen=True, repr=False)
class AppRoleLogin:
    """What an AppRole login sends; ``key`` names it in the token cache (companion ids and versions, no secret)."""

    mount: str
    role_id: str
    secret_id: str
    key: tuple[object, ...]

    def __repr__(self) -> str:
        return f"AppRoleLogin(mount={self.mount!r}, role_id=<redacted>, secret_id=<redacted>)"


@dataclasses.dataclass(frozen=True, repr=False)
class KvSecret:
    """A secret's fields as read, and its version (KV v2; empty for KV v1)."""

    data: dict[str, Any]
    version: str

    def __repr__(self) -> str:
        return f"KvSecret(fields={sorted(self.data)!r}, version={self.version!r})"


@dataclasses.dataclass(repr=False)
class _Token:
    value: str
    obtain_again_at: float  # time.monotonic()


class HashiCorpClient:
    """Reads secrets from any number of Vault/OpenBao servers; ``close`` ends its sessions and forgets its tokens."""

    def __init__(self, timeout_seconds: float = 10.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds, connect=timeout_seconds)
        self._sessions: dict[tuple[str, str], aiohttp.ClientSession] = {}
        self._tokens: dict[tuple[object, ...], _Token] = {}
        self._logins: dict[tuple[object, ...], asyncio.Lock] = {}

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        self._tokens.clear()
        for session in sessions:
            await session.close()

    def cached_tokens(self) -> int:
        return len(self._tokens)

    async def read(
        self, address: str, ca_pem: bytes | None, login: AppRoleLogin, mount: str, path: str, version: KvVersion
    ) -> KvSecret:
        session = self._session(address, ca_pem)
        quoted = urllib.parse.quote(path, safe="/")
        url = f"{address}/v1/{mount}/data/{quoted}" if version is KvVersion.V2 else f"{address}/v1/{mount}/{quoted}"
        where = f"{mount}/{path}"
        for attempt in (1, 2):
            token = await self._token(session, address, login, fresh=attempt == 2)
            status, body = await self._request(session, "GET", url, address, headers={"X-Vault-Token": token})
            if status == 403 and attempt == 1:
                continue  # the cached token may have been revoked or expired early: log in again, once
            break
        if status == 403:
            raise SyncFailure(f.DENIED, f"the external vault denied reading {where} (HTTP 403)")
        if status == 404:
            raise SyncFailure(
                f.NOT_FOUND, f"no secret at {where} in the external vault (HTTP 404: deleted or never written)"
            )
        _check_status(status, f"reading {where}")
        return _kv_secret(body, version, where)

    def _session(self, address: str, ca_pem: bytes | None) -> aiohttp.ClientSession:
        key = (address, hashlib.sha256(ca_pem or b"").hexdigest())
        session = self._sessions.get(key)
        if session is None:
            context = ssl.create_default_context()
            if ca_pem:
                context = ssl.create_default_context(cadata=ca_pem.decode("ascii", errors="replace"))
            session = aiohttp.ClientSession(
                timeout=self._timeout, connector=aiohttp.TCPConnector(ssl=context, limit=16), trust_env=False
            )
            self._sessions[key] = session
        return session

    async def _token(self, session: aiohttp.ClientSession, address: str, login: AppRoleLogin, *, fresh: bool) -> str:
        key = (address, login.mount, *login.key)
        lock = self._logins.setdefault(key, asyncio.Lock())
        async with lock:  # concurrent syncs with one login share one token
            cached = self._tokens.get(key)
            if cached is not None and not fresh and time.monotonic() < cached.obtain_again_at:
                return cached.value
            self._tokens.pop(key, None)
            body = json.dumps({"role_id": login.role_id, "secret_id": login.secret_id}).encode()
            status, answer = await self._request(
                session, "POST", f"{address}/v1/auth/{login.mount}/login", address, data=body
            )
            if status in (400, 401, 403):
                raise SyncFailure(f.AUTH_FAILED, f"the external vault refused the AppRole login (HTTP {status})")
            _check_status(status, "the AppRole login")
            try:
                auth = answer["auth"]
                value, ttl = str(auth["client_token"]), float(auth.get("lease_duration") or 0)
            except (KeyError, TypeError, ValueError):
                raise SyncFailure(f.ERROR, "the external vault's AppRole login answer has no client token") from None
            reuse = ttl * RENEW_AFTER_SHARE if ttl > 0 else UNLIMITED_TOKEN_REUSE_SECONDS
            self._tokens[key] = _Token(value, time.monotonic() + reuse)
            return value

    @staticmethod
    async def _request(
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        address: str,
        *,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
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


def _check_status(status: int, what: str) -> None:
    if status == 503:
        raise SyncFailure(f.SEALED, f"{what}: the external vault is sealed or not ready (HTTP 503)")
    if status != 200:
        raise SyncFailure(f.ERROR, f"{what}: the external vault answered HTTP {status}")


def _kv_secret(body: Any, version: KvVersion, where: str) -> KvSecret:
    try:
        data = body["data"]
        if version is KvVersion.V2:
            found, seen = data["data"], str(data["metadata"]["version"])
        else:
            found, seen = data, ""
    except (KeyError, TypeError):
        raise SyncFailure(f.ERROR, f"the external vault's answer for {where} is not a KV secret") from None
    if not isinstance(found, dict):
        raise SyncFailure(f.NOT_FOUND, f"no secret data at {where} in the external vault (deleted version)")
    return KvSecret(found, seen)
