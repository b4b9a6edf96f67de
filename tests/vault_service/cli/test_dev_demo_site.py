"""`credvault dev`'s demo login site (the README's browser example logs in to it; tests/test_readme.py runs that in
Chromium): the right password reaches the account page behind the session cookie, a wrong one shows the form with
"wrong password", the account page sends a visitor without a session to the form, and it listens on loopback only."""

from __future__ import annotations

import aiohttp
import pytest

from vault_service.cli.dev_demo_site import DEMO_PASSWORD, DEMO_USER, DemoSite


async def test_the_demo_site_logs_in_with_the_demo_password_only() -> None:
    site = DemoSite("127.0.0.1:0")
    await site.start()
    try:
        base = site.url.removesuffix("/login")
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:  # an IP host
            async with http.get(f"{base}/account", allow_redirects=False) as response:
                assert (response.status, response.headers["Location"]) == (302, "/login")
            async with http.post(site.url, data={"user": DEMO_USER, "pass": "not-it"}) as response:
                assert "wrong password" in await response.text()
            async with http.post(site.url, data={"user": DEMO_USER, "pass": DEMO_PASSWORD}) as response:
                assert "<h1>Your account</h1>" in await response.text()
    finally:
        await site.stop()


@pytest.mark.parametrize("listen", ["0.0.0.0:8089", "192.0.2.1:8089"])
def test_the_demo_site_listens_on_loopback_only(listen: str) -> None:
    with pytest.raises(ValueError, match="loopback only"):
        DemoSite(listen)
