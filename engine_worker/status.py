"""A local status endpoint (HTTP, no secrets): ``GET /metrics`` for Prometheus and ``GET /introspection`` (JSON).

Both show ids, versions, revisions and counts only, never a configuration's or a credential's contents: each held
monitor and credential with its ``revision`` (what the engine holds it at) and its ``version`` (as the API and the CLI
show it). It binds to loopback by default; the bound address is logged as ``status listening on HOST:PORT``
(port 0 picks a free port).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from credvault.identity import EngineIdentity
from credvault.memory_guard import memory_locked
from credvault.metrics_http import MetricsHttpServer
from engine_worker.config_store import ConfigStore
from engine_worker.settings import DEFAULT_STATUS_LISTEN
from engine_worker.stream import StreamState

__all__ = ["StatusServer"]


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
        if state.certificate_not_after is not None:
            yield GaugeMetricFamily(
                "engine_certificate_expiry_seconds",
                "When the certificate of the current connection to the vault expires (Unix time)",
                value=state.certificate_not_after,
            )


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
        self._listen = listen
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.registry.register(_Collector(store, state))
        # Per-monitor series make the exposition large (~20 lines a monitor): rendered off the event loop, so that a
        # scrape does not delay the executions scheduled meanwhile.
        self._http = MetricsHttpServer(
            self.registry, name="status", render_off_loop=True, routes={"/introspection": self._introspection}
        )

    def app(self) -> web.Application:
        return self._http.app()

    async def start(self) -> tuple[str, int]:
        """Binds and serves; returns the bound (host, port)."""
        return await self._http.start(self._listen)

    async def stop(self) -> None:
        await self._http.stop()

    async def _introspection(self, request: web.Request) -> web.Response:
        state = self._state()
        held = self._store.introspection()
        return web.json_response(
            {
                "location": self._identity.location_id,
                "engine": self._identity.engine_id,
                "connected": state.connected,
                "synced": state.synced,
                "last_applied_revision": state.last_applied_revision,
                "monitors": held["monitors"],
                "credentials": held["credentials"],
                "memory_locked": memory_locked(),
            }
        )
