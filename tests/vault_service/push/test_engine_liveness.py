"""Engine liveness: an engine shows connected while the replica holding its stream renews the lease. A replica
SIGKILLed cannot say its engines are gone; they show disconnected once the lease lapses, while an engine of a live
replica stays connected (real vault and worker processes, real PostgreSQL)."""

from __future__ import annotations

import datetime
import signal

import asyncpg

from credvault.v1 import monitors_pb2 as mpb
from tests.conftest import Client
from tests.processes import System, eventually, free_port
from vault_service.bootstrap import migrate_and_bootstrap

LEASE_SECONDS = 3.0
LEASE = {"CREDVAULT_ENGINE_LEASE_SECONDS": str(LEASE_SECONDS)}


async def _engines(admin: Client) -> dict[str, mpb.Engine]:
    listed = await admin.ListEngines(mpb.ListEnginesRequest())
    return {f"{e.location_id}/{e.engine_id}": e for e in listed.engines}


async def _connected(admin: Client, engine: str, connected: bool) -> bool:
    return (await _engines(admin))[engine].connected is connected


async def test_the_engine_of_a_killed_replica_shows_disconnected_once_its_lease_lapses(
    system: System, database_url: str
) -> None:
    issued = await migrate_and_bootstrap(database_url, "admin")
    killed = await system.start_vault(**LEASE)
    async with system.pki.channel(system.api_port) as channel:
        admin = Client(channel, issued.token, "admin")
        await admin.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id="loc-a")))
        for engine in ("dead", "live"):
            await admin.AddEngine(mpb.AddEngineRequest(location_id="loc-a", engine_id=engine))
        orphan, _ = await system.start_worker("loc-a", "dead")
        await eventually(lambda: _connected(admin, "loc-a/dead", True))

        # the replica dies without a word; its worker goes too, so that nothing reconnects the engine
        await killed.stop(signal.SIGKILL)
        await orphan.stop(signal.SIGKILL)
        system.engine_port = free_port()  # another replica, on another engine port
        await system.start_vault(**LEASE)
        await system.start_worker("loc-a", "live")
        await eventually(lambda: _connected(admin, "loc-a/live", True))

        await eventually(lambda: _connected(admin, "loc-a/dead", False))
        # the live engine's replica keeps renewing: still connected two leases (on the database's clock) after it
        # connected, when its first lease would have lapsed twice over
        live_since = (await _engines(admin))["loc-a/live"].connected_since.ToDatetime(datetime.UTC)
        conn = await asyncpg.connect(database_url)
        try:

            async def two_leases_later() -> bool:
                now: datetime.datetime = await conn.fetchval("SELECT now()")
                return now > live_since + datetime.timedelta(seconds=2 * LEASE_SECONDS)

            await eventually(two_leases_later)
        finally:
            await conn.close()
        assert await _connected(admin, "loc-a/live", True)
