"""Prometheus metrics of one vault process (served at ``GET /metrics`` on ``metrics_listen`` by
:mod:`credvault.metrics_http`).

Each vault has its own registry (tests run several vaults in one process). The series:

- ``grpc_server_started_total``, ``grpc_server_handled_total`` (with ``grpc_code``) and the histogram
  ``grpc_server_handling_seconds``, by ``grpc_type``, ``grpc_service``, ``grpc_method`` (both ports);
- ``credvault_engines_connected{location}``: engine streams open on this replica;
- ``credvault_push_pending{location}``: resources waiting in those streams' outboxes;
- ``credvault_engine_lag{location}``: revisions of the location's changes those streams' engines have not
  acknowledged yet (the largest of them);
- ``credvault_push_latency_seconds``: from a change's transaction to the engine's ACK covering it (live deltas);
- ``credvault_engine_divergence_total{location}``: engines found holding something other than what they should
  (anti-entropy), each then sent the difference;
- ``credvault_change_log_lag``: the change log's head revision minus the last one this replica's follower processed;
- ``credvault_kek_info{kek_id}``: the key-encryption key this process encrypts with;
- ``credvault_certificate_expiry_seconds{port,role}``: when the certificate a port serves (role ``server``) or the
  earliest CA that verifies its clients (``client_ca``) expires, Unix time; ``credvault_certificate_reloads_total``;
- ``credvault_memory_locked``: 1 if this process's memory is locked (mlockall; see credvault.memory_guard);
- ``credvault_token_rotation_total{outcome}``: token rotations with write-back (rotated, or why not);
- ``credvault_sync_total{provider,outcome}``: synchronizations of credentials from external vaults;
- ``credvault_sync_age_seconds{provider}``: the largest time since a good synchronization among a provider's
  synchronized credentials (read from the database before each scrape, so every replica reports the same);
- ``credvault_results_redacted_total{location}``: secret values removed from engines' results before storing them
  (any is an engine leaking; see results).

Ids, counts and durations only: never a secret, never a user-controlled label value beyond location ids.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from credvault.memory_guard import memory_locked
from vault_service.crypto import Keyring
from vault_service.server_tls import CertificateFiles
from vault_service.storage.pool import Store

log = logging.getLogger(__name__)

RPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")
PUSH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
HEAD_TIMEOUT_SECONDS = 2.0


@dataclasses.dataclass(frozen=True)
class PushStats:
    """What the push reports at scrape time (server.py wires it to the change follower)."""

    pending_by_location: Mapping[str, Sequence[int]]  # per location, the pending count of each engine stream's outbox
    last_revision: int  # the last change-log revision the follower processed
    lag_by_location: Mapping[str, Sequence[int]] = dataclasses.field(default_factory=dict)  # each stream's unacked


class _PushCollector(Collector):
    """Read at scrape time from the push: engines and outboxes per location, change-log lag."""

    def __init__(self, metrics: VaultMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        stats = self._metrics.push_stats() if self._metrics.push_stats is not None else None
        connected = GaugeMetricFamily(
            "credvault_engines_connected", "Engine streams open on this replica, by location", labels=["location"]
        )
        pending = GaugeMetricFamily(
            "credvault_push_pending", "Resources waiting in engine outboxes on this replica", labels=["location"]
        )
        engine_lag = GaugeMetricFamily(
            "credvault_engine_lag",
            "Revisions of a location's changes not yet acknowledged by its engine streams on this replica (the most)",
            labels=["location"],
        )
        if stats is not None:
            for location, outboxes in sorted(stats.pending_by_location.items()):
                connected.add_metric([location], len(outboxes))
                pending.add_metric([location], sum(outboxes))
            for location, lags in sorted(stats.lag_by_location.items()):
                engine_lag.add_metric([location], max(lags, default=0))
        yield connected
        yield pending
        yield engine_lag
        if stats is not None and self._metrics.head_revision is not None:
            lag = max(0, self._metrics.head_revision - stats.last_revision)
            yield GaugeMetricFamily(
                "credvault_change_log_lag",
                "Change-log head revision minus the last revision this replica's follower processed",
                value=lag,
            )


class VaultMetrics:
    def __init__(self, kek_id: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.rpc_started = Counter(
            "grpc_server_started", "RPCs started on the server", RPC_LABELS, registry=self.registry
        )
        self.rpc_handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, by status code",
            (*RPC_LABELS, "grpc_code"),
            registry=self.registry,
        )
        self.rpc_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time to complete an RPC (a stream: its life)",
            RPC_LABELS,
            registry=self.registry,
        )
        self.push_latency = Histogram(
            "credvault_push_latency_seconds",
            "From a change's transaction to the engine's ACK of the revision covering it",
            buckets=PUSH_BUCKETS,
            registry=self.registry,
        )
        self.engine_divergence = Counter(
            "credvault_engine_divergence",
            "Engines found holding something other than what they should (anti-entropy), each repaired",
            ("location",),
            registry=self.registry,
        )
        self.results_redacted = Counter(
            "credvault_results_redacted",
            "Secret values removed from engines' results before they were stored, by location",
            ("location",),
            registry=self.registry,
        )
        self._kek = Info(
            "credvault_kek", "The key-encryption key this process wraps new data keys with", registry=self.registry
        )
        self._kek.info({"kek_id": kek_id})
        self.keks_loaded = Gauge(
            "credvault_kek_loaded",
            "1 for each key-encryption key this process has loaded",
            ("kek_id",),
            registry=self.registry,
        )
        self.sync_total = Counter(
            "credvault_sync",
            "Synchronizations of credentials from external vaults, by provider and outcome (changed, unchanged, or"
            " the kind of failure)",
            ("provider", "outcome"),
            registry=self.registry,
        )
        self.sync_age = Gauge(
            "credvault_sync_age_seconds",
            "Seconds since the last good synchronization of the least recently synchronized credential of a provider"
            " (the max over its credentials, one series per provider rather than per credential; a credential never"
            " synchronized well counts from its creation), read from the database at scrape time",
            ("provider",),
            registry=self.registry,
        )
        self.token_rotation_total = Counter(
            "credvault_token_rotation",
            "Token rotations with write-back to an external vault, by outcome (rotated, or the kind of failure:"
            " cas_conflict, denied, unreachable, sealed, auth_failed, companion, error, failed)",
            ("outcome",),
            registry=self.registry,
        )
        self.keyring_reload_failures = Counter(
            "credvault_keyring_reload_failures",
            "Times a changed keyring file was not taken (it lacked a KEK the database needs, or held a wrong one)",
            registry=self.registry,
        )
        Gauge(
            "credvault_memory_locked", "1 if this process's memory is locked (mlockall)", registry=self.registry
        ).set_function(lambda: float(memory_locked()))
        self.certificate_expiry = Gauge(
            "credvault_certificate_expiry_seconds",
            "When a certificate this process serves or verifies with stops being valid (Unix time), by port and role"
            " (server: the port's own certificate; client_ca: the earliest-expiring CA that verifies clients)",
            ("port", "role"),
            registry=self.registry,
        )
        self.certificate_reloads = Counter(
            "credvault_certificate_reloads",
            "Times a port's TLS files were read again after they changed",
            ("port",),
            registry=self.registry,
        )
        self.push_stats: Callable[[], PushStats] | None = None  # set when this replica serves engines
        self.head_revision: int | None = None
        self.registry.register(_PushCollector(self))

    def keyring_changed(self, keyring: Keyring) -> None:
        self._kek.info({"kek_id": keyring.active_id})
        self.keks_loaded.clear()
        for kek_id in keyring.ids:
            self.keks_loaded.labels(kek_id).set(1)

    def certificates_loaded(self, port: str, files: CertificateFiles, reloaded: bool) -> None:
        """A port serves these TLS files now (at start, and after each reload)."""
        if reloaded:
            self.certificate_reloads.labels(port).inc()
        self.certificate_expiry.labels(port, "server").set(files.leaf.not_valid_after_utc.timestamp())
        if files.client_cas:
            earliest = min(ca.not_valid_after_utc for ca in files.client_cas)
            self.certificate_expiry.labels(port, "client_ca").set(earliest.timestamp())

    async def refresh(self, store: Store) -> None:
        """Read what only the database knows (the change log's head, the synchronizations' ages) before a scrape; on
        failure keep the last."""
        try:
            async with asyncio.timeout(HEAD_TIMEOUT_SECONDS), store.autocommit() as tx:
                if self.push_stats is not None:
                    self.head_revision = await tx.head_revision()
                ages = await tx.sync_ages()
        except Exception as exc:
            log.warning("metrics: cannot read the change-log head or the sync ages (%s)", type(exc).__name__)
            return
        self.sync_age.clear()
        for provider, age in sorted(ages.items()):
            self.sync_age.labels(provider).set(age)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
