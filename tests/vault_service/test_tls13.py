"""TLS 1.3 only (seed 000: "Access to the data is encrypted using TLS 1.3"): a real `credvault serve` process refuses a
TLS 1.2 handshake and completes a TLS 1.3 one, on the API port and on the engine port, as `openssl s_client` sees
it."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from tests.conftest import Client
from tests.processes import System

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


async def handshake(port: int, version: str, *client_auth: str) -> tuple[int, str]:
    """(exit status, output) of an openssl s_client handshake with only ``version`` ("tls1_2" or "tls1_3")."""
    proc = await asyncio.create_subprocess_exec(
        "openssl",
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        f"-{version}",
        "-alpn",
        "h2",
        *client_auth,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(errors="replace")


async def test_both_ports_speak_tls13_only(system: System, system_admin: Client) -> None:
    cert, key = system.pki.write("engine-loc-e1", system.pki.engine("loc", "e1"))
    engine_auth = ("-cert", str(cert), "-key", str(key))
    for port, auth in ((system.api_port, ()), (system.engine_port, engine_auth)):
        status, out = await handshake(port, "tls1_3", *auth)
        assert "New, TLSv1.3, Cipher is TLS_" in out, out
        status, out = await handshake(port, "tls1_2", *auth)
        assert status != 0, out
        assert "Cipher is (NONE)" in out, out
