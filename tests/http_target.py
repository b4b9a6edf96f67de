"""A real HTTP target for monitors to run against, on loopback port 0: basic auth, bearer tokens, tokens in the URL
and the body, cookies, redirects, slow answers, any status; optionally TLS that demands a client certificate. It
records what each request brought (path, credentials, cookie, the client's port) for the tests to inspect."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import ssl

from aiohttp import web
from aiohttp.typedefs import Handler

__all__ = ["Seen", "Target"]


@dataclasses.dataclass(frozen=True)
class Seen:
    path: str
    authorization: str
    cookie: str
    client_port: int
    peer_common_name: str
    query: str
    body: str


class Target:
    """``expected_password`` / ``expected_token`` are what the target accepts (tests rotate them)."""

    def __init__(self, *, expected_password: str = "", expected_token: str = "") -> None:
        self.expected_password = expected_password
        self.expected_token = expected_token
        self.seen: list[Seen] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    def url(self, path: str, scheme: str = "http", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    async def start(self, tls: ssl.SSLContext | None = None) -> Target:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/basic", self._basic)
        app.router.add_get("/bearer", self._bearer)
        app.router.add_get("/query", self._query)
        app.router.add_post("/login", self._login)
        app.router.add_get("/cookie/set/{value}", self._cookie_set)
        app.router.add_get("/cookie/show", self._cookie_show)
        app.router.add_get("/redirect", self._redirect)
        app.router.add_get("/final", self._final)
        app.router.add_get("/slow", self._slow)
        app.router.add_get("/status/{code}", self._status)
        app.router.add_get("/whoami", self._whoami)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.port = int(server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def requests_to(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        cert = request.transport.get_extra_info("peercert") if request.transport else None
        common_name = ""
        for rdn in (cert or {}).get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    common_name = value
        self.seen.append(
            Seen(
                path=request.path,
                authorization=request.headers.get("Authorization", ""),
                cookie=request.headers.get("Cookie", ""),
                client_port=int(peer[1]) if peer else 0,
                peer_common_name=common_name,
                query=request.query_string,
                body=(await request.text()) if request.can_read_body else "",
            )
        )
        return await handler(request)

    async def _basic(self, request: web.Request) -> web.Response:
        expected = "Basic " + base64.b64encode(f"alice:{self.expected_password}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.Response(status=401, text="who are you?", headers={"WWW-Authenticate": 'Basic realm="t"'})
        return web.Response(text="welcome alice")

    async def _bearer(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.expected_token}":
            return web.Response(status=403, text="bad token")
        return web.Response(text="token accepted")

    async def _query(self, request: web.Request) -> web.Response:
        if request.query.get("key") != self.expected_token:
            return web.Response(status=403, text="bad key")
        return web.Response(text="key accepted")

    async def _login(self, request: web.Request) -> web.Response:
        form = await request.json()
        if form.get("password") != self.expected_password:
            return web.Response(status=401, text="login failed")
        return web.Response(text="logged in")

    async def _cookie_set(self, request: web.Request) -> web.Response:
        response = web.Response(text="set")
        response.set_cookie("session", request.match_info["value"])
        return response

    async def _cookie_show(self, request: web.Request) -> web.Response:
        return web.Response(text=f"cookie={request.cookies.get('session', 'none')}")

    async def _redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/final")

    async def _final(self, request: web.Request) -> web.Response:
        return web.Response(text="the final page")

    async def _slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("seconds", "5")))
        return web.Response(text="late")

    async def _status(self, request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="as asked")

    async def _whoami(self, request: web.Request) -> web.Response:
        return web.Response(text=f"client certificate: {self.seen[-1].peer_common_name or 'none'}")
