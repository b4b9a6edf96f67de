"""The change follower (vault_service.push.follower) on its own, against the real database and a real vault that
writes the changes (the API vault only: it runs no follower of its own, so the LISTEN session here is the
follower's): every batch of the log is read up to the head, a change counts as processed only once every state it
affects applied it, engine changes reach the registry, subscriptions share one state per location, a notification
wakes a catch-up at once, a lost LISTEN session or an unreachable database marks the states stale and rebuilds them,
and reconnect attempts back off within their cap. Found by the mutation check (scripts/mutation): each test here
fails on mutants of the follower that the push and convergence tests let through."""

from __future__ import annotations

import asyncio
import functools
import logging
import operator
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import monitors_pb2 as mpb
from tests.conftest import Client
from tests.helpers import create_req, up
from tests.vault_service.push.test_convergence import LOCATION, create_monitor, setup_location
from vault_service.crypto import Keyring
from vault_service.models import ChangeKind
from vault_service.push import follower as follower_module
from vault_service.push.follower import ChangeFollower
from vault_service.push.location_state import LocationState
from vault_service.push.outbox import Outbox
from vault_service.server import RunningVault
from vault_service.storage.changes import Change

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nowhere"  # port 1: refused at once


@pytest.fixture
async def follower(vault: RunningVault, database_url: str, keyring: Keyring) -> AsyncIterator[ChangeFollower]:
    """A follower that is not started: tests drive catch_up themselves or start it."""
    f = ChangeFollower(vault.store, database_url, keyring, poll_interval=60.0)
    yield f
    await f.stop()


async def head(vault: RunningVault) -> int:
    async with vault.store.autocommit() as tx:
        return await tx.head_revision()


async def pair(admin: Client, name: str = "pair") -> str:
    created: str = (await admin.CreateCredential(create_req(name, up("alice", "pw-1")))).credential.id
    return created


