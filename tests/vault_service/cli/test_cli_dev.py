"""`credvault dev`: everything on one machine, and the development PKI it makes."""

from __future__ import annotations

import asyncio
import pathlib
import re
import signal

import grpc
import pytest
from cryptography import x509

from credvault.v1 import identity_pb2 as ipb
from credvault.v1 import monitors_pb2 as mpb
from tests.cli_helpers import CLI, base_env, mode
from tests.conftest import Client
from vault_service.cli.dev import ensure_dev_pki


async def test_dev_command_runs_everything(tmp_path: pathlib.Path) -> None:
    """The README's first command: embedded PostgreSQL, dev KEK, admin token, API; SIGTERM stops it cleanly."""
    env = base_env()
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "dev",
        "--data-dir",
        str(tmp_path / "dev"),
        "--listen",
        "127.0.0.1:0",
        "--engine-listen",
        "127.0.0.1:0",
        "--worker-status-listen",
        "127.0.0.1:0",
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stderr is not None
    try:
        port = None
        seen = []
        while port is None:
            line = (await asyncio.wait_for(proc.stderr.readline(), 120)).decode()
            seen.append(line)
            assert line, "".join(seen)
            m = re.search(r"API:\s+127\.0\.0\.1:(\d+)", line)
            port = int(m.group(1)) if m else None
        token = (tmp_path / "dev" / "admin-token").read_text().strip()
        assert (tmp_path / "dev" / "keyring.json").stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "dev" / "admin-token").stat().st_mode & 0o777 == 0o600
        assert token not in "".join(seen)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            client = Client(ch, token)
            me = await client.GetCurrentUser(ipb.GetCurrentUserRequest())
            assert me.user.username == "admin"

            # the dev engine worker of location 'local' connects over mutual TLS
            async def worker_connected() -> None:
                while True:
                    engines = (await client.ListEngines(mpb.ListEnginesRequest(location_id="local"))).engines
                    if engines and engines[0].connected:
                        return
                    await asyncio.sleep(0.1)

            await asyncio.wait_for(worker_connected(), 60)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_ensure_dev_pki(tmp_path: pathlib.Path) -> None:
    dev = ensure_dev_pki(tmp_path / "dev")
    names = sorted(p.name for p in dev.directory.iterdir())
    assert names == ["engine-ca.key", "engine-ca.pem", "server-ca.key", "server-ca.pem", "server.key", "server.pem"]
    assert all(mode(dev.directory / n) == 0o600 for n in names if n.endswith(".key"))
    contents = {n: (dev.directory / n).read_bytes() for n in names}
    again = ensure_dev_pki(tmp_path / "dev")
    assert again == dev
    assert {n: (dev.directory / n).read_bytes() for n in names} == contents  # kept, not re-made
    (dev.directory / "server.pem").unlink()
    ensure_dev_pki(tmp_path / "dev")
    server = x509.load_pem_x509_certificates(dev.server_cert.read_bytes())[0]
    server.verify_directly_issued_by(x509.load_pem_x509_certificate(dev.server_ca.read_bytes()))
    with pytest.raises(ValueError, match="trust domain"):
        ensure_dev_pki(tmp_path / "dev", trust_domain="other.example")
