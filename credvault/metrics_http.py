"""``GET /metrics``: a Prometheus registry over plain HTTP (metrics hold ids, counts and durations, never a secret).

The vault serves its metrics port with it, the engine worker its status port (which adds ``/introspection``). The
bound address is logged as ``<name> listening on HOST:PORT`` (port 0 picks a free port).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from credvault.settings import parse_listen

__all__ = ["Handler", "MetricsHttpServer"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class MetricsHttpServer:
    """Serves ``registry`` at ``GET /metrics``, and ``routes`` (more GET handlers by path) beside it.

    ``before_scrape`` runs before each scrape (to refresh what only a slow source knows); with ``render_off_loop``
    the exposition is rendered in a thread, so that a large one does not delay the event loop's other work (its
    collectors must then be safe to read from another thread).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        name: str = "metrics",
        before_scrape: Callable[[], Awaitable[None]] | None = None,
        render_off_loop: bool = False,
        routes: Mapping[str, Handler] | None = None,
    ) -> None:
        self.registry = registry
        self._name = name
        self._before_scrape = before_scrape
        self._render_off_loop = render_off_loop
        self._routes = dict(routes or {})
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        for path, handler in self._routes.items():
            app.router.add_get(path, handler)
        return app

    async def start(self, listen: str) -> tuple[str, int]:
        """Binds ``listen`` (``host:port``) and serves; returns the bound (host, port)."""
        host, port = parse_listen(listen)
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        log.info("%s listening on %s:%d", self._name, shown, bound_port)
        return bound_host, bound_port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        if self._before_scrape is not None:
            await self._before_scrape()
        if self._render_off_loop:
            body = await asyncio.to_thread(generate_latest, self.registry)
        else:
            body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
