"""The measurements of bench/propagation.py on the running system: per (M, W) pair the overwrites until the last
ACK, the workers' RSS and (for 10,000 monitors) a full resync; and a worker of an empty location."""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from typing import Any

import aiohttp
import asyncpg
import grpc
from _harness import Database
from _processes import Resources, Vault, Worker, note, spawn_worker, stop_children, summary_ms, worker_port
from _propagation_setup import set_up_pair, up_contents
from _propagation_workers import (
    ACK_QUERY,
    Stuck,
    applied_from_logs,
    hello_to_sync,
    rss_kb,
    wait_all_acked,
    wait_workers_hold,
    worker_introspection,
    worker_metrics,
)

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import credentials_pb2_grpc as cgrpc
from credvault.v1 import monitors_pb2 as mpb
from credvault.v1 import monitors_pb2_grpc as mgrpc
from tests.local_pki import LocalPki

RESYNC_MONITORS = 10_000


async def measure_pair(
    ns: argparse.Namespace,
    res: Resources,
    vault: Vault,
    p: LocalPki,
    db: Database,
    api: grpc.aio.Channel,
    http: aiohttp.ClientSession,
    monitors: int,
    width: int,
    empty_rss_kb: int | None,
) -> dict[str, Any]:
    md = vault.metadata
    mon = mgrpc.MonitorsServiceStub(api)
    creds = cgrpc.CredentialsServiceStub(api)
    location = f"bench-m{monitors}-w{width}"
    engines = [f"e{i:02d}" for i in range(width)]
    out: dict[str, Any] = {"monitors": monitors, "workers": width, "location": location}
    out["layout"] = (
        f"one location '{location}' served by {width} engine workers (separate engine-worker processes); every "
        f"engine of a location holds all of its monitors, so each worker holds all {monitors} monitors and the "
        "credential; the overwrite is pushed to every worker"
    )
    note(f"pair M={monitors} W={width}: creating the location, {width} engines, a credential, {monitors} monitors")
    setup = await set_up_pair(mon, creds, md, location, engines, monitors, ns.monitor_bytes, ns.create_concurrency)
    out["setup"] = {
        "create_monitors_seconds": round(setup.create_seconds, 2),
        "create_monitors_per_second": round(monitors / setup.create_seconds, 1) if monitors else None,
        "create_concurrency": ns.create_concurrency,
    }
    out["monitor_resource_bytes"] = {
        "mean": round(statistics.fmean(setup.monitor_bytes), 1),
        "min": min(setup.monitor_bytes),
        "max": max(setup.monitor_bytes),
    }
    note(
        f"  {monitors} monitors in {setup.create_seconds:.1f} s, MonitorResource mean "
        f"{out['monitor_resource_bytes']['mean']} bytes; starting {width} workers"
    )

    poll_conn = await asyncpg.connect(db.url)
    workers: list[Worker] = []
    try:
        # After a bulk load, statistics (PostgreSQL's advice; autovacuum would do it, but may be off, as it is on
        # this machine): unanalyzed, the 10,000-monitor credential's statements took 30-40 ms instead of 5.
        await poll_conn.execute("ANALYZE")
        spawn_t0 = time.perf_counter()
        for e in engines:
            workers.append(spawn_worker(res, vault, p, location, e))
        await asyncio.gather(*(worker_port(w, 180) for w in workers))
        held_at = await wait_workers_hold(http, workers, monitors, ns.sync_timeout, 0.25)
        stmt = await poll_conn.prepare(ACK_QUERY)
        # Every engine has ACKed its SyncComplete (so the table is settled before the first overwrite).
        await wait_all_acked(stmt, location, width, time.perf_counter(), 0.05, 120)
        out["initial_sync_all_workers_seconds"] = round(held_at - spawn_t0, 2)
        out["initial_sync_note"] = (
            f"from spawning the {width} workers together to all holding {monitors} monitors (status polled every "
            "0.25 s): process start, TLS, full sync of all workers concurrently"
        )
        note(f"  all {width} workers hold {monitors} monitors after {held_at - spawn_t0:.1f} s; overwriting")

        rpc: list[float] = []
        last: list[float] = []
        first: list[float] = []
        median: list[float] = []
        polls = 0
        poll_time = 0.0
        query_times: list[float] = []
        marks: list[tuple[int, float]] = []  # (target revision, wall-clock time the RPC returned)
        error = None
        total = ns.warmup_overwrites + ns.repeats
        for n in range(total):
            await asyncio.sleep(ns.pause_ms / 1000 * random.uniform(0.8, 1.2))
            t_call = time.perf_counter()
            await creds.OverwriteCredential(
                cpb.OverwriteCredentialRequest(id=setup.credential_id, contents=up_contents(n + 1)), metadata=md
            )
            t0 = time.perf_counter()
            wall_t0 = time.time()
            try:
                acked = await wait_all_acked(stmt, location, width, t0, ns.poll_interval_ms / 1000, ns.ack_timeout)
            except Stuck as exc:
                error = f"overwrite {n + 1}: {exc}"
                note(f"  STUCK: {error}")
                break
            if n >= ns.warmup_overwrites:
                rpc.append(t0 - t_call)
                marks.append((acked.target_revision, wall_t0))
                last.append(acked.last)
                first.append(acked.first)
                median.append(acked.median)
                polls += acked.polls
                poll_time += acked.last
                query_times.extend(acked.query_seconds)
        out["overwrite_rpc"] = summary_ms(rpc)
        out["propagation_to_last_ack"] = summary_ms(last)
        out["propagation_to_first_ack"] = summary_ms(first)
        out["propagation_to_median_ack"] = summary_ms(median)
        out["propagation_to_last_ack_samples_ms"] = [round(x * 1000, 2) for x in last]
        from_logs = applied_from_logs(workers, marks)
        out["worker_apply_from_logs"] = {
            "to_first_worker": summary_ms([x[0] for x in from_logs if x is not None]),
            "to_last_worker": summary_ms([x[1] for x in from_logs if x is not None]),
            "missing": sum(1 for x in from_logs if x is None),
            "note": "no polling: from the RPC's return (wall clock) to the earliest and the latest 'applied revision' "
            "line among the workers' logs (logged after applying, just before the ACK is sent; millisecond "
            "timestamps, truncated, so up to 1 ms early). Excludes the ACK's trip back and the vault's UPDATE of "
            "applied_revision",
        }
        out["repeats"] = len(last)
        out["warmup_overwrites_discarded"] = ns.warmup_overwrites
        out["poll"] = {
            "requested_interval_ms": ns.poll_interval_ms,
            "mean_period_ms": round(poll_time / polls * 1000, 3) if polls else None,
            "mean_query_ms": round(statistics.fmean(query_times) * 1000, 3) if query_times else None,
        }
        if error:
            out["error"] = error
            out["vault_log_tail"] = vault.child.log_text()[-3000:]
        if last:
            note(
                f"  to last ACK: p50 {out['propagation_to_last_ack']['p50_ms']:.2f} ms, "
                f"p99 {out['propagation_to_last_ack']['p99_ms']:.2f} ms over {len(last)} overwrites"
            )

        # Cross-check on the workers themselves: every one holds all monitors and the newest credential version.
        version = await poll_conn.fetchval(
            "SELECT resource_version FROM credentials WHERE id = $1", setup.credential_id
        )
        sem = asyncio.Semaphore(4)

        async def check(w: Worker) -> tuple[bool, str]:
            async with sem:
                body = await worker_introspection(http, w)
            held = body["credentials"].get(setup.credential_id) or {}
            ok = len(body["monitors"]) == monitors and held.get("revision") == version
            return ok, f"{w.engine_id}: {len(body['monitors'])} monitors, credential {body['credentials']}"

        checks = await asyncio.gather(*(check(w) for w in workers))
        out["verified_on_workers"] = {
            "all_hold_all_monitors_and_newest_credential": all(ok for ok, _ in checks),
            "credential_resource_version": version,
            "failures": [why for ok, why in checks if not ok][:5],
        }

        # RSS of the workers holding M monitors (after the overwrites).
        rss = [rss_kb(w.child.pid) for w in workers]
        rss_values = [r["rss_kb"] for r in rss]
        out["worker_rss_kb"] = {
            "median": statistics.median(rss_values),
            "min": min(rss_values),
            "max": max(rss_values),
            "peak_hwm_median": statistics.median(r["hwm_kb"] for r in rss),
        }
        if empty_rss_kb is not None and monitors:
            out["worker_rss_kb"]["delta_median_vs_empty_worker"] = statistics.median(rss_values) - empty_rss_kb

        if monitors == RESYNC_MONITORS or (ns.resync_any and monitors):
            out["resync"] = await measure_resync(ns, res, vault, p, http, workers, location, monitors, stmt)
            out["resync"]["monitor_resource_bytes_mean"] = out["monitor_resource_bytes"]["mean"]
        out["vault_rss_kb"] = rss_kb(vault.child.pid)
    finally:
        await stop_children(res, [w.child for w in workers])
        await poll_conn.close()
    return out


