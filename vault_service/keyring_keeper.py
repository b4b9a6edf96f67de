"""A replica's keyring while it serves: it follows the keyring file (read again when it changes, or at once on SIGHUP)
and the database's active KEK, and reports what it has loaded (:mod:`vault_service.keys` explains why).

Every ``interval`` seconds, and when woken:

1. If the keyring file changed, the new keyring is checked against the database before it is taken: every KEK that
   wraps a data key must be in it, each KEK must be the one the database knows, and the active KEK must be in it. A
   keyring that fails keeps the previous one (logged with the reason, counted). Kubernetes updates a Secret's file in
   place (a symbolic link swap), which counts as a change.
2. The keyring wraps with the database's active KEK (set by ``credvault keys activate``).
3. The replica's report is renewed: its KEK ids and active KEK, live for three intervals.

A keyring is changed in place (:meth:`Keyring.adopt`, :meth:`Keyring.activate`), so every part of the vault holding
it sees the change at once. Logs name KEK ids and files, never key material.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
from collections.abc import Callable

from vault_service import keys
from vault_service.crypto import Keyring, load_keyring_file
from vault_service.errors import ConfigurationError
from vault_service.storage.pool import Store

__all__ = ["KeyringKeeper"]

log = logging.getLogger(__name__)

LEASE_INTERVALS = 3


def _stamp(path: pathlib.Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class KeyringKeeper:
    def __init__(
        self,
        store: Store,
        keyring: Keyring,
        replica_id: str,
        keyring_file: pathlib.Path | None,
        interval: float,
        on_change: Callable[[Keyring], None] | None = None,
        on_reload_failure: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._keyring = keyring
        self.replica_id = replica_id
        self._file = keyring_file
        self._stamp = _stamp(keyring_file) if keyring_file is not None else None
        self._interval = interval
        self._on_change = on_change
        self._on_reload_failure = on_reload_failure
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Follows the database's active KEK and reports, once (errors propagate: a replica that cannot follow does
        not start), then keeps doing so."""
        await self.check()
        self._task = asyncio.create_task(self._run(), name="keyring-keeper")

    def wake(self) -> None:
        """Check now (SIGHUP)."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(Exception):  # a replica gone without this is no longer live after its lease
            async with self._store.autocommit() as tx:
                await tx.forget_replica(self.replica_id)

    async def check(self) -> None:
        before = (tuple(self._keyring.ids), self._keyring.active_id)
        await self._reload_if_changed()
        await keys.follow_database(self._store, self._keyring)
        async with self._store.autocommit() as tx:
            await tx.report_replica(
                self.replica_id, self._keyring.ids, self._keyring.active_id, self._interval * LEASE_INTERVALS
            )
        if (tuple(self._keyring.ids), self._keyring.active_id) != before:
            log.info("keyring: KEKs %s loaded, wrapping with %s", self._keyring.ids, self._keyring.active_id)
            if self._on_change is not None:
                self._on_change(self._keyring)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except ConfigurationError as exc:
                log.error("keyring: %s", exc)
            except Exception as exc:  # the database away: the next round tries again; the lease covers a few
                log.warning("keyring: the check failed (%s); trying again in %g s", type(exc).__name__, self._interval)

    async def _reload_if_changed(self) -> None:
        if self._file is None:
            return
        stamp = _stamp(self._file)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            loaded = load_keyring_file(self._file)
            await keys.verify_keyring(self._store, loaded)
            async with self._store.autocommit() as tx:
                active = await tx.active_kek()
            if active is not None and not loaded.has(active):
                raise ConfigurationError(f"it lacks the active KEK {active!r}")
        except ConfigurationError as exc:
            log.error(
                "keyring: the changed file %s was not taken (%s); keeping KEKs %s", self._file, exc, self._keyring.ids
            )
            if self._on_reload_failure is not None:
                self._on_reload_failure()
            return
        self._keyring.adopt(loaded if active is None else loaded.with_active(active))
        log.info("keyring: reloaded %s", self._file)
