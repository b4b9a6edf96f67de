"""One execution of a held browser monitor in the worker's Chromium, as a ``MonitorResult``.

An execution opens a fresh context (see :mod:`engine_worker.browser_runtime`), opens the script's URL, runs its events
in order (each followed by its wait condition and its validations), checks the final validations, and closes the
context. The whole run is cut at the monitor's timeout. At most ``max_concurrent`` executions run at a time.

Secrets: credential values are read from the :class:`~engine_worker.config_store.ConfigStore` when an event needs
them (so an overwritten credential is typed by the next execution, without a restart) and typed into the page from
memory; the HTTP login goes in the context's ``http_credentials``. Failure reasons are built from the definition
(event number, description, selector), never from exception text, and scrubbed of every value the execution looked
up as a second line (as :mod:`engine_worker.http_execution` does). On a failure, a screenshot of the page is taken
with every element that received a credential masked; it is dropped (with a note) when larger than the bound.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import time
import urllib.parse

from playwright.async_api import ConsoleMessage, HttpCredentials, Locator, Page, Request, Response
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from credvault.formats import PLACEHOLDER
from credvault.v1 import credentials_pb2
from credvault.v1 import monitors_pb2 as mpb
from engine_worker.browser_checks import Failed, check, wait_for
from engine_worker.browser_runtime import BrowserRuntime, BrowserUnavailable
from engine_worker.config_store import ConfigStore, HeldMonitor
from engine_worker.execution_metrics import BrowserMetrics
from engine_worker.looked_up_secrets import LookedUpSecrets

__all__ = ["BrowserExecutor", "BrowserSettings", "default_max_concurrent"]

DEFAULT_SCRIPT_TIMEOUT_MS = 60_000
DEFAULT_EVENT_TIMEOUT_MS = 10_000
_SCREENSHOT_TIMEOUT = 5.0
_NET_ERROR = re.compile(r"net::ERR_[A-Z_]+")
MAX_FAILED_URLS = 10
_MAX_SHOWN_URL = 500


def default_max_concurrent() -> int:
    """One browser execution per CPU (each takes about a core while a page loads)."""
    return max(os.cpu_count() or 1, 1)


@dataclasses.dataclass(frozen=True)
class BrowserSettings:
    max_concurrent: int = dataclasses.field(default_factory=default_max_concurrent)
    max_screenshot_bytes: int = 512 * 1024


class _Run:
    """What one execution saw of its page: the main document's status, page errors, the first failed requests
    (``<status or net::ERR_ code> <URL>``, query values hidden by :func:`_shown_url`; credential values are scrubbed
    when they go into the result), and the elements that received a credential (masked in the screenshot)."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.main_status = 0
        self.console_errors = 0
        self.failed_requests = 0
        self.failed_urls: list[str] = []
        self.masks: list[Locator] = []
        page.on("response", self._response)
        page.on("console", self._console)
        page.on("pageerror", self._page_error)
        page.on("requestfailed", self._request_failed)

    def _response(self, response: Response) -> None:
        if response.frame == self.page.main_frame and response.request.is_navigation_request():
            self.main_status = response.status
        elif response.status >= 400:
            self._failed(str(response.status), response.url)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors += 1

    def _page_error(self, _error: object) -> None:
        self.console_errors += 1

    def _request_failed(self, request: Request) -> None:
        code = _NET_ERROR.search(request.failure or "")
        self._failed(code.group(0) if code is not None else "failed", request.url)

    def _failed(self, why: str, url: str) -> None:
        self.failed_requests += 1
        if len(self.failed_urls) < MAX_FAILED_URLS:
            self.failed_urls.append(f"{why} {_shown_url(url)}")


