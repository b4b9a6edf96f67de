"""External-vault synchronization at scale (issue 13): N credentials synchronized from a real OpenBao (``bao server``,
tests/openbao.py) every --interval seconds by --replicas ``credvault serve`` processes (2 by default) on one fresh
database (the leases split the work; each credential is synchronized by one of them per cycle), with a real
engine-worker process connected to the first replica and holding the credentials that change (one monitor each).

Reported: OpenBao requests per sync cycle (counted by OpenBao's own file audit device over a steady window); the
vault processes' CPU seconds per cycle over that window (both replicas, from /proc); and the delay from a change
written in OpenBao (``bao kv put`` returned) to the engine worker's ACK of the revision carrying the new version (as
the vault records it, engines.applied_revision, the way bench/propagation.py measures ACKs), polled every
--poll seconds. Reference figures, not measured here: the seed product's documented hourly default sync and OpenBao
Agent's documented 5-minute template default (the delay a change waits at worst is the interval)."""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import random
import ssl
import statistics
import time
from typing import Any

import aiohttp
import asyncpg
from _harness import Database, source_info
from _processes import Resources, Vault, note, run_bench, spawn_worker, start_replica, stop_children, worker_port
from _propagation_setup import monitor_definition

from credvault.v1 import monitors_pb2 as mpb
from tests.conftest import Client
from tests.local_pki import LocalPki
from tests.openbao import OpenBao
from tests.vault_service.test_external_sync import companions, create_synced, source
from vault_service.bootstrap import migrate_and_bootstrap
from vault_service.crypto import new_keyring

REFERENCES = {"seed_default_interval_seconds": 3600, "openbao_agent_default_interval_seconds": 300}
LOCATION, ENGINE = "bench-sync", "e1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

LATEST = """
SELECT object_id, max(revision) AS revision FROM change_log
 WHERE kind = 'credential' AND object_id = ANY($1) GROUP BY object_id
"""
APPLIED = "SELECT applied_revision FROM engines WHERE location_id = $1 AND engine_id = $2"


class KvWriter:
    """Writes KV v2 secrets over OpenBao's HTTP API with the root token (a ``bao kv put`` process each is slow)."""

    def __init__(self, bao: OpenBao) -> None:
        context = ssl.create_default_context(cafile=str(bao.pki.server_ca_pem))
        self._bao = bao
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, limit=8))

    async def put(self, path: str, **fields: str) -> None:
        url = f"{self._bao.address}/v1/secret/data/{path}"
        headers = {"X-Vault-Token": self._bao.root_token}
        async with self._http.post(url, json={"data": fields}, headers=headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"writing {path} in OpenBao: HTTP {resp.status}")

    async def close(self) -> None:
        await self._http.close()


def audit_requests(log: pathlib.Path) -> int:
    if not log.exists():
        return 0
    return sum(1 for line in log.read_text().splitlines() if '"type":"request"' in line)


