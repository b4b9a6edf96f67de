"""Browser monitors in the worker's real Chromium against real pages on loopback: a form login with a
username-password credential reaching a page behind the session cookie, a token typed into a form that the server
checks, HTTP basic with the right and a wrong credential, select and JavaScript events with wait conditions, and
isolation between executions and monitors (cookies and localStorage set and read by the page)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from credvault.formats import placeholder
from credvault.v1 import engine_pb2 as epb
from credvault.v1 import monitors_pb2 as mpb
from tests.browser_monitors import (
    PAIR,
    TOKEN,
    BrowserEngine,
    browser_monitor,
    click,
    literal,
    pair,
    shows,
    token,
    typed,
)
from tests.browser_pages import Pages

SUCCESS, FAILED = mpb.EXECUTION_STATUS_SUCCESS, mpb.EXECUTION_STATUS_FAILED
M1, M2 = "SYNTHETIC_TEST-00000000000000E1", "SYNTHETIC_TEST-00000000000000E2"
PASSWORD = "canary-browser-pw-9Xq2"
TOKEN_VALUE = "canary-browser-tok-5Rm7"


@pytest.fixture
async def pages() -> AsyncIterator[Pages]:
    site = Pages(password=PASSWORD, token=TOKEN_VALUE, basic_password=PASSWORD)
    await site.start()
    yield site
    await site.stop()


@pytest.fixture
async def engine() -> AsyncIterator[BrowserEngine]:
    e = BrowserEngine()
    yield e
    await e.close()


def login_monitor(pages: Pages, version: int = 1) -> epb.MonitorResource:
    return browser_monitor(
        M1,
        pages.url("/login"),
        typed("#user", PAIR, "username", description="type the username"),
        typed("#pass", PAIR, "password", description="type the password"),
        click("#go", description="log in", validation=[shows("Welcome alice")]),
        version=version,
        validation=[mpb.BrowserValidation(main_document_status_in=mpb.StatusCodes(codes=[200]))],
    )


async def test_form_login_reaches_the_page_behind_the_session_cookie(pages: Pages, engine: BrowserEngine) -> None:
    result = await engine.run(login_monitor(pages), pair(PASSWORD))
    assert result.status == SUCCESS, result.failure_reason
    assert [e.index for e in result.events] == [-1, 0, 1, 2]
    assert all(e.success for e in result.events)
    assert result.main_document_status == 200
    assert not result.screenshot_png
    assert PASSWORD not in str(result)
    assert PASSWORD.encode() not in result.SerializeToString()


async def test_a_wrong_password_fails_on_the_event_that_validates(pages: Pages, engine: BrowserEngine) -> None:
    result = await engine.run(login_monitor(pages), pair("not-the-password"))
    assert result.status == FAILED
    assert result.failure_reason.startswith("event 3 (log in): ")
    assert result.events[-1].index == 2
    assert not result.events[-1].success
    assert result.screenshot_png.startswith(b"\x89PNG")
    assert "not-the-password" not in str(result)


async def test_a_typed_token_reaches_the_server(pages: Pages, engine: BrowserEngine) -> None:
    monitor = browser_monitor(
        M1,
        pages.url("/token-form"),
        typed("#tok", TOKEN),
        click("#send", validation=[shows("token accepted")]),
    )
    result = await engine.run(monitor, token(TOKEN_VALUE))
    assert result.status == SUCCESS, result.failure_reason
    assert pages.tokens_seen == [TOKEN_VALUE]
    assert TOKEN_VALUE not in str(result)


async def test_http_basic_login_with_the_right_and_a_wrong_credential(pages: Pages, engine: BrowserEngine) -> None:
    monitor = browser_monitor(M1, pages.url("/basic"), login_credential_id=PAIR, validation=[shows("basic ok")])
    right = await engine.run(monitor, pair(PASSWORD))
    assert right.status == SUCCESS, right.failure_reason
    assert right.main_document_status == 200
    wrong = await engine.run(monitor, pair("wrong-basic-pw", version=2))
    assert wrong.status == FAILED
    assert wrong.main_document_status == 401
    assert "HTTP status 401" in wrong.failure_reason
    assert "wrong-basic-pw" not in str(wrong)


async def test_domain_user_is_sent_as_typed_for_basic(pages: Pages, engine: BrowserEngine) -> None:
    pages.basic_user = "CORP\\alice"
    monitor = browser_monitor(M1, pages.url("/basic"), login_credential_id=PAIR, validation=[shows("basic ok")])
    result = await engine.run(monitor, pair(PASSWORD, username="CORP\\alice"))
    assert result.status == SUCCESS, result.failure_reason


async def test_select_javascript_and_wait_conditions(pages: Pages, engine: BrowserEngine) -> None:
    wait_text = mpb.BrowserWait(element_text=mpb.ElementText(selector="#out", text="chose b"), timeout_ms=5000)
    monitor = browser_monitor(
        M1,
        pages.url("/select"),
        mpb.BrowserEvent(select_option=mpb.SelectOption(selector="#s", value="b"), wait=wait_text),
        mpb.BrowserEvent(
            javascript="document.title = 'changed'",
            wait=mpb.BrowserWait(javascript_condition="document.title === 'changed'"),
            validation=[mpb.BrowserValidation(element_present="#out"), mpb.BrowserValidation(element_absent="#nope")],
        ),
        validation=[shows("chose b"), mpb.BrowserValidation(text_absent="chose a")],
    )
    result = await engine.run(monitor)
    assert result.status == SUCCESS, result.failure_reason
    failing = browser_monitor(M2, pages.url("/select"), validation=[shows("chose b")])
    result = await engine.run(failing)
    assert result.status == FAILED
    assert result.failure_reason == "final validation: the page does not show the text 'chose b'"


async def test_executions_and_monitors_share_no_cookies_or_storage(pages: Pages, engine: BrowserEngine) -> None:
    """The page reports what cookie and localStorage it found, then sets both, and loads a script cacheable for an
    hour: every execution must find none and fetch the script again."""
    fresh = [shows("cookie-fresh storage-fresh server-fresh")]
    within = browser_monitor(
        M2,
        pages.url("/storage"),
        mpb.BrowserEvent(
            navigate_url=pages.url("/storage"), validation=[shows("cookie-seen storage-seen server-seen")]
        ),
        validation=[shows("server-seen")],
    )
    result = await engine.run(within)  # the check can fail: within one execution the page sees what it set
    assert result.status == SUCCESS, result.failure_reason
    assert pages.cached_fetches == 1  # and its cache serves the script the second time
    for fetches, monitor_id in enumerate((M1, M1, M2), start=2):
        result = await engine.run(browser_monitor(monitor_id, pages.url("/storage"), validation=fresh))
        assert result.status == SUCCESS, result.failure_reason
        assert pages.cached_fetches == fetches  # no cache shared either


async def test_literal_keystrokes(pages: Pages, engine: BrowserEngine) -> None:
    monitor = browser_monitor(
        M1,
        pages.url("/token-form"),
        literal("#tok", TOKEN_VALUE),
        click("#send", validation=[shows("token accepted")]),
    )
    assert (await engine.run(monitor)).status == SUCCESS


async def test_no_typed_secret_in_any_log_record(
    pages: Pages, engine: BrowserEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    results = [
        await engine.run(login_monitor(pages), pair(PASSWORD)),
        await engine.run(login_monitor(pages, version=2), pair("wrong-" + PASSWORD, version=2)),
        await engine.run(browser_monitor(M2, pages.url("/token-form"), typed("#tok", TOKEN)), token(TOKEN_VALUE)),
    ]
    assert [r.status for r in results] == [SUCCESS, FAILED, SUCCESS]
    assert caplog.records  # the browser's and the driver's loggers did speak
    for secret in (PASSWORD, TOKEN_VALUE):
        assert secret not in caplog.text


async def test_a_broken_subresource_is_reported_without_query_or_credential_values(
    pages: Pages, engine: BrowserEngine
) -> None:
    monitor = browser_monitor(M1, pages.url(f"/broken/{placeholder(TOKEN)}"), validation=[shows("broken page")])
    result = await engine.run(monitor, token(TOKEN_VALUE))
    assert result.status == SUCCESS, result.failure_reason
    assert result.main_document_status == 200
    assert result.console_errors >= 1
    assert result.failed_requests == 2
    assert sorted(result.failed_request_urls) == [
        f"404 {pages.url('/missing/' + placeholder(TOKEN) + '.png?session=*')}",
        "net::ERR_UNSAFE_PORT http://127.0.0.1:9/gone.js",  # a port Chromium never connects to,
    ]
    assert "s3ss-Qz8" not in str(result)
    assert TOKEN_VALUE not in str(result)
