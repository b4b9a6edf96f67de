"""The vault's gRPC server: services, health, reflection, TLS, limits, graceful shutdown; and the operations ports:
metrics (HTTP) and a plaintext health-only gRPC port for the kubelet."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import os
import pathlib
import signal
import socket

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from credvault import runtime
from credvault.metrics_http import MetricsHttpServer
from credvault.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    credentials_pb2,
    credentials_pb2_grpc,
    engine_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
    monitors_pb2,
    monitors_pb2_grpc,
    tokens_pb2,
    tokens_pb2_grpc,
)
from vault_service.api.audit import AuditServicer
from vault_service.api.credentials import CredentialsServicer
from vault_service.api.identity import IdentityServicer
from vault_service.api.interceptor import ApiInterceptor
from vault_service.api.monitors import MonitorsServicer
from vault_service.api.tokens import TokensServicer
from vault_service.audit import AuditService
from vault_service.auth_cache import AuthCache
from vault_service.config import Settings
from vault_service.credentials import CredentialService
from vault_service.crypto import Keyring
from vault_service.denial_audit import DenialAudit
from vault_service.errors import ConfigurationError
from vault_service.external_sync.hashicorp import HashiCorpClient
from vault_service.external_sync.scheduler import SyncScheduler
from vault_service.external_sync.synchronizer import Synchronizer
from vault_service.keyring_keeper import KeyringKeeper
from vault_service.keys import verify_keyring
from vault_service.metrics import PushStats, VaultMetrics
from vault_service.monitors import MonitorService
from vault_service.push.engine_sessions import EngineSessions
from vault_service.push.follower import ChangeFollower
from vault_service.push.lease_renewal import LeaseRenewal
from vault_service.push.stream import EnginePortSettings, EngineStreamServicer
from vault_service.results import ResultService
from vault_service.server_tls import ReloadingServerCredentials, TlsFilesError
from vault_service.storage.migrate import migrate
from vault_service.storage.pool import Store
from vault_service.token_rotation import RotationScheduler, TokenRotation
from vault_service.tokens import TokenService
from vault_service.users import IdentityService

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    credentials_pb2.DESCRIPTOR.services_by_name["CredentialsService"].full_name,
    identity_pb2.DESCRIPTOR.services_by_name["IdentityService"].full_name,
    tokens_pb2.DESCRIPTOR.services_by_name["TokensService"].full_name,
    monitors_pb2.DESCRIPTOR.services_by_name["MonitorsService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
)


@dataclasses.dataclass
class RunningVault:
    server: grpc.aio.Server
    port: int
    store: Store
    health: health_aio.HealthServicer
    metrics: VaultMetrics
    keyring: Keyring
    engine_server: grpc.aio.Server | None = None
    engine_port: int = 0
    follower: ChangeFollower | None = None
    engine_streams: EngineStreamServicer | None = None
    engine_leases: LeaseRenewal | None = None
    auth_cache: AuthCache | None = None
    health_server: grpc.aio.Server | None = None
    health_port: int = 0
    metrics_server: MetricsHttpServer | None = None
    metrics_port: int = 0
    keyring_keeper: KeyringKeeper | None = None
    synchronizer: Synchronizer | None = None
    sync_scheduler: SyncScheduler | None = None
    rotation: TokenRotation | None = None
    rotation_scheduler: RotationScheduler | None = None

    async def stop(self, grace: float | None) -> None:
        """Stop accepting, let in-flight RPCs finish within ``grace`` seconds and end the engine streams (their
        engines reconnect elsewhere), then close the pool. The health port (reporting NOT_SERVING) and the metrics
        port stay up until the drain is over."""
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        servers = [s for s in (self.server, self.engine_server) if s is not None]
        stopping = asyncio.gather(*(s.stop(grace) for s in servers))
        await asyncio.sleep(0)  # the servers refuse new calls from here on
        if self.engine_streams is not None:
            self.engine_streams.close_streams("the vault is shutting down; reconnect")
        await stopping
        if self.engine_streams is not None:
            await self.engine_streams.sessions.flush()
        if self.engine_leases is not None:
            await self.engine_leases.stop()
        if self.follower is not None:
            await self.follower.stop()
        if self.sync_scheduler is not None:
            await self.sync_scheduler.stop()
        if self.synchronizer is not None:
            await self.synchronizer.close()
        if self.rotation_scheduler is not None:
            await self.rotation_scheduler.stop()
        if self.rotation is not None:
            await self.rotation.close()
        if self.keyring_keeper is not None:
            await self.keyring_keeper.stop()
        if self.health_server is not None:
            await self.health_server.stop(0)
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        await self.store.close()


def _credentials(settings: Settings, metrics: VaultMetrics) -> grpc.ServerCredentials | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    return _reloading("api", metrics, settings.tls_cert_file, settings.tls_key_file).credentials()


def _reloading(
    port: str, metrics: VaultMetrics, cert: pathlib.Path, key: pathlib.Path, ca: pathlib.Path | None = None
) -> ReloadingServerCredentials:
    """A port's TLS files, read again when they change (from the next handshake on); their expiry in the metrics."""
    try:
        return ReloadingServerCredentials(port, cert, key, ca, on_loaded=metrics.certificates_loaded)
    except TlsFilesError as exc:
        raise ConfigurationError(f"{port} port: {exc}") from None


