"""Execution results on their way to the vault: a bounded buffer (the oldest are dropped, and counted, when the
vault is out of reach for long), drained in batches onto the engine stream."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

from credvault.v1 import monitors_pb2

__all__ = ["MAX_BATCH_BYTES", "ResultReporter"]

# Far below the vault's 4 MiB receive limit: failure screenshots of browser monitors take up to 512 KiB each.
MAX_BATCH_BYTES = 2 * 1024 * 1024


class ResultReporter:
    def __init__(
        self,
        max_buffered: int = 10_000,
        max_batch: int = 500,
        linger: float = 1.0,
        on_drop: Callable[[int], None] | None = None,
        max_batch_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        if max_buffered < 1 or max_batch < 1 or linger < 0:
            raise ValueError("max_buffered and max_batch must be positive, linger not negative")
        self._buffer: collections.deque[monitors_pb2.MonitorResult] = collections.deque()
        self._max_buffered = max_buffered
        self._max_batch = max_batch
        self._max_batch_bytes = max_batch_bytes
        self._linger = linger
        self._on_drop = on_drop
        self._ready = asyncio.Event()

    def add(self, result: monitors_pb2.MonitorResult) -> None:
        self._buffer.append(result)
        self._trim()
        self._ready.set()

    def put_back(self, batch: list[monitors_pb2.MonitorResult]) -> None:
        """A batch that could not be sent goes back to the front (then the oldest beyond the bound are dropped)."""
        self._buffer.extendleft(reversed(batch))
        self._trim()
        if self._buffer:
            self._ready.set()

    async def next_batch(self) -> list[monitors_pb2.MonitorResult]:
        """Waits for a result, lingers briefly so results travel together, and takes up to ``max_batch`` of at most
        ``max_batch_bytes`` together (at least one: a result is far below the stream's message limit)."""
        while not self._buffer:
            self._ready.clear()
            await self._ready.wait()
        if len(self._buffer) < self._max_batch and self._linger:
            await asyncio.sleep(self._linger)
        batch = [self._buffer.popleft()]
        size = batch[0].ByteSize()
        while self._buffer and len(batch) < self._max_batch:
            size += self._buffer[0].ByteSize()
            if size > self._max_batch_bytes:
                break
            batch.append(self._buffer.popleft())
        return batch

    def _trim(self) -> None:
        excess = len(self._buffer) - self._max_buffered
        if excess > 0:
            for _ in range(excess):
                self._buffer.popleft()
            if self._on_drop is not None:
                self._on_drop(excess)
