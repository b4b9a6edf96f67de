"""The worker's fail-safe deadline holds whatever the connection is doing: a vault that freezes (here: its address
accepts TCP connections and never answers the TLS handshake, as a SIGSTOPped process does) gets the held configs
flushed at max_disconnected after contact was lost, not when some connect attempt gives up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from tests.engine_worker import test_engine_worker as engine_tests
from tests.engine_worker.test_engine_worker import (
    C1,
    M1,
    TIMEOUT,
    Pki,
    VaultServer,
    batch,
    http_monitor,
    running,
    up_cred,
    worker,
)

# The engine tests' fixtures: their PKI (a vault certificate and an engine's), and a fake vault on the engine port.
pki = engine_tests.pki
vault_server = engine_tests.vault_server


@contextlib.asynccontextmanager
async def frozen_listener(port: int) -> AsyncIterator[list[asyncio.StreamWriter]]:
    """Accepts on ``port`` and never reads or writes: every handshake hangs. Yields the connections accepted."""
    accepted: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", port)
    try:
        yield accepted
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_the_fail_safe_flushes_on_time_while_a_reconnect_hangs_in_the_tls_handshake(
    vault_server: VaultServer, pki: Pki
) -> None:
    # A handshake may hang for a whole dead-session limit (3 intervals): longer than max_disconnected plus the margin
    # of one heartbeat interval allowed here, so only a deadline with its own timer can meet it.
    heartbeat, max_disconnected = 2.0, 2.0
    store, stream = worker(
        pki, vault_server.port, heartbeat_interval=heartbeat, max_disconnected=max_disconnected, backoff_cap=0.2
    )
    loop = asyncio.get_running_loop()
    async with running(stream):
        session = await vault_server.vault.next_session()
        await session.sync(batch(1, credentials=[up_cred(C1, 1)], monitors=[http_monitor(M1, 1, basic=C1)]), revision=1)
        await asyncio.wait_for(stream.synced.wait(), TIMEOUT)
        stream.flushed.clear()  # a fail-safe before the first contact (nothing held then) does not count here

        contact_lost_by = loop.time()
        await vault_server.stop()
        async with frozen_listener(vault_server.port) as accepted:
            await asyncio.wait_for(stream.flushed.wait(), TIMEOUT)
            flushed_after = loop.time() - contact_lost_by
            assert accepted, "the engine never reached the frozen vault"

    assert store.held() == []
    assert max_disconnected <= flushed_after <= max_disconnected + heartbeat, flushed_after
