"""The service surface: health, reflection, configuration errors, graceful shutdown, fail-closed audit."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import monitors_pb2 as mpb
from tests.conftest import Client
from tests.helpers import APP, create_req, expect_code, up
from tests.local_pki import LocalPki
from tests.processes import System, free_port
from tests.push_helpers import EngineClient
from tests.vault_service.test_access_rules import outcome
from vault_service.bootstrap import bootstrap_admin
from vault_service.config import load_settings
from vault_service.crypto import Keyring
from vault_service.errors import ConfigurationError
from vault_service.server import RunningVault
from vault_service.storage.pool import Store


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
        ({"allow_plaintext": True, "log_format": "xml"}, "log_format (CREDVAULT_LOG_FORMAT / --log-format)"),
        ({"allow_plaintext": True, "metrics_listen": "9090"}, "metrics_listen (CREDVAULT_METRICS_LISTEN"),
        ({"allow_plaintext": True, "health_listen": "x:99999"}, "health_listen (CREDVAULT_HEALTH_LISTEN"),
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
    monkeypatch.setenv("CREDVAULT_METRICS_LISTEN", "0.0.0.0:9090")
    monkeypatch.setenv("CREDVAULT_HEALTH_LISTEN", "[::]:8081")
    monkeypatch.setenv("CREDVAULT_LOG_FORMAT", "json")
    settings = load_settings()
    assert (settings.metrics_listen, settings.health_listen, settings.log_format) == (
        "0.0.0.0:9090",
        "[::]:8081",
        "json",
    )
    assert load_settings(log_format="text").log_format == "text"
    assert settings.listen == "0.0.0.0:6000"
    assert load_settings(listen="127.0.0.1:7000").listen == "127.0.0.1:7000"  # flags win


async def test_plaintext_client_cannot_talk_to_tls_server(vault: RunningVault) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{vault.port}") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def _waiting_on_a_lock(conn: asyncpg.Connection) -> None:
    """Until another session of this database waits on a lock (bounded)."""
    for _ in range(300):
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        if waiting:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the call never waited on the lock")


async def _health_status(port: int) -> int | None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.aio.AioRpcError:
            return None
        return int(resp.status)


async def test_sigterm_drains_in_flight_calls_and_streams_then_exits_0(
    database_url: str, keyring: Keyring, tmp_path: pathlib.Path
) -> None:
    """A real `credvault serve` process: SIGTERM -> health NOT_SERVING, new calls refused, the engine stream ended
    (UNAVAILABLE: reconnect), the in-flight call completes, exit status 0 long before the grace period ends."""
    pki = LocalPki.make(tmp_path)
    store = await Store.connect(database_url, min_size=1, max_size=2)
    try:
        issued = await bootstrap_admin(store, "admin")
    finally:
        await store.close()
    system = System(pki, database_url, keyring)
    health_port = free_port()
    extra = {"CREDVAULT_HEALTH_LISTEN": f"127.0.0.1:{health_port}", "CREDVAULT_SHUTDOWN_GRACE_SECONDS": "300"}
    blocker = await asyncpg.connect(database_url)
    engine: EngineClient | None = None
    creds = grpc.ssl_channel_credentials(root_certificates=pki.server_ca.cert_pem)
    try:
        vault = await system.start_vault(**extra, CREDVAULT_LOG_FORMAT="json")
        assert await _health_status(health_port) == health_pb2.HealthCheckResponse.SERVING
        async with grpc.aio.secure_channel(f"localhost:{system.api_port}", creds) as ch:
            admin = Client(ch, issued.token, "admin")
            await admin.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id="loc-a")))
            await admin.AddEngine(mpb.AddEngineRequest(location_id="loc-a", engine_id="e1"))
            engine = EngineClient(system.engine_port, pki.server_ca.cert_pem, pki.engine("loc-a", "e1"))
            engine.start("loc-a", "e1")
            await engine.wait_until(lambda: engine is not None and (engine.synced.is_set() or engine.error is not None))
            assert engine.error is None
            cred = (await admin.CreateCredential(create_req())).credential

            # an in-flight call: the overwrite waits on a row lock held here
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute("SELECT 1 FROM credentials WHERE id = $1 FOR UPDATE", cred.id)
            contents = up("u", "new")
            in_flight = asyncio.ensure_future(
                admin.OverwriteCredential(cpb.OverwriteCredentialRequest(id=cred.id, contents=contents))
            )
            await _waiting_on_a_lock(blocker)

            vault.proc.send_signal(signal.SIGTERM)
            for _ in range(300):  # draining: the health port says NOT_SERVING ...
                if await _health_status(health_port) == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the health port never reported NOT_SERVING")
            for _ in range(300):  # ... new calls are refused ...
                code = await outcome(admin.GetCredential(cpb.GetCredentialRequest(id=cred.id)))
                if code == grpc.StatusCode.UNAVAILABLE:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("new calls were still accepted")
            # ... the engine stream was ended, to reconnect elsewhere ...
            await engine.wait_until(lambda: engine is not None and engine.error is not None)
            assert engine.error is not None
            assert engine.error.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in (engine.error.details() or "")
            # ... and the in-flight call completes once its lock is free
            assert not in_flight.done()
            assert vault.proc.returncode is None
            await tx.rollback()
            assert (await in_flight).credential.version == 2
        assert await vault.stop() == 0  # exits by itself: stop() only waits (SIGTERM was sent already)
    finally:
        await blocker.close()
        if engine is not None:
            await engine.close()
        await system.stop_all()
    records = [json.loads(line) for line in vault.lines]
    assert any("draining" in r["message"] for r in records)
    assert not [r for r in records if r["level"] in ("ERROR", "CRITICAL")]


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
    async with vault.store.autocommit() as tx:
        rows = await tx.list_audit()
        actions = [(r["action"], r["target"], r["actor"]) for r in rows]
        assert ("credential.create", cred.id, "admin") in actions
        assert ("credential.delete", cred.id, "admin") in actions
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await tx.conn.execute("DELETE FROM audit_log")
