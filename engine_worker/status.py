"""A local status endpoint (HTTP, no secrets): ``GET /metrics`` for Prometheus and ``GET /introspection`` (JSON).

Both show ids, versions, revisions and counts only, never a configuration's or a credential's contents. It binds to
loopback by default; the bound address is logged as ``status listening on HOST:PORT`` (port 0 picks a free port).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from collections.abc import Callable, Iterable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from credvault.memory_guard import memory_locked
from engine_worker.config_store import ConfigStore
from engine_worker.identity import EngineIdentity
from engine_worker.stream import StreamState

__all__ = ["DEFAULT_STATUS_LISTEN", "StatusServer", "parse_listen"]

log = logging.getLogger(__name__)

DEFAULT_STATUS_LISTEN = "127.0.0.1:9464"
_LISTEN = re.compile(r"^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.\-]+)):(\d{1,5})$")


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6-address]:port`` (port 0 to 65535) as (host, port); else a ValueError."""
    match = _LISTEN.match(value)
    if match is None or int(match.group(3)) > 65535:
        raise ValueError(f"{value!r} is not host:port, for example 127.0.0.1:9464 or [::1]:9464")
    host = match.group(1) or match.group(2)
    if match.group(1) is not None:
        ipaddress.IPv6Address(match.group(1))
    return host, int(match.group(3))


class _Collector(Collector):
    def __init__(self, store: ConfigStore, state: Callable[[], StreamState]) -> None:
        self._store = store
        self._state = state

    def collect(self) -> Iterable[Metric]:
        state = self._state()
        held = GaugeMetricFamily("configs_held", "Configurations held in memory, by kind", labels=["kind"])
        held.add_metric(["monitor"], self._store.monitor_count)
        held.add_metric(["credential"], self._store.credential_count)
        yield held
        yield GaugeMetricFamily(
            "last_applied_revision", "The last revision applied and acknowledged", value=state.last_applied_revision
        )
        yield GaugeMetricFamily("connected", "1 while the vault is in contact on a stream", value=int(state.connected))
        yield CounterMetricFamily("reconnects", "Connection attempts after the first", value=state.reconnects)
        yield CounterMetricFamily("flushes", "Times every held configuration was wiped", value=state.flushes)
        yield CounterMetricFamily("results_sent", "Results sent to the vault", value=state.results_sent)
        yield GaugeMetricFamily("memory_locked", "1 if the memory is locked (mlockall)", value=int(memory_locked()))


class StatusServer:
    def __init__(
        self,
        store: ConfigStore,
        identity: EngineIdentity,
        state: Callable[[], StreamState],
        listen: str = DEFAULT_STATUS_LISTEN,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._store = store
        self._identity = identity
        self._state = state
        self._host, self._port = parse_listen(listen)
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.registry.register(_Collector(store, state))
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/introspection", self._introspection)
        return app

    async def start(self) -> tuple[str, int]:
        """Binds and serves; returns the bound (host, port)."""
        family, kind, proto, _, address = socket.getaddrinfo(
            self._host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
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
        await web.SockSite(runner, sock).start()
        self._runner = runner
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        log.info("status listening on %s:%d", shown, port)
        return host, port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        # Per-monitor series make this large (~20 lines a monitor): rendered off the event loop, so that a scrape
        # does not delay the executions scheduled meanwhile.
        body = await asyncio.to_thread(generate_latest, self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _introspection(self, request: web.Request) -> web.Response:
        state = self._state()
        ids = self._store.snapshot_ids()
        return web.json_response(
            {
                "location": self._identity.location_id,
                "engine": self._identity.engine_id,
                "connected": state.connected,
                "synced": state.synced,
                "last_applied_revision": state.last_applied_revision,
                "monitors": ids["monitors"],
                "credentials": ids["credentials"],
                "memory_locked": memory_locked(),
            }
        )
