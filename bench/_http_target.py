"""A minimal HTTP target for bench/executions.py: ``GET /ok`` answers ``200 ok`` when it carries basic auth (401
otherwise). Separate process; prints ``PORT <n>`` on stdout once it serves; stops on SIGTERM/SIGINT.

    python bench/_http_target.py
"""

from __future__ import annotations

import asyncio
import sys

from _child_server import announce_and_wait
from aiohttp import web


async def ok(request: web.Request) -> web.Response:
    if not request.headers.get("Authorization", "").startswith("Basic "):
        return web.Response(status=401, text="who?")
    return web.Response(text="ok")


async def serve() -> None:
    app = web.Application()
    app.router.add_get("/ok", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    await announce_and_wait(server.sockets[0].getsockname()[1])
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(serve())
    sys.exit(0)