def cpu_seconds(vaults: list[Vault]) -> float:
    """User and system CPU time of the vault processes so far."""
    total = 0
    for v in vaults:
        fields = pathlib.Path(f"/proc/{v.child.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of the line)
    return total / CLOCK_TICKS


def percentiles(delays: list[float], resolution: float) -> dict[str, Any]:
    ordered = sorted(delays)
    return {
        "samples": len(ordered),
        "poll_resolution_seconds": resolution,
        "p50": round(statistics.median(ordered), 2),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
        "max": round(ordered[-1], 2),
    }


async def run(res: Resources, ns: argparse.Namespace) -> dict[str, Any]:
    count, interval, poll = ns.credentials, ns.interval, ns.poll
    pki = LocalPki.make(res.root / "pki")
    bao = OpenBao(res.root / "bao", pki)
    audit = res.root / "audit.log"  # OpenBao takes audit devices from its configuration only
    bao.config.write_text(
        bao.config.read_text() + f'audit "file" "bench" {{\n  options {{\n    file_path = "{audit}"\n  }}\n}}\n'
    )
    db = Database(ns.database_url, f"bench_sync_{os.getpid()}")
    await db.create()
    await asyncio.to_thread(bao.start)
    res.on_close("openbao", bao.stop)
    try:
        await asyncio.to_thread(bao.setup_engines)
        note(f"writing {count} secrets in OpenBao")
        kv = KvWriter(bao)
        for first in range(0, count, 50):
            await asyncio.gather(
                *(kv.put(f"bench/c{n}", user=f"u{n}", **{"pass": "v0"}) for n in range(first, min(count, first + 50)))
            )
        issued = await migrate_and_bootstrap(db.url, "bench-admin")
        keyring = new_keyring().to_json()
        tick = {"CREDVAULT_EXTERNAL_SYNC_TICK_SECONDS": "1"}
        vaults = [
            await start_replica(res, db.url, pki, keyring, issued.token, name=f"vault{i}", **tick)
            for i in range(1, ns.replicas + 1)
        ]
        channel = pki.channel(vaults[0].api_port)
        admin = Client(channel, issued.token, "bench-admin")
        await admin.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id=LOCATION)))
        await admin.AddEngine(mpb.AddEngineRequest(location_id=LOCATION, engine_id=ENGINE))
        c = await companions(admin, bao, "bench", ["secret/data/bench/*"])
        note(f"creating {count} synchronized credentials, interval {interval} s")
        ids = [
            (await create_synced(admin, f"c{n}", source(bao, c, f"bench/c{n}", interval=interval))).id
            for n in range(count)
        ]
        changing = min(ns.changes, count)
        for n in range(changing):
            await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=monitor_definition(LOCATION, ids[n], n, 0)))
        worker = spawn_worker(res, vaults[0], pki, LOCATION, ENGINE)
        await worker_port(worker, 60)

        conn = await asyncpg.connect(db.url)
        try:
            started = time.monotonic()
            while await conn.fetchval(  # noqa: ASYNC110 - the first sync of each
                "SELECT count(*) FROM credentials WHERE external_source IS NOT NULL AND sync_last_success IS NULL"
            ):
                await asyncio.sleep(0.5)
            first_sync_seconds = time.monotonic() - started
            note(f"all {count} synchronized once after {first_sync_seconds:.1f} s; steady window of {ns.cycles} cycles")
            await asyncio.sleep(interval)  # into the steady state
            before_requests, cpu0, wall0 = audit_requests(audit), cpu_seconds(vaults), time.monotonic()
            await asyncio.sleep(interval * ns.cycles)
            requests = audit_requests(audit) - before_requests
            cpu, wall = cpu_seconds(vaults) - cpu0, time.monotonic() - wall0
            window_cycles = wall / interval
            late = await conn.fetchval(
                "SELECT count(*) FROM credentials WHERE external_source IS NOT NULL"
                " AND sync_last_success < now() - make_interval(secs => $1)",
                float(interval * 2),
            )
            note(f"{changing} changes in OpenBao at random points of a cycle; waiting for the engine's ACKs")
            commits, acks = await _changes(conn, kv, ids[:changing], interval, poll)
        finally:
            await conn.close()
            await kv.close()
    finally:
        await stop_children(res, list(res.children))
        await db.drop()
    return {
        "bench": "external_sync",
        "source": source_info(),
        "credentials": count,
        "interval_seconds": interval,
        "replicas": len(vaults),
        "first_sync_of_all_after_creating_them_seconds": round(first_sync_seconds, 2),
        "steady_window_cycles": round(window_cycles, 2),
        "credentials_not_synchronized_within_two_intervals": late,
        "openbao_requests_per_cycle": round(requests / window_cycles, 1),
        "openbao_requests_per_credential_per_cycle": round(requests / window_cycles / count, 2),
        "vault_cpu_seconds_per_cycle": round(cpu / window_cycles, 3),
        "vault_cpu_share_of_one_core": round(cpu / wall, 3),
        "change_to_vault_commit_seconds": percentiles(commits, poll),
        "change_to_engine_ack_seconds": percentiles(acks, poll),
        "reference_worst_case_delay_seconds": {"this_interval": interval, **REFERENCES},
    }


async def _changes(
    conn: asyncpg.Connection, kv: KvWriter, ids: list[str], interval: int, poll: float
) -> tuple[list[float], list[float]]:
    """Each credential changed once in OpenBao at a random point of a cycle; the delays until the vault committed
    the new version (its change-log row seen) and until the engine ACKed that revision."""
    before = {r["object_id"]: r["revision"] for r in await conn.fetch(LATEST, ids)}
    changed_at: dict[str, float] = {}
    committed: dict[str, tuple[int, float]] = {}
    acked: dict[str, float] = {}

    async def change(n: int, cid: str) -> None:
        await asyncio.sleep(random.uniform(0, interval))
        await kv.put(f"bench/c{n}", user="x", **{"pass": "changed"})
        changed_at[cid] = time.monotonic()  # the change is committed in OpenBao

    writers = asyncio.gather(*(change(n, cid) for n, cid in enumerate(ids)))
    deadline = time.monotonic() + interval * 6 + 60
    while len(acked) < len(ids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(ids) - len(acked)} changes not ACKed by the engine in time")
        await asyncio.sleep(poll)
        now = time.monotonic()
        for row in await conn.fetch(LATEST, ids):
            cid, revision = row["object_id"], row["revision"]
            if cid in changed_at and cid not in committed and revision > before.get(cid, 0):
                committed[cid] = (revision, now)
        applied = await conn.fetchval(APPLIED, LOCATION, ENGINE) or 0
        for cid, (revision, _) in committed.items():
            if cid not in acked and applied >= revision:
                acked[cid] = now
    await writers
    commits = [committed[cid][1] - changed_at[cid] for cid in ids]
    return commits, [acked[cid] - changed_at[cid] for cid in ids]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--credentials", type=int, default=1000)
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--cycles", type=int, default=6, help="steady cycles counted")
    parser.add_argument(
        "--changes",
        type=int,
        default=100,
        help="changes made in OpenBao (distinct credentials, at random points of a cycle)",
    )
    parser.add_argument("--replicas", type=int, default=2, help="credvault serve processes on the database")
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between polls of the commits and ACKs")
    parser.add_argument("--quick", action="store_true", help="100 credentials, 2 cycles, 20 changes")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    ns = parser.parse_args()
    if ns.quick:
        ns.credentials, ns.cycles, ns.changes = 100, 2, 20
    res = Resources(ns.keep, "sync")
    run_bench(res, lambda: run(res, ns))


if __name__ == "__main__":
    main()
