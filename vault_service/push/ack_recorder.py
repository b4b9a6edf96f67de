"""Engines' ACKs into PostgreSQL with group commit: the first ACK is written at once, and every ACK that arrives while
a write is in flight goes into the next write, one statement for all of them (the latest per engine wins).

A change pushed to 50 engines comes back as 50 ACKs within a few milliseconds; written one UPDATE each, they queue
behind one another on the vault's event loop and the pool, and the last engine's ACK is recorded long after it
arrived. Batched, they cost about two round trips, and a lone ACK is still written without waiting.

What is recorded is status (the applied revision, the rejected monitors) for ``ListEngines``: an ACK lost with a
crashing vault costs nothing, as the engine's next Hello says what it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from vault_service.storage.pool import Store

log = logging.getLogger(__name__)

EngineKey = tuple[str, str]  # (location id, engine id)


class AckRecorder:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: dict[EngineKey, tuple[int, str]] = {}  # -> (revision, rejected as JSON)
        self._writer: asyncio.Task[None] | None = None
        self.writes = 0  # statements written, for tests and curiosity

    def record(self, location_id: str, engine_id: str, revision: int, rejected: list[dict[str, Any]]) -> None:
        """Queues the ACK; written at once if no write is in flight, else with the next one. Never blocks."""
        key = (location_id, engine_id)
        previous = self._pending.get(key)
        self._pending[key] = (max(revision, previous[0]) if previous else revision, json.dumps(rejected))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all(), name="ack-recorder")

    async def _write_all(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, {}
            rows = [(loc, eng, revision, rejected) for (loc, eng), (revision, rejected) in sorted(batch.items())]
            try:
                async with self._store.autocommit() as tx:
                    await tx.engines_acked(rows)
                self.writes += 1
            except Exception as exc:
                # Status only (see above): keep what no newer ACK replaced for the next attempt, unless closing.
                log.warning("could not record %d engine ACKs: %s", len(rows), type(exc).__name__)
                for key, value in batch.items():
                    self._pending.setdefault(key, value)
                await asyncio.sleep(1.0)

    async def flush(self) -> None:
        """Waits until everything queued is written (or the write failed), e.g. before the pool closes."""
        writer = self._writer
        if writer is not None and not writer.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(writer), 5.0)
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
