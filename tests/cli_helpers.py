"""Running the `credvault` console script in a subprocess, as the CLI tests do."""

from __future__ import annotations

import asyncio
import os
import pathlib
import stat
import sys
from dataclasses import dataclass

from credvault.v1 import monitors_pb2 as mpb
from tests.conftest import Client
from tests.local_pki import LocalPki
from tests.processes import VAULT_MODULE_ARGV
from vault_service.server import RunningVault

CLI = [sys.executable, *VAULT_MODULE_ARGV]


@dataclass(frozen=True)
class Result:
    rc: int
    out: str
    err: str


async def run(env: dict[str, str], *args: str, stdin: bytes | None = None) -> Result:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout=30)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def assert_contains(text: str, *parts: str) -> None:
    missing = [p for p in parts if p not in text]
    assert not missing, f"{missing} not in {text!r}"


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CREDVAULT_")}


def cli_env(vault: RunningVault, local_pki: LocalPki, admin: Client, tmp_path: pathlib.Path) -> dict[str, str]:
    """The environment of a `credvault` run against ``vault`` as ``admin``, verifying the server with the tests' PKI."""
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(local_pki.server_ca.cert_pem)
    assert admin.token is not None
    return {
        **base_env(),
        "CREDVAULT_SERVER": f"localhost:{vault.port}",
        "CREDVAULT_CA_FILE": str(ca_file),
        "CREDVAULT_TOKEN": admin.token,
    }


def mode(path: pathlib.Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def basic_auth_monitor(credential_id: str, location: str = "loc-a") -> mpb.Monitor:
    """An enabled one-minute HTTP monitor of one GET request, with basic authentication from ``credential_id``."""
    definition = mpb.Monitor(
        name="m",
        frequency_minutes=1,
        location_ids=[location],
        enabled=True,
        http=mpb.HttpScript(requests=[mpb.HttpRequest(method="GET", url="https://shop.example/")]),
    )
    definition.http.requests[0].authentication.basic_credential_id = credential_id
    return definition