def _shown_url(url: str) -> str:
    """``url`` as a result may show it: no user information or fragment, every query value as ``*`` (a query often
    carries a session or a token the monitor never named), and at most ``_MAX_SHOWN_URL`` characters. A ``data:`` or
    other non-network URL shows only its scheme."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https", "ws", "wss"):
        return f"{parts.scheme}:…"
    query = "&".join(f"{pair.partition('=')[0]}=*" if "=" in pair else pair for pair in parts.query.split("&"))
    shown = urllib.parse.urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, query, ""))
    return shown if len(shown) <= _MAX_SHOWN_URL else shown[: _MAX_SHOWN_URL - 1] + "…"


def _what(index: int, event: mpb.BrowserEvent) -> str:
    """How a failure names an event: its number and description, or what it does (from the definition)."""
    if event.description:
        return f"event {index + 1} ({event.description})"
    kind = event.WhichOneof("event")
    if kind == "navigate_url":
        return f"event {index + 1} (navigate to {event.navigate_url})"
    if kind == "click_selector":
        return f"event {index + 1} (click {event.click_selector})"
    if kind == "keystroke":
        return f"event {index + 1} (keystrokes into {event.keystroke.selector})"
    if kind == "select_option":
        return f"event {index + 1} (select an option of {event.select_option.selector})"
    return f"event {index + 1} (JavaScript)"


def _reason(exc: PlaywrightError, doing: str, timeout_ms: int) -> str:
    """A reason for a Playwright error, from its class and at most a ``net::ERR_…`` code (never its text)."""
    if isinstance(exc, PlaywrightTimeoutError):
        return f"timed out after {timeout_ms} ms {doing}"
    code = _NET_ERROR.search(str(exc))
    if code is not None:
        return f"{doing}: {code.group(0)}"
    return f"failed {doing} (the page, context or browser is gone, or the page refused it)"


class BrowserExecutor:
    """Runs held browser monitors; ``runtime`` owns the browser."""

    def __init__(
        self,
        store: ConfigStore,
        runtime: BrowserRuntime,
        settings: BrowserSettings | None = None,
        metrics: BrowserMetrics | None = None,
    ) -> None:
        self._store = store
        self._runtime = runtime
        self._settings = settings or BrowserSettings()
        self._metrics = metrics
        self._slots = asyncio.Semaphore(self._settings.max_concurrent)

    async def execute(self, held: HeldMonitor) -> mpb.MonitorResult:
        script = held.monitor.browser
        result = mpb.MonitorResult(monitor_id=held.id, monitor_version=held.monitor_version)
        async with self._slots:
            started_wall, started = time.time(), time.perf_counter()
            result.start_time.FromNanoseconds(int(started_wall * 1e9))
            substitutions = LookedUpSecrets()
            try:
                await self._execute(script, result, substitutions)
            finally:
                substitutions.clear()
                result.duration_ms = (time.perf_counter() - started) * 1000
        if self._metrics is not None:
            self._metrics.record(result)
        return result

    async def _execute(
        self, script: mpb.BrowserScript, result: mpb.MonitorResult, substitutions: LookedUpSecrets
    ) -> None:
        result.status = mpb.EXECUTION_STATUS_FAILED
        try:
            login = self._login(script.login_credential_id, substitutions) if script.login_credential_id else None
            async with self._runtime.context(login) as context:
                run = _Run(await context.new_page())
                try:
                    timeout_ms = script.timeout_ms or DEFAULT_SCRIPT_TIMEOUT_MS
                    try:
                        async with asyncio.timeout(timeout_ms / 1000):
                            await self._steps(script, run, result, substitutions)
                    except TimeoutError:
                        step = result.events[-1] if result.events else None
                        reason = f"cut at the monitor's timeout of {timeout_ms} ms"
                        if step is not None:
                            step.failure_reason = reason
                        raise Failed(reason) from None
                    result.status = mpb.EXECUTION_STATUS_SUCCESS
                except Failed as exc:
                    result.failure_reason = substitutions.scrub(str(exc))
                    await self._screenshot(run, result)
                finally:
                    result.main_document_status = run.main_status
                    result.console_errors = run.console_errors
                    result.failed_requests = run.failed_requests
                    result.failed_request_urls.extend(substitutions.scrub(url) for url in run.failed_urls)
        except Failed as exc:  # before the page existed (the login credential)
            result.failure_reason = substitutions.scrub(str(exc))
        except Exception as exc:  # BrowserUnavailable, PlaywrightError, or a plain one from a dead driver
            reason = str(exc) if isinstance(exc, BrowserUnavailable) else "the browser or its driver failed"
            result.status = mpb.EXECUTION_STATUS_FAILED
            result.failure_reason = substitutions.scrub(reason)

    async def _steps(
        self, script: mpb.BrowserScript, run: _Run, result: mpb.MonitorResult, substitutions: LookedUpSecrets
    ) -> None:
        opening = mpb.BrowserEvent(description=f"open {script.url}", navigate_url=script.url)
        steps = [(-1, opening), *enumerate(script.events)]
        for index, event in steps:
            step = result.events.add(index=index, description=event.description)
            started = time.perf_counter()
            what = f"opening {script.url}" if index < 0 else _what(index, event)
            try:
                await self._event(event, run, substitutions)
                await wait_for(run.page, event.wait if event.HasField("wait") else None)
                await check(run.page, run.main_status, event.validation, navigated=event.HasField("navigate_url"))
                step.success = True
            except Failed as exc:
                step.failure_reason = substitutions.scrub(str(exc))
                raise Failed(f"{what}: {step.failure_reason}") from None
            except PlaywrightError as exc:
                step.failure_reason = substitutions.scrub(_reason(exc, _doing(event), _timeout_of(event)))
                raise Failed(f"{what}: {step.failure_reason}") from None
            finally:
                step.duration_ms = (time.perf_counter() - started) * 1000
        try:
            await check(run.page, run.main_status, script.validation, navigated=True)
        except Failed as exc:
            raise Failed(f"final validation: {substitutions.scrub(str(exc))}") from None

    async def _event(self, event: mpb.BrowserEvent, run: _Run, substitutions: LookedUpSecrets) -> None:
        page, timeout = run.page, _timeout_of(event)
        kind = event.WhichOneof("event")
        if kind == "navigate_url":
            await page.goto(self._substitute(event.navigate_url, substitutions), timeout=timeout, wait_until="commit")
        elif kind == "click_selector":
            await page.locator(event.click_selector).first.click(timeout=timeout)
        elif kind == "select_option":
            await page.locator(event.select_option.selector).first.select_option(
                value=event.select_option.value, timeout=timeout
            )
        elif kind == "javascript":
            await page.evaluate(event.javascript)
        elif kind == "keystroke":
            keystroke = event.keystroke
            target = page.locator(keystroke.selector).first
            if keystroke.WhichOneof("text") == "credential":
                text = self._field(keystroke.credential, substitutions)
                run.masks.append(page.locator(keystroke.selector))  # masked before anything is typed
            else:
                text = keystroke.literal
            await target.fill("", timeout=timeout)
            await target.press_sequentially(text, timeout=timeout)

    async def _screenshot(self, run: _Run, result: mpb.MonitorResult) -> None:
        try:
            async with asyncio.timeout(_SCREENSHOT_TIMEOUT):
                png = await run.page.screenshot(
                    type="png", mask=run.masks, animations="disabled", caret="hide", timeout=_SCREENSHOT_TIMEOUT * 1000
                )
        except (PlaywrightError, TimeoutError):
            result.screenshot_note = "no screenshot: the page did not answer"
            return
        if len(png) > self._settings.max_screenshot_bytes:
            result.screenshot_note = (
                f"screenshot dropped: {len(png)} bytes, more than the bound of {self._settings.max_screenshot_bytes}"
            )
        else:
            result.screenshot_png = png

    # --- credentials -------------------------------------------------------------------------------------------

    def _details(self, credential_id: str, substitutions: LookedUpSecrets) -> credentials_pb2.CredentialDetails:
        details = substitutions.look_up(self._store, credential_id)
        if details is None:
            raise Failed(f"credential {credential_id} is not held by this engine")
        return details

    def _login(self, credential_id: str, substitutions: LookedUpSecrets) -> HttpCredentials:
        details = self._details(credential_id, substitutions)
        if details.WhichOneof("details") != "username_password":
            raise Failed(f"the login credential {credential_id} is not a username and password")
        pair = details.username_password
        return {"username": pair.username, "password": pair.password}  # DOMAIN\user as typed

    def _field(self, field: mpb.CredentialField, substitutions: LookedUpSecrets) -> str:
        details = self._details(field.credential_id, substitutions)
        kind = details.WhichOneof("details")
        if not field.field and kind == "token":
            return str(details.token.token)
        if field.field in ("username", "password") and kind == "username_password":
            return str(getattr(details.username_password, field.field))
        raise Failed(f"credential {field.credential_id} does not have the field typed")

    def _substitute(self, text: str, substitutions: LookedUpSecrets) -> str:
        if "{{" not in text:
            return text

        def value(match: re.Match[str]) -> str:
            return self._field(
                mpb.CredentialField(credential_id=match.group(1), field=match.group(2) or ""), substitutions
            )

        return PLACEHOLDER.sub(value, text)


def _timeout_of(event: mpb.BrowserEvent) -> int:
    return event.wait.timeout_ms if event.HasField("wait") and event.wait.timeout_ms else DEFAULT_EVENT_TIMEOUT_MS


def _doing(event: mpb.BrowserEvent) -> str:
    kind = event.WhichOneof("event")
    return {
        "navigate_url": "loading the page",
        "click_selector": f"clicking {event.click_selector}",
        "keystroke": f"typing into {event.keystroke.selector}",
        "select_option": f"selecting in {event.select_option.selector}",
        "javascript": "running the JavaScript",
    }.get(kind or "", "running the event")
