"""A browser event's wait condition and the validation rules checked on the page (see
:mod:`engine_worker.browser_execution`). Failures raise :class:`Failed` with a reason built from the definition."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from credvault.v1 import monitors_pb2 as mpb

__all__ = ["DEFAULT_WAIT_MS", "Failed", "check", "wait_for"]

DEFAULT_WAIT_MS = 10_000


class Failed(Exception):
    """An event or a check failed; the message is a reason to report (scrubbed before it is)."""


async def wait_for(page: Page, wait: mpb.BrowserWait | None) -> None:
    """Waits for the condition (unset: the page's load event), or raises Failed naming it."""
    timeout = (wait.timeout_ms if wait is not None else 0) or DEFAULT_WAIT_MS
    which = wait.WhichOneof("condition") if wait is not None else None
    try:
        if wait is None or which is None or which == "load_state":
            network_idle = wait is not None and wait.load_state == mpb.BROWSER_LOAD_STATE_NETWORK_IDLE
            await page.wait_for_load_state("networkidle" if network_idle else "load", timeout=timeout)
        elif which == "fixed_ms":
            await asyncio.sleep(wait.fixed_ms / 1000)
        elif which == "element_selector":
            await page.locator(wait.element_selector).first.wait_for(state="visible", timeout=timeout)
        elif which == "element_text":
            target = page.locator(wait.element_text.selector).filter(has_text=wait.element_text.text)
            await target.first.wait_for(state="visible", timeout=timeout)
        elif which == "javascript_condition":
            await page.wait_for_function(wait.javascript_condition, timeout=timeout)
    except PlaywrightTimeoutError:
        raise Failed(f"timed out after {timeout} ms waiting for {_condition(wait)}") from None
    except PlaywrightError:
        raise Failed(f"failed waiting for {_condition(wait)} (the page is gone or the condition is invalid)") from None


def _condition(wait: mpb.BrowserWait | None) -> str:
    which = wait.WhichOneof("condition") if wait is not None else None
    if wait is None or which is None:
        return "the page to load"
    if which == "load_state":
        return (
            "the network to be idle" if wait.load_state == mpb.BROWSER_LOAD_STATE_NETWORK_IDLE else "the page to load"
        )
    if which == "element_selector":
        return f"element {wait.element_selector}"
    if which == "element_text":
        return f"element {wait.element_text.selector} with text {wait.element_text.text!r}"
    if which == "javascript_condition":
        return "the JavaScript condition"
    return "the fixed time"


async def check(page: Page, main_status: int, rules: Iterable[mpb.BrowserValidation], *, navigated: bool) -> None:
    """Raises Failed with the first rule that does not hold. After a navigation and without a status rule, a main
    document status of 400 or more fails."""
    rules = list(rules)
    has_status_rule = any(r.WhichOneof("rule") == "main_document_status_in" for r in rules)
    if navigated and not has_status_rule and main_status >= 400:
        raise Failed(f"main document HTTP status {main_status}")
    text: str | None = None
    try:
        for rule in rules:
            which = rule.WhichOneof("rule")
            if which == "main_document_status_in" and main_status not in rule.main_document_status_in.codes:
                expected = ", ".join(str(c) for c in rule.main_document_status_in.codes)
                raise Failed(f"main document HTTP status {main_status}, expected one of {expected}")
            if which in ("text_present", "text_absent"):
                if text is None:
                    text = await page.locator("body").inner_text(timeout=DEFAULT_WAIT_MS)
                wanted = getattr(rule, which)
                if (wanted in text) != (which == "text_present"):
                    verb = "does not show" if which == "text_present" else "shows"
                    raise Failed(f"the page {verb} the text {wanted!r}")
            if which in ("element_present", "element_absent"):
                selector = getattr(rule, which)
                present = await page.locator(selector).count() > 0
                if present != (which == "element_present"):
                    verb = "has no" if which == "element_present" else "has an"
                    raise Failed(f"the page {verb} element {selector}")
    except PlaywrightError:
        raise Failed("the page could not be read for validation (it is gone, or a selector is invalid)") from None
