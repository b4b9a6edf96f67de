"""Prometheus series of monitor executions (on the status endpoint's registry): counts by outcome, failures and
duration per monitor, the scheduling delay, and what became of the results. Labels are ids, never contents."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from credvault.v1 import monitors_pb2

__all__ = ["BrowserMetrics", "ExecutionMetrics"]

_STATUS = {
    monitors_pb2.EXECUTION_STATUS_SUCCESS: "success",
    monitors_pb2.EXECUTION_STATUS_FAILED: "failed",
    monitors_pb2.EXECUTION_STATUS_NOT_EXECUTABLE: "not_executable",
}


class ExecutionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.executions = Counter(
            "monitor_executions", "Monitor executions, by outcome", ["monitor_id", "status"], registry=registry
        )
        self.failures = Counter(
            "monitor_execution_failures",
            "Failed executions",
            ["monitor_id"],
            registry=registry,
        )
        self.duration = Histogram(
            "monitor_execution_duration_seconds",
            "Wall time of one execution, all its requests",
            ["monitor_id"],
            # Few buckets: this histogram exists once per monitor (~1,000s), each bucket a series and an object.
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.schedule_delay = Histogram(
            "monitor_schedule_delay_seconds",
            "How much later than planned an execution started",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60),
            registry=registry,
        )
        self.results_dropped = Counter(
            "results_dropped", "Execution results dropped because the buffer was full", registry=registry
        )

    def record(self, result: monitors_pb2.MonitorResult) -> None:
        status = _STATUS.get(result.status, "unknown")
        self.executions.labels(result.monitor_id, status).inc()
        if result.status == monitors_pb2.EXECUTION_STATUS_FAILED:
            self.failures.labels(result.monitor_id).inc()
        self.duration.labels(result.monitor_id).observe(result.duration_ms / 1000)

    def forget(self, monitor_id: str) -> None:
        """Drops a removed monitor's series (the engine no longer runs it)."""
        for status in (*_STATUS.values(), "unknown"):
            with contextlib.suppress(KeyError):
                self.executions.remove(monitor_id, status)
        for series in (self.failures, self.duration):
            with contextlib.suppress(KeyError):
                series.remove(monitor_id)


class BrowserMetrics:
    """Series of browser monitor executions: counts by outcome and duration (not per monitor: the per-monitor series
    above cover that), browser (re)starts and the contexts open now."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.executions = Counter(
            "browser_executions", "Browser monitor executions, by outcome", ["status"], registry=registry
        )
        self.duration = Histogram(
            "browser_execution_duration_seconds",
            "Wall time of one browser monitor execution",
            buckets=(0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=registry,
        )
        self.restarts = Counter(
            "browser_restarts", "Times the browser was started again after it died or hung", registry=registry
        )
        self.contexts_open = Gauge("browser_contexts_open", "Browser contexts open now", registry=registry)

    def record(self, result: monitors_pb2.MonitorResult) -> None:
        self.executions.labels(_STATUS.get(result.status, "unknown")).inc()
        self.duration.observe(result.duration_ms / 1000)
