"""`credvault dev`: everything on one machine, and the development PKI it makes."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Iterator

import grpc
import pytest
from cryptography import x509

from credvault.v1 import identity_pb2 as ipb
from credvault.v1 import monitors_pb2 as mpb
from tests.cli_helpers import assert_contains, mode
from tests.conftest import Client
from tests.dev_helpers import outside_pytest_tmp, running_dev, start_dev
from vault_service.cli.dev import ensure_dev_pki


@pytest.fixture
def home() -> Iterator[pathlib.Path]:
    with outside_pytest_tmp() as directory:
        yield directory


async def test_dev_command_runs_everything(home: pathlib.Path) -> None:
    """The README's first command: embedded PostgreSQL, dev KEK, admin token, API; SIGTERM stops it cleanly."""
    async with running_dev(home / "dev") as dev:
        token = (home / "dev" / "admin-token").read_text().strip()
        assert (home / "dev" / "keyring.json").stat().st_mode & 0o777 == 0o600
        assert (home / "dev" / "admin-token").stat().st_mode & 0o777 == 0o600
        assert token not in dev.stderr
        async with grpc.aio.insecure_channel(f"127.0.0.1:{dev.api_port}") as ch:
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
        assert await dev.stop() == 0


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


def _process_state(pid: int) -> str | None:
    """The state letter of ``pid`` (Z: a zombie, exited and not reaped), or None once it is gone."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


async def test_second_dev_on_the_same_data_dir_is_refused_and_dev_is_quiet(home: pathlib.Path) -> None:
    """A second `credvault dev` on a data directory in use stops at once naming the first one's PID (the first keeps
    running); dev mode's output holds no library noise, and stopping it leaves no <defunct> PostgreSQL behind."""
    async with running_dev(home / "dev") as first:
        postmaster = int((home / "dev" / "pg" / "postmaster.pid").read_text().split()[0])
        second = await start_dev(home / "dev")
        try:
            rc = await asyncio.wait_for(second.proc.wait(), 60)
        finally:
            await second.kill_all()
        assert second.proc.stderr is not None
        err = await second.proc.stderr.read()
        assert rc == 2, err.decode()
        assert_contains(err.decode(), f"another credvault dev (PID {first.proc.pid}) is running on", "--data-dir")
        assert "Traceback" not in err.decode()
        assert first.proc.returncode is None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{first.api_port}") as ch:
            token = (home / "dev" / "admin-token").read_text().strip()
            me = await Client(ch, token).GetCurrentUser(ipb.GetCurrentUserRequest())
            assert me.user.username == "admin"
        assert await first.stop() == 0
    assert _process_state(postmaster) in (None, "X"), "the embedded PostgreSQL was left unreaped"
    for noise in ("RuntimeDirWarning", "XDG_RUNTIME_DIR", "Running commandline", "fork()", "Traceback", "Warning:"):
        assert noise not in first.stderr, first.stderr
