"""The synchronization schedule, run by every replica: each tick it takes the lease of due synchronized credentials
(a row update that only one replica can win per credential, see storage/sync.py) and synchronizes them, a few at a
time. A replica that dies holding leases leaves them to expire; then any replica takes them over."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from vault_service.external_sync.synchronizer import Synchronizer
from vault_service.storage.pool import Store

log = logging.getLogger(__name__)


class SyncScheduler:
    def __init__(
        self, store: Store, synchronizer: Synchronizer, tick_seconds: float, *, batch: int = 32, concurrency: int = 8
    ) -> None:
        self._store, self._sync = store, synchronizer
        self._tick, self._batch = tick_seconds, batch
        self._slots = asyncio.Semaphore(concurrency)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="external-sync")

    async def stop(self) -> None:
        """Stop scheduling, wait for nothing more, and hand back the leases this replica holds."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            async with self._store.autocommit() as tx:
                await tx.release_syncs(self._sync.owner)

    async def _loop(self) -> None:
        while True:
            try:
                while await self.run_due() == self._batch:
                    pass  # more are due: go on without waiting for the tick
            except Exception as exc:  # the database may be away: try again next tick
                log.warning("external sync: looking for due synchronizations failed (%s)", type(exc).__name__)
            await asyncio.sleep(self._tick)

    async def run_due(self) -> int:
        """Synchronize what is due now and whose lease this replica took; returns how many it took."""
        async with self._store.autocommit() as tx:
            claimed = await tx.claim_due_syncs(self._sync.owner, self._sync.lease_seconds, self._batch)
        await asyncio.gather(*(self._one(cid) for cid in claimed))
        return len(claimed)

    async def _one(self, credential_id: str) -> None:
        async with self._slots:
            try:
                await self._sync.run(credential_id)
            except Exception as exc:  # its lease expires; another tick (here or elsewhere) tries again
                log.warning("external sync of %s failed unexpectedly (%s)", credential_id, type(exc).__name__)
