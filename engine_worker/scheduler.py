"""Runs every held monitor at its frequency, from the moment the vault pushes it until it is removed.

Each monitor has a fixed phase within its interval, derived from its id: executions happen at ``phase + k *
interval`` on the wall clock. Start times are thereby spread evenly over the interval, and they stay where they were
after a reconnect, a resync or a restart, so none of those makes every monitor run at once (no thundering herd).

The scheduler listens to the :class:`~engine_worker.config_store.ConfigStore`: a new monitor gets its own task, a
changed one (frequency, script, credentials) is rescheduled and its next execution uses the new version, and a
removed one is cancelled at once, an execution in flight included. Executions of one monitor never overlap (a slot
that comes while the previous execution still runs is skipped); at most ``max_concurrent`` run at a time overall.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
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
    interval (1.0 in production; demos and tests run a one-minute monitor every few seconds with 0.05)."""

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
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wakes: dict[str, asyncio.Event] = {}
        self._running = False
        self._warned_not_executable: dict[str, int] = {}  # monitor id -> version warned about
        store.add_listener(self._changed)

    @property
    def scheduled(self) -> int:
        return len(self._tasks)

    def start(self) -> None:
        self._running = True
        self._changed({m.id for m in self._store.monitors()})

    async def stop(self) -> None:
        self._running = False
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._wakes.clear()

    def interval(self, held: HeldMonitor) -> float:
        return max(held.frequency_minutes, 1) * 60.0 * self._scale

    def _changed(self, monitor_ids: set[str]) -> None:
        if not self._running:
            return
        for monitor_id in monitor_ids:
            held = self._store.monitor(monitor_id)
            task = self._tasks.get(monitor_id)
            if held is None:
                if task is not None:
                    task.cancel()  # at once, also mid-execution
                    del self._tasks[monitor_id]
                    del self._wakes[monitor_id]
                    self._warned_not_executable.pop(monitor_id, None)
                    if self._metrics is not None:
                        self._metrics.forget(monitor_id)
                    log.debug("stopped running monitor %s", monitor_id)
            elif task is None or task.done():
                wake = asyncio.Event()
                self._wakes[monitor_id] = wake
                self._tasks[monitor_id] = asyncio.create_task(self._loop(monitor_id, wake), name=f"run-{monitor_id}")
            else:
                self._wakes[monitor_id].set()  # reschedule with the new version

    async def _loop(self, monitor_id: str, wake: asyncio.Event) -> None:
        last_planned = -math.inf
        while True:
            held = self._store.monitor(monitor_id)
            if held is None:
                return
            interval = self.interval(held)
            planned = next_slot(monitor_id, interval, max(self._clock(), last_planned + interval / 2))
            wake.clear()
            delay = planned - self._clock()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), delay)
                    continue  # changed meanwhile: plan again with the new version
            last_planned = planned
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

    async def _run(self, held: HeldMonitor) -> monitors_pb2.MonitorResult:
        try:
            result = await self._execute(held)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug, not a monitor failure: report it without details that might hold secrets
            log.error("executing monitor %s failed unexpectedly: %s", held.id, type(exc).__name__)
            result = monitors_pb2.MonitorResult(
                monitor_id=held.id,
                monitor_version=held.version,
                status=monitors_pb2.EXECUTION_STATUS_FAILED,
                failure_reason=f"the engine failed to execute the monitor ({type(exc).__name__})",
            )
            result.start_time.GetCurrentTime()
        if result.status == monitors_pb2.EXECUTION_STATUS_NOT_EXECUTABLE:
            if self._warned_not_executable.get(held.id) != held.version:
                self._warned_not_executable[held.id] = held.version
                log.warning("monitor %s version %d: %s", held.id, held.version, result.failure_reason)
        else:
            log.debug(
                "monitor %s: %s in %.0f ms",
                held.id,
                monitors_pb2.ExecutionStatus.Name(result.status),
                result.duration_ms,
            )
        return result
