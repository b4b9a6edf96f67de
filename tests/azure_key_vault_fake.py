"""Azure Key Vault and its Entra ID authority, faked after the published REST contract (Azure cannot run here): two
local HTTPS servers.

- Authority: ``POST /{tenant}/oauth2/v2.0/token`` (form: ``grant_type=client_credentials``, ``client_id``,
  ``client_secret``, ``scope=https://vault.azure.net/.default``) answers ``{"token_type": "Bearer", "expires_in",
  "ext_expires_in", "access_token"}``; errors as Entra ID words them: ``{"error": "invalid_client" |
  "unauthorized_client" | "invalid_request" | "invalid_scope", "error_description": "AADSTS...", "error_codes"}``
  (an unknown tenant 400, an unknown client 400, a wrong secret 401).
- Vault: ``GET /secrets/{name}[/{version}]?api-version=7.4`` with ``Authorization: Bearer``: ``{"value", "id":
  "{vault}/secrets/{name}/{version}", "attributes"}``; a missing or bad api-version 400 ``BadParameter``; no token or
  an unknown or expired one 401 ``Unauthorized`` with the ``WWW-Authenticate: Bearer authorization=..., resource=...``
  challenge; a secret the client may not read 403 ``Forbidden`` (inner ``AccessDenied``); a missing one 404
  ``SecretNotFound``; error bodies ``{"error": {"code", "message"}}``.

Tokens are short-lived when ``expires_in`` says so, and refused once expired: the tests check the client renews."""

from __future__ import annotations

import dataclasses
import secrets
import time

from aiohttp import web

from tests.https_fake import HttpsFake, error_json
from tests.local_pki import LocalPki

SCOPE = "https://vault.azure.net/.default"
API_VERSION = "7.4"


@dataclasses.dataclass
class Registration:
    tenant: str
    client_id: str
    client_secret: str


class AzureKeyVaultFake:
    def __init__(self, pki: LocalPki, registration: Registration) -> None:
        self.registration = registration
        self.authority = HttpsFake(pki)
        self.vault = HttpsFake(pki)
        self.authority.app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        self.vault.app.router.add_get("/secrets/{name}", self._secret)
        self.vault.app.router.add_get("/secrets/{name}/{version}", self._secret)
        self.secrets: dict[str, list[tuple[str, str]]] = {}  # name -> [(version, value)], latest last
        self.denied: set[str] = set()
        self.expires_in = 3599
        self.token_requests = 0
        self.expired_uses = 0  # requests with a token past its expiry
        self.issued: dict[str, float] = {}  # access token -> expiry (time.monotonic())
        # At each token request: how long the latest token issued before it had still to live (< 0: expired).
        self.left_at_request: list[float] = []
        self._latest_expiry: float | None = None
        self.answer_override: web.Response | None = None  # the next secret reads answer this instead

    async def __aenter__(self) -> AzureKeyVaultFake:
        await self.authority.__aenter__()
        await self.vault.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.vault.__aexit__(*exc)
        await self.authority.__aexit__(*exc)

    @property
    def received(self) -> list[bytes]:
        return self.authority.received + self.vault.received

    def set_secret(self, name: str, value: str) -> str:
        version = secrets.token_hex(16)
        self.secrets.setdefault(name, []).append((version, value))
        return version

    def expire_all_tokens(self) -> None:
        """Every token issued so far stops working (as if its lifetime ended or it was revoked)."""
        self.issued = dict.fromkeys(self.issued, 0.0)
        self._latest_expiry = None

    # --- the authority ---

    async def _token(self, request: web.Request) -> web.Response:
        await self.authority.record(request)
        self.token_requests += 1
        form = await request.post()
        reg = self.registration
        if request.match_info["tenant"] != reg.tenant:
            return _oauth_error(400, "invalid_request", 90002, "Tenant not found.")
        if form.get("grant_type") != "client_credentials" or form.get("scope") != SCOPE:
            return _oauth_error(400, "invalid_scope", 1002012, "The provided value for scope is not valid.")
        if form.get("client_id") != reg.client_id:
            return _oauth_error(400, "unauthorized_client", 700016, "Application was not found in the directory.")
        if form.get("client_secret") != reg.client_secret:
            return _oauth_error(401, "invalid_client", 7000215, "Invalid client secret provided.")
        token = secrets.token_urlsafe(48)
        now = time.monotonic()
        if self._latest_expiry is not None:
            self.left_at_request.append(self._latest_expiry - now)
        self.issued[token] = self._latest_expiry = now + self.expires_in
        body = {"token_type": "Bearer", "expires_in": self.expires_in, "ext_expires_in": self.expires_in}
        return web.json_response({**body, "access_token": token})

    # --- the vault ---

    def _challenge(self, code: str, message: str) -> web.Response:
        challenge = (
            f'Bearer authorization="{self.authority.address}/{self.registration.tenant}", '
            'resource="https://vault.azure.net"'
        )
        return error_json(401, {"error": {"code": code, "message": message}}, **{"WWW-Authenticate": challenge})

    async def _secret(self, request: web.Request) -> web.Response:
        await self.vault.record(request)
        if request.query.get("api-version") != API_VERSION:
            message = "The request URI contains an invalid or missing api-version."
            return error_json(400, {"error": {"code": "BadParameter", "message": message}})
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return self._challenge("Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.")
        expiry = self.issued.get(auth.removeprefix("Bearer "))
        if expiry is None:
            return self._challenge("Unauthorized", "AKV10032: Invalid issuer.")
        if time.monotonic() >= expiry:
            self.expired_uses += 1
            return self._challenge("Unauthorized", "AKV10022: Invalid audience or the token expired.")
        if self.answer_override is not None:
            return self.answer_override
        name = request.match_info["name"]
        if name in self.denied:
            message = f"The user, group or application does not have secrets get permission on key vault for {name}."
            body = {"error": {"code": "Forbidden", "message": message, "innererror": {"code": "AccessDenied"}}}
            return error_json(403, body)
        versions = dict(self.secrets.get(name, []))
        wanted = request.match_info.get("version") or (self.secrets[name][-1][0] if name in self.secrets else "")
        if wanted not in versions:
            message = f"A secret with (name/id) {name} was not found in this key vault."
            return error_json(404, {"error": {"code": "SecretNotFound", "message": message}})
        attributes = {"enabled": True, "created": 1493938410, "updated": 1493938410, "recoveryLevel": "Recoverable"}
        return web.json_response(
            {"value": versions[wanted], "id": f"{self.vault.address}/secrets/{name}/{wanted}", "attributes": attributes}
        )


def _oauth_error(status: int, error: str, aadsts: int, text: str) -> web.Response:
    body = {"error": error, "error_description": f"AADSTS{aadsts}: {text}", "error_codes": [aadsts]}
    return error_json(status, body)
