"""The engine worker: one object that owns an engine's parts and supervises their tasks.

:meth:`EngineWorker.run` serves until :meth:`EngineWorker.shutdown` (or cancellation, or a task failing): the stream
to the vault and the scheduler's timer loop run in one :class:`asyncio.TaskGroup`, so that either failing ends the
worker instead of leaving it half alive. The status server is an aiohttp site (aiohttp serves it, there is no task of
ours) and the result reporter is a buffer the stream drains in its session: both are started and stopped around the
task group. On the way out, whatever the reason, every held secret is wiped. ``async with EngineWorker(...)`` wipes
on exit too, whether or not :meth:`run` ran.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType

from prometheus_client import CollectorRegistry, disable_created_metrics

from credvault import runtime
from engine_worker.browser_execution import BrowserExecutor, BrowserSettings
from engine_worker.browser_runtime import BrowserRuntime, find_chromium
from engine_worker.config_store import ConfigStore
from engine_worker.execution_metrics import BrowserMetrics, ExecutionMetrics
from engine_worker.http_execution import HttpExecutor
from engine_worker.result_reporter import ResultReporter
from engine_worker.scheduler import Scheduler
from engine_worker.settings import Settings
from engine_worker.status import StatusServer
from engine_worker.stream import EngineStream, StreamSettings
from engine_worker.target_tls import TargetTls
from engine_worker.tls import ClientCertificate, check_tls_files, mtls_channel_factory

__all__ = ["EngineWorker", "browser_runtime_for"]

log = logging.getLogger("engine_worker")


def browser_runtime_for(chromium_path: str, metrics: BrowserMetrics) -> BrowserRuntime | None:
    """The browser for browser monitors, or None without Chromium (they are NOT_EXECUTABLE then)."""
    executable = find_chromium(chromium_path)
    if executable is None:
        log.warning("no Chromium at %s: browser monitors will not run (see --chromium-path)", chromium_path)
        return None
    return BrowserRuntime(executable, metrics)


class EngineWorker:
    """An engine built from its settings (the TLS files are checked here: a ValueError says what to fix)."""

    def __init__(self, settings: Settings) -> None:
        self.identity = check_tls_files(settings.cert, settings.key, settings.ca)
        self.store = ConfigStore(location_id=self.identity.location_id)
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: there are many per monitor
        registry = CollectorRegistry(auto_describe=True)
        metrics = ExecutionMetrics(registry)
        self.results = ResultReporter(on_drop=metrics.results_dropped.inc)
        certificate = ClientCertificate(settings.cert, settings.key, settings.ca)
        self.stream = EngineStream(
            self.store,
            self.identity,
            mtls_channel_factory(
                settings.vault, settings.cert, settings.key, settings.ca, self.identity, certificate=certificate
            ),
            StreamSettings(
                heartbeat_interval=settings.heartbeat_interval,
                max_disconnected=settings.max_disconnected,
                certificate_check_interval=settings.certificate_check_interval,
            ),
            results=self.results,
            certificate=certificate,
        )
        self.browser_metrics = BrowserMetrics(registry)
        self.browser = browser_runtime_for(settings.chromium_path, self.browser_metrics)
        browser = None
        if self.browser is not None:
            browser = BrowserExecutor(
                self.store,
                self.browser,
                BrowserSettings(max_concurrent=settings.max_concurrent_browser_executions),
                self.browser_metrics,
            ).execute
        self.scheduler = Scheduler(
            self.store,
            HttpExecutor(self.store, TargetTls(settings.target_ca), browser=browser).execute,
            self.results.add,
            metrics=metrics,
            interval_scale=settings.interval_scale,
            max_concurrent=settings.max_concurrent_executions,
        )
        self.status = StatusServer(
            self.store, self.identity, lambda: self.stream.state, settings.status_listen, registry
        )
        self._stop = asyncio.Event()
        self._started = False
        self._finished = asyncio.Event()

    async def __aenter__(self) -> EngineWorker:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()
        if self._started:
            await self._finished.wait()
        else:
            await self._close()

    def shutdown(self) -> None:
        """Asks :meth:`run` to stop (idempotent; safe from a signal handler): it ends its tasks, then wipes."""
        self._stop.set()

    async def run(self) -> None:
        """Serves until :meth:`shutdown`, cancellation or a task failing (then a RuntimeError naming the task, from
        its exception); always wipes the held secrets on the way out. Binding the status port may raise OSError."""
        self._started = True
        log.info("engine %s", self.identity.spiffe_uri)
        try:
            await self.status.start()
            if self.browser is not None:
                await self.browser.start()
            runtime.tune_gc_for_serving()
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [
                        group.create_task(self._supervised("the stream loop", self.stream.run), name="engine-stream"),
                        group.create_task(self._supervised("the scheduler", self.scheduler.run), name="scheduler"),
                    ]
                    await self._stop.wait()
                    for task in tasks:
                        task.cancel()
            except ExceptionGroup as failed:
                first = failed.exceptions[0]
                raise first from first.__cause__
            log.info("stopping")
        finally:
            await self._close()
            self._finished.set()

    async def _supervised(self, what: str, work: Callable[[], Awaitable[None]]) -> None:
        """Runs ``work``; its end, whatever it is, ends the worker."""
        try:
            await work()
        except Exception as exc:
            raise RuntimeError(f"{what} stopped unexpectedly") from exc
        finally:
            self._stop.set()

    async def _close(self) -> None:
        await self.scheduler.stop()
        if self.browser is not None:
            await self.browser.close()
        count = self.store.flush()
        log.info("wiped %d held monitors and credentials", count)
        await self.status.stop()
