"""Browser monitor definitions through the API: every new event, wait condition and validation is checked, a bad one
is INVALID_ARGUMENT naming the field path, defaults are filled in, and the restricted-credential rule covers events
(changing an event that types or targets a credential needs access to it; validations may change)."""

from __future__ import annotations

from collections.abc import Callable

from credvault.v1 import monitors_pb2 as mpb
from tests.conftest import Client, Users
from tests.helpers import INVALID, MONITORING, PD, VIEW, expect_code, token
from tests.vault_service.test_monitors import cred, setup_location

SEL = "#field"


def browser(*events: mpb.BrowserEvent, **script: object) -> mpb.Monitor:
    return mpb.Monitor(
        name="browser",
        frequency_minutes=5,
        location_ids=["loc-a"],
        browser=mpb.BrowserScript(url="https://shop.example/login", events=events, **script),
    )


def typed(credential_id: str, field: str = "") -> mpb.BrowserEvent:
    credential = mpb.CredentialField(credential_id=credential_id, field=field)
    return mpb.BrowserEvent(description="type", keystroke=mpb.Keystroke(selector=SEL, credential=credential))


def wait(**condition: object) -> mpb.BrowserEvent:
    return mpb.BrowserEvent(click_selector=SEL, wait=mpb.BrowserWait(**condition))


def rule(**kind: object) -> mpb.BrowserEvent:
    return mpb.BrowserEvent(click_selector=SEL, validation=[mpb.BrowserValidation(**kind)])


async def test_every_event_kind_is_accepted_with_defaults(admin: Client) -> None:
    await setup_location(admin)
    pair = await cred(admin, "pair")
    tok = await cred(admin, "tok", token("t-1"))
    monitor = browser(
        mpb.BrowserEvent(navigate_url="https://shop.example/{{" + tok + "}}/x"),
        mpb.BrowserEvent(click_selector="#go", wait=mpb.BrowserWait(load_state=mpb.BROWSER_LOAD_STATE_NETWORK_IDLE)),
        typed(pair, "username"),
        typed(pair, "password"),
        typed(tok),
        mpb.BrowserEvent(keystroke=mpb.Keystroke(selector=SEL, literal="hello")),
        mpb.BrowserEvent(select_option=mpb.SelectOption(selector="#s", value="b")),
        mpb.BrowserEvent(javascript="window.scrollTo(0, 100)", wait=mpb.BrowserWait(fixed_ms=200)),
        wait(element_selector="#ok", timeout_ms=3000),
        wait(element_text=mpb.ElementText(selector="#ok", text="done")),
        wait(javascript_condition="document.readyState === 'complete'"),
        rule(text_present="Welcome"),
        rule(element_absent=".error"),
        validation=[mpb.BrowserValidation(main_document_status_in=mpb.StatusCodes(codes=[200]))],
    )
    created = (await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=monitor))).monitor
    assert created.type == mpb.MONITOR_TYPE_BROWSER
    assert sorted(created.credential_ids) == sorted([pair, tok])
    assert created.browser.timeout_ms == 60_000
    assert created.browser.events[1].wait.timeout_ms == 10_000
    assert created.browser.events[8].wait.timeout_ms == 3000


