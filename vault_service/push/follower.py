"""Follows the change log on this replica: LISTEN for commits, and on start and after any lost connection catch up
from the last revision processed (the log is durable, so nothing is lost while not listening). Each change goes to
the ``LocationState`` of every location it affects; engine changes go to the stream registry.

A change counts as processed only once every state it affects has applied it: a failed read is retried from the
last revision fully applied. When the follower loses the database it cannot prove that its states missed nothing, so
it marks them stale and rebuilds each from a snapshot (sending its engines the difference) before going on; a state
is never handed to a new stream while stale. The wake-up is cleared before each catch-up, so a notification that
arrives during one causes another, not a wait for the poll."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

import asyncpg

from vault_service.crypto import Keyring
from vault_service.models import ChangeKind
from vault_service.push.location_state import LocationState
from vault_service.push.outbox import Outbox
from vault_service.storage.changes import CHANGES_CHANNEL, Change
from vault_service.storage.pool import Store

log = logging.getLogger(__name__)
# Changes read per query: a size, not a rule (any nearby value is an equivalent mutant).
BATCH = 1000  # pragma: no mutate: NumberReplacer
RETRY_CAP = 1.0  # seconds: the most a reconnect waits once the database answers again
# Seconds between catch-ups without a notification: the poll only backs up a lost one, so any few seconds is
# right and a nearby value is an equivalent mutant.
POLL_INTERVAL = 2.0  # pragma: no mutate: NumberReplacer


class ChangeFollower:
    def __init__(self, store: Store, dsn: str, keyring: Keyring, *, poll_interval: float = POLL_INTERVAL) -> None:
        self._store = store
        self._dsn = dsn
        self._keyring = keyring
        self._poll_interval = poll_interval
        self._states: dict[str, LocationState] = {}
        self._lock = asyncio.Lock()  # changes are applied, and states built, one at a time
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Revisions start at 1: reading after -1 is reading after 0 (equivalent).
        self.last = 0  # pragma: no mutate: NumberReplacer
        self.on_engine_change: Callable[[Change], None] = lambda change: None

    async def start(self) -> None:
        async with self._store.autocommit() as tx:
            self.last = await tx.head_revision()
        self._task = asyncio.create_task(self._run(), name="change-follower")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def subscribe(self, location_id: str, outbox: Outbox) -> LocationState:
        """The location's state with ``outbox`` subscribed, atomically: no change falls between the two."""
        async with self._lock:
            state = self._states.get(location_id)
            if state is None:
                state = LocationState(location_id, self._keyring)
                await state.load(self._store)
                self._states[location_id] = state
            elif state.stale:
                await state.rebuild(self._store)
            state.subscribers.add(outbox)
            return state

    def outboxes(self) -> dict[str, list[Outbox]]:
        """The subscribed outboxes (one per open engine stream) of each location, for metrics."""
        return {location_id: list(state.subscribers) for location_id, state in self._states.items()}

    def unsubscribe(self, location_id: str, outbox: Outbox) -> None:
        state = self._states.get(location_id)
        if state is None:
            return
        state.subscribers.discard(outbox)
        if not state.subscribers:
            del self._states[location_id]

    async def _run(self) -> None:
        attempt = 0
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._dsn)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: self._lost(lost))
                await conn.add_listener(CHANGES_CHANNEL, lambda *_: self._wake.set())
                while not lost.is_set():
                    self._wake.clear()  # before reading: a notification from here on wakes the next round
                    await self._rebuild_stale()
                    await self.catch_up()  # on start, after reconnects, and on every notification
                    if attempt:
                        log.info("change follower has the database again (after %d attempts)", attempt)
                        attempt = 0
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._poll_interval)
                self._mark_stale()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._mark_stale()
                attempt += 1
                delay = random.uniform(0, min(RETRY_CAP, 0.05 * 2**attempt))
                # attempt counts from 1 here: <= 1 is == 1 (equivalent).
                if attempt == 1:  # pragma: no mutate: Eq_LtE
                    log.warning("change follower lost the database (%s); retrying", type(exc).__name__)
                await asyncio.sleep(delay)
            finally:
                if conn is not None and not conn.is_closed():
                    conn.terminate()

    def _lost(self, lost: asyncio.Event) -> None:
        """The LISTEN session ended: stop waiting for a notification that cannot come."""
        lost.set()
        self._wake.set()

    def _mark_stale(self) -> None:
        for state in self._states.values():
            state.stale = True

    async def _rebuild_stale(self) -> None:
        async with self._lock:
            for state in list(self._states.values()):
                if state.stale:
                    delta = await state.rebuild(self._store)
                    if delta is not None:
                        log.warning(
                            "location %s rebuilt after the database was lost: %d upserts, %d removals",
                            state.location_id,
                            len(delta.credentials) + len(delta.monitors),
                            len(delta.removals),
                        )

    async def catch_up(self) -> None:
        async with self._lock:
            while True:
                async with self._store.autocommit() as tx:
                    changes = await tx.changes_since(self.last, BATCH)
                for change in changes:
                    for location_id in change.location_ids:
                        state = self._states.get(location_id)
                        if state is not None:
                            await state.apply(self._store, change)  # raises, state untouched, if its read fails
                    # kind is always a ChangeKind (changes_since makes it one): == is is (equivalent).
                    if change.kind is ChangeKind.ENGINE:  # pragma: no mutate: Is_Eq
                        self.on_engine_change(change)
                    self.last = change.revision  # only once every state it affects has applied it
                # A query returns at most BATCH rows: != BATCH is < BATCH (equivalent).
                if len(changes) < BATCH:  # pragma: no mutate: Lt_NotEq
                    return
