"""Browser execution results through the vault: events, page figures (the first failed request URLs among them) and
the failure screenshot are stored and served (the screenshot only when asked for; its size always), bounded and
scrubbed like every result text; a screenshot that is no PNG or too large is dropped with a note. The engine's
reporter keeps batches of results with screenshots under the stream's message limit."""

from __future__ import annotations

import asyncio

from credvault.v1 import monitors_pb2 as mpb
from engine_worker.result_reporter import ResultReporter
from tests.conftest import Client, Connect
from tests.credvault.test_secret_scrub import every_form
from tests.helpers import create_req, token
from tests.vault_service.test_result_scrub_vault import SECRET_TOKEN, _assert_nowhere
from tests.vault_service.test_results import FAILED, eventually_results, prepare, report, result, results_of
from vault_service import results as vault_results

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


def browser_result(monitor_id: str, n: int, **fields: object) -> mpb.MonitorResult:
    r = result(monitor_id, n, FAILED, failure_reason="event 2 (log in): the page does not show the text 'Welcome'")
    del r.requests[:]
    r.events.add(index=-1, description="open https://shop.example/", duration_ms=120.0, success=True)
    r.events.add(index=0, description="type the password", duration_ms=30.0, success=True)
    r.events.add(index=1, description="log in", duration_ms=40.0, failure_reason="the page does not show the text")
    r.main_document_status = 200
    r.console_errors = 2
    r.failed_requests = 12
    r.failed_request_urls.extend(f"404 https://shop.example/{n}.png?s=*" for n in range(12))
    r.MergeFrom(mpb.MonitorResult(**fields))
    return r


async def test_browser_results_are_stored_and_served(admin_client: Client, connect: Connect) -> None:
    in_a, _ = await prepare(admin_client)
    engine = await connect("loc-a", "e1")
    await report(
        engine,
        browser_result(in_a, 1, screenshot_png=PNG),
        browser_result(in_a, 2, screenshot_png=b"GIF89a"),  # not a PNG
        browser_result(in_a, 3, screenshot_png=PNG[:8] + bytes(vault_results.MAX_SCREENSHOT)),  # too large
        browser_result(in_a, 4, screenshot_note="no screenshot: the page did not answer"),
    )

    await eventually_results(admin_client, in_a, 4)
    newest, too_large, not_png, with_png = await results_of(admin_client, in_a, include_screenshots=True)
    assert [(e.index, e.description, e.success) for e in with_png.events] == [
        (-1, "open https://shop.example/", True),
        (0, "type the password", True),
        (1, "log in", False),
    ]
    assert with_png.events[2].failure_reason == "the page does not show the text"
    assert (with_png.main_document_status, with_png.console_errors, with_png.failed_requests) == (200, 2, 12)
    assert list(with_png.failed_request_urls) == [f"404 https://shop.example/{n}.png?s=*" for n in range(10)]
    assert with_png.screenshot_png == PNG
    assert with_png.screenshot_size == len(PNG)
    assert not not_png.screenshot_png
    assert not_png.screenshot_note.startswith("the vault dropped a screenshot of 6 bytes")
    assert not too_large.screenshot_png
    assert newest.screenshot_note == "no screenshot: the page did not answer"
    without = (await results_of(admin_client, in_a))[3]
    assert not without.screenshot_png
    assert without.screenshot_size == len(PNG)


def test_reporter_batches_stay_under_the_byte_bound() -> None:
    async def batches() -> list[int]:
        reporter = ResultReporter(linger=0, max_batch_bytes=3 * len(PNG))
        for n in range(5):
            reporter.add(mpb.MonitorResult(monitor_id=f"m{n}", screenshot_png=PNG))
        async with asyncio.timeout(10):  # without the bound the second batch never comes
            return [len(await reporter.next_batch()) for _ in range(3)]

    assert asyncio.run(batches()) == [2, 2, 1]


async def test_the_vault_scrubs_browser_event_texts(admin_client: Client, connect: Connect) -> None:
    """An engine that puts a typed secret in an event's description, reason or the screenshot note: the vault removes
    it, in every form, before anything is stored."""
    await admin_client.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id="loc-a")))
    await admin_client.AddEngine(mpb.AddEngineRequest(location_id="loc-a", engine_id="e1"))
    tok = (await admin_client.CreateCredential(create_req("tok", token(SECRET_TOKEN)))).credential.id
    typed = mpb.Keystroke(selector="#tok", credential=mpb.CredentialField(credential_id=tok))
    definition = mpb.Monitor(
        name="b",
        frequency_minutes=1,
        location_ids=["loc-a"],
        enabled=True,
        browser=mpb.BrowserScript(url="https://shop.example/", events=[mpb.BrowserEvent(keystroke=typed)]),
    )
    monitor = (await admin_client.CreateMonitor(mpb.CreateMonitorRequest(monitor=definition))).monitor
    engine = await connect("loc-a", "e1")
    await engine.wait_until(lambda: monitor.id in engine.monitors)
    forms = " | ".join(every_form(SECRET_TOKEN).values())
    leaky = browser_result(monitor.id, 1, screenshot_note=f"no screenshot: {forms}")
    leaky.events[1].description = f"typed {SECRET_TOKEN}"
    leaky.events[2].failure_reason = f"the field shows {forms}"
    leaky.failed_request_urls[0] = f"404 https://shop.example/{SECRET_TOKEN}.png"
    await report(engine, leaky)
    stored = (await eventually_results(admin_client, monitor.id, 1))[0]
    texts = [
        stored.screenshot_note,
        *stored.failed_request_urls,
        *(t for e in stored.events for t in (e.description, e.failure_reason)),
    ]
    _assert_nowhere("stored browser result", *texts, stored.SerializeToString().decode("utf-8", "replace"))
    assert stored.events[1].description == f"typed {{{{{tok}}}}}"
    assert stored.failed_request_urls[0] == f"404 https://shop.example/{{{{{tok}}}}}.png"