async def test_invalid_events_name_the_field(admin: Client) -> None:
    await setup_location(admin)
    pair = await cred(admin, "pair")
    tok = await cred(admin, "tok", token("t-1"))
    ev = "monitor.browser.events[0]"
    cases: list[tuple[mpb.Monitor, str]] = [
        (browser(mpb.BrowserEvent(description="nothing")), ev),
        (browser(mpb.BrowserEvent(click_selector=" ")), f"{ev}.click_selector"),
        (browser(mpb.BrowserEvent(keystroke=mpb.Keystroke(selector=SEL))), f"{ev}.keystroke"),
        (browser(mpb.BrowserEvent(keystroke=mpb.Keystroke(literal="x"))), f"{ev}.keystroke.selector"),
        (browser(typed(pair, "pin")), f"{ev}.keystroke.credential.field"),
        (browser(typed("CREDENTIALS_VAULT-zz")), f"{ev}.keystroke.credential"),
        (browser(typed(tok, "password")), "monitor.credentials"),  # a token as a pair's field
        (browser(typed(pair)), "monitor.credentials"),  # a pair as a token
        (browser(mpb.BrowserEvent(select_option=mpb.SelectOption(selector="#s"))), f"{ev}.select_option.value"),
        (browser(mpb.BrowserEvent(javascript="")), f"{ev}.javascript"),
        (browser(mpb.BrowserEvent(javascript="x('{{" + tok + "}}')")), f"{ev}.javascript"),
        (browser(wait(load_state=mpb.BROWSER_LOAD_STATE_UNSPECIFIED)), f"{ev}.wait.load_state"),
        (browser(wait(fixed_ms=60_001)), f"{ev}.wait.fixed_ms"),
        (browser(wait(element_selector="")), f"{ev}.wait.element_selector"),
        (browser(wait(element_text=mpb.ElementText(selector="#a"))), f"{ev}.wait.element_text.text"),
        (browser(wait(javascript_condition="")), f"{ev}.wait.javascript_condition"),
        (browser(wait(element_selector="#a", timeout_ms=-1)), f"{ev}.wait.timeout_ms"),
        (browser(rule()), f"{ev}.validation[0]"),
        (browser(rule(text_absent="")), f"{ev}.validation[0].text_absent"),
        (browser(rule(element_present="")), f"{ev}.validation[0].element_present"),
        (browser(rule(main_document_status_in=mpb.StatusCodes(codes=[99]))), f"{ev}.validation[0]"),
        (browser(mpb.BrowserEvent(navigate_url="ftp://x")), f"{ev}.navigate_url"),
        (browser(timeout_ms=999), "monitor.browser.timeout_ms"),
        (browser(validation=[mpb.BrowserValidation(text_present="")]), "monitor.browser.validation[0].text_present"),
    ]
    for monitor, field in cases:
        err = await expect_code(admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=monitor)), INVALID)
        assert (err.details() or "").startswith(field), (field, err.details())


async def test_restricted_credential_edits_cover_events(admin: Client, users: Users) -> None:
    await setup_location(admin)
    alice = await users.make("alice", [VIEW, MONITORING])
    bob = await users.make("bob", [VIEW, MONITORING])
    secret = await cred(alice, "alice-only")
    monitor = browser(
        mpb.BrowserEvent(navigate_url="https://shop.example/"), typed(secret, "password"), rule(text_present="a")
    )
    m = (await alice.CreateMonitor(mpb.CreateMonitorRequest(monitor=monitor))).monitor

    async def update(change: Callable[[mpb.Monitor], object]) -> mpb.Monitor:
        edit = mpb.Monitor()
        edit.CopyFrom(m)
        change(edit)
        response: mpb.UpdateMonitorResponse = await bob.UpdateMonitor(mpb.UpdateMonitorRequest(monitor=edit))
        return response.monitor

    # validations and the timeout may change without access
    changed = await update(lambda x: x.browser.events[2].validation[0].__setattr__("text_present", "b"))
    assert changed.browser.events[2].validation[0].text_present == "b"
    m = changed
    await update(lambda x: x.browser.validation.add(text_absent="error"))
    m = (await alice.GetMonitor(mpb.GetMonitorRequest(id=m.id))).monitor
    await update(lambda x: setattr(x.browser, "timeout_ms", 30_000))
    m = (await alice.GetMonitor(mpb.GetMonitorRequest(id=m.id))).monitor
    denied: list[Callable[[mpb.Monitor], object]] = [
        lambda x: setattr(x.browser.events[1].keystroke, "selector", "#elsewhere"),  # where the password goes
        lambda x: setattr(x.browser.events[1].keystroke.credential, "field", "username"),
        lambda x: setattr(x.browser.events[0], "navigate_url", "https://evil.example/"),
        lambda x: x.browser.events.add(javascript="steal()"),
        lambda x: setattr(x.browser.events[1].wait, "fixed_ms", 10),
        lambda x: setattr(x.browser, "url", "https://evil.example/"),
    ]
    for change in denied:
        await expect_code(update(change), PD)