async def measure_resync(
    ns: argparse.Namespace,
    res: Resources,
    vault: Vault,
    p: LocalPki,
    http: aiohttp.ClientSession,
    workers: list[Worker],
    location: str,
    monitors: int,
    stmt: Any,
) -> dict[str, Any]:
    """Stop one worker and start it again, holding nothing; time its full sync of all ``monitors``."""
    runs = []
    for r in range(ns.resync_repeats):
        old = workers[-1]
        note(f"  resync {r + 1}/{ns.resync_repeats}: restarting {location}/{old.engine_id}")
        await stop_children(res, [old.child])
        await asyncio.sleep(0.5)
        w = spawn_worker(res, vault, p, location, old.engine_id, tag=f"-restart{r + 1}")
        workers[-1] = w
        await worker_port(w, 60)
        first_response = None
        deadline = time.monotonic() + ns.sync_timeout
        while True:
            try:
                m = await worker_metrics(http, w)
            except aiohttp.ClientError:
                m = {"monitors": -1}
            now = time.perf_counter()
            if first_response is None and m["monitors"] >= 0:
                first_response = now
            if m["monitors"] == monitors:
                held = now
                break
            if not w.child.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the restarted worker did not resync; log tail:\n{w.child.log_text()[-3000:]}")
            await asyncio.sleep(0.05)
        from_log = None
        for _ in range(40):  # the log line may trail the status by a moment
            from_log = hello_to_sync(w)
            if from_log is not None:
                break
            await asyncio.sleep(0.05)
        await wait_all_acked(stmt, location, len(workers), time.perf_counter(), 0.05, 120)
        await asyncio.sleep(1.0)
        runs.append(
            {
                **(from_log or {"hello_to_sync_complete_ms": None}),
                "process_start_to_first_status_response_s": round((first_response or held) - w.child.started, 3),
                "process_start_to_all_held_s": round(held - w.child.started, 3),
                "rss_kb_after": rss_kb(w.child.pid),
            }
        )
        note(
            f"    hello -> SyncComplete {runs[-1]['hello_to_sync_complete_ms']} ms; process start -> all "
            f"{monitors} held {runs[-1]['process_start_to_all_held_s']} s"
        )
    syncs = [r["hello_to_sync_complete_ms"] for r in runs if r["hello_to_sync_complete_ms"] is not None]
    return {
        "monitors": monitors,
        "other_workers_connected": len(workers) - 1,
        "runs": runs,
        "hello_to_sync_complete_ms_median": statistics.median(syncs) if syncs else None,
        "process_start_to_all_held_s_median": statistics.median(r["process_start_to_all_held_s"] for r in runs),
        "note": "the worker is stopped (SIGTERM: it wipes what it holds) and started again with the same "
        "certificate, so its Hello holds nothing and the vault sends all monitors (batches of 500) and SyncComplete; "
        "hello_to_sync_complete is from the worker's own log (millisecond timestamps): Hello written to the stream "
        "until SyncComplete received, every batch before it applied; process_start_to_all_held adds interpreter "
        "start, imports, TLS and polling of /metrics every 50 ms",
    }