async def start_vault(
    settings: Settings, *, store: Store | None = None, keyring: Keyring | None = None
) -> RunningVault:
    """Migrate, verify the keyring, and start serving. Raises ConfigurationError on a bad KEK."""
    keyring = keyring or settings.load_keyring()
    replica = settings.replica_id or f"{socket.gethostname()}-{os.getpid()}"
    if store is None:
        store = await Store.connect(settings.require_database_url(), max_size=settings.db_pool_max)
    metrics = VaultMetrics(keyring.active_id)
    keeper = KeyringKeeper(
        store,
        keyring,
        replica,
        settings.keyring_file,
        settings.keyring_check_seconds,
        on_change=metrics.keyring_changed,
        on_reload_failure=metrics.keyring_reload_failures.inc,
    )
    try:
        async with store.pool.acquire() as conn:
            await migrate(conn)
        await verify_keyring(store, keyring)
        await keeper.start()  # wraps with the database's active KEK from the first call on
    except BaseException:
        await keeper.stop()
        await store.close()
        raise
    metrics.keyring_changed(keyring)

    auth_cache = AuthCache(settings.auth_cache_seconds) if settings.auth_cache_seconds > 0 else None
    tokens = TokenService(store, auth_cache)
    server = grpc.aio.server(
        interceptors=[ApiInterceptor(metrics, vault_calls=True, run_call=store.call, denials=DenialAudit(store))],
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.max_concurrent_streams", 1000),
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ],
    )
    credential_service = CredentialService(store, keyring)
    synchronizer = Synchronizer(
        store,
        keyring,
        credential_service,
        HashiCorpClient(),
        replica,
        lambda provider, outcome: metrics.sync_total.labels(provider, outcome).inc(),
    )
    credentials_pb2_grpc.add_CredentialsServiceServicer_to_server(
        CredentialsServicer(tokens, credential_service, synchronizer), server
    )
    identity_pb2_grpc.add_IdentityServiceServicer_to_server(IdentityServicer(tokens, IdentityService(store)), server)
    rotation = TokenRotation(
        store,
        keyring,
        tokens,
        replica,
        lambda outcome: metrics.token_rotation_total.labels(outcome).inc(),
        min_interval=datetime.timedelta(seconds=settings.token_rotation_min_interval_seconds),
        retry_seconds=settings.token_rotation_retry_seconds,
    )
    tokens_pb2_grpc.add_TokensServiceServicer_to_server(TokensServicer(tokens, rotation), server)
    monitor_service = MonitorService(store, keyring, engine_lease_seconds=settings.engine_lease_seconds)
    results = ResultService(
        store,
        monitor_service,
        settings.results_per_monitor,
        on_redacted=lambda location_id, count: metrics.results_redacted.labels(location_id).inc(count),
    )
    monitors_pb2_grpc.add_MonitorsServiceServicer_to_server(MonitorsServicer(tokens, monitor_service, results), server)
    audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(tokens, AuditService(store)), server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

    try:
        creds = _credentials(settings, metrics)
        port = server.add_secure_port(settings.listen, creds) if creds else server.add_insecure_port(settings.listen)
        if port == 0:
            raise OSError(f"cannot listen on {settings.listen}")
    except BaseException:  # unusable TLS files, a taken address: nothing started stays behind
        await synchronizer.close()
        await rotation.close()
        await keeper.stop()
        await store.close()
        raise
    await server.start()
    running = RunningVault(
        server,
        port,
        store,
        health_servicer,
        metrics,
        keyring,
        auth_cache=auth_cache,
        keyring_keeper=keeper,
        synchronizer=synchronizer,
        rotation=rotation,
    )
    if settings.external_sync:
        running.sync_scheduler = SyncScheduler(store, synchronizer, settings.external_sync_tick_seconds)
        running.sync_scheduler.start()
    if settings.token_rotation:
        running.rotation_scheduler = RotationScheduler(store, rotation, settings.token_rotation_tick_seconds)
        running.rotation_scheduler.start()
    try:
        if settings.engine_listen is not None:
            await _start_engine_port(settings, running, keyring, results, replica)
        await _start_operations_ports(settings, running)
    except BaseException:
        await running.stop(0)
        raise
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("credvault API listening on %s (port %d, %s)", settings.listen, port, "TLS" if creds else "plaintext")
    return running


