"""The worker's one long-lived headless Chromium (the distribution's executable, driven by Playwright), and a fresh
context per execution.

The browser is started on first use and started again when it has died (a crash, a killed process) or a context
would not close (a wedged browser is closed, then replaced). Every execution gets its own ``new_context()``: an
off-the-record browser context, so cookies, storage, cache and service workers (blocked anyway) live in memory and
die with it; no two executions or monitors share any. The browser itself runs with Playwright's throw-away profile
directory and nothing written by the contexts (no disk cache, no crash dumps).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import AsyncIterator

from playwright.async_api import Browser, BrowserContext, HttpCredentials, Playwright, async_playwright

from engine_worker.execution_metrics import BrowserMetrics

__all__ = ["BrowserRuntime", "BrowserUnavailable", "find_chromium"]

log = logging.getLogger(__name__)

# Nothing on disk but Playwright's temporary profile, no background traffic, no crash dumps (they would hold memory).
_ARGS = (
    "--disk-cache-size=1",
    "--media-cache-size=1",
    "--disable-breakpad",
    "--disable-crash-reporter",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--password-store=basic",
    "--disable-features=AutofillServerCommunication,PasswordManagerOnboarding",
)
_DRIVER_DEBUGGING = ("DEBUG", "PWDEBUG", "DEBUG_FILE")
_CLOSE_TIMEOUT = 10.0
_LAUNCH_TIMEOUT_MS = 30_000


class BrowserUnavailable(Exception):
    """The browser could not be started (the message is safe to report: it holds no page data)."""


def _drop_driver_debugging() -> None:
    """Playwright's driver inherits this process's environment, and with DEBUG=pw:api (or PWDEBUG) it writes every
    call with its arguments, typed secrets included, to the worker's log: those variables are removed first."""
    for name in _DRIVER_DEBUGGING:
        if os.environ.pop(name, None) is not None:
            log.warning("ignored %s: Playwright's debugging output would show typed credentials", name)


def find_chromium(path: str) -> str | None:
    """The executable for ``--chromium-path`` (a name on PATH or a path), or None when there is none."""
    return shutil.which(path)


class BrowserRuntime:
    """One Chromium for the worker; :meth:`context` hands out a fresh context, :meth:`close` ends it all."""

    def __init__(self, executable: str, metrics: BrowserMetrics | None = None) -> None:
        self._executable = executable
        self._metrics = metrics
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self._launches = 0
        self._lock = asyncio.Lock()

    @property
    def launches(self) -> int:
        """How many times a browser was started (the first time included)."""
        return self._launches

    async def _current(self) -> Browser:
        async with self._lock:
            browser = self._browser
            if browser is not None and browser.is_connected():
                return browser
            if browser is not None:
                await self._discard(browser)
            try:
                browser = await self._launch()
            except Exception:  # a dead driver raises plain exceptions: once more with a new driver
                await self._stop_playwright()  # a driver that failed once is not trusted again
                try:
                    browser = await self._launch()
                except Exception:
                    await self._stop_playwright()
                    raise BrowserUnavailable(f"the browser ({self._executable}) could not be started") from None
            self._launches += 1
            if self._launches > 1:
                log.warning("browser started again (it had died or hung)")
                if self._metrics is not None:
                    self._metrics.restarts.inc()
            self._browser = browser
            return browser

    async def _launch(self) -> Browser:
        if self._playwright is None:
            _drop_driver_debugging()
            self._playwright = await async_playwright().start()
        return await self._playwright.chromium.launch(
            executable_path=self._executable,
            headless=True,
            args=list(_ARGS),
            handle_sigint=False,
            handle_sigterm=False,
            handle_sighup=False,
            timeout=_LAUNCH_TIMEOUT_MS,
        )

    async def start(self) -> None:
        """Starts Playwright's driver now; the worker does, before its gRPC stream runs: the driver is a child of
        this process, and forking while gRPC's threads poll crashed the child (the browser, started on first use,
        is a child of the driver). A failure is logged; executions try again."""
        _drop_driver_debugging()
        async with self._lock:
            try:
                if self._playwright is None:
                    self._playwright = await async_playwright().start()
            except Exception:  # the driver did not start (Playwright raises plain exceptions for that)
                log.warning("the browser driver did not start; browser monitors will try again")

    @contextlib.asynccontextmanager
    async def context(self, http_credentials: HttpCredentials | None = None) -> AsyncIterator[BrowserContext]:
        """A fresh context (with HTTP authentication credentials when given), closed on the way out; a context
        that does not close in time takes the browser with it (the next execution starts another)."""
        browser = await self._current()
        try:
            context = await browser.new_context(
                http_credentials=http_credentials, service_workers="block", accept_downloads=False
            )
        except Exception:  # PlaywrightError, or a plain one from a dead driver
            raise BrowserUnavailable("the browser did not open a context") from None
        if self._metrics is not None:
            self._metrics.contexts_open.inc()
        try:
            yield context
        finally:
            if self._metrics is not None:
                self._metrics.contexts_open.dec()
            await self._close_context(browser, context)

    async def _close_context(self, browser: Browser, context: BrowserContext) -> None:
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await context.close()
        except Exception:  # PlaywrightError, TimeoutError, or a plain one from a dead driver
            if browser.is_connected():
                log.warning("a browser context did not close: closing the browser")
                async with self._lock:
                    if self._browser is browser:
                        await self._discard(browser)

    async def _discard(self, browser: Browser) -> None:
        self._browser = None
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await browser.close()

    async def _stop_playwright(self) -> None:
        playwright, self._playwright = self._playwright, None
        if playwright is not None:
            with contextlib.suppress(Exception):
                await playwright.stop()

    async def close(self) -> None:
        async with self._lock:
            if self._browser is not None:
                await self._discard(self._browser)
            await self._stop_playwright()
