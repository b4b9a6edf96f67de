"""The engine worker's real stream and config store, run in the test's process over mutual TLS against a vault's
real engine port (instead of a fake vault or a minimal client)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from engine_worker.config_store import ConfigStore, HeldCredential
from engine_worker.stream import EngineStream, StreamSettings
from engine_worker.tls import check_tls_files, mtls_channel_factory
from tests.local_pki import LocalPki

__all__ = ["QUICK", "RealEngine", "real_engine", "secret_buffer"]

# Quick reconnects; a dead session only after several of the vault's heartbeats (1 s in the tests' vaults) are missed.
QUICK = StreamSettings(heartbeat_interval=0.5, dead_after_intervals=6, backoff_base=0.02, backoff_cap=0.2)


class RealEngine:
    """The worker's stream and store, in this process."""

    def __init__(self, store: ConfigStore, stream: EngineStream) -> None:
        self.store = store
        self.stream = stream

    def holds(self) -> dict[str, dict[str, int]]:
        return self.store.snapshot_ids()

    async def wait_until(self, predicate: Callable[[], bool], within: float = 15.0) -> None:
        async with asyncio.timeout(within):
            while not predicate():  # noqa: ASYNC110 - the vault and the engine change it from other tasks
                await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def real_engine(
    engine_port: int, local_pki: LocalPki, location_id: str, engine_id: str, settings: StreamSettings = QUICK
) -> AsyncIterator[RealEngine]:
    """An engine with a certificate for ``location_id``/``engine_id``, streaming from ``engine_port`` until the
    block ends."""
    cert, key = local_pki.write(f"engine-{location_id}-{engine_id}", local_pki.engine(location_id, engine_id))
    ca = local_pki.directory / "server-ca.pem"
    identity = check_tls_files(cert, key, ca)
    store = ConfigStore(identity.location_id)
    factory = mtls_channel_factory(f"localhost:{engine_port}", cert, key, ca, identity)
    stream = EngineStream(store, identity, factory, settings)
    task = asyncio.create_task(stream.run())
    try:
        yield RealEngine(store, stream)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def secret_buffer(held: HeldCredential | None) -> bytearray:
    """The buffer holding a held credential's contents (checked non-zero): a test keeps it to see it wiped later."""
    assert held is not None
    buf = held._secret
    assert isinstance(buf, bytearray)
    assert any(buf)
    return buf
