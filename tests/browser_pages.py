"""Real pages on loopback for browser monitor tests (aiohttp): a form login with a session cookie, a form that posts a
token the server checks, an HTTP basic page, a page that shows and sets cookies and localStorage, a page that never
finishes loading, and a plain text field. The server records what it was sent (to check typed values arrive)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections.abc import Awaitable, Callable

from aiohttp import web

__all__ = ["Pages"]

_LOGIN_FORM = """<!doctype html><title>login</title>
<form method=post action=/login><input id=user name=user><input id=pass name=pass type=password>
<button id=go type=submit>Log in</button></form>"""
_TOKEN_FORM = """<!doctype html><title>token</title>
<form method=post action=/token><input id=tok name=tok><button id=send type=submit>Send</button></form>"""
_STORAGE = """<!doctype html><title>storage</title><p id=state></p><script src=/cached.js></script><script>
const cookie = document.cookie.includes('seen=1') ? 'cookie-seen' : 'cookie-fresh';
const stored = localStorage.getItem('seen') ? 'storage-seen' : 'storage-fresh';
document.getElementById('state').textContent = cookie + ' ' + stored + ' SERVER';
document.cookie = 'seen=1; max-age=3600'; localStorage.setItem('seen', '1');
</script>"""
_FIELD = """<!doctype html><title>field</title><style>body{margin:20px;font:20px monospace}</style>
<p>Type here:</p><input id=f style="width:400px;font:20px monospace"><p id=after>below</p>"""
_HANGING = """<!doctype html><title>hanging</title><p>almost</p><img src=/stall>"""
_SELECT = """<!doctype html><title>select</title><select id=s><option value=a>A</option><option value=b>B</option>
</select><p id=out></p><script>document.getElementById('s').addEventListener('change',
e => document.getElementById('out').textContent = 'chose ' + e.target.value)</script>"""


@dataclasses.dataclass
class Pages:
    user: str = "alice"
    password: str = ""
    token: str = ""
    basic_user: str = "alice"
    basic_password: str = ""
    tokens_seen: list[str] = dataclasses.field(default_factory=list)
    logins: int = 0  # form logins posted, right or wrong
    cached_fetches: int = 0  # of /cached.js, which may be cached for an hour
    stalled: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/login", _page(_LOGIN_FORM))
        app.router.add_post("/login", self._login)
        app.router.add_get("/account", self._account)
        app.router.add_get("/token-form", _page(_TOKEN_FORM))
        app.router.add_post("/token", self._token)
        app.router.add_get("/basic", self._basic)
        app.router.add_get("/storage", self._storage)
        app.router.add_get("/field", _page(_FIELD))
        app.router.add_get("/select", _page(_SELECT))
        app.router.add_get("/hanging", _page(_HANGING))
        app.router.add_get("/stall", self._stall)
        app.router.add_get("/cached.js", self._cached)
        app.router.add_get("/broken/{tail}", self._broken)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        self.logins += 1
        if form.get("user") == self.user and form.get("pass") == self.password:
            response = web.HTTPFound("/account")
            response.set_cookie("session", "s-" + self.user)
            raise response
        return _html("<p>wrong username or password</p>", status=403)

    async def _account(self, request: web.Request) -> web.StreamResponse:
        if request.cookies.get("session") != "s-" + self.user:
            raise web.HTTPFound("/login")
        return _html(f"<p>Welcome {self.user}, your account</p>")

    async def _token(self, request: web.Request) -> web.StreamResponse:
        value = str((await request.post()).get("tok", ""))
        self.tokens_seen.append(value)
        if value != self.token:
            return _html("<p>token refused</p>", status=403)
        return _html("<p>token accepted</p>")

    async def _basic(self, request: web.Request) -> web.StreamResponse:
        expected = base64.b64encode(f"{self.basic_user}:{self.basic_password}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            return web.Response(status=401, text="login needed", headers={"WWW-Authenticate": 'Basic realm="t"'})
        return _html("<p>basic ok</p>")

    async def _storage(self, request: web.Request) -> web.StreamResponse:
        seen = "server-seen" if "seen" in request.cookies else "server-fresh"
        return _html(_STORAGE.replace("SERVER", seen))

    async def _broken(self, request: web.Request) -> web.StreamResponse:
        """A page that loads, with a missing image (404) whose path holds the page's last path segment and whose query
        holds a session, a script from a closed port, and a console error."""
        tail = request.match_info["tail"]
        return _html(
            f"<!doctype html><title>broken</title><p>broken page</p><img src='/missing/{tail}.png?session=s3ss-Qz8'>"
            "<script src='http://127.0.0.1:9/gone.js'></script><script>console.error('deliberate')</script>"
        )

    async def _cached(self, request: web.Request) -> web.StreamResponse:
        self.cached_fetches += 1
        headers = {"Cache-Control": "public, max-age=3600"}
        return web.Response(text="window.cached = 1;", content_type="text/javascript", headers=headers)

    async def _stall(self, request: web.Request) -> web.StreamResponse:
        self.stalled.set()
        await asyncio.sleep(3600)
        return web.Response()


def _page(body: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return _html(body)

    return handler


def _html(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html")
