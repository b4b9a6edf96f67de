"""Monitor executions one engine worker sustains, and its scheduling jitter, next to the bare HTTP client, in one run.
Prints JSON.

Real processes: ``credvault serve`` with its engine port on a throwaway database, one ``engine-worker`` process, and a
local HTTP target process (bench/_http_target.py: ``GET /ok`` with basic auth). M monitors (1,000 by default), each
one GET with basic auth from a USERNAME_PASSWORD credential, frequency one minute, shortened with the worker's
``--interval-scale``:

1. Sustained load: every monitor every ``--interval`` seconds (10 by default: 100 executions/s offered for 1,000
   monitors). Measured over a window after a warm-up interval: executions per second, failures, and the scheduling
   delay (actual minus planned start) p50/p99, read from the worker's ``monitor_schedule_delay_seconds`` histogram
   (so a quantile is reported as the upper bound of its bucket).
2. Saturation: every monitor every 0.3 s (3,333/s offered for 1,000): the executions per second the worker reaches,
   and its CPU seconds per execution.
3. Baseline, same target, same run, from this process at concurrency 16: aiohttp with one shared session (keep-alive
   pool: the client's raw rate) and with a fresh session per request (what per-execution isolation costs at least).

Ratios: saturated executions/s over each baseline's requests/s, and the same per CPU second (worker CPU against this
process's CPU for the baseline), which the machine's noise moves less.

    python bench/executions.py            # about 2 minutes
    python bench/executions.py --quick    # shorter windows: about 1 minute
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
import uuid
from typing import Any

import aiohttp
from _harness import Database
from _processes import (
    Resources,
    Vault,
    Worker,
    api_channel,
    note,
    spawn_worker,
    start_vault,
    stop_children,
    wait_for_log,
    worker_port,
)
from prometheus_client.parser import text_string_to_metric_families

from credvault import runtime
from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import credentials_pb2_grpc as cgrpc
from credvault.v1 import monitors_pb2 as mpb
from credvault.v1 import monitors_pb2_grpc as mgrpc
from tests.local_pki import LocalPki

BENCH_DIR = pathlib.Path(__file__).resolve().parent
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCATION = "bench-exec"
SATURATION_INTERVAL = 0.3
CLIENT_CONCURRENCY = 16
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def worker_samples(http: aiohttp.ClientSession, w: Worker) -> Samples:
    async with http.get(f"http://127.0.0.1:{w.status_port}/metrics") as resp:
        text = await resp.text()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("monitor_execution_duration"):
                continue  # per monitor, not needed here
            key = (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "monitor_id")))
            out[key] = out.get(key, 0.0) + s.value
    return out


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def bucket_quantile(after: Samples, before: Samples, name: str, q: float) -> float | None:
    """The upper bound (seconds) of the histogram bucket holding quantile ``q`` of the observations in between."""
    buckets = sorted(
        (float(dict(labels)["le"]), after[(n, labels)] - before.get((n, labels), 0.0))
        for (n, labels) in after
        if n == f"{name}_bucket"
    )
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    for bound, count in buckets:
        if count >= q * total:
            return bound
    return None


# --- baseline: the HTTP client alone -----------------------------------------------------------------------------


async def client_rate(url: str, seconds: float, fresh_session: bool) -> dict[str, Any]:
    headers = {"Authorization": "Basic " + base64.b64encode(b"bench:bench-password").decode()}
    done = 0
    failures = 0
    stop_at = time.perf_counter() + seconds
    shared = None if fresh_session else aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CLIENT_CONCURRENCY))

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal done, failures
        async with session.get(url, headers=headers) as resp:
            await resp.read()
            done += 1
            failures += resp.status != 200

    async def loop() -> None:
        while time.perf_counter() < stop_at:
            if shared is not None:
                await one(shared)
            else:
                async with aiohttp.ClientSession() as session:
                    await one(session)

    cpu0, t0 = time.process_time(), time.perf_counter()
    try:
        await asyncio.gather(*(loop() for _ in range(CLIENT_CONCURRENCY)))
    finally:
        if shared is not None:
            await shared.close()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {
        "requests_per_s": round(done / elapsed, 1),
        "requests_per_cpu_s": round(done / cpu, 1) if cpu else None,
        "requests": done,
        "failures": failures,
        "concurrency": CLIENT_CONCURRENCY,
        "session": "fresh per request" if fresh_session else "one shared (keep-alive pool)",
    }


# --- the system --------------------------------------------------------------------------------------------------


async def create_monitors(vault: Vault, p: LocalPki, url: str, count: int) -> None:
    md = vault.metadata
    async with api_channel(vault, p) as ch:
        mon, cred = mgrpc.MonitorsServiceStub(ch), cgrpc.CredentialsServiceStub(ch)
        await mon.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id=LOCATION)), metadata=md)
        await mon.AddEngine(mpb.AddEngineRequest(location_id=LOCATION, engine_id="e1"), metadata=md)
        contents = cpb.CredentialContents(
            username_password=cpb.UsernamePassword(username="bench", password="bench-password")
        )
        created = await cred.CreateCredential(
            cpb.CreateCredentialRequest(name="bench", scopes=[cpb.CREDENTIAL_SCOPE_SYNTHETIC], contents=contents),
            metadata=md,
        )
        request = mpb.HttpRequest(method="GET", url=url, timeout_ms=10_000)
        request.authentication.basic_credential_id = created.credential.id
        request.validation.add().status_code_in.codes.append(200)
        queue = list(range(count))

        async def creator() -> None:
            while queue:
                i = queue.pop()
                monitor = mpb.Monitor(
                    name=f"bench {i}",
                    frequency_minutes=1,
                    location_ids=[LOCATION],
                    enabled=True,
                    http=mpb.HttpScript(requests=[request]),
                )
                await mon.CreateMonitor(mpb.CreateMonitorRequest(monitor=monitor), metadata=md)

        await asyncio.gather(*(creator() for _ in range(16)))


async def wait_holding(http: aiohttp.ClientSession, w: Worker, count: int, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while True:
        samples = await worker_samples(http, w)
        if samples.get(("configs_held", (("kind", "monitor"),)), 0) >= count:
            return
        if time.monotonic() > deadline or not w.child.alive():
            raise RuntimeError(f"the worker does not hold {count} monitors; log tail:\n{w.child.log_text()[-3000:]}")
        await asyncio.sleep(0.2)


async def measure(
    res: Resources,
    vault: Vault,
    p: LocalPki,
    http: aiohttp.ClientSession,
    monitors: int,
    interval: float,
    window: float,
    event_loop: str,
) -> dict[str, Any]:
    scale = interval / 60.0
    extra = ("--interval-scale", repr(scale), "--event-loop", event_loop)
    w = spawn_worker(res, vault, p, LOCATION, "e1", f"-{interval:g}s", extra)
    try:
        await worker_port(w, 30)
        await wait_for_log(w.child, r"in sync with the vault", 120)
        await wait_holding(http, w, monitors, 120)
        await asyncio.sleep(max(interval, 2.0))  # warm-up: every monitor has run once
        before, cpu0, t0 = await worker_samples(http, w), cpu_seconds(w.child.pid), time.perf_counter()
        await asyncio.sleep(window)
        after, cpu1, t1 = await worker_samples(http, w), cpu_seconds(w.child.pid), time.perf_counter()
    finally:
        await stop_children(res, [w.child])
    elapsed, cpu = t1 - t0, cpu1 - cpu0
    executions = sum(
        after[k] - before.get(k, 0.0) for k in after if k[0] == "monitor_executions_total"
    )  # every outcome
    failures = delta(after, before, "monitor_execution_failures_total")
    p50 = bucket_quantile(after, before, "monitor_schedule_delay_seconds", 0.50)
    p99 = bucket_quantile(after, before, "monitor_schedule_delay_seconds", 0.99)
    return {
        "monitors": monitors,
        "interval_s": interval,
        "offered_per_s": round(monitors / interval, 1),
        "executions_per_s": round(executions / elapsed, 1),
        "failures": int(failures),
        "worker_cpu_s_per_execution_ms": round(cpu / executions * 1000, 3) if executions else None,
        "executions_per_cpu_s": round(executions / cpu, 1) if cpu else None,
        "schedule_delay_p50_ms_at_most": None if p50 is None else p50 * 1000,
        "schedule_delay_p99_ms_at_most": None if p99 is None else p99 * 1000,
        "window_s": round(elapsed, 2),
    }


def start_target(res: Resources) -> str:
    """The HTTP target process; returns its URL."""
    target = subprocess.Popen(
        [sys.executable, str(BENCH_DIR / "_http_target.py")], stdout=subprocess.PIPE, start_new_session=True
    )
    res.on_close("http target", lambda: (target.terminate(), target.wait(10)))
    assert target.stdout is not None
    port = int(target.stdout.readline().split()[1])
    return f"http://127.0.0.1:{port}/ok"


async def run(ns: argparse.Namespace, res: Resources, url: str) -> dict[str, Any]:
    window = 5.0 if ns.quick else 15.0

    note(f"baseline: aiohttp at concurrency {CLIENT_CONCURRENCY} against {url}")
    shared = await client_rate(url, window, fresh_session=False)
    fresh = await client_rate(url, window, fresh_session=True)
    note(f"  shared session {shared['requests_per_s']}/s, fresh session {fresh['requests_per_s']}/s")

    db = Database(ns.database_url, f"bench_exec_{uuid.uuid4().hex[:8]}")
    await db.create()
    res.on_close("database", lambda: asyncio.run(db.drop()))
    p = LocalPki.make(res.root)
    vault = await start_vault(res, db, p)
    note(f"creating {ns.monitors} monitors")
    await create_monitors(vault, p, url, ns.monitors)
    async with aiohttp.ClientSession() as http:
        note(f"sustained: every monitor every {ns.interval:g} s")
        sustained = await measure(
            res, vault, p, http, ns.monitors, ns.interval, max(window, 2 * ns.interval), ns.event_loop
        )
        note(f"  {sustained}")
        note(f"saturation: every monitor every {SATURATION_INTERVAL} s")
        saturated = await measure(res, vault, p, http, ns.monitors, SATURATION_INTERVAL, window, ns.event_loop)
        note(f"  {saturated}")

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    return {
        "benchmark": "executions",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()},
        "event_loop": ns.event_loop,
        "baseline_http_client": {"shared_session": shared, "fresh_session_per_request": fresh},
        "worker_sustained": sustained,
        "worker_saturated": saturated,
        "ratios": {
            "saturated_executions_per_s_over_shared_session_requests_per_s": ratio(
                saturated["executions_per_s"], shared["requests_per_s"]
            ),
            "saturated_executions_per_s_over_fresh_session_requests_per_s": ratio(
                saturated["executions_per_s"], fresh["requests_per_s"]
            ),
            "executions_per_cpu_s_over_shared_session_requests_per_cpu_s": ratio(
                saturated["executions_per_cpu_s"], shared["requests_per_cpu_s"]
            ),
            "executions_per_cpu_s_over_fresh_session_requests_per_cpu_s": ratio(
                saturated["executions_per_cpu_s"], fresh["requests_per_cpu_s"]
            ),
        },
        "notes": [
            "schedule delay quantiles are the upper bounds of the worker's histogram buckets",
            "the worker and the target share this machine's cores with the vault and this process",
        ],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="shorter measuring windows")
    p.add_argument("--monitors", type=int, default=1000)
    p.add_argument("--interval", type=float, default=10.0, help="seconds between runs of a monitor, sustained load")
    p.add_argument("--database-url", default=DEFAULT_DATABASE_URL, help="administrative PostgreSQL URL")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    p.add_argument("--event-loop", choices=runtime.EVENT_LOOPS, default="uvloop", help="worker's and baseline's loop")
    ns = p.parse_args(argv)
    res = Resources(ns.keep, "executions")
    out: dict[str, Any] = {}

    async def main_() -> None:
        out.update(await run(ns, res, start_target(res)))

    try:
        # The baseline client runs on the loop the worker runs on (its default, uvloop), so that the ratio compares
        # clients, not event loops.
        runtime.run(main_(), ns.event_loop)
    finally:
        with contextlib.suppress(Exception):
            res.close()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
