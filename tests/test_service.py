"""The service surface: health, reflection, configuration errors, graceful shutdown, fail-closed audit, `dev`."""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import signal
import sys

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import identity_pb2 as ipb
from credvault.v1 import monitors_pb2 as mpb
from tests.conftest import Client
from tests.helpers import APP, create_req, expect_code, up
from vault_service.config import load_settings
from vault_service.errors import ConfigurationError
from vault_service.server import RunningVault


async def test_health_and_reflection(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "credvault.v1.CredentialsService"):
        resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def one() -> reflection_pb2.ServerReflectionRequest:
        return reflection_pb2.ServerReflectionRequest(list_services="")

    names: set[str] = set()
    async for resp in stub.ServerReflectionInfo(_single(one())):
        names |= {s.name for s in resp.list_services_response.service}
    assert {"credvault.v1.CredentialsService", "credvault.v1.IdentityService", "credvault.v1.TokensService"} <= names


async def _single(item: object) -> object:  # an async iterator of one request
    yield await item  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"listen": "nonsense"}, "listen (CREDVAULT_LISTEN / --listen): Value error, must be host:port"),
        ({"tls_cert_file": "/x.pem"}, "set both tls_cert_file and tls_key_file"),
        ({}, "no TLS configured"),
        ({"allow_plaintext": True, "max_message_bytes": 1}, "max_message_bytes"),
        ({"allow_plaintext": True, "log_level": "LOUD"}, "log_level"),
    ],
)
def test_configuration_errors_name_the_setting(
    overrides: dict[str, object], fragment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in list(os.environ):
        if key.startswith("CREDVAULT_"):
            monkeypatch.delenv(key)
    with pytest.raises(ConfigurationError) as info:
        load_settings(**overrides)
    assert fragment in str(info.value)


def test_configuration_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDVAULT_LISTEN", "0.0.0.0:6000")
    monkeypatch.setenv("CREDVAULT_ALLOW_PLAINTEXT", "true")
    settings = load_settings()
    assert settings.listen == "0.0.0.0:6000"
    assert load_settings(listen="127.0.0.1:7000").listen == "127.0.0.1:7000"  # flags win


async def test_plaintext_client_cannot_talk_to_tls_server(vault: RunningVault) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{vault.port}") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def test_graceful_shutdown_lets_in_flight_rpcs_finish(
    admin: Client, vault: RunningVault, database_url: str
) -> None:
    cred = (await admin.CreateCredential(create_req())).credential
    blocker = await asyncpg.connect(database_url)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("SELECT 1 FROM credentials WHERE id = $1 FOR UPDATE", cred.id)
        in_flight = asyncio.ensure_future(
            admin.OverwriteCredential(cpb.OverwriteCredentialRequest(id=cred.id, contents=up("u", "new")))
        )
        await asyncio.sleep(0.3)  # the overwrite now waits on the row lock
        assert not in_flight.done()
        stopping = asyncio.ensure_future(vault.server.stop(10))
        await asyncio.sleep(0.2)
        await expect_code(admin.GetCredential(cpb.GetCredentialRequest(id=cred.id)), grpc.StatusCode.UNAVAILABLE)
        await tx.rollback()
        resp = await in_flight
        assert resp.credential.version == 2
        await stopping
    finally:
        await blocker.close()


async def test_details_read_fails_closed_without_audit(admin: Client, vault: RunningVault) -> None:
    req = create_req(contents=up("u", "fail-closed-secret"), scopes=[APP])
    req.app_engine.allow_contextless_access = True
    cred = (await admin.CreateCredential(req)).credential
    async with vault.store.transaction() as tx:
        await tx.conn.execute(
            "CREATE FUNCTION no_details_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " IF NEW.action = 'credential.read_details' THEN RAISE EXCEPTION 'audit store full'; END IF;"
            " RETURN NEW; END $$;"
            "CREATE TRIGGER no_details_audit BEFORE INSERT ON audit_log"
            " FOR EACH ROW EXECUTE FUNCTION no_details_audit()"
        )
    err = await expect_code(
        admin.GetCredentialDetails(cpb.GetCredentialDetailsRequest(id=cred.id)), grpc.StatusCode.INTERNAL
    )
    assert "fail-closed-secret" not in (err.details() or "")


async def test_audit_rows_for_changes_commit_with_them(admin: Client, vault: RunningVault) -> None:
    cred = (await admin.CreateCredential(create_req())).credential
    await admin.DeleteCredential(cpb.DeleteCredentialRequest(id=cred.id))
    async with vault.store.read() as tx:
        rows = await tx.list_audit()
        actions = [(r["action"], r["target"], r["actor"]) for r in rows]
        assert ("credential.create", cred.id, "admin") in actions
        assert ("credential.delete", cred.id, "admin") in actions
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await tx.conn.execute("DELETE FROM audit_log")


async def test_dev_command_runs_everything(tmp_path: pathlib.Path) -> None:
    """The README's first command: embedded PostgreSQL, dev KEK, admin token, API; SIGTERM stops it cleanly."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDVAULT_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from vault_service.cli import main; main()",
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
