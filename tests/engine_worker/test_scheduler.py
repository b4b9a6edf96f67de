"""The worker's scheduler: each held monitor runs at its frequency from a fixed phase (spread, and kept across a
resync), picks up new versions live, stops at once when removed (mid-execution too), and never runs more than its
limit at a time. The executions here are recorded, not HTTP (the executor is tested in test_http_execution.py)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from credvault.v1 import engine_pb2 as epb
from credvault.v1 import monitors_pb2 as mpb
from engine_worker.config_store import ConfigStore, HeldMonitor
from engine_worker.execution_metrics import ExecutionMetrics
from engine_worker.scheduler import Scheduler, next_slot, phase_of

LOC = "loc-a"


def mid(n: int) -> str:
    return f"SYNTHETIC_TEST-{n:016X}"


def resource(monitor_id: str, version: int = 1, frequency: int = 1) -> epb.MonitorResource:
    m = mpb.Monitor(
        id=monitor_id,
        name="m",
        type=mpb.MONITOR_TYPE_HTTP,
        enabled=True,
        frequency_minutes=frequency,
        location_ids=[LOC],
        http=mpb.HttpScript(requests=[mpb.HttpRequest(method="GET", url="http://127.0.0.1:1/")]),
        version=version,
    )
    return epb.MonitorResource(id=monitor_id, version=version, monitor=m)


class Recorder:
    """Records each execution (monitor, version); ``gate`` holds executions until it is set."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, int]] = []
        self.cancelled: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.reported: list[mpb.MonitorResult] = []
        self.changed = asyncio.Event()

    async def execute(self, held: HeldMonitor) -> mpb.MonitorResult:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.runs.append((held.id, held.version))
        self.changed.set()
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled.append(held.id)
            self.changed.set()
            raise
        finally:
            self.in_flight -= 1
        return mpb.MonitorResult(
            monitor_id=held.id, monitor_version=held.version, status=mpb.EXECUTION_STATUS_SUCCESS, duration_ms=1
        )

    def report(self, result: mpb.MonitorResult) -> None:
        self.reported.append(result)
        self.changed.set()

    def count(self, monitor_id: str, version: int | None = None) -> int:
        return sum(1 for m, v in self.runs if m == monitor_id and (version is None or v == version))

    async def until(self, predicate: collections.abc.Callable[[], bool], within: float = 20.0) -> None:
        async def loop() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), within)


class World:
    def __init__(self, scale: float, max_concurrent: int = 100) -> None:
        self.store = ConfigStore(location_id=LOC)
        self.recorder = Recorder()
        self.registry = CollectorRegistry()
        self.metrics = ExecutionMetrics(self.registry)
        self.scheduler = Scheduler(
            self.store,
            self.recorder.execute,
            self.recorder.report,
            metrics=self.metrics,
            interval_scale=scale,
            max_concurrent=max_concurrent,
        )
        self.revision = 0

    def apply(self, *monitors: epb.MonitorResource, removals: tuple[str, ...] = ()) -> None:
        self.revision += 1
        batch = epb.ConfigBatch(
            revision=self.revision,
            monitors=monitors,
            removals=[epb.Removal(kind=epb.RESOURCE_KIND_MONITOR, id=r) for r in removals],
        )
        assert self.store.apply(batch) == []


@pytest.fixture
async def world() -> AsyncIterator[World]:
    w = World(scale=0.002)  # a one-minute monitor every 0.12 s
    w.scheduler.start()
    yield w
    await w.scheduler.stop()


def test_phases_spread_over_the_interval_and_are_stable() -> None:
    phases = [phase_of(mid(n)) for n in range(2000)]
    assert all(0 <= p < 1 for p in phases)
    deciles = collections.Counter(int(p * 10) for p in phases)
    assert len(deciles) == 10
    assert min(deciles.values()) > 120  # 200 expected in each tenth of the interval: no clump
    assert phase_of(mid(7)) == phase_of(mid(7))  # the same after a restart or resync


def test_next_slot_is_on_the_monitors_grid() -> None:
    m, interval = mid(1), 60.0
    phase = phase_of(m) * interval
    assert next_slot(m, interval, 1000.0 * interval) == pytest.approx(1000.0 * interval + phase)
    assert next_slot(m, interval, 1000.0 * interval + phase) == pytest.approx(1000.0 * interval + phase)
    assert next_slot(m, interval, 1000.0 * interval + phase + 0.001) == pytest.approx(1001.0 * interval + phase)


