"""The liveness lease of the engines a replica holds: one periodic statement per replica renews all of them, so an
engine shows connected exactly as long as a living replica holds its stream (a killed replica renews nothing)."""

from __future__ import annotations

import asyncio
import logging

from vault_service.storage.pool import Store

log = logging.getLogger(__name__)


class LeaseRenewal:
    """Renews every third of the lease: two renewals may fail (a database blip) before the engines show lapsed."""

    def __init__(self, store: Store, replica_id: str, lease_seconds: float) -> None:
        self._store = store
        self._replica_id = replica_id
        self.interval = lease_seconds / 3
        self.renewals = 0  # statements that succeeded
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="engine-lease-renewal")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])  # ended (its cancellation is not an error here)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                async with self._store.autocommit() as tx:
                    await tx.renew_engine_leases(self._replica_id)
                self.renewals += 1
            except Exception as exc:  # the next interval tries again; the lease outlasts two misses
                log.warning("could not renew the engines' leases: %s", type(exc).__name__)