async def empty_worker(
    res: Resources, vault: Vault, p: LocalPki, api: grpc.aio.Channel, http: aiohttp.ClientSession
) -> dict[str, Any]:
    """A worker of a location with no monitors: its start-up and sync cost, and its RSS holding nothing."""
    md = vault.metadata
    mon = mgrpc.MonitorsServiceStub(api)
    location = "bench-empty"
    await mon.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id=location, name=location)), metadata=md)
    await mon.AddEngine(mpb.AddEngineRequest(location_id=location, engine_id="e00"), metadata=md)
    w = spawn_worker(res, vault, p, location, "e00")
    try:
        await worker_port(w, 60)
        first_response = None
        deadline = time.monotonic() + 60
        while True:
            try:
                body = await worker_introspection(http, w)
            except aiohttp.ClientError:
                body = {"synced": False}
            now = time.perf_counter()
            if first_response is None and "monitors" in body:
                first_response = now
            if body.get("synced"):
                synced = now
                break
            if time.monotonic() > deadline or not w.child.alive():
                raise RuntimeError(f"the empty worker did not sync; log tail:\n{w.child.log_text()[-3000:]}")
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        return {
            "location": location,
            "process_start_to_first_status_response_s": round((first_response or synced) - w.child.started, 3),
            "process_start_to_synced_s": round(synced - w.child.started, 3),
            **(hello_to_sync(w) or {}),
            **rss_kb(w.child.pid),
        }
    finally:
        await stop_children(res, [w.child])
