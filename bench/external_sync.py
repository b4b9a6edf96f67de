"""External-vault synchronization at scale (issue 13): N credentials synchronized from a real OpenBao (``bao server``,
tests/openbao.py) every --interval seconds by one in-process vault replica on a fresh database.

Reported: OpenBao requests per sync cycle (counted by OpenBao's own file audit device over a steady window), the
vault process's CPU seconds per cycle over that window (the bench's client is idle then), and the delay from a
change in OpenBao (``bao kv put``) to the vault's new credential version (the commit of the synced value; no engine
in this bench, so the push to an engine's ACK, measured by bench/propagation.py, comes on top). Reference figures,
not measured here: the seed product's documented hourly default sync and OpenBao Agent's 5-minute template default
(the delay a change waits at worst is the interval)."""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import random
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any

from _harness import Database, source_info

from credvault.v1 import credentials_pb2 as cpb
from tests.conftest import admin_of
from tests.local_pki import LocalPki
from tests.openbao import OpenBao
from tests.vault_service.test_external_sync import companions, create_synced, source
from vault_service.config import Settings
from vault_service.crypto import new_keyring
from vault_service.server import start_vault

POLL_SECONDS = 0.2  # the resolution of the delays
REFERENCES = {"seed_default_interval_seconds": 3600, "openbao_agent_default_interval_seconds": 300}


def audit_requests(log: pathlib.Path) -> int:
    if not log.exists():
        return 0
    return sum(1 for line in log.read_text().splitlines() if '"type":"request"' in line)


async def run(database_url: str, count: int, interval: int, cycles: int, changes: int) -> dict[str, Any]:
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-sync-"))
    pki = LocalPki.make(work / "pki")
    bao = OpenBao(work / "bao", pki)
    audit = work / "audit.log"  # OpenBao takes audit devices from its configuration only
    bao.config.write_text(
        bao.config.read_text() + f'audit "file" "bench" {{\n  options {{\n    file_path = "{audit}"\n  }}\n}}\n'
    )
    db = Database(database_url, f"bench_sync_{uuid.uuid4().hex[:8]}")
    await db.create()
    await asyncio.to_thread(bao.start)
    try:
        await asyncio.to_thread(bao.setup_engines)
        for n in range(count):
            await asyncio.to_thread(bao.put, "secret", f"bench/c{n}", user=f"u{n}", **{"pass": "v0"})
        settings = Settings(
            database_url=db.url,
            listen="127.0.0.1:0",
            tls_cert_file=pki.server_pem,
            tls_key_file=pki.server_key,
            external_sync_tick_seconds=1.0,
        )
        vault = await start_vault(settings, keyring=new_keyring())
        try:
            async with admin_of(vault, pki) as admin:
                c = await companions(admin, bao, "bench", ["secret/data/bench/*"])
                ids = [
                    (await create_synced(admin, f"c{n}", source(bao, c, f"bench/c{n}", interval=interval))).id
                    for n in range(count)
                ]

                async def versions() -> list[int]:
                    out = []
                    for i in ids:
                        got = await admin.GetCredential(cpb.GetCredentialRequest(id=i))
                        out.append(got.credential.version)
                    return out

                started = time.monotonic()
                while min(await versions()) < 2:  # noqa: ASYNC110 - the first sync of each
                    await asyncio.sleep(0.5)
                first_sync_seconds = time.monotonic() - started
                await asyncio.sleep(interval)  # into the steady state
                before_requests, cpu0, wall0 = audit_requests(audit), time.process_time(), time.monotonic()
                await asyncio.sleep(interval * cycles)
                requests = audit_requests(audit) - before_requests
                cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
                window_cycles = wall / interval

                async def change(n: int) -> float:
                    """A change at a random point of the cycle, to a credential of its own; its delay."""
                    await asyncio.sleep(random.uniform(0, interval))
                    held = (await admin.GetCredential(cpb.GetCredentialRequest(id=ids[n]))).credential.version
                    await asyncio.to_thread(bao.put, "secret", f"bench/c{n}", user="x", **{"pass": "changed"})
                    t0 = time.monotonic()  # the change is committed in OpenBao
                    while (await admin.GetCredential(cpb.GetCredentialRequest(id=ids[n]))).credential.version == held:  # noqa: ASYNC110
                        await asyncio.sleep(POLL_SECONDS)
                    return time.monotonic() - t0

                delays = sorted(await asyncio.gather(*(change(n) for n in range(min(changes, count)))))
        finally:
            await vault.stop(0)
    finally:
        await asyncio.to_thread(bao.stop)
        await db.drop()
    return {
        "bench": "external_sync",
        "source": source_info(),
        "credentials": count,
        "interval_seconds": interval,
        "first_sync_of_all_seconds": round(first_sync_seconds, 2),
        "steady_window_cycles": round(window_cycles, 2),
        "openbao_requests_per_cycle": round(requests / window_cycles, 1),
        "openbao_requests_per_credential_per_cycle": round(requests / window_cycles / count, 2),
        "vault_cpu_seconds_per_cycle": round(cpu / window_cycles, 3),
        "change_to_vault_version_seconds": {
            "samples": len(delays),
            "poll_resolution_seconds": POLL_SECONDS,
            "p50": round(statistics.median(delays), 2),
            "p99": round(delays[min(len(delays) - 1, int(len(delays) * 0.99))], 2),
            "max": round(delays[-1], 2),
        },
        "reference_worst_case_delay_seconds": {"this_interval": interval, **REFERENCES},
    }


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
    parser.add_argument("--quick", action="store_true", help="100 credentials, 3 cycles, 20 changes")
    ns = parser.parse_args()
    if ns.quick:
        ns.credentials, ns.cycles, ns.changes = 100, 3, 20
    result = asyncio.run(run(ns.database_url, ns.credentials, ns.interval, ns.cycles, ns.changes))
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
