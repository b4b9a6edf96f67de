"""The engine's stream against the real vault (the real engine port over mutual TLS, the real EngineStream and
ConfigStore in this process): it syncs what its location should hold and drops what is disabled, wiping secrets;
a revoked engine flushes at once; through a vault restart it keeps what it holds and resumes; a vault gone longer
than max_disconnected is a flush. And the engine-worker process with the vault process: its status endpoints show
ids and versions only, and SIGTERM wipes what it holds. (What only a fake vault can do, stay silent or send a
monitor the engine must reject, is in test_engine_worker.py.)"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import AsyncIterator

import pytest

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import monitors_pb2 as mpb
from tests.conftest import Client, admin_of, with_engine_port
from tests.engine_worker.test_execution_processes import metrics
from tests.helpers import create_req, up
from tests.local_pki import LocalPki
from tests.processes import System, eventually, introspect
from tests.real_engine import QUICK, RealEngine, real_engine, secret_buffer
from tests.vault_service.push.test_push_processes import http_monitor
from vault_service.config import Settings
from vault_service.crypto import Keyring
from vault_service.server import RunningVault, start_vault

LOCATION = "loc-a"
ENGINE = "e1"
PASSWORD = "pw-stream-canary-71c"


async def _location_with_a_monitor(admin: Client) -> tuple[str, mpb.Monitor]:
    await admin.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id=LOCATION)))
    await admin.AddEngine(mpb.AddEngineRequest(location_id=LOCATION, engine_id=ENGINE))
    cred = (await admin.CreateCredential(create_req("pair", up("alice", PASSWORD)))).credential.id
    monitor = (await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=http_monitor(cred)))).monitor
    return cred, monitor


async def _engine_status(admin: Client) -> mpb.Engine:
    (engine,) = (await admin.ListEngines(mpb.ListEnginesRequest(location_id=LOCATION))).engines
    assert isinstance(engine, mpb.Engine)
    return engine


@dataclasses.dataclass
class Holding:
    """A real engine, synced with the push vault, holding one monitor and its credential."""

    engine: RealEngine
    cred: str
    monitor: mpb.Monitor


@pytest.fixture
async def holding(admin_client: Client, push_vault: RunningVault, local_pki: LocalPki) -> AsyncIterator[Holding]:
    cred, monitor = await _location_with_a_monitor(admin_client)
    async with real_engine(push_vault.engine_port, local_pki, LOCATION, ENGINE) as engine:
        await engine.wait_until(engine.stream.synced.is_set)
        yield Holding(engine, cred, monitor)


async def test_the_engine_syncs_what_its_location_holds_and_drops_what_is_disabled(
    admin_client: Client, holding: Holding
) -> None:
    engine, cred, monitor = holding.engine, holding.cred, holding.monitor
    holds = engine.holds()
    assert (list(holds["monitors"]), list(holds["credentials"])) == ([monitor.id], [cred])
    state = engine.stream.state
    assert (state.connected, state.synced, state.reconnects, state.flushes) == (True, True, 0, 0)
    status = await _engine_status(admin_client)  # the vault knows the engine by its certificate's identity
    assert status.connected
    assert list(status.rejected_monitors) == []

    async def acknowledged() -> bool:
        status = await _engine_status(admin_client)
        return status.applied_revision == engine.stream.state.last_applied_revision and status.lag == 0

    await eventually(acknowledged)

    secret = secret_buffer(engine.store.credential(cred))
    await admin_client.SetMonitorEnabled(mpb.SetMonitorEnabledRequest(id=monitor.id, enabled=False))
    await engine.wait_until(lambda: engine.holds() == {"monitors": {}, "credentials": {}})
    assert not any(secret)  # the unreferenced credential was wiped, not just dropped
    assert engine.stream.state.flushes == 0


async def test_a_revoked_engine_flushes_at_once(admin_client: Client, holding: Holding) -> None:
    engine = holding.engine
    secret = secret_buffer(engine.store.credential(holding.cred))
    engine.stream.flushed.clear()  # a fail-safe before the first contact (nothing held then) does not count
    await admin_client.RevokeEngine(mpb.RevokeEngineRequest(location_id=LOCATION, engine_id=ENGINE))
    await engine.wait_until(engine.stream.flushed.is_set)
    assert engine.store.held() == []
    assert not any(secret)


class RestartableVault:
    """A vault that stops and starts again on the same ports (API and engine), as a restarted replica would."""

    def __init__(self, settings: Settings, keyring: Keyring) -> None:
        self.settings = settings
        self.keyring = keyring
        self.running: RunningVault | None = None

    async def start(self) -> RunningVault:
        self.running = await start_vault(self.settings, keyring=self.keyring)
        self.settings = self.settings.model_copy(
            update={
                "listen": f"127.0.0.1:{self.running.port}",
                "engine_listen": f"127.0.0.1:{self.running.engine_port}",
            }
        )
        return self.running

    async def stop(self) -> None:
        """As on SIGTERM: a grace period for in-flight calls, in which the vault ends the engine streams itself."""
        if self.running is not None:
            await self.running.stop(5.0)
            self.running = None


@pytest.fixture
async def restartable(settings: Settings, keyring: Keyring, local_pki: LocalPki) -> AsyncIterator[RestartableVault]:
    vault = RestartableVault(with_engine_port(settings, local_pki), keyring)
    await vault.start()
    try:
        yield vault
    finally:
        await vault.stop()


async def _synced_engine_then_vault_stopped(
    restartable: RestartableVault, admin: Client, engine: RealEngine
) -> tuple[str, bytearray]:
    cred, _ = await _location_with_a_monitor(admin)  # the engine connects as soon as it is registered
    await engine.wait_until(lambda: cred in engine.holds()["credentials"])
    secret = secret_buffer(engine.store.credential(cred))
    engine.stream.flushed.clear()
    await restartable.stop()
    await engine.wait_until(lambda: not engine.stream.state.connected)
    return cred, secret


async def test_through_a_vault_restart_the_engine_keeps_what_it_holds_and_resumes(
    restartable: RestartableVault, local_pki: LocalPki
) -> None:
    assert restartable.running is not None
    port = restartable.running.engine_port
    async with (
        admin_of(restartable.running, local_pki) as admin,
        real_engine(port, local_pki, LOCATION, ENGINE) as engine,
    ):
        cred, secret = await _synced_engine_then_vault_stopped(restartable, admin, engine)
        held = engine.holds()
        assert list(held["credentials"]) == [cred]  # kept through an outage shorter than max_disconnected

        await restartable.start()
        await engine.wait_until(lambda: engine.stream.state.connected and engine.stream.synced.is_set())
        assert engine.stream.state.reconnects >= 1
        assert engine.stream.state.flushes == 0
        assert engine.holds() == held
        assert any(secret)  # the same buffer: never flushed and fetched again

        # the resumed session carries changes on: a new credential version replaces (and wipes) the old one
        await admin.OverwriteCredential(cpb.OverwriteCredentialRequest(id=cred, contents=up("alice", "pw-2-rotated")))
        await engine.wait_until(lambda: engine.holds()["credentials"] != held["credentials"])
        assert list(engine.holds()["credentials"]) == [cred]
        assert not any(secret)


async def test_a_vault_gone_longer_than_max_disconnected_is_a_flush(
    restartable: RestartableVault, local_pki: LocalPki
) -> None:
    assert restartable.running is not None
    port = restartable.running.engine_port
    settings = dataclasses.replace(QUICK, max_disconnected=0.5)
    async with (
        admin_of(restartable.running, local_pki) as admin,
        real_engine(port, local_pki, LOCATION, ENGINE, settings) as engine,
    ):
        cred, secret = await _synced_engine_then_vault_stopped(restartable, admin, engine)
        await engine.wait_until(engine.stream.flushed.is_set)
        assert engine.store.held() == []
        assert not any(secret)
        assert engine.stream.state.flushes >= 1

        await restartable.start()  # back: the engine fetches everything again
        await engine.wait_until(lambda: list(engine.holds()["credentials"]) == [cred])


async def test_the_engine_worker_process_shows_ids_only_and_wipes_on_sigterm(
    system: System, system_admin: Client
) -> None:
    cred, monitor = await _location_with_a_monitor(system_admin)
    worker, status_port = await system.start_worker(LOCATION, ENGINE, "--log-level", "DEBUG")

    async def synced() -> bool:
        return bool((await introspect(status_port))["synced"])

    await eventually(synced)
    info = await introspect(status_port)
    assert info.pop("memory_locked") in (True, False)  # which one: tests/test_memory_guard.py
    assert info.pop("last_applied_revision") > 0
    assert info == {
        "location": LOCATION,
        "engine": ENGINE,
        "connected": True,
        "synced": True,
        # each held object with the revision the engine holds it at and the version the API shows
        "monitors": {monitor.id: {"revision": monitor.revision, "version": monitor.version}},
        "credentials": {cred: {"revision": info["credentials"][cred]["revision"], "version": 1}},
    }
    samples = await metrics(status_port)
    assert samples[("configs_held", (("kind", "monitor"),))] == 1
    assert samples[("configs_held", (("kind", "credential"),))] == 1
    assert samples[("connected", ())] == 1
    assert (samples[("reconnects_total", ())], samples[("flushes_total", ())]) == (0, 0)

    assert await worker.stop(signal.SIGTERM) == 0
    log_text = "".join(worker.lines)
    assert "wiped 2 held monitors and credentials" in log_text
    assert "engine_worker.config_store" in log_text  # DEBUG logging really was on
    assert PASSWORD not in log_text
    assert "alice" not in log_text
