"""Azure Key Vault, as a synchronization needs it: an Entra ID access token by the OAuth 2.0 client-credentials grant
(``POST {authority}/{tenant}/oauth2/v2.0/token``, scope ``https://vault.azure.net/.default``), kept in this process's
memory until shortly before its ``expires_in`` (and obtained again when Key Vault answers 401), and secret reads
(``GET {vault}/secrets/{name}[/{version}]?api-version=7.4`` with the Bearer token): the secret's ``value``, and the
version at the end of its ``id`` for change detection.

A TOKEN credential reads one secret (``token_key`` names it); a USERNAME_PASSWORD credential reads two, the
username's and the password's (``username_key`` and ``password_key`` name them), as the seed product configures
"username secret" and "password secret". Key Vault's error bodies (``{"error": {"code", "message"}}``) and Entra
ID's (``{"error", "error_description"}``) are read for their code only, named in a message when it is a documented
one: never their text, which may quote what was sent."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
import urllib.parse
from typing import Any

from vault_service.external_sync import failure as f
from vault_service.external_sync import http
from vault_service.external_sync.failure import SyncFailure
from vault_service.external_sync.provider import CA_FIELD, Companions, Fetched
from vault_service.models import ExternalSource

API_VERSION = "7.4"
SCOPE = "https://vault.azure.net/.default"
TENANT = "external_source.azure.tenant_id_credential_id"
CLIENT_ID = "external_source.azure.client_id_credential_id"
CLIENT_SECRET = "external_source.azure.client_secret_credential_id"
# An access token is obtained again this long before it expires (at most a third of its lifetime).
RENEW_BEFORE_SECONDS = 300.0

# A tenant id is a GUID or a verified domain name; it goes into the token URL's path.
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")
# Documented codes, the only server text a message may name.
_OAUTH_ERRORS = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "invalid_scope",
        "temporarily_unavailable",
    }
)
_KEY_VAULT_ERRORS = frozenset(
    {"Unauthorized", "Forbidden", "AccessDenied", "SecretNotFound", "SecretDisabled", "BadParameter", "Throttled"}
)


@dataclasses.dataclass(repr=False)
class _AccessToken:
    value: str
    obtain_again_at: float  # time.monotonic()


def _code(body: Any, known: frozenset[str]) -> str:
    """The documented error code of an error body, or ""."""
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else error
    if isinstance(error, dict):
        inner = error.get("innererror")
        if isinstance(inner, dict) and inner.get("code") in known:
            code = inner["code"]  # e.g. Forbidden / SecretDisabled: the inner one says more
    return f", {code}" if isinstance(code, str) and code in known else ""


class AzureKeyVaultClient:
    """Reads Key Vault secrets for any number of sources; ``close`` ends its sessions and forgets its tokens."""

    def __init__(self, timeout_seconds: float = 10.0) -> None:
        self._sessions = http.Sessions(timeout_seconds)
        self._tokens: dict[tuple[object, ...], _AccessToken] = {}
        self._locks: dict[tuple[object, ...], asyncio.Lock] = {}
        self.token_requests = 0  # Entra ID token requests made (tests and benches read it)

    async def close(self) -> None:
        self._tokens.clear()
        await self._sessions.close()

    def cached_tokens(self) -> int:
        return len(self._tokens)

    async def fetch(self, source: ExternalSource, companions: Companions) -> Fetched:
        names = [source.username_key, source.password_key] if source.username_key else [source.token_key]
        data: dict[str, Any] = {}
        versions = []
        for name in names:
            data[name], version = await self._secret(source, companions, name)
            versions.append(version)
        return Fetched(data, ",".join(versions), f"{source.address} (secret {', '.join(names)})")

    async def _secret(self, source: ExternalSource, companions: Companions, name: str) -> tuple[Any, str]:
        ca_pem = companions.ca_pem(CA_FIELD)
        session = self._sessions.get(source.address, ca_pem)
        version = f"/{source.azure_secret_version}" if source.azure_secret_version else ""
        url = f"{source.address}/secrets/{name}{version}?api-version={API_VERSION}"
        for attempt in (1, 2):
            token = await self._token(source, companions, ca_pem, fresh=attempt == 2)
            status, body = await http.request(
                session, "GET", url, source.address, headers={"Authorization": f"Bearer {token}"}
            )
            if status == 401 and attempt == 1:
                continue  # the token expired or was revoked early: obtain a new one, once
            break
        code = _code(body, _KEY_VAULT_ERRORS)
        if status == 401:
            raise SyncFailure(f.AUTH_FAILED, f"Azure Key Vault refused the access token (HTTP 401{code})")
        if status == 403:
            raise SyncFailure(f.DENIED, f"Azure Key Vault denied reading the secret {name} (HTTP 403{code})")
        if status == 404:
            raise SyncFailure(f.NOT_FOUND, f"no secret {name} in the Azure key vault (HTTP 404{code})")
        if status != 200:
            raise SyncFailure(f.ERROR, f"reading the secret {name}: Azure Key Vault answered HTTP {status}{code}")
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise SyncFailure(f.ERROR, f"Azure Key Vault's answer for the secret {name} is not a secret bundle")
        if "value" not in body:
            raise SyncFailure(f.MISSING_KEY, f"the Azure secret {name} has no value")
        return body["value"], body["id"].rstrip("/").rsplit("/", 1)[-1]

    async def _token(self, source: ExternalSource, companions: Companions, ca_pem: bytes | None, *, fresh: bool) -> str:
        authority = source.azure_authority_host
        key = (authority, *companions.key(TENANT), *companions.key(CLIENT_ID), *companions.key(CLIENT_SECRET))
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # concurrent syncs with one client share one token
            cached = self._tokens.get(key)
            if cached is not None and not fresh and time.monotonic() < cached.obtain_again_at:
                return cached.value
            self._tokens.pop(key, None)
            tenant = companions.token(TENANT)
            if not _TENANT.match(tenant):
                raise SyncFailure(f.COMPANION, "the Azure tenant id credential does not hold a tenant id or domain")
            form = {
                "grant_type": "client_credentials",
                "client_id": companions.token(CLIENT_ID),
                "client_secret": companions.token(CLIENT_SECRET),
                "scope": SCOPE,
            }
            url = f"{authority}/{urllib.parse.quote(tenant, safe='')}/oauth2/v2.0/token"
            self.token_requests += 1
            status, body = await http.request(self._sessions.get(authority, ca_pem), "POST", url, authority, data=form)
            self._tokens[key] = _access_token(status, body)
            return self._tokens[key].value


def _access_token(status: int, body: Any) -> _AccessToken:
    code = _code(body, _OAUTH_ERRORS)
    if status in (400, 401, 403):
        raise SyncFailure(f.AUTH_FAILED, f"Entra ID refused the client-credentials token request (HTTP {status}{code})")
    if status != 200:
        raise SyncFailure(f.ERROR, f"the Entra ID token request: HTTP {status}{code}")
    try:
        value, lifetime = str(body["access_token"]), float(body["expires_in"])
    except (KeyError, TypeError, ValueError):
        raise SyncFailure(f.ERROR, "Entra ID's token answer has no access token and lifetime") from None
    reuse = max(0.0, lifetime - min(RENEW_BEFORE_SECONDS, lifetime / 3))
    return _AccessToken(value, time.monotonic() + reuse)