async def _start_engine_port(
    settings: Settings, running: RunningVault, keyring: Keyring, results: ResultService, replica: str
) -> None:
    """The engine stream on its own port: mutual TLS with the engine CA, nothing else served there."""
    assert settings.engine_listen is not None
    assert settings.engine_tls_cert_file is not None
    assert settings.engine_tls_key_file is not None
    assert settings.engine_ca_file is not None
    follower = ChangeFollower(running.store, settings.require_database_url(), keyring)
    await follower.start()
    running.follower = follower
    running.metrics.push_stats = lambda: _push_stats(follower)
    hb_ms = int(settings.engine_heartbeat_seconds * 1000)
    server = grpc.aio.server(
        interceptors=[ApiInterceptor(running.metrics)],
        options=[
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.keepalive_time_ms", max(hb_ms, 10_000)),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ],
    )
    port_settings = EnginePortSettings(
        trust_domain=settings.trust_domain,
        heartbeat_seconds=settings.engine_heartbeat_seconds,
        outbox_max=settings.engine_outbox_max,
    )
    divergence = running.metrics.engine_divergence
    streams = EngineStreamServicer(
        EngineSessions(running.store, results, replica),
        follower,
        port_settings,
        running.metrics.push_latency.observe,
        lambda location_id: divergence.labels(location_id).inc(),
    )
    engine_pb2_grpc.add_EngineConfigServiceServicer_to_server(streams, server)
    creds = _reloading(
        "engine",
        running.metrics,
        settings.engine_tls_cert_file,
        settings.engine_tls_key_file,
        settings.engine_ca_file,  # mutual TLS: engines' certificates are verified against the engine CA
    ).credentials()
    port = server.add_secure_port(settings.engine_listen, creds)
    await server.start()
    running.engine_server, running.engine_port, running.engine_streams = server, port, streams
    running.engine_leases = LeaseRenewal(running.store, replica, settings.engine_lease_seconds)
    running.engine_leases.start()
    log.info("engine port listening on %s (port %d, mutual TLS)", settings.engine_listen, port)


def _push_stats(follower: ChangeFollower) -> PushStats:
    outboxes = follower.outboxes()
    return PushStats(
        {loc: [o.pending for o in boxes] for loc, boxes in outboxes.items()},
        follower.last,
        {loc: [o.lag for o in boxes] for loc, boxes in outboxes.items()},
    )


async def _start_operations_ports(settings: Settings, running: RunningVault) -> None:
    """Metrics over plain HTTP, and for the kubelet's gRPC probe (which cannot do TLS) a plaintext server with only
    the health service: the same servicer as the API port's, so the same serving status."""
    if settings.metrics_listen is not None:
        metrics, store = running.metrics, running.store
        running.metrics_server = MetricsHttpServer(metrics.registry, before_scrape=lambda: metrics.refresh(store))
        _, running.metrics_port = await running.metrics_server.start(settings.metrics_listen)
    if settings.health_listen is not None:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(running.health, server)
        port = server.add_insecure_port(settings.health_listen)
        await server.start()
        running.health_server, running.health_port = server, port
        log.info("health port listening on %s (port %d, plaintext, grpc.health.v1 only)", settings.health_listen, port)


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT; then drain within the grace period. SIGHUP re-reads the keyring file now."""
    loop = asyncio.get_running_loop()
    started: list[RunningVault] = []

    def sighup() -> None:  # installed first: a SIGHUP while starting must not end the process (its default)
        for running in started:
            if running.keyring_keeper is not None:
                running.keyring_keeper.wake()

    loop.add_signal_handler(signal.SIGHUP, sighup)
    vault = await start_vault(settings)
    started.append(vault)
    runtime.tune_gc_for_serving()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: draining for up to %.1fs", settings.shutdown_grace_seconds)
    await vault.stop(settings.shutdown_grace_seconds)
