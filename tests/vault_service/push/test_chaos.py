"""Engines converge to exactly what the database says after database faults, with real processes: two `credvault
serve` replicas on one database (a PostgreSQL of the test's own, which it kills sessions of and stops), two
`engine-worker` processes per location, one on each replica, and bursts of changes through both replicas' API.

The expected holdings are computed from the database's rows after the bursts (tests/chaos_database.py says how);
each worker's are read from its /introspection. bench/chaos.py runs the same scenario longer and measures it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import pathlib
from collections.abc import AsyncIterator

import pytest

from credvault.v1 import monitors_pb2 as mpb
from tests.chaos_database import StoppablePostgres, kill_sessions_for, stop_for
from tests.chaos_observer import Engine, converge
from tests.chaos_workload import Replica, Workload
from tests.local_pki import LocalPki
from tests.processes import System, vault_admin
from vault_service.crypto import new_keyring

LOCATIONS = ["loc-a", "loc-b"]
DATABASE = "chaos"
# Generous: a replica's follower retries the database with a backoff of up to 10 s, and polls every 2 s.
CONVERGENCE_SECONDS = 30.0


@dataclasses.dataclass(frozen=True)
class Intensity:
    changes_per_second: float
    kill_seconds: float  # sessions killed every kill_every seconds for this long
    kill_every: float
    stop_seconds: float  # the database down this long


@contextlib.asynccontextmanager
async def api(system: System, token: str) -> AsyncIterator[Replica]:
    async with system.pki.channel(system.api_port) as channel:
        yield Replica(channel, token)


@pytest.fixture
async def postgres() -> AsyncIterator[StoppablePostgres]:
    pg = await asyncio.to_thread(StoppablePostgres)
    try:
        yield pg
    finally:
        await asyncio.to_thread(pg.close)


@pytest.mark.parametrize(
    "intensity", [Intensity(changes_per_second=30, kill_seconds=8, kill_every=0.1, stop_seconds=3)], ids=["ci"]
)
async def test_engines_hold_what_the_database_says_after_session_kills_and_a_stop(
    tmp_path: pathlib.Path, postgres: StoppablePostgres, intensity: Intensity
) -> None:
    url = await postgres.create_database(DATABASE)
    pki, keyring = LocalPki.make(tmp_path), new_keyring()
    replicas = [System(pki, url, keyring), System(pki, url, keyring)]
    try:
        async with (
            vault_admin(replicas[0], url) as admin,
            contextlib.AsyncExitStack() as stack,
        ):
            await replicas[1].start_vault()
            engines = []
            for i, location in enumerate(LOCATIONS):
                await admin.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id=location)))
                for j, engine in enumerate(["e1", "e2"]):  # each location on both replicas
                    await admin.AddEngine(mpb.AddEngineRequest(location_id=location, engine_id=engine))
                    _, port = await replicas[(i + j) % 2].start_worker(location, engine)
                    engines.append(Engine(f"{location}/{engine}", location, port))
            apis = [await stack.enter_async_context(api(system, admin.token or "")) for system in replicas]
            work = await stack.enter_async_context(Workload(apis, url, LOCATIONS))
            await work.populate(credentials=4, monitors=10)

            rate = intensity.changes_per_second
            await work.burst_around(
                rate,
                kill_sessions_for(
                    postgres.admin_url, DATABASE, intensity.kill_seconds, intensity.kill_every, aim=work.next_commit
                ),
            )
            await work.burst_around(rate, stop_for(postgres, intensity.stop_seconds))

            _, lines = await converge(engines, work.read_all, CONVERGENCE_SECONDS)
            assert not lines, (
                f"after {work.calls} changes ({work.failures} failed), {CONVERGENCE_SECONDS:g} s after the faults the"
                " engines differ from the database:\n" + "\n".join(lines)
            )
    finally:
        for system in replicas:
            await system.stop_all()