async def until(check: Callable[[], bool], within: float = 10.0) -> None:
    """Waits for ``check`` (well under the follower's 60 s poll: only a notification or a reconnect can be it)."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "the follower did not get there in time"
        await asyncio.sleep(0.02)


async def test_catch_up_reads_every_batch_up_to_the_head(
    admin: Client, vault: RunningVault, follower: ChangeFollower, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(follower_module, "BATCH", 2)
    await setup_location(admin)
    state = await follower.subscribe(LOCATION, Outbox(100))
    cred = await pair(admin)
    monitors = {(await create_monitor(admin, cred, f"m{i}")).id for i in range(3)}  # 4 changes: two full batches
    await follower.catch_up()
    assert follower.last == await head(vault)
    assert set(state.monitors) == monitors


async def test_a_log_longer_than_a_batch_is_read_to_its_end(
    admin: Client, vault: RunningVault, follower: ChangeFollower
) -> None:
    await setup_location(admin)
    state = await follower.subscribe(LOCATION, Outbox(100))
    follower.last = state.revision
    async with vault.store.transaction() as tx:  # a full batch of changes of another location, in one commit
        for i in range(follower_module.BATCH):
            await tx.append_change(ChangeKind.MONITOR, f"elsewhere-{i}", ["elsewhere"])
    monitor = await create_monitor(admin, await pair(admin))  # after the batch, so in the next read
    await follower.catch_up()
    assert follower.last == await head(vault)
    assert set(state.monitors) == {monitor.id}


async def test_a_full_last_batch_is_followed_by_an_empty_read(
    admin: Client, vault: RunningVault, follower: ChangeFollower, monkeypatch: pytest.MonkeyPatch
) -> None:
    await setup_location(admin)
    cred = await pair(admin)
    await create_monitor(admin, cred)
    total = await head(vault)
    monkeypatch.setattr(follower_module, "BATCH", total)  # exactly one full batch: read again, find nothing, stop
    await follower.catch_up()
    assert follower.last == total


async def test_changes_of_locations_nobody_follows_are_passed_over(
    admin: Client, vault: RunningVault, follower: ChangeFollower
) -> None:
    await setup_location(admin)
    cred = await pair(admin)
    await create_monitor(admin, cred)
    await follower.catch_up()
    assert follower.last == await head(vault)
    assert follower.outboxes() == {}  # no state was made for a location without subscribers


async def test_engine_changes_go_to_the_registry_and_no_other(
    admin: Client, vault: RunningVault, follower: ChangeFollower
) -> None:
    await setup_location(admin)
    await admin.AddEngine(mpb.AddEngineRequest(location_id=LOCATION, engine_id="e2"))
    seen: list[Change] = []
    follower.on_engine_change = seen.append
    follower.last = await head(vault)
    await admin.RevokeEngine(mpb.RevokeEngineRequest(location_id=LOCATION, engine_id="e1"))
    cred = await pair(admin)
    await create_monitor(admin, cred)  # a monitor change, then a credential change: not engine changes
    await admin.OverwriteCredential(cpb.OverwriteCredentialRequest(id=cred, contents=up("alice", "pw-2")))
    await admin.RevokeEngine(mpb.RevokeEngineRequest(location_id=LOCATION, engine_id="e2"))
    await follower.catch_up()
    async with vault.store.autocommit() as tx:
        kinds = {c.kind for c in await tx.changes_since(0, 100)}
    assert kinds == set(ChangeKind)  # each kind was there to be passed over
    assert [(c.kind, c.object_id) for c in seen] == [
        (ChangeKind.ENGINE, f"{LOCATION}/e1"),
        (ChangeKind.ENGINE, f"{LOCATION}/e2"),
    ]


async def test_a_change_counts_only_once_every_state_applied_it(
    admin: Client, vault: RunningVault, follower: ChangeFollower, monkeypatch: pytest.MonkeyPatch
) -> None:
    await setup_location(admin)
    cred = await pair(admin)
    state = await follower.subscribe(LOCATION, Outbox(100))
    start = follower.last = state.revision
    first = await create_monitor(admin, cred, "first")
    second = await create_monitor(admin, cred, "second")
    real_apply = LocationState.apply
    failing = {"on": True}

    async def apply(self: LocationState, store: object, change: Change) -> object:
        if failing["on"] and change.object_id == second.id:
            raise asyncpg.PostgresConnectionError("the read failed")
        return await real_apply(self, store, change)

    monkeypatch.setattr(LocationState, "apply", apply)
    with pytest.raises(asyncpg.PostgresConnectionError):
        await follower.catch_up()
    assert start < follower.last < await head(vault)  # the first monitor's change, not the failed one
    assert set(state.monitors) == {first.id}
    failing["on"] = False
    await follower.catch_up()  # retried from the last change fully applied
    assert follower.last == await head(vault)
    assert set(state.monitors) == {first.id, second.id}


async def test_one_state_per_location_shared_by_its_subscribers(admin: Client, follower: ChangeFollower) -> None:
    await setup_location(admin)
    one, two = Outbox(100), Outbox(100)
    state = await follower.subscribe(LOCATION, one)
    assert await follower.subscribe(LOCATION, two) is state
    assert state.subscribers == {one, two}
    assert {k: set(v) for k, v in follower.outboxes().items()} == {LOCATION: {one, two}}
    follower.unsubscribe("elsewhere", one)  # not followed: nothing to do
    follower.unsubscribe(LOCATION, one)
    assert follower.outboxes() == {LOCATION: [two]}
    follower.unsubscribe(LOCATION, two)  # the last one: the state goes
    assert follower.outboxes() == {}
    assert await follower.subscribe(LOCATION, one) is not state


async def test_a_stale_state_is_rebuilt_before_it_is_handed_out(admin: Client, follower: ChangeFollower) -> None:
    await setup_location(admin)
    state = await follower.subscribe(LOCATION, Outbox(100))
    state.stale = True
    cred = await pair(admin)
    monitor = await create_monitor(admin, cred)  # never caught up: only a rebuild can show it
    assert await follower.subscribe(LOCATION, Outbox(100)) is state
    assert not state.stale
    assert set(state.monitors) == {monitor.id}


async def test_start_begins_at_the_head(admin: Client, vault: RunningVault, follower: ChangeFollower) -> None:
    await setup_location(admin)
    await create_monitor(admin, await pair(admin))
    await follower.stop()  # before start: nothing to stop
    await follower.start()
    assert follower.last == await head(vault) > 0


async def listen_sessions(database_url: str) -> list[int]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'"
        )
        return [r["pid"] for r in rows]
    finally:
        await conn.close()


async def test_a_notification_wakes_a_catch_up_at_once(
    admin: Client, follower: ChangeFollower, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[asyncpg.Connection] = []
    connect = asyncpg.connect

    async def recorded(*args: Any, **kwargs: Any) -> asyncpg.Connection:
        conn: asyncpg.Connection = await connect(*args, **kwargs)
        opened.append(conn)
        return conn

    monkeypatch.setattr("vault_service.push.follower.asyncpg.connect", recorded)
    await setup_location(admin)
    await follower.start()
    state = await follower.subscribe(LOCATION, Outbox(100))
    cred = await pair(admin)
    for name in ("first", "second"):  # the second proves the wake-up was cleared and armed again
        monitor = await create_monitor(admin, cred, name)
        await until(functools.partial(operator.contains, state.monitors, monitor.id))
    await follower.stop()
    assert opened
    assert all(conn.is_closed() for conn in opened)  # closed by the follower, not left to the collector
    deadline = time.monotonic() + 10
    while await listen_sessions(database_url):
        assert time.monotonic() < deadline, "the follower's LISTEN session outlived it"
        await asyncio.sleep(0.05)


async def test_a_lost_listen_session_is_replaced_and_the_states_rebuilt(
    admin: Client, follower: ChangeFollower, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await setup_location(admin)
    await follower.start()
    state = await follower.subscribe(LOCATION, Outbox(100))
    rebuilt: list[str] = []
    real_rebuild = LocationState.rebuild

    async def rebuild(self: LocationState, store: object) -> object:
        rebuilt.append(self.location_id)
        return await real_rebuild(self, store)

    monkeypatch.setattr(LocationState, "rebuild", rebuild)
    deadline = time.monotonic() + 10
    while not (pids := await listen_sessions(database_url)):
        assert time.monotonic() < deadline, "the follower never listened"
        await asyncio.sleep(0.05)
    (old,) = pids
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SELECT pg_terminate_backend($1)", old)
    finally:
        await conn.close()
    # marked stale when the session ended, rebuilt (once) on reconnecting
    await until(lambda: rebuilt == [LOCATION] and not state.stale)
    cred = await pair(admin)
    monitor = await create_monitor(admin, cred)  # heard by the new session, not by the 60 s poll
    await until(lambda: monitor.id in state.monitors)
    (new,) = await listen_sessions(database_url)
    assert new != old


async def test_an_unreachable_database_backs_off_within_the_cap_and_recovers(
    admin: Client,
    follower: ChangeFollower,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=follower_module.__name__)
    await setup_location(admin)
    state = await follower.subscribe(LOCATION, Outbox(100))
    bounds: list[tuple[float, float]] = []
    warned_before: list[int] = []  # warnings logged before each back-off

    def uniform(low: float, high: float) -> float:
        bounds.append((low, high))
        warned_before.append(sum(r.levelno == logging.WARNING for r in caplog.records))
        return 0.0

    monkeypatch.setattr("vault_service.push.follower.random.uniform", uniform)  # the one the follower draws
    monkeypatch.setattr(follower, "_dsn", UNREACHABLE)
    await follower.start()
    await until(lambda: len(bounds) >= 6)
    assert state.stale  # it cannot prove its state missed nothing
    monkeypatch.setattr(follower, "_dsn", database_url)
    await until(lambda: not state.stale)
    attempts = len(bounds)
    assert bounds[:6] == [(0, 0.1), (0, 0.2), (0, 0.4), (0, 0.8), (0, 1.0), (0, 1.0)]
    messages = [r.getMessage() for r in caplog.records if r.name == follower_module.__name__]
    assert sum("lost the database" in m for m in messages) == 1  # once per outage, not per attempt
    assert warned_before[:3] == [0, 1, 1]  # logged at the first failure, just after its back-off was drawn
    await until(lambda: any("has the database again" in r.getMessage() for r in caplog.records))
    back = [r.getMessage() for r in caplog.records if "has the database again" in r.getMessage()]
    assert back == [f"change follower has the database again (after {attempts} attempts)"]
    cred = await pair(admin)
    monitor = await create_monitor(admin, cred)  # and it follows again
    await until(lambda: monitor.id in state.monitors)
    assert len(bounds) == attempts  # no further failures, so no further back-off, and the recovery is logged once
    assert sum("has the database again" in r.getMessage() for r in caplog.records) == 1


async def test_a_stale_state_is_rebuilt_on_start_and_the_difference_logged(
    admin: Client, follower: ChangeFollower, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=follower_module.__name__)
    await setup_location(admin)
    state = await follower.subscribe(LOCATION, Outbox(100))
    state.stale = True  # as after a lost database
    cred = await pair(admin)
    # one credential and three monitors to send: 1 + 3 is told apart from every other operator on 1 and 3
    monitors = {(await create_monitor(admin, cred, f"m{i}")).id for i in range(3)}
    await follower.start()  # starts at the head: only the rebuild can bring them
    await until(lambda: not state.stale)
    assert set(state.monitors) == monitors
    assert [r.getMessage() for r in caplog.records if r.name == follower_module.__name__] == [
        f"location {LOCATION} rebuilt after the database was lost: 4 upserts, 0 removals"
    ]
