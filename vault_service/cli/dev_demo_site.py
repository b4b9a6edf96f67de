"""`credvault dev`'s demo login site, for trying browser monitors (the README's example): development only.

A form at ``/login`` (``#user``, ``#pass``, ``#go``) that accepts ``alice`` with ``s3cret`` (the README's demo
password: nothing here is a secret), sets a session cookie and redirects to ``/account``, which shows "Your account"
to a logged-in session and sends anyone else back to the form. A wrong password shows the form again with "wrong
password". Sessions live in memory. It listens on loopback only.
"""

from __future__ import annotations

import ipaddress
import secrets

from aiohttp import web

__all__ = ["DEMO_PASSWORD", "DEMO_USER", "DemoSite"]

DEMO_USER = "alice"
DEMO_PASSWORD = "s3cret"
_COOKIE = "demo_session"
_FORM = """<!doctype html><title>demo login</title><h1>Log in</h1>{note}
<form method=post action=/login><label>User <input id=user name=user></label>
<label>Password <input id=pass name=pass type=password></label><button id=go type=submit>Log in</button></form>"""
_ACCOUNT = """<!doctype html><title>demo account</title><h1>Your account</h1><p>Welcome {user}</p>"""


class DemoSite:
    """The demo site on ``listen`` (``host:port``, a loopback address; port 0 picks a free one)."""

    def __init__(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        if not ipaddress.ip_address(host.strip("[]")).is_loopback:
            raise ValueError(f"the demo site listens on loopback only, not {listen}")
        self._host, self._port = host.strip("[]"), int(port)
        self._sessions: set[str] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}/login"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/login", self._form)
        app.router.add_post("/login", self._login)
        app.router.add_get("/account", self._account)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _form(self, _request: web.Request) -> web.StreamResponse:
        return web.Response(text=_FORM.format(note=""), content_type="text/html")

    async def _login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        if form.get("user") != DEMO_USER or form.get("pass") != DEMO_PASSWORD:
            return web.Response(text=_FORM.format(note="<p>wrong password</p>"), content_type="text/html")
        session = secrets.token_urlsafe(16)
        self._sessions.add(session)
        found = web.HTTPFound("/account")
        found.set_cookie(_COOKIE, session, httponly=True, samesite="Lax")
        raise found

    async def _account(self, request: web.Request) -> web.StreamResponse:
        if request.cookies.get(_COOKIE) not in self._sessions:
            raise web.HTTPFound("/login")
        return web.Response(text=_ACCOUNT.format(user=DEMO_USER), content_type="text/html")
