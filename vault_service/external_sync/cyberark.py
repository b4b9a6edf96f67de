"""CyberArk Central Credential Provider (CCP), as a synchronization needs it: ``GET {base}/AIMWebService/api/Accounts``
with the application id and the account's safe, folder and object as query parameters, over mutual TLS (the client
certificate of a CERTIFICATE credential authenticates the application). The answer's ``UserName`` and ``Content``
(the password) become a USERNAME_PASSWORD credential's contents. CCP has no version: the synchronizer detects a change
by comparing the value read with the stored contents (decrypted in memory), so nothing about the value is stored
besides the encrypted contents. Error bodies (``{"ErrorCode": "APPAP004E", "ErrorMsg": ...}``) are read for their
code only (``APPAP``, ``AIMWS`` or ``CASVL``, three digits and a letter): the message may quote the query."""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

from vault_service.external_sync import failure as f
from vault_service.external_sync import http
from vault_service.external_sync.failure import SyncFailure
from vault_service.external_sync.provider import CA_FIELD, Companions, Fetched
from vault_service.models import ExternalSource

CLIENT_CERTIFICATE = "external_source.cyberark.client_certificate_credential_id"
# CCP's codes: APPAP (the provider), AIMWS (its web service), CASVL (validation); three digits and a severity.
_ERROR_CODE = re.compile(r"^(APPAP|AIMWS|CASVL)\d{3}[EWI]$")
VAULT_UNREACHABLE = "APPAP007E"  # "Connection to the Vault has failed", answered with HTTP 400


def _code(body: Any) -> str:
    code = body.get("ErrorCode") if isinstance(body, dict) else None
    return f", {code}" if isinstance(code, str) and _ERROR_CODE.match(code) else ""


class CyberArkClient:
    """Reads CCP accounts for any number of sources; ``close`` ends its sessions."""

    def __init__(self, timeout_seconds: float = 10.0) -> None:
        self._sessions = http.Sessions(timeout_seconds)

    async def close(self) -> None:
        await self._sessions.close()

    async def fetch(self, source: ExternalSource, companions: Companions) -> Fetched:
        client = companions.client_certificate(CLIENT_CERTIFICATE)
        session = self._sessions.get(source.address, companions.ca_pem(CA_FIELD), client)
        query = {"AppID": source.cyberark_app_id, "Safe": source.cyberark_safe, "Object": source.cyberark_object}
        if source.cyberark_folder:
            query["Folder"] = source.cyberark_folder
        url = f"{source.address}/AIMWebService/api/Accounts?{urllib.parse.urlencode(query)}"
        status, body = await http.request(session, "GET", url, source.address)
        where = f"safe {source.cyberark_safe!r}, object {source.cyberark_object!r}"
        code = _code(body)
        if status in (401, 403):
            raise SyncFailure(f.DENIED, f"CyberArk CCP denied the application reading {where} (HTTP {status}{code})")
        if status == 404:
            raise SyncFailure(f.NOT_FOUND, f"CyberArk CCP found no account {where} (HTTP 404{code})")
        if status == 400 and code == f", {VAULT_UNREACHABLE}":
            raise SyncFailure(f.UNREACHABLE, f"CyberArk CCP cannot reach its Vault (HTTP 400{code})")
        if status == 400:
            raise SyncFailure(f.ERROR, f"CyberArk CCP refused the query for {where} as invalid (HTTP 400{code})")
        if status in (500, 503):
            raise SyncFailure(f.SEALED, f"CyberArk CCP is not available (HTTP {status}{code})")
        if status != 200:
            raise SyncFailure(f.ERROR, f"reading {where}: CyberArk CCP answered HTTP {status}{code}")
        if not isinstance(body, dict):
            raise SyncFailure(f.ERROR, f"CyberArk CCP's answer for {where} is not an account")
        return Fetched(body, "", where)