async def test_runs_repeatedly_and_reports_each_execution(world: World) -> None:
    world.apply(resource(mid(1)), resource(mid(2)))
    await world.recorder.until(lambda: world.recorder.count(mid(1)) >= 3 and world.recorder.count(mid(2)) >= 3)
    await world.recorder.until(lambda: len(world.recorder.reported) >= 6)
    assert world.scheduler.scheduled == 2
    assert {r.monitor_id for r in world.recorder.reported} == {mid(1), mid(2)}
    assert world.registry.get_sample_value("monitor_executions_total", {"monitor_id": mid(1), "status": "success"})
    assert world.registry.get_sample_value("monitor_schedule_delay_seconds_count")


async def test_a_new_version_is_used_by_the_next_execution(world: World) -> None:
    world.apply(resource(mid(1), version=1))
    await world.recorder.until(lambda: world.recorder.count(mid(1), 1) >= 1)
    world.apply(resource(mid(1), version=2))
    await world.recorder.until(lambda: world.recorder.count(mid(1), 2) >= 2)
    versions = [v for m, v in world.recorder.runs if m == mid(1)]
    assert versions == sorted(versions)  # never the old version after the new one arrived


async def test_removal_stops_at_once_even_mid_execution(world: World) -> None:
    world.recorder.gate.clear()  # executions block
    world.apply(resource(mid(1)), resource(mid(2)))
    await world.recorder.until(lambda: world.recorder.in_flight == 2)
    world.apply(removals=(mid(1),))
    # cancelled by the apply itself: the execution sees it on its next turn of the event loop (bounded in turns, not
    # in seconds: no timer may stand between the removal and the cancellation)
    for _ in range(3):
        await asyncio.sleep(0)
    assert world.recorder.cancelled == [mid(1)]
    assert world.scheduler.scheduled == 1
    world.recorder.gate.set()
    await world.recorder.until(lambda: world.recorder.count(mid(2)) >= 3)
    assert world.recorder.count(mid(1)) == 1
    assert mid(1) not in {r.monitor_id for r in world.recorder.reported}  # the cancelled run reported nothing
    assert (
        world.registry.get_sample_value("monitor_executions_total", {"monitor_id": mid(1), "status": "success"}) is None
    )


async def test_a_removed_monitors_series_are_dropped(world: World) -> None:
    world.apply(resource(mid(1)), resource(mid(2)))
    await world.recorder.until(lambda: {r.monitor_id for r in world.recorder.reported} == {mid(1), mid(2)})
    series = {"monitor_id": mid(1), "status": "success"}
    assert world.registry.get_sample_value("monitor_executions_total", series)
    world.apply(removals=(mid(1),))
    assert world.registry.get_sample_value("monitor_executions_total", series) is None
    assert world.registry.get_sample_value("monitor_execution_duration_seconds_count", {"monitor_id": mid(1)}) is None
    assert world.registry.get_sample_value("monitor_executions_total", {"monitor_id": mid(2), "status": "success"})


async def test_a_disabled_upsert_and_a_flush_stop_everything(world: World) -> None:
    world.apply(resource(mid(1)), resource(mid(2)))
    await world.recorder.until(lambda: world.recorder.count(mid(1)) >= 1 and world.recorder.count(mid(2)) >= 1)
    disabled = resource(mid(1), version=2)
    disabled.monitor.enabled = False
    world.apply(disabled)
    assert world.scheduler.scheduled == 1
    world.store.flush()
    assert world.scheduler.scheduled == 0
    before = len(world.recorder.runs)
    world.apply(resource(mid(3)))  # still live after a flush
    await world.recorder.until(lambda: world.recorder.count(mid(3)) >= 1)
    assert {m for m, _ in world.recorder.runs[before:]} == {mid(3)}


async def test_executions_of_one_monitor_never_overlap_and_the_limit_holds() -> None:
    w = World(scale=0.0005, max_concurrent=2)  # slots every 30 ms, far shorter than the blocked executions
    w.recorder.gate.clear()
    w.scheduler.start()
    try:
        w.apply(*(resource(mid(n)) for n in range(1, 6)))
        await w.recorder.until(lambda: w.recorder.in_flight == 2)
        await asyncio.sleep(0.2)  # several slots pass while two executions block
        assert w.recorder.in_flight == 2
        assert len(w.recorder.runs) == 2
        w.recorder.gate.set()
        await w.recorder.until(lambda: all(w.recorder.count(mid(n)) >= 2 for n in range(1, 6)))
        assert w.recorder.most_in_flight == 2
    finally:
        await w.scheduler.stop()


async def test_monitors_held_before_start_run_and_stop_cancels() -> None:
    w = World(scale=0.002)
    w.apply(resource(mid(9)))
    assert w.scheduler.scheduled == 0  # not started yet
    w.scheduler.start()
    await w.recorder.until(lambda: w.recorder.count(mid(9)) >= 1)
    await w.scheduler.stop()
    runs = len(w.recorder.runs)
    await asyncio.sleep(0.3)
    assert len(w.recorder.runs) == runs
