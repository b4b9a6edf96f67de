"""A local HTTPS aiohttp server for the fakes of external services (tests/azure_key_vault_fake.py,
tests/cyberark_ccp_fake.py): loopback, port 0, the tests' server certificate (LocalPki), optionally requiring a client
certificate of a given CA (mutual TLS). It records what it received, for the canary checks."""

from __future__ import annotations

import ssl
from typing import Any

from aiohttp import web

from tests.local_pki import LocalPki


class HttpsFake:
    def __init__(self, pki: LocalPki, *, client_ca_pem: bytes | None = None) -> None:
        self.pki = pki
        self.app = web.Application()
        self.received: list[bytes] = []  # every request's line, headers and body, as sent
        self._client_ca_pem = client_ca_pem
        self._runner: web.AppRunner | None = None
        self.address = ""

    async def record(self, request: web.Request) -> bytes:
        body = await request.read()
        head = f"{request.method} {request.path_qs}\n" + "".join(f"{k}: {v}\n" for k, v in request.headers.items())
        self.received.append(head.encode() + body)
        return body

    async def __aenter__(self) -> HttpsFake:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.pki.server_pem, self.pki.server_key)
        if self._client_ca_pem is not None:
            context.load_verify_locations(cadata=self._client_ca_pem.decode())
            context.verify_mode = ssl.CERT_REQUIRED
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        port = self._runner.addresses[0][1]
        self.address = f"https://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def error_json(status: int, body: object, **headers: str) -> web.Response:
    return web.json_response(body, status=status, headers=headers)
