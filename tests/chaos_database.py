"""The database side of the chaos scenario (tests/test_chaos.py and bench/chaos.py): a PostgreSQL of the run's own
that it may stop and start, the faults it injects into the vaults' sessions, and what the engines of a location
should hold according to the database's rows.

What an engine should hold, in the terms of its ``/introspection`` (engine_worker/status.py, by revision): the
location's enabled monitors whose credentials all exist, each at ``monitors.revision``, and exactly the credentials
those monitors use, each at ``credentials.resource_version`` (the revision the push gives a credential:
CredentialResource.version, from LocationState._resolve). That is what LocationState.load builds for a location
from the same rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import pathlib
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from vault_service import embedded_pg

with warnings.catch_warnings():  # platformdirs warns at pgserver's import when XDG_RUNTIME_DIR is unset (it is fine)
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    from pgserver._commands import POSTGRES_BIN_PATH

# application_name of the run's own sessions: the session kills spare them.
CHAOS_APPLICATION = "credvault-chaos"

# {"monitors": {id: revision}, "credentials": {id: revision}}: the revisions an engine's /introspection shows.
Holdings = dict[str, dict[str, int]]


class StoppablePostgres:
    """The embedded PostgreSQL (pgserver's binaries) in a temporary directory of its own: not the machine's server,
    which other tests use. It listens on a socket in a directory derived from its data directory, so its URL
    survives a stop and start. Not under pytest's tmp_path: pytest makes its root private again whenever a run
    starts, and PostgreSQL runs as another user (pgserver's) when this runs as root."""

    def __init__(self) -> None:
        self._directory = pathlib.Path(tempfile.mkdtemp(prefix="credvault-chaos-pg-"))
        self.pgdata = self._directory / "data"
        self.admin_url, self._server = embedded_pg.start(self.pgdata)
        self._socket_dir = str(self._server.get_postmaster_info().socket_dir)

    def url(self, database: str) -> str:
        url: str = self._server.get_uri(database=database)
        return url

    async def create_database(self, name: str) -> str:
        conn = await connect(self.admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url(name)

    async def stop_immediately(self) -> None:
        """``pg_ctl stop -m immediate``: every session cut, no checkpoint, crash recovery at the next start."""
        await self._pg_ctl("-m", "immediate", "-w", "stop")

    async def start(self) -> None:
        """``pg_ctl start`` as pgserver starts it: no TCP, the same socket directory (so the same URL)."""
        log = str(self.pgdata / "log")
        await self._pg_ctl("-w", "-t", "60", "-o", '-h ""', "-o", f"-k {self._socket_dir}", "-l", log, "start")
        await asyncio.to_thread(self._server.ensure_postgres_running)  # only reads the new postmaster.pid

    def close(self) -> None:
        try:
            # stopped here rather than by pgserver's cleanup (it runs pg_ctl with subprocess's user=, see below)
            subprocess.run(self._pg_ctl_argv("-m", "fast", "-w", "stop"), capture_output=True, timeout=60)
            self._server.cleanup_mode = None  # its bookkeeping only
            self._server.cleanup()
        finally:
            shutil.rmtree(self._directory, ignore_errors=True)

    async def _pg_ctl(self, *args: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            *self._pg_ctl_argv(*args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 90)
        if proc.returncode != 0:
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed ({proc.returncode}): {out.decode(errors='replace')}")

    def _pg_ctl_argv(self, *args: str) -> list[str]:
        # As root, pgserver runs PostgreSQL as its own system user (pg_ctl refuses root). runuser rather than
        # subprocess's user=, which forks without vfork: in a process with gRPC's threads the child crashed.
        user = self._server.system_user
        prefix = ["runuser", "-u", user, "--"] if user else []
        return [*prefix, str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), *args]


async def connect(url: str, **kw: Any) -> asyncpg.Connection:
    """A session of the run's own (spared by kill_vault_sessions)."""
    return await asyncpg.connect(url, server_settings={"application_name": CHAOS_APPLICATION}, **kw)


async def kill_vault_sessions(conn: asyncpg.Connection, database: str) -> int:
    """pg_terminate_backend of every session on ``database`` but the run's own; how many were killed."""
    killed = await conn.fetchval(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        " AND application_name <> $2",
        database,
        CHAOS_APPLICATION,
    )
    return int(killed)


async def kill_sessions_for(
    admin_url: str,
    database: str,
    seconds: float,
    every: float = 0.5,
    aim: Callable[[], Awaitable[object]] | None = None,
) -> int:
    """The session-kill fault: kill_vault_sessions at most every ``every`` seconds for ``seconds``, each time once
    ``aim`` returns (for example at the next commit, so that the kill lands while the replicas follow the change
    log); how many sessions were killed. From one session of its own, so that a kill takes one statement."""
    killed = 0
    deadline = time.monotonic() + seconds
    conn = await connect(admin_url, timeout=10)
    try:
        while (left := deadline - time.monotonic()) > 0:
            if aim is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(aim(), left)
            killed += await kill_vault_sessions(conn, database)
            await asyncio.sleep(every)
    finally:
        await conn.close()
    return killed


async def stop_for(pg: StoppablePostgres, seconds: float) -> None:
    """The database-stop fault: ``pg_ctl stop -m immediate``, ``seconds`` down, start."""
    await pg.stop_immediately()
    await asyncio.sleep(seconds)
    await pg.start()


@dataclasses.dataclass(frozen=True)
class MonitorRow:
    revision: int
    enabled: bool
    location_ids: frozenset[str]
    credential_ids: frozenset[str]


@dataclasses.dataclass
class Rows:
    """The rows that decide what engines hold: monitors by id, and each credential's resource version by id."""

    monitors: dict[str, MonitorRow] = dataclasses.field(default_factory=dict)
    credentials: dict[str, int] = dataclasses.field(default_factory=dict)

    def merge(self, found: Rows, monitor_ids: set[str], credential_ids: set[str]) -> None:
        """Takes the rows read for these ids from ``found``; an id not found there is gone."""
        for mid in monitor_ids:
            if mid in found.monitors:
                self.monitors[mid] = found.monitors[mid]
            else:
                self.monitors.pop(mid, None)
        for cid in credential_ids:
            if cid in found.credentials:
                self.credentials[cid] = found.credentials[cid]
            else:
                self.credentials.pop(cid, None)

    def users_of(self, credential_id: str) -> set[str]:
        return {mid for mid, m in self.monitors.items() if credential_id in m.credential_ids}

    def holdings(self, location_id: str) -> Holdings:
        monitors: dict[str, int] = {}
        credentials: dict[str, int] = {}
        for mid, m in self.monitors.items():
            if m.enabled and location_id in m.location_ids and all(c in self.credentials for c in m.credential_ids):
                monitors[mid] = m.revision
                credentials.update((c, self.credentials[c]) for c in m.credential_ids)
        return {"monitors": monitors, "credentials": credentials}


async def read_rows(
    conn: asyncpg.Connection, monitor_ids: list[str] | None = None, credential_ids: list[str] | None = None
) -> Rows:
    """The rows of these ids (None: all), from one snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        monitors = await conn.fetch(
            "SELECT id, revision, enabled, location_ids,"
            " ARRAY(SELECT credential_id FROM monitor_credentials c WHERE c.monitor_id = m.id) AS refs"
            " FROM monitors m WHERE $1::text[] IS NULL OR id = ANY($1)",
            monitor_ids,
        )
        credentials = await conn.fetch(
            "SELECT id, resource_version FROM credentials WHERE $1::text[] IS NULL OR id = ANY($1)", credential_ids
        )
    return Rows(
        {
            r["id"]: MonitorRow(r["revision"], r["enabled"], frozenset(r["location_ids"]), frozenset(r["refs"]))
            for r in monitors
        },
        {r["id"]: r["resource_version"] for r in credentials},
    )


def divergence(engine: str, expected: Holdings, held: Holdings) -> list[str]:
    """One line per id that ``held`` has other than ``expected``: missing, not expected, or at another version."""
    lines = []
    for kind in ("monitors", "credentials"):
        want, got = expected[kind], held.get(kind, {})
        for rid in sorted(want.keys() | got.keys()):
            if rid not in got:
                lines.append(f"{engine}: {kind[:-1]} {rid} missing (expected version {want[rid]})")
            elif rid not in want:
                lines.append(f"{engine}: {kind[:-1]} {rid} held at version {got[rid]} but not expected")
            elif want[rid] != got[rid]:
                lines.append(f"{engine}: {kind[:-1]} {rid} held at version {got[rid]}, expected {want[rid]}")
    return lines


async def create_pool(url: str) -> asyncpg.Pool:
    """Sessions of the run's own (spared by kill_vault_sessions)."""
    return await asyncpg.create_pool(
        url, min_size=0, max_size=4, server_settings={"application_name": CHAOS_APPLICATION}
    )
