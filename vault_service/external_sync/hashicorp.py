"""The HashiCorp Vault / OpenBao HTTP API, as a synchronization needs it: AppRole login
(``POST /v1/auth/<mount>/login`` with role and secret id) or TLS certificate login (the same path of a cert auth
mount, over a connection presenting the client certificate), KV v2 reads (``GET /v1/<mount>/data/<path>``, with
``data.metadata.version``) and KV v1 reads (``GET /v1/<mount>/<path>``), over aiohttp (:mod:`.http`): one session
per connection (address, CA, client certificate), TLS verified, bounded timeouts. Client tokens live in this
process's memory only and are obtained again before they expire (or when the vault refuses one)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import urllib.parse
from typing import Any

import aiohttp

from vault_service.external_sync import failure as f
from vault_service.external_sync import http
from vault_service.external_sync.failure import SyncFailure
from vault_service.external_sync.http import ClientCertificate
from vault_service.external_sync.provider import CA_FIELD, Companions, Fetched
from vault_service.models import ExternalSource, KvVersion

MAX_RESPONSE_BYTES = http.MAX_RESPONSE_BYTES
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

    @property
    def method(self) -> str:
        return "AppRole"

    def body(self) -> bytes:
        return json.dumps({"role_id": self.role_id, "secret_id": self.secret_id}).encode()


@dataclasses.dataclass(frozen=True, repr=False)
class CertLogin:
    """A TLS certificate login: the connection presents ``client``; ``role`` (optional) names the cert role."""

    mount: str
    role: str
    client: ClientCertificate
    key: tuple[object, ...]

    def __repr__(self) -> str:
        return f"CertLogin(mount={self.mount!r}, role={self.role!r}, client={self.client!r})"

    @property
    def method(self) -> str:
        return "certificate"

    def body(self) -> bytes:
        return json.dumps({"name": self.role} if self.role else {}).encode()


Login = AppRoleLogin | CertLogin


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
        self._sessions = http.Sessions(timeout_seconds)
        self._tokens: dict[tuple[object, ...], _Token] = {}
        self._logins: dict[tuple[object, ...], asyncio.Lock] = {}

    async def close(self) -> None:
        self._tokens.clear()
        await self._sessions.close()

    def cached_tokens(self) -> int:
        return len(self._tokens)

    async def read(
        self, address: str, ca_pem: bytes | None, login: Login, mount: str, path: str, version: KvVersion
    ) -> KvSecret:
        session = self._session(address, ca_pem, login.client if isinstance(login, CertLogin) else None)
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

    def _session(
        self, address: str, ca_pem: bytes | None, client: ClientCertificate | None = None
    ) -> aiohttp.ClientSession:
        return self._sessions.get(address, ca_pem, client)

    async def _token(self, session: aiohttp.ClientSession, address: str, login: Login, *, fresh: bool) -> str:
        key = (address, login.mount, *login.key)
        lock = self._logins.setdefault(key, asyncio.Lock())
        async with lock:  # concurrent syncs with one login share one token
            cached = self._tokens.get(key)
            if cached is not None and not fresh and time.monotonic() < cached.obtain_again_at:
                return cached.value
            self._tokens.pop(key, None)
            status, answer = await self._request(
                session, "POST", f"{address}/v1/auth/{login.mount}/login", address, data=login.body()
            )
            if status in (400, 401, 403):
                raise SyncFailure(f.AUTH_FAILED, f"the external vault refused the {login.method} login (HTTP {status})")
            _check_status(status, f"the {login.method} login")
            try:
                auth = answer["auth"]
                value, ttl = str(auth["client_token"]), float(auth.get("lease_duration") or 0)
            except (KeyError, TypeError, ValueError):
                raise SyncFailure(
                    f.ERROR, f"the external vault's {login.method} login answer has no client token"
                ) from None
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
        return await http.request(session, method, url, address, headers=headers, data=data)


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


APPROLE_ROLE = "external_source.approle.role_id_credential_id"
APPROLE_SECRET = "external_source.approle.secret_id_credential_id"
CERT_CLIENT = "external_source.cert.client_certificate_credential_id"


class HashiCorpProvider:
    """The synchronizer's interface to HashiCorp Vault / OpenBao: the login from the companions, one KV read."""

    def __init__(self, client: HashiCorpClient) -> None:
        self.client = client

    async def close(self) -> None:
        await self.client.close()

    async def fetch(self, source: ExternalSource, companions: Companions) -> Fetched:
        login: Login
        if source.approle_role_id_credential_id:
            key = (*companions.key(APPROLE_ROLE), *companions.key(APPROLE_SECRET))
            role_id, secret_id = companions.token(APPROLE_ROLE), companions.token(APPROLE_SECRET)
            login = AppRoleLogin(source.approle_mount, role_id, secret_id, key)
        else:
            client = companions.client_certificate(CERT_CLIENT)
            login = CertLogin(source.cert_mount, source.cert_role, client, client.key)
        secret = await self.client.read(
            source.address, companions.ca_pem(CA_FIELD), login, source.kv_mount, source.kv_path, source.kv_version
        )
        return Fetched(secret.data, secret.version, f"{source.kv_mount}/{source.kv_path}")


