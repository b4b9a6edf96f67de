"""Browser monitors that go wrong give a clean FAILED result naming the event, and the next execution works: a page
that never finishes loading (cut at the monitor's timeout), a browser killed mid-run (started again), a wrong
selector. The failure screenshot masks every element that received a credential: two secrets typed into the same
field give pixel-identical screenshots, while two literal texts (not masked) give different ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from prometheus_client import CollectorRegistry

from credvault.v1 import engine_pb2 as epb
from credvault.v1 import monitors_pb2 as mpb
from engine_worker.browser_runtime import BrowserRuntime
from engine_worker.execution_metrics import BrowserMetrics
from engine_worker.http_execution import NOT_EXECUTABLE_REASON, HttpExecutor
from engine_worker.target_tls import TargetTls
from engine_worker.worker import browser_runtime_for
from tests.browser_monitors import (
    TOKEN,
    BrowserEngine,
    browser_monitor,
    browser_processes,
    click,
    kill_browsers,
    kill_driver,
    literal,
    shows,
    token,
    typed,
)
from tests.browser_pages import Pages

SUCCESS, FAILED = mpb.EXECUTION_STATUS_SUCCESS, mpb.EXECUTION_STATUS_FAILED
M1, M2 = "SYNTHETIC_TEST-00000000000000F1", "SYNTHETIC_TEST-00000000000000F2"
SECRET_A = "canary-mask-AAAAAAAAAAAA"
SECRET_B = "canary-mask-WWWWWWWWWWWW"


@pytest.fixture
async def pages() -> AsyncIterator[Pages]:
    site = Pages(token=SECRET_A)
    await site.start()
    yield site
    await site.stop()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def engine(registry: CollectorRegistry) -> AsyncIterator[BrowserEngine]:
    e = BrowserEngine(BrowserMetrics(registry))
    yield e
    await e.close()


def working(pages: Pages) -> epb.MonitorResource:
    return browser_monitor(M2, pages.url("/field"), validation=[shows("Type here:")])


async def test_a_page_that_never_finishes_loading_is_cut_at_the_timeout(pages: Pages, engine: BrowserEngine) -> None:
    hanging = browser_monitor(M1, pages.url("/hanging"), timeout_ms=2000)
    result = await engine.run(hanging)
    assert result.status == FAILED
    assert result.failure_reason == "cut at the monitor's timeout of 2000 ms"
    assert result.events[0].failure_reason == "cut at the monitor's timeout of 2000 ms"
    assert result.screenshot_png.startswith(b"\x89PNG")  # the page is still there to show
    assert (await engine.run(working(pages))).status == SUCCESS


async def test_a_wrong_selector_fails_that_event(pages: Pages, engine: BrowserEngine) -> None:
    wait = mpb.BrowserWait(timeout_ms=500)
    monitor = browser_monitor(M1, pages.url("/select"), click("#s"), click("#missing", description="press", wait=wait))
    result = await engine.run(monitor)
    assert result.status == FAILED
    assert result.failure_reason == "event 2 (press): timed out after 500 ms clicking #missing"
    assert [e.success for e in result.events] == [True, True, False]
    assert (await engine.run(working(pages))).status == SUCCESS


async def killed_mid_run(pages: Pages, engine: BrowserEngine, kill: Callable[[], int]) -> mpb.MonitorResult:
    """The result of an execution of a page that never finishes loading, during which ``kill`` killed one process."""
    running = asyncio.create_task(engine.run(browser_monitor(M1, pages.url("/hanging"), timeout_ms=60_000)))
    async with asyncio.timeout(30):
        await pages.stalled.wait()
    assert kill() == 1
    return await running


async def test_a_browser_killed_mid_run_fails_the_execution_and_is_started_again(
    pages: Pages, engine: BrowserEngine, registry: CollectorRegistry
) -> None:
    result = await killed_mid_run(pages, engine, kill_browsers)
    assert result.status == FAILED
    assert result.failure_reason.startswith("opening ")
    assert (await engine.run(working(pages))).status == SUCCESS
    assert engine.runtime.launches == 2
    assert registry.get_sample_value("browser_restarts_total") == 1
    assert registry.get_sample_value("browser_contexts_open") == 0
    assert registry.get_sample_value("browser_executions_total", {"status": "failed"}) == 1
    assert len(browser_processes()) == 1


async def test_the_failure_screenshot_masks_typed_credentials(pages: Pages, engine: BrowserEngine) -> None:
    versions = iter(range(1, 10))

    def failing(event: mpb.BrowserEvent) -> epb.MonitorResource:
        return browser_monitor(M1, pages.url("/field"), event, version=next(versions), validation=[shows("never")])

    shots = []
    for secret, version in ((SECRET_A, 1), (SECRET_B, 2)):
        result = await engine.run(failing(typed("#f", TOKEN)), token(secret, version=version))
        assert result.status == FAILED
        assert result.screenshot_png.startswith(b"\x89PNG")
        shots.append(result.screenshot_png)
    assert shots[0] == shots[1]  # nothing of the typed value shows
    unmasked = [(await engine.run(failing(literal("#f", text)))).screenshot_png for text in (SECRET_A, SECRET_B)]
    assert unmasked[0] != unmasked[1]  # the comparison can fail: typed text shows when not masked
    assert unmasked[0] != shots[0]


async def test_an_oversized_screenshot_is_dropped_with_a_note(pages: Pages) -> None:
    engine = BrowserEngine(max_screenshot_bytes=100)
    try:
        result = await engine.run(browser_monitor(M1, pages.url("/field"), validation=[shows("never shown")]))
    finally:
        await engine.close()
    assert result.status == FAILED
    assert not result.screenshot_png
    assert result.screenshot_note.startswith("screenshot dropped: ")


async def test_without_chromium_browser_monitors_are_not_executable(pages: Pages) -> None:
    """--chromium-path naming nothing: the worker has no browser, and the HTTP executor reports browser monitors
    NOT_EXECUTABLE with a reason that says what to install or set."""
    assert browser_runtime_for("/nonexistent/chromium", BrowserMetrics(CollectorRegistry())) is None
    engine = BrowserEngine()
    try:
        executor = HttpExecutor(engine.store, TargetTls(None))
        engine.push(browser_monitor(M1, pages.url("/field")))
        held = engine.store.monitor(M1)
        assert held is not None
        result = await executor.execute(held)
    finally:
        await engine.close()
    assert result.status == mpb.EXECUTION_STATUS_NOT_EXECUTABLE
    assert result.failure_reason == NOT_EXECUTABLE_REASON
    assert "--chromium-path" in NOT_EXECUTABLE_REASON
    assert isinstance(browser_runtime_for("chromium", BrowserMetrics(CollectorRegistry())), BrowserRuntime)


async def test_playwright_debugging_cannot_print_typed_secrets(
    pages: Pages, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """DEBUG=pw:api makes Playwright's driver print every call with its arguments: the worker drops it."""
    monkeypatch.setenv("DEBUG", "pw:api,pw:protocol")
    engine = BrowserEngine()
    try:
        await engine.runtime.start()
        result = await engine.run(browser_monitor(M1, pages.url("/field"), typed("#f", TOKEN)), token(SECRET_A))
    finally:
        await engine.close()
    assert result.status == SUCCESS, result.failure_reason
    captured = capfd.readouterr()
    assert SECRET_A not in captured.out + captured.err


async def test_a_driver_killed_mid_run_fails_the_execution_and_the_next_one_works(
    pages: Pages, engine: BrowserEngine
) -> None:
    result = await killed_mid_run(pages, engine, kill_driver)
    assert result.status == FAILED
    assert result.failure_reason
    assert (await engine.run(working(pages))).status == SUCCESS
