"""Runs every held monitor at its frequency, from the moment the vault pushes it until it is removed.

Each monitor has a fixed phase within its interval, derived from its id: executions happen at ``phase + k *
interval`` on the wall clock. Start times are thereby spread evenly over the interval, and they stay where they were
after a reconnect, a resync or a restart, so none of those makes every monitor run at once (no thundering herd).

The scheduler listens to the :class:`~engine_worker.config_store.ConfigStore`: a new monitor is planned, a changed one
(frequency, script, credentials) is planned again and its next execution uses the new version, and a removed one is
dropped at once, an execution in flight cancelled. Executions of one monitor never overlap (a slot
that comes while the previous execution still runs is skipped); at most ``max_concurrent`` run at a time overall.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable

from credvault.v1 import monitors_pb2
from engine_worker.config_store import ConfigStore, HeldMonitor
from engine_worker.execution_metrics import ExecutionMetrics

__all__ = ["Scheduler", "phase_of"]

log = logging.getLogger(__name__)

Execute = Callable[[HeldMonitor], Awaitable[monitors_pb2.MonitorResult]]
Report = Callable[[monitors_pb2.MonitorResult], None]


def phase_of(monitor_id: str) -> float:
    """The monitor's fixed position within its interval, in [0, 1)."""
    digest = hashlib.blake2b(monitor_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def next_slot(monitor_id: str, interval: float, after: float) -> float:
    """The first planned start at or after ``after`` (seconds on the wall clock)."""
    phase = phase_of(monitor_id) * interval
    return phase + math.ceil((after - phase) / interval) * interval


class Scheduler:
    """:meth:`start` once the store is set up; :meth:`stop` cancels everything. ``interval_scale`` shrinks every
    interval (1.0 in production; demos and tests run a one-minute monitor every few seconds with 0.05).

    One timer loop over a heap of planned starts (not a task per monitor: 10,000 held monitors cost a heap entry
    each); an execution gets a task only while it runs. A heap entry whose monitor was re-planned or removed since is
    stale and skipped when it comes up.
    """

    def __init__(
        self,
        store: ConfigStore,
        execute: Execute,
        report: Report,
        *,
        metrics: ExecutionMetrics | None = None,
        interval_scale: float = 1.0,
        max_concurrent: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not interval_scale > 0:
            raise ValueError("interval_scale must be positive")
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self._store = store
        self._execute = execute
        self._report = report
        self._metrics = metrics
        self._scale = interval_scale
        self._slots = asyncio.Semaphore(max_concurrent)
        self._clock = clock
        self._heap: list[tuple[float, int, str]] = []  # (planned start, sequence, monitor id)
        self._planned: dict[str, tuple[float, int]] = {}  # monitor id -> its live heap entry (start, sequence)
        self._last_start: dict[str, float] = {}  # monitor id -> the planned start it last ran for
        self._running: dict[str, asyncio.Task[None]] = {}
        self._sequence = itertools.count()
        self._wake = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None
        self._warned_not_executable: dict[str, int] = {}  # monitor id -> version warned about
        store.add_listener(self._changed)

    @property
    def scheduled(self) -> int:
        """Monitors with a planned execution."""
        return len(self._planned)

    def start(self) -> asyncio.Task[None]:
        """Plans the held monitors and starts the timer loop in a task of its own (returned)."""
        timer = self._timer = asyncio.create_task(self._timer_loop(), name="scheduler")
        self._changed({m.id for m in self._store.monitors()})
        return timer

    async def run(self) -> None:
        """:meth:`start`, then waits on the timer loop until cancelled, so that a supervisor sees it fail;
        :meth:`stop` on the way out."""
        timer = self.start()
        try:
            await timer
        finally:
            await self.stop()

    async def stop(self) -> None:
        tasks = [t for t in (self._timer, *self._running.values()) if t is not None]
        self._timer = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._heap.clear()
        self._planned.clear()
        self._running.clear()

    def interval(self, held: HeldMonitor) -> float:
        return max(held.frequency_minutes, 1) * 60.0 * self._scale

    def _plan(self, held: HeldMonitor, after: float) -> None:
        interval = self.interval(held)
        last = self._last_start.get(held.id)
        if last is not None:
            after = max(after, last + interval / 2)  # never the slot it ran for again
        start = next_slot(held.id, interval, after)
        entry = (start, next(self._sequence))
        self._planned[held.id] = entry
        heapq.heappush(self._heap, (*entry, held.id))

    def _changed(self, monitor_ids: set[str]) -> None:
        if self._timer is None:
            return
        now = self._clock()
        for monitor_id in monitor_ids:
            held = self._store.monitor(monitor_id)
            if held is None:
                self._planned.pop(monitor_id, None)  # its heap entry is stale now
                self._last_start.pop(monitor_id, None)
                self._warned_not_executable.pop(monitor_id, None)
                task = self._running.pop(monitor_id, None)
                if task is not None:
                    task.cancel()  # at once, mid-execution
                if self._metrics is not None:
                    self._metrics.forget(monitor_id)
            else:
                self._plan(held, now)  # new or changed (frequency, script): plan again
        self._wake.set()

    async def _timer_loop(self) -> None:
        while True:
            now = self._clock()
            while self._heap and self._heap[0][0] <= now:
                start, sequence, monitor_id = heapq.heappop(self._heap)
                if self._planned.get(monitor_id) != (start, sequence):
                    continue  # re-planned or removed since
                held = self._store.monitor(monitor_id)
                if held is None:
                    del self._planned[monitor_id]
                    continue
                self._last_start[monitor_id] = start
                self._plan(held, start)
                if monitor_id in self._running:
                    continue  # the previous execution still runs: this slot is skipped
                self._running[monitor_id] = asyncio.create_task(self._execution(monitor_id, start))
            self._wake.clear()
            delay = self._heap[0][0] - self._clock() if self._heap else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _execution(self, monitor_id: str, planned: float) -> None:
        try:
            async with self._slots:
                held = self._store.monitor(monitor_id)
                if held is None:
                    return
                if self._metrics is not None:
                    self._metrics.schedule_delay.observe(max(self._clock() - planned, 0.0))
                result = await self._run(held)
            if self._metrics is not None:
                self._metrics.record(result)
            self._report(result)
        finally:
            if self._running.get(monitor_id) is asyncio.current_task():
                del self._running[monitor_id]

    async def _run(self, held: HeldMonitor) -> monitors_pb2.MonitorResult:
        try:
            result = await self._execute(held)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug, not a monitor failure: report it without details that might hold secrets
            log.error("executing monitor %s failed unexpectedly: %s", held.id, type(exc).__name__)
            result = monitors_pb2.MonitorResult(
                monitor_id=held.id,
                monitor_version=held.monitor_version,
                status=monitors_pb2.EXECUTION_STATUS_FAILED,
                failure_reason=f"the engine failed to execute the monitor ({type(exc).__name__})",
            )
            result.start_time.GetCurrentTime()
        if result.status == monitors_pb2.EXECUTION_STATUS_NOT_EXECUTABLE:
            if self._warned_not_executable.get(held.id) != held.version:
                self._warned_not_executable[held.id] = held.version
                log.warning("monitor %s revision %d: %s", held.id, held.version, result.failure_reason)
        else:
            log.debug(
                "monitor %s: %s in %.0f ms",
                held.id,
                monitors_pb2.ExecutionStatus.Name(result.status),
                result.duration_ms,
            )
        return result