# --- writing (token rotation's write-back) ---------------------------------------------------------------------------

# The outcome of a KV v2 write refused because the secret's version moved since it was read (another writer won).
CAS_CONFLICT = "cas_conflict"


async def write_kv2(
    client: HashiCorpClient,
    address: str,
    ca_pem: bytes | None,
    login: Login,
    mount: str,
    path: str,
    data: dict[str, Any],
    cas: int,
) -> int:
    """Write a KV v2 secret's fields with check-and-set: only if its current version is ``cas`` (0: only if it does
    not exist). Returns the new version; a moved version raises SyncFailure(CAS_CONFLICT). ``data`` is never in a
    message."""
    body = json.dumps({"options": {"cas": cas}, "data": data}).encode()
    where = f"{mount}/{path}"
    status, answer = await _call(client, address, ca_pem, login, "POST", f"{mount}/data/{path}", body)
    if status == 403:
        raise SyncFailure(f.DENIED, f"the external vault denied writing {where} (HTTP 403)")
    if status == 400 and "check-and-set" in json.dumps(answer):
        raise SyncFailure(CAS_CONFLICT, f"{where} changed since it was read (check-and-set on version {cas} failed)")
    if status == 204:
        raise SyncFailure(f.ERROR, f"writing {where}: the external vault did not say the new version")
    _check_status(status, f"writing {where}")
    try:
        return int(answer["data"]["version"])
    except (KeyError, TypeError, ValueError):
        raise SyncFailure(f.ERROR, f"the external vault's answer to writing {where} has no version") from None


def login_of(source: ExternalSource, companions: Companions) -> Login:
    """The login a source's companions make (AppRole or TLS certificate)."""
    if source.approle_role_id_credential_id:
        key = (*companions.key(APPROLE_ROLE), *companions.key(APPROLE_SECRET))
        role_id, secret_id = companions.token(APPROLE_ROLE), companions.token(APPROLE_SECRET)
        return AppRoleLogin(source.approle_mount, role_id, secret_id, key)
    client = companions.client_certificate(CERT_CLIENT)
    return CertLogin(source.cert_mount, source.cert_role, client, client.key)


async def kv2_current_version(
    client: HashiCorpClient, address: str, ca_pem: bytes | None, login: Login, mount: str, path: str
) -> int:
    """The current version of a KV v2 secret from its metadata (0: it does not exist), deleted versions included:
    the version a check-and-set write must name."""
    where = f"{mount}/{path}"
    status, answer = await _call(client, address, ca_pem, login, "GET", f"{mount}/metadata/{path}", None)
    if status == 404:
        return 0
    if status == 403:
        raise SyncFailure(f.DENIED, f"the external vault denied reading the metadata of {where} (HTTP 403)")
    _check_status(status, f"reading the metadata of {where}")
    try:
        return int(answer["data"]["current_version"])
    except (KeyError, TypeError, ValueError):
        raise SyncFailure(f.ERROR, f"the external vault's metadata of {where} has no current version") from None


async def _call(
    client: HashiCorpClient,
    address: str,
    ca_pem: bytes | None,
    login: Login,
    method: str,
    api_path: str,
    body: bytes | None,
) -> tuple[int, Any]:
    """One authenticated request to ``/v1/<api_path>``; a 403 logs in again once (the cached token may be gone)."""
    session = client._session(address, ca_pem, login.client if isinstance(login, CertLogin) else None)
    url = f"{address}/v1/{urllib.parse.quote(api_path, safe='/')}"
    for attempt in (1, 2):
        token = await client._token(session, address, login, fresh=attempt == 2)
        status, answer = await client._request(
            session, method, url, address, headers={"X-Vault-Token": token}, data=body
        )
        if status != 403 or attempt == 2:
            break
    return status, answer
