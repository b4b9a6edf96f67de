"""A credential placeholder in a URL's scheme, host or port (or user info) is refused when a monitor is created or
updated, in HTTP request URLs, browser URLs and navigate events: its value would leave the machine (DNS, TLS server
name, the host that answers) before any request is authenticated. In the path or query it is fine."""

from __future__ import annotations

import pytest

from credvault.url_template import placeholder_before_path
from credvault.v1 import monitors_pb2 as mpb
from tests.conftest import Client
from tests.helpers import INVALID, create_req, expect_code, token, up

TOK = "{{CREDENTIALS_VAULT-%s}}"

BEFORE_THE_PATH = [
    "https://{t}.shop.example/",  # the host (leaked to DNS, lowercased, in the failure reason)
    "https://shop.{t}/login",
    "https://shop.example:{t}/",  # the port
    "{t}://shop.example/",  # the scheme
    "https://{u}:{p}@shop.example/",  # user info: a value with '@' or '/' moves the host
    "https://shop.example{t}",  # no path at all
]
ALLOWED = [
    "https://shop.example/{t}",
    "https://shop.example/login?key={t}&user={u}",
    "https://shop.example/#{t}",
    "https://shop.example?{t}",
]


def fill(url: str, tok: str, pair: str) -> str:
    return url.format(t=TOK % tok, u="{{" + pair + ".username}}", p="{{" + pair + ".password}}")


@pytest.mark.parametrize("url", BEFORE_THE_PATH)
def test_placeholders_before_the_path(url: str) -> None:
    assert placeholder_before_path(fill(url, "00000000000000A1", "CREDENTIALS_VAULT-00000000000000A2"))


@pytest.mark.parametrize("url", ALLOWED)
def test_placeholders_in_the_path_query_or_fragment(url: str) -> None:
    assert not placeholder_before_path(fill(url, "00000000000000A1", "CREDENTIALS_VAULT-00000000000000A2"))


def http(url: str) -> mpb.Monitor:
    return mpb.Monitor(
        name="m",
        frequency_minutes=5,
        location_ids=["loc-a"],
        enabled=True,
        http=mpb.HttpScript(
            requests=[mpb.HttpRequest(method="GET", url="https://shop.example/"), mpb.HttpRequest(url=url)]
        ),
    )


def browser(url: str, navigate: str = "https://shop.example/next") -> mpb.Monitor:
    return mpb.Monitor(
        name="b",
        frequency_minutes=5,
        location_ids=["loc-a"],
        browser=mpb.BrowserScript(url=url, events=[mpb.BrowserEvent(navigate_url=navigate)]),
    )


async def test_refused_at_create_and_update_with_the_field_and_what_to_do(admin: Client) -> None:
    await admin.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id="loc-a", name="a")))
    tok = (await admin.CreateCredential(create_req("tok", token("tok-in-a-host-Q7w")))).credential.id
    pair = (await admin.CreateCredential(create_req("pair", up("alice", "pw-in-userinfo-3Xz")))).credential.id
    tok_hex = tok.removeprefix("CREDENTIALS_VAULT-")
    cases = []
    for url in BEFORE_THE_PATH:
        bad = fill(url, tok_hex, pair)
        cases += [
            (http(bad), "monitor.http.requests[1].url"),
            (browser(bad), "monitor.browser.url"),
            (browser("https://shop.example/", bad), "monitor.browser.events[0].navigate_url"),
        ]
    for monitor, field in cases:
        err = await expect_code(admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=monitor)), INVALID)
        details = err.details() or ""
        assert details.startswith(f"{field}: has a credential placeholder in its scheme, host or port"), details
        assert "move the credential into a header, the path or query, or basic authentication" in details
        assert "tok-in-a-host" not in details
        assert "pw-in-userinfo" not in details

    fine = (await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=http(fill(ALLOWED[1], tok_hex, pair))))).monitor
    assert set(fine.credential_ids) == {tok, pair}
    moved = mpb.Monitor()
    moved.CopyFrom(fine)
    moved.http.requests[1].url = fill(BEFORE_THE_PATH[0], tok_hex, pair)
    err = await expect_code(admin.UpdateMonitor(mpb.UpdateMonitorRequest(monitor=moved)), INVALID)
    assert (err.details() or "").startswith("monitor.http.requests[1].url: has a credential placeholder")
