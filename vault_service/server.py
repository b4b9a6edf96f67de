"""The vault's gRPC server: services, health, reflection, TLS, limits, graceful shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from credvault.v1 import (
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
from vault_service.api.servicers import CredentialsServicer, IdentityServicer, MonitorsServicer, TokensServicer
from vault_service.api.status import StatusMappingInterceptor
from vault_service.config import Settings
from vault_service.credentials import CredentialService
from vault_service.crypto import Keyring
from vault_service.identity import IdentityService
from vault_service.keys import verify_keyring
from vault_service.monitors import MonitorService
from vault_service.push.follower import ChangeFollower
from vault_service.push.stream import EngineStreamServicer, StreamSettings
from vault_service.results import ResultService
from vault_service.storage.migrate import migrate
from vault_service.storage.store import Store
from vault_service.tokens import TokenService

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    credentials_pb2.DESCRIPTOR.services_by_name["CredentialsService"].full_name,
    identity_pb2.DESCRIPTOR.services_by_name["IdentityService"].full_name,
    tokens_pb2.DESCRIPTOR.services_by_name["TokensService"].full_name,
    monitors_pb2.DESCRIPTOR.services_by_name["MonitorsService"].full_name,
)


@dataclasses.dataclass
class RunningVault:
    server: grpc.aio.Server
    port: int
    store: Store
    health: health_aio.HealthServicer
    engine_server: grpc.aio.Server | None = None
    engine_port: int = 0
    follower: ChangeFollower | None = None

    async def stop(self, grace: float | None) -> None:
        """Stop accepting, let in-flight RPCs and streams finish within ``grace`` seconds, then close the pool."""
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        servers = [s for s in (self.server, self.engine_server) if s is not None]
        await asyncio.gather(*(s.stop(grace) for s in servers))
        if self.follower is not None:
            await self.follower.stop()
        await self.store.close()


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    chain = settings.tls_cert_file.read_bytes()
    key = settings.tls_key_file.read_bytes()
    return grpc.ssl_server_credentials([(key, chain)])


async def start_vault(
    settings: Settings, *, store: Store | None = None, keyring: Keyring | None = None
) -> RunningVault:
    """Migrate, verify the keyring, and start serving. Raises ConfigurationError on a bad KEK."""
    keyring = keyring or settings.load_keyring()
    if store is None:
        store = await Store.connect(settings.require_database_url(), max_size=settings.db_pool_max)
    try:
        async with store.pool.acquire() as conn:
            await migrate(conn)
        await verify_keyring(store, keyring)
    except BaseException:
        await store.close()
        raise

    tokens = TokenService(store)
    server = grpc.aio.server(
        interceptors=[StatusMappingInterceptor(store)],
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.max_concurrent_streams", 1000),
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ],
    )
    credentials_pb2_grpc.add_CredentialsServiceServicer_to_server(
        CredentialsServicer(tokens, CredentialService(store, keyring)), server
    )
    identity_pb2_grpc.add_IdentityServiceServicer_to_server(IdentityServicer(tokens, IdentityService(store)), server)
    tokens_pb2_grpc.add_TokensServiceServicer_to_server(TokensServicer(tokens), server)
    monitor_service = MonitorService(store, keyring)
    results = ResultService(store, monitor_service, settings.results_per_monitor)
    monitors_pb2_grpc.add_MonitorsServiceServicer_to_server(MonitorsServicer(tokens, monitor_service, results), server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

    creds = _credentials(settings)
    port = server.add_secure_port(settings.listen, creds) if creds else server.add_insecure_port(settings.listen)
    if port == 0:
        await store.close()
        raise OSError(f"cannot listen on {settings.listen}")
    await server.start()
    running = RunningVault(server, port, store, health_servicer)
    if settings.engine_listen is not None:
        await _start_engine_port(settings, running, keyring, results)
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("credvault API listening on %s (port %d, %s)", settings.listen, port, "TLS" if creds else "plaintext")
    return running


async def _start_engine_port(
    settings: Settings, running: RunningVault, keyring: Keyring, results: ResultService
) -> None:
    """The engine stream on its own port: mutual TLS with the engine CA, nothing else served there."""
    assert settings.engine_listen is not None
    assert settings.engine_tls_cert_file is not None
    assert settings.engine_tls_key_file is not None
    assert settings.engine_ca_file is not None
    follower = ChangeFollower(running.store, settings.require_database_url(), keyring)
    await follower.start()
    hb_ms = int(settings.engine_heartbeat_seconds * 1000)
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.keepalive_time_ms", max(hb_ms, 10_000)),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
    )
    replica = settings.replica_id or f"{socket.gethostname()}-{os.getpid()}"
    stream_settings = StreamSettings(
        trust_domain=settings.trust_domain,
        replica_id=replica,
        heartbeat_seconds=settings.engine_heartbeat_seconds,
        outbox_max=settings.engine_outbox_max,
    )
    engine_pb2_grpc.add_EngineConfigServiceServicer_to_server(
        EngineStreamServicer(running.store, follower, stream_settings, results), server
    )
    creds = grpc.ssl_server_credentials(
        [(settings.engine_tls_key_file.read_bytes(), settings.engine_tls_cert_file.read_bytes())],
        root_certificates=settings.engine_ca_file.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port(settings.engine_listen, creds)
    await server.start()
    running.engine_server, running.engine_port, running.follower = server, port, follower
    log.info("engine port listening on %s (port %d, mutual TLS)", settings.engine_listen, port)


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT; then drain within the grace period."""
    vault = await start_vault(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: draining for up to %.1fs", settings.shutdown_grace_seconds)
    await vault.stop(settings.shutdown_grace_seconds)
