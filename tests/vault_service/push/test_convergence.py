"""Engines converge to exactly what they should hold: a location state's step is all-or-nothing across a failed
database read, a notification during a catch-up is not lost, a state whose follower lost the database is rebuilt,
and anti-entropy repairs an engine whose memory was corrupted. The engine side is the real one (EngineStream and
ConfigStore in this process, over mutual TLS to the real engine port)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest

from credvault.v1 import engine_pb2 as epb
from credvault.v1 import monitors_pb2 as mpb
from tests.conftest import Client, Connect
from tests.helpers import create_req, up
from tests.local_pki import LocalPki
from tests.real_engine import RealEngine, real_engine
from vault_service.crypto import Keyring
from vault_service.errors import Unavailable
from vault_service.push import stream as stream_module
from vault_service.push.location_state import LocationState
from vault_service.server import RunningVault
from vault_service.storage.queries import Queries

LOCATION = "loc-a"


def http_monitor(cred_id: str, name: str = "m") -> mpb.Monitor:
    req = mpb.HttpRequest(method="GET", url="https://shop.example/")
    req.authentication.basic_credential_id = cred_id
    return mpb.Monitor(
        name=name, frequency_minutes=60, location_ids=[LOCATION], enabled=True, http=mpb.HttpScript(requests=[req])
    )


async def setup_location(admin: Client) -> None:
    await admin.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id=LOCATION)))
    await admin.AddEngine(mpb.AddEngineRequest(location_id=LOCATION, engine_id="e1"))


async def create_monitor(admin: Client, cred_id: str, name: str = "m") -> mpb.Monitor:
    created: mpb.Monitor = (
        await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=http_monitor(cred_id, name)))
    ).monitor
    return created


@pytest.fixture
async def engine(push_vault: RunningVault, local_pki: LocalPki) -> AsyncIterator[RealEngine]:
    async with real_engine(push_vault.engine_port, local_pki, LOCATION, "e1") as running:
        yield running


async def expected_holdings(vault: RunningVault) -> dict[str, dict[str, int]]:
    """What the engine should hold, from the database: enabled monitors of the location, the credentials they use,
    each at its revision."""
    async with vault.store.autocommit() as tx:
        monitors = await tx.enabled_monitors_in(LOCATION)
        creds = await tx.credentials_sealed(sorted({c for m in monitors for c in m.credential_ids}))
    return {
        "monitors": {m.id: m.revision for m in sorted(monitors, key=lambda m: m.id)},
        "credentials": {cid: version for cid, (_, _, version) in sorted(creds.items())},
    }


async def engine_holding_one_monitor(admin: Client, engine: RealEngine) -> str:
    """Sets up the location with one monitor, held by the engine; returns the id of the credential it uses."""
    await setup_location(admin)
    cred: str = (await admin.CreateCredential(create_req("pair", up("alice", "pw")))).credential.id
    first = await create_monitor(admin, cred, "first")
    await engine.wait_until(lambda: first.id in engine.holds()["monitors"])
    return cred


# --- all-or-nothing steps -----------------------------------------------------------------------------------------


def fail_monitor_reads_once(monkeypatch: pytest.MonkeyPatch) -> list[Exception]:
    """The next read of monitors by id fails as a killed session does; returns what is left to raise (empty once
    it has)."""
    real = Queries.monitors_by_id
    failures: list[Exception] = [
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
    ]

    async def failing_once(self: Queries, monitor_ids: list[str]) -> dict[str, mpb.Monitor]:
        if failures and monitor_ids:
            raise failures.pop()
        return await real(self, monitor_ids)

    monkeypatch.setattr(Queries, "monitors_by_id", failing_once)
    return failures


async def test_a_failed_read_leaves_the_state_as_it_was_and_the_change_applies_again(
    admin_client: Client, push_vault: RunningVault, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    await setup_location(admin_client)
    cred = (await admin_client.CreateCredential(create_req("pair", up("alice", "pw")))).credential.id
    state = LocationState(LOCATION, keyring)
    await state.load(push_vault.store)
    before = state.revision
    m = await create_monitor(admin_client, cred)
    async with push_vault.store.autocommit() as tx:
        (change,) = [c for c in await tx.changes_since(before, 10) if c.object_id == m.id]

    fail_monitor_reads_once(monkeypatch)
    with pytest.raises(Unavailable):  # the store's word for a lost session
        await state.apply(push_vault.store, change)
    assert state.revision == before  # nothing advanced: the change is not skipped on the retry
    assert m.id not in state.monitors
    delta = await state.apply(push_vault.store, change)
    assert delta is not None
    assert set(delta.monitors) == {m.id}
    assert set(delta.credentials) == {cred}
    assert state.revision == change.revision


async def test_a_change_whose_read_fails_still_reaches_the_engine(
    admin_client: Client, push_vault: RunningVault, engine: RealEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    cred = await engine_holding_one_monitor(admin_client, engine)

    failures = fail_monitor_reads_once(monkeypatch)
    second = await create_monitor(admin_client, cred, "second")
    await engine.wait_until(lambda: not failures)  # the follower's read did fail
    expected = await expected_holdings(push_vault)
    assert second.id in expected["monitors"]
    await engine.wait_until(lambda: engine.holds() == expected)


async def test_a_notification_during_a_catch_up_is_not_lost(
    admin_client: Client, push_vault: RunningVault, engine: RealEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    cred = await engine_holding_one_monitor(admin_client, engine)
    assert push_vault.follower is not None
    push_vault.follower._poll_interval = 600.0  # only a notification can wake it within the test's time
    await asyncio.sleep(2.5)  # the wait that began with the old poll interval (2 s) is over

    real = Queries.changes_since
    gate = asyncio.Event()
    reading = asyncio.Event()

    async def slow_catch_up(self: Queries, revision: int, limit: int) -> Any:
        changes = await real(self, revision, limit)
        if changes and not gate.is_set():
            reading.set()
            await gate.wait()  # a change commits (and notifies) while this catch-up is still running
        return changes

    monkeypatch.setattr(Queries, "changes_since", slow_catch_up)
    second = await create_monitor(admin_client, cred, "second")
    await asyncio.wait_for(reading.wait(), 10)
    third = await create_monitor(admin_client, cred, "third")
    gate.set()
    await engine.wait_until(lambda: {second.id, third.id} <= set(engine.holds()["monitors"]), within=20)


# --- rebuild after a lost database ---------------------------------------------------------------------------------


async def test_a_state_whose_follower_lost_the_database_is_rebuilt_and_its_engines_repaired(
    admin_client: Client, push_vault: RunningVault, engine: RealEngine, pg_url: str, database_url: str
) -> None:
    await setup_location(admin_client)
    cred = (await admin_client.CreateCredential(create_req("pair", up("alice", "pw")))).credential.id
    m = await create_monitor(admin_client, cred)
    await engine.wait_until(lambda: m.id in engine.holds()["monitors"])
    assert push_vault.follower is not None
    (state,) = push_vault.follower._states.values()
    # A state that went wrong somehow (a bug): it lost the monitor without telling anyone.
    state._pop_monitor(m.id)
    # The follower's LISTEN session is killed: it cannot prove its states current, so it rebuilds them.
    admin = await asyncpg.connect(database_url)
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid() AND query ILIKE 'LISTEN%'",
        )
    finally:
        await admin.close()
    assert killed == 1
    await engine.wait_until(lambda: m.id in state.monitors and not state.stale)
    expected = await expected_holdings(push_vault)
    assert m.id in expected["monitors"]
    await engine.wait_until(lambda: engine.holds() == expected)  # the difference reaches the engine


# --- anti-entropy ------------------------------------------------------------------------------------------------


def divergences(vault: RunningVault) -> float:
    value = vault.metrics.registry.get_sample_value("credvault_engine_divergence_total", {"location": LOCATION})
    return value or 0.0


async def test_anti_entropy_repairs_an_engine_whose_memory_was_corrupted(
    admin_client: Client, push_vault: RunningVault, engine: RealEngine, caplog: pytest.LogCaptureFixture
) -> None:
    await setup_location(admin_client)
    cred = (await admin_client.CreateCredential(create_req("pair", up("alice", "pw")))).credential.id
    stray = (await admin_client.CreateCredential(create_req("stray", up("bob", "pw2")))).credential.id
    kept, lost = await create_monitor(admin_client, cred, "kept"), await create_monitor(admin_client, cred, "lost")
    expected = await expected_holdings(push_vault)
    await engine.wait_until(lambda: engine.holds() == expected)
    await asyncio.sleep(0.5)  # heartbeats of a healthy engine find nothing
    assert divergences(push_vault) == 0

    caplog.set_level(logging.WARNING, logger="vault_service.push.held_check")
    # Corrupt the engine's memory: a monitor vanishes, the other is held at a version that never existed.
    engine.store._remove_monitor(lost.id, "test corruption")
    older = engine.store.monitor(kept.id)
    assert older is not None
    bogus = epb.MonitorResource(id=kept.id, version=older.version + 1000, monitor=older.monitor)
    engine.store.apply(epb.ConfigBatch(revision=0, monitors=[bogus]))
    assert engine.holds() != expected
    await engine.wait_until(lambda: engine.holds() == expected)
    assert divergences(push_vault) == 1
    repaired = [r.getMessage() for r in caplog.records if "repaired" in r.getMessage()]
    assert repaired
    assert kept.id in repaired[0]
    assert lost.id in repaired[0]
    assert stray not in engine.holds()["credentials"]


async def test_an_initial_sync_in_several_batches_is_no_divergence(
    admin_client: Client, push_vault: RunningVault, engine: RealEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batches of an initial sync all carry the sync's revision: what the engine holds after the first ones is
    not the whole set, and must not be taken for a divergence."""
    monkeypatch.setattr(stream_module, "CHUNK", 2)
    await admin_client.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id=LOCATION)))
    cred = (await admin_client.CreateCredential(create_req("pair", up("alice", "pw")))).credential.id
    for n in range(7):
        await create_monitor(admin_client, cred, f"m{n}")
    await admin_client.AddEngine(mpb.AddEngineRequest(location_id=LOCATION, engine_id="e1"))  # now it may sync
    expected = await expected_holdings(push_vault)
    await engine.wait_until(lambda: engine.holds() == expected)
    synced_at = engine.stream.state.reconnects
    await asyncio.sleep(1.5)  # three heartbeats of the engine, each compared
    assert engine.stream.state.reconnects == synced_at
    assert divergences(push_vault) == 0


async def test_an_engine_that_cannot_answer_is_made_to_reconnect(
    admin_client: Client, push_vault: RunningVault, connect: Connect
) -> None:
    await setup_location(admin_client)
    client = await connect(LOCATION, "e1")
    # a raw client that lies about what it holds and never answers the vault's request for its list
    for _ in range(200):
        client.send(epb.StreamRequest(heartbeat=epb.Heartbeat(held=epb.HeldState(revision=10**9, digest=12345))))
        if client.error is not None:
            break
        await asyncio.sleep(0.05)
    assert client.error is not None
    assert client.error.code() == grpc.StatusCode.ABORTED
    assert divergences(push_vault) == 1
