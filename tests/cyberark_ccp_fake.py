"""CyberArk Central Credential Provider (CCP), faked after its published REST contract (CyberArk cannot run here):
one local HTTPS server requiring a TLS client certificate of a given CA (the CCP web service under IIS with "require
client certificates"; a connection without one, or with one of another CA, fails the handshake).

- ``GET /AIMWebService/api/Accounts?AppID=...&Safe=...&Folder=...&Object=...`` (Folder optional, default ``Root``)
  answers the account: ``{"Content": password, "UserName", "Address", "Safe", "Folder", "Name", "PolicyID",
  "PasswordChangeInProcess", ...}``.
- Errors are ``{"ErrorCode", "ErrorMsg"}`` with CCP's codes and statuses: no AppID or no query 400 ``AIMWS031E``
  (invalid query format); a request the CCP cannot relay because its Vault is unreachable 400 ``APPAP007E``; an
  application not defined, or whose authentication (here: the allowed client certificate) fails, 403
  ``APPAP306E``; no account matching the query, or one the application may not read, 404 ``APPAP004E`` (CCP words
  both the same way, "Password object matching query [...] was not found"); the provider unavailable 500
  ``APPAP282E``. The error messages quote the query, as CCP's do.

``received`` keeps what arrived (for the canary checks); the allowed certificate of an application is compared by its
SHA-256 fingerprint (CCP's "allowed machines"/certificate serial checks, reduced to one rule)."""

from __future__ import annotations

import dataclasses
import hashlib
import ssl

from aiohttp import web

from tests.https_fake import HttpsFake, error_json
from tests.local_pki import LocalPki

PATH = "/AIMWebService/api/Accounts"


@dataclasses.dataclass
class Account:
    username: str
    password: str
    address: str = "db.example"


class CyberArkCcpFake:
    def __init__(self, pki: LocalPki, client_ca_pem: bytes) -> None:
        self.server = HttpsFake(pki, client_ca_pem=client_ca_pem)
        self.server.app.router.add_get(PATH, self._accounts)
        self.apps: dict[str, str] = {}  # AppID -> SHA-256 of the DER client certificate it must present
        self.accounts: dict[tuple[str, str, str], Account] = {}  # (safe, folder, object) -> account
        self.readable: dict[str, set[str]] = {}  # AppID -> the safes it may read
        self.vault_unreachable = False
        self.provider_down = False
        self.requests = 0
        self.answer_override: web.Response | None = None  # the next reads of an allowed application answer this

    async def __aenter__(self) -> CyberArkCcpFake:
        await self.server.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.__aexit__(*exc)

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def received(self) -> list[bytes]:
        return self.server.received

    def allow(self, app_id: str, certificate_der: bytes, *safes: str) -> None:
        self.apps[app_id] = hashlib.sha256(certificate_der).hexdigest()
        self.readable.setdefault(app_id, set()).update(safes)

    def set_account(self, safe: str, name: str, account: Account, folder: str = "Root") -> None:
        self.accounts[(safe, folder, name)] = account

    async def _accounts(self, request: web.Request) -> web.Response:
        await self.server.record(request)
        self.requests += 1
        q = request.query
        app_id, safe, folder, name = q.get("AppID", ""), q.get("Safe", ""), q.get("Folder", "Root"), q.get("Object", "")
        if not app_id or not (safe or name):
            return error(400, "AIMWS031E", "Invalid query format: AppID and a query are required.")
        query = f"Safe={safe};Folder={folder};Object={name}"
        if self.provider_down:
            return error(500, "APPAP282E", "The Credential Provider is not available; retry later.")
        if self.vault_unreachable:
            return error(400, "APPAP007E", "Connection to the Vault has failed. (Diagnostic Info: 1)")
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = ssl_object.getpeercert(binary_form=True) if isinstance(ssl_object, ssl.SSLObject) else None
        wanted = self.apps.get(app_id)
        if wanted is None or der is None or hashlib.sha256(der).hexdigest() != wanted:
            return error(403, "APPAP306E", f"Authentication check for application [{app_id}] failed.")
        if self.answer_override is not None:
            return self.answer_override
        account = self.accounts.get((safe, folder, name))
        if account is None or safe not in self.readable.get(app_id, set()):
            message = (
                f"Password object matching query [{query}] was not found (Diagnostic Info: 5). Please check that "
                "there is a password object that answers your query in the Vault and that both the Provider and the "
                "application user have the appropriate permissions needed in order to use the password."
            )
            return error(404, "APPAP004E", message)
        return web.json_response(
            {
                "Content": account.password,
                "UserName": account.username,
                "Address": account.address,
                "Safe": safe,
                "Folder": folder,
                "Name": name,
                "PolicyID": "UnixSSH",
                "PasswordChangeInProcess": "False",
                "DeviceType": "Operating System",
                "CreationMethod": "PVWA",
            }
        )


def error(status: int, code: str, message: str) -> web.Response:
    return error_json(status, {"ErrorCode": code, "ErrorMsg": message})
