"""Monitor execution results: what engines report over their stream, and the bounded recent history people read.

Engines are trusted only for what their certificate says: the location and engine of a result are the stream's
identity, whatever the message claims, and results of monitors that do not run in that location are dropped.
Everything else an engine sends is bounded (counts, lengths, times) before it is stored.

Results are stored in plaintext and readable by anyone who may see the monitor, also without access to its
credentials. So every text of a result is scrubbed again here, independently of the engine, of the values this
vault resolved for the monitor (``credvault.secret_scrub``, every encoding), before it is clipped: a clipped value
would survive. What is removed is counted (``credvault_results_redacted_total``) and logged (without the value): it
means an engine leaks.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
from collections.abc import Callable, Mapping

from credvault.formats import MONITOR_ID
from credvault.secret_scrub import Scrubber
from credvault.v1 import monitors_pb2 as mpb
from vault_service.errors import InvalidArgument
from vault_service.models import Principal
from vault_service.monitors import MonitorService, check_slug
from vault_service.storage.pool import Store

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 20
MAX_LIMIT = 500
MAX_RESULTS_PER_BATCH = 1000
MAX_REQUESTS = 100
MAX_TEXT = 1000
MAX_URL = 2048
MAX_EVENTS = 250
MAX_FAILED_URLS = 10
MAX_SCREENSHOT = 512 * 1024
_PNG = b"\x89PNG\r\n\x1a\n"
# Results from further back or ahead than this are dropped (a badly set clock on the engine).
MAX_AGE = datetime.timedelta(days=1)
MAX_AHEAD = datetime.timedelta(minutes=5)

_KNOWN_STATUSES = {mpb.EXECUTION_STATUS_SUCCESS, mpb.EXECUTION_STATUS_FAILED, mpb.EXECUTION_STATUS_NOT_EXECUTABLE}


# The secret values the vault resolved for a monitor (value -> placeholder to show), by monitor id.
SecretsOf = Callable[[str], Mapping[str, str]]


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _duration(value: float) -> float:
    return value if math.isfinite(value) and value >= 0 else 0.0


def sanitized(result: mpb.MonitorResult, now: datetime.datetime, scrubber: Scrubber) -> mpb.MonitorResult | None:
    """A bounded copy of an engine's result without location and engine (the stream sets those), its texts scrubbed
    then clipped, or None when it cannot be stored (an id that is no monitor id, an unknown status, an implausible
    start time)."""

    def text(value: str, limit: int) -> str:
        return _clip(scrubber.scrub(value), limit)

    if not MONITOR_ID.match(result.monitor_id) or result.status not in _KNOWN_STATUSES:
        return None
    try:
        started = result.start_time.ToDatetime(tzinfo=datetime.UTC)
    except (ValueError, OverflowError):
        return None
    if not now - MAX_AGE <= started <= now + MAX_AHEAD:
        return None
    out = mpb.MonitorResult(
        monitor_id=result.monitor_id,
        monitor_version=result.monitor_version,
        duration_ms=_duration(result.duration_ms),
        status=result.status,
        failure_reason=text(result.failure_reason, MAX_TEXT),
    )
    out.start_time.CopyFrom(result.start_time)
    for request in result.requests[:MAX_REQUESTS]:
        out.requests.add(
            index=request.index,
            description=text(request.description, MAX_TEXT),
            method=text(request.method, 16),
            url=text(request.url, MAX_URL),
            status_code=request.status_code if 0 <= request.status_code <= 999 else 0,
            duration_ms=_duration(request.duration_ms),
            success=request.success,
            failure_reason=text(request.failure_reason, MAX_TEXT),
        )
    _browser_part(result, out, text)
    return out


def _count(value: int) -> int:
    return min(max(value, 0), 1_000_000)


def _browser_part(result: mpb.MonitorResult, out: mpb.MonitorResult, text: Callable[[str, int], str]) -> None:
    """A browser execution's events, page figures and screenshot, bounded. A screenshot that is no PNG or too large
    is dropped with a note (its pixels cannot be scrubbed: the engine masks what received a credential)."""
    for event in result.events[:MAX_EVENTS]:
        out.events.add(
            index=max(event.index, -1),
            description=text(event.description, MAX_TEXT),
            duration_ms=_duration(event.duration_ms),
            success=event.success,
            failure_reason=text(event.failure_reason, MAX_TEXT),
        )
    out.main_document_status = result.main_document_status if 0 <= result.main_document_status <= 999 else 0
    out.console_errors = _count(result.console_errors)
    out.failed_requests = _count(result.failed_requests)
    out.failed_request_urls.extend(text(url, MAX_URL) for url in result.failed_request_urls[:MAX_FAILED_URLS])
    out.screenshot_note = text(result.screenshot_note, MAX_TEXT)
    png = result.screenshot_png
    if png and (len(png) > MAX_SCREENSHOT or not png.startswith(_PNG)):
        out.screenshot_note = (
            f"the vault dropped a screenshot of {len(png)} bytes (not a PNG, or over {MAX_SCREENSHOT})"
        )
    elif png:
        out.screenshot_png = png
        out.screenshot_size = len(png)


class ResultService:
    """Stores what engines report and serves the recent history.

    Reports are written with group commit, as ACKs are (push/ack_recorder): :meth:`submit` never waits for the
    database, the first report is written at once, and all that arrive meanwhile go into the next statement. A stream
    therefore never reads its engine's ACKs late because a results insert was in the way, and 50 engines reporting a
    few results a second cost a few statements, not one transaction each. Reports are telemetry: beyond
    ``max_pending`` queued results, or when a write fails, they are dropped (and logged), never retried forever.
    ``on_redacted(location_id, count)`` is told of each secret value removed from an engine's results.
    """

    def __init__(
        self,
        store: Store,
        monitors: MonitorService,
        keep_per_monitor: int = 100,
        max_pending: int = 20_000,
        on_redacted: Callable[[str, int], None] = lambda location_id, count: None,
    ) -> None:
        self._store = store
        self._on_redacted = on_redacted
        self._monitors = monitors
        self._keep = keep_per_monitor
        self._max_pending = max_pending
        self._pending: list[tuple[str, str, mpb.MonitorResult]] = []
        self._writer: asyncio.Task[None] | None = None

    def submit(self, location_id: str, engine_id: str, results: list[mpb.MonitorResult], secrets_of: SecretsOf) -> None:
        """Queues an engine's results (location and engine from its certificate) for the next write, scrubbed of
        the values ``secrets_of(monitor_id)`` gives (those the vault resolved for the engine's location)."""
        now = datetime.datetime.now(datetime.UTC)
        clean = []
        scrubbers: dict[str, Scrubber] = {}  # one per monitor of this batch; dropped with it
        for r in results[:MAX_RESULTS_PER_BATCH]:
            scrubber = scrubbers.get(r.monitor_id)
            if scrubber is None:
                scrubber = scrubbers[r.monitor_id] = Scrubber(secrets_of(r.monitor_id))
            if (kept := sanitized(r, now, scrubber)) is not None:
                clean.append(kept)
        self._count_redacted(location_id, engine_id, scrubbers)
        room = max(0, self._max_pending - len(self._pending))
        dropped = len(results) - min(len(clean), room)
        self._pending.extend((location_id, engine_id, r) for r in clean[:room])
        if dropped:
            log.warning(
                "engine %s/%s: dropped %d of %d results (malformed, implausible, or too many waiting)",
                location_id,
                engine_id,
                dropped,
                len(results),
            )
        if self._pending and (self._writer is None or self._writer.done()):
            self._writer = asyncio.create_task(self._write_all(), name="result-writer")

    def _count_redacted(self, location_id: str, engine_id: str, scrubbers: dict[str, Scrubber]) -> None:
        for monitor_id, scrubber in scrubbers.items():
            if scrubber.removed:
                self._on_redacted(location_id, scrubber.removed)
                log.warning(
                    "engine %s/%s: removed %d secret values from its results of monitor %s (the engine leaks them)",
                    location_id,
                    engine_id,
                    scrubber.removed,
                    monitor_id,
                )

    async def _write_all(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                async with self._store.transaction() as tx:
                    kept = await tx.insert_results(batch, self._keep)
            except Exception as exc:
                log.warning("could not store %d results: %s", len(batch), type(exc).__name__)
                continue
            if kept < len(batch):
                log.warning("dropped %d results of monitors their engines' locations do not run", len(batch) - kept)

    async def flush(self) -> None:
        """Waits for the writes queued so far (before the pool closes; tests)."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    async def recent(
        self, principal: Principal, monitor_id: str, limit: int, location_id: str, screenshots: bool = False
    ) -> list[mpb.MonitorResult]:
        """The newest results of a monitor the caller may see (NOT_FOUND otherwise, as for GetMonitor); failure
        screenshots only with ``screenshots`` (their size always)."""
        if limit < 0 or limit > MAX_LIMIT:
            raise InvalidArgument("limit", f"must be between 1 and {MAX_LIMIT} (0 for the default {DEFAULT_LIMIT})")
        if location_id:
            check_slug("location_id", location_id)
        await self._monitors.get(principal, monitor_id)
        async with self._store.autocommit() as tx:
            results = await tx.recent_results(monitor_id, location_id or None, limit or DEFAULT_LIMIT)
        if not screenshots:
            for result in results:
                result.ClearField("screenshot_png")
        return results
