"""Propagation of a credential overwrite to engine workers, next to its baselines, in one run. Prints JSON.

What it measures (real processes throughout: ``credvault serve`` with its engine port, ``engine-worker`` processes,
PostgreSQL, mutual TLS with certificates from :mod:`vault_service.pki`):

1. Propagation: a USERNAME_PASSWORD credential used by M HTTP monitors (each about 1 KB as the engine receives it,
   a ``MonitorResource``) of one location served by W engine workers. Every engine of a location holds all of the
   location's monitors, so each of the W workers holds all M. The credential is overwritten (OverwriteCredential)
   --repeats times; each time is measured from the RPC's return to the moment the last of the W engines has ACKed
   the change's revision, as the vault records it in ``engines.applied_revision`` (read by polling PostgreSQL, see
   ``method`` in the output). For (M, W) = (1, 1), (100, 10), (10000, 50) by default; one location per pair.
2. Full resync: one worker of the 10,000-monitor location is stopped and started again, holding nothing; the time
   from its Hello to SyncComplete (both from its own log, millisecond timestamps), and from process start until its
   status endpoint shows all monitors, next to a worker of an empty location (the fixed cost of starting).
3. Worker RSS (VmRSS) holding M monitors against a worker of an empty location: per 1,000 configs and per byte of
   config.
4. Baselines, same run, same machine: (a) one PostgreSQL commit (INSERT + NOTIFY) delivered to a LISTENing
   connection (asyncpg, both connections in this process); (b) a bare grpc.aio fan-out over mutual TLS: a server in
   this process writes one message (1 KB by default) to W bidirectional streams, the subscribers (separate processes,
   bench/_propagation_fanout.py: spread over 2 processes, and again with one process each for information) answer
   each on their stream, timed until all W answered, for each W in the pairs. The target compares the propagation
   p99 at (M, W) with notify p99 + fan-out(W) p99.

A fresh database bench_prop_<random> is created at --database-url and dropped at the end; all processes and
temporary files are removed at the end (also on Ctrl-C or SIGTERM) unless --keep.

    python bench/propagation.py                 # 20 overwrites per pair, 3 resyncs; about 5 minutes on 2 cores
    python bench/propagation.py --quick         # all three pairs, 5 overwrites, 1 resync: about 2.5 minutes
    python bench/propagation.py --pairs 1x1,100x10 --repeats 50 > result.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from typing import Any

import aiohttp
from _harness import Database
from _processes import Resources, api_channel, note, run_script, start_vault, stop_children
from _propagation_baselines import baseline_fanout, baseline_notify
from _propagation_measure import empty_worker, measure_pair
from _propagation_report import evaluate, log_warnings, machine_info
from _propagation_setup import credential_push_bytes

from tests.local_pki import LocalPki

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_PAIRS = "1x1,100x10,10000x50"


async def run(ns: argparse.Namespace, res: Resources) -> dict[str, Any]:
    result: dict[str, Any] = {
        "benchmark": "propagation of a credential overwrite to engine workers",
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": await machine_info(ns.database_url),
    }
    pairs: list[tuple[int, int]] = ns.pairs
    widths = sorted({w for _, w in pairs})
    result["config"] = {
        "pairs": [f"{m}x{w}" for m, w in pairs],
        "repeats": ns.repeats,
        "warmup_overwrites": ns.warmup_overwrites,
        "pause_between_overwrites_ms": ns.pause_ms,
        "poll_interval_ms": ns.poll_interval_ms,
        "baseline_rounds": ns.baseline_rounds,
        "resync_repeats": ns.resync_repeats,
        "monitor_target_bytes": ns.monitor_bytes,
        "fanout_message_bytes": ns.fanout_bytes,
        "credential_push_message_bytes": credential_push_bytes(),
        "processes": f"1 vault (credvault serve), up to {max(w for _, w in pairs)} engine-worker processes, "
        "PostgreSQL, and this script, on the machine's cores (see machine.cpu_count)",
    }
    result["method"] = {
        "propagation": "t0 = when OverwriteCredential returns to this client (its transaction committed). Then one "
        "asyncpg connection polls, every ~poll_interval_ms, one prepared query: the change-log head "
        "(SELECT revision FROM change_head; the first poll fixes the target, which is the overwrite's revision as "
        "nothing else writes) and engines.applied_revision of the location's engines, which the vault sets from each "
        "engine's ACK (GREATEST(applied_revision, ack)). The time of the poll that first sees the last engine at or "
        "past the target is 'to last ACK'. This includes the vault recording the ACK (one UPDATE per ACK) and up to "
        "one poll period plus one query of measurement resolution (poll.mean_period_ms); the overhead is one small "
        "query per period whatever M and W are. Chosen over polling every worker's /introspection, whose JSON lists "
        "all M monitors per request (W x M entries per poll). At the end of each pair every worker's /introspection "
        "is checked once: all M monitors and the credential's newest resource version.",
        "baseline_target": "propagation p99 at (M, W) <= 2 x (commit+NOTIFY delivery p99 + fan-out p99 at W); the "
        "p99s are added (an upper bound of the p99 of the sum). 'met' uses the fan-out with subscribers spread over "
        "--fanout-processes processes (default 2, the layout of the issue's own figures); the fan-out with one "
        "process per subscriber (the process layout of the real workers) is reported beside it for information.",
        "percentiles": "nearest rank; with fewer than 100 overwrites p99 is the maximum",
    }

    result["notes"] = [
        "Each engine-worker is its own process (as deployed); at W = 50 that is 50 Python processes plus the vault, "
        "PostgreSQL and this script on the machine's cores, so the largest pair measures an oversubscribed machine "
        "(see load_average_at_end).",
        "Pairs run one after another, each with its own location, credential and monitors; the previous pair's "
        "workers are stopped first, so only W workers are connected while a pair is measured.",
        "Monitors are created before their location's workers start, so the workers receive them in their initial "
        "sync (initial_sync_all_workers_seconds), not one change at a time.",
    ]
    p = LocalPki.make(res.root / "pki")
    db = Database(ns.database_url, f"bench_prop_{uuid.uuid4().hex[:10]}")
    await db.create()
    if ns.keep:
        note(f"database {db.name} will be kept")
    else:
        res.on_close(f"database {db.name}", lambda: asyncio.run(db.drop()))
    try:
        note(f"baseline (a): commit + NOTIFY delivery, {ns.baseline_rounds} rounds")
        notify = await baseline_notify(db.url, ns.baseline_rounds, 20)
        note(
            f"  commit+NOTIFY delivery p50 {notify['commit_and_delivery']['p50_ms']:.2f} ms, "
            f"p99 {notify['commit_and_delivery']['p99_ms']:.2f} ms"
        )
        note(f"baseline (b): gRPC mTLS fan-out of {ns.fanout_bytes} bytes to W = {widths}")
        fanout = await baseline_fanout(res, p, widths, ns.baseline_rounds, 20, ns.fanout_bytes, ns.fanout_processes)
        result["baselines"] = {"commit_notify": notify, "grpc_fanout": fanout}
        if ns.per_process_fanout and ns.fanout_processes > 0:
            note("baseline (b'): the same fan-out with one subscriber process per stream (as many as workers)")
            result["baselines"]["grpc_fanout_one_process_per_subscriber"] = await baseline_fanout(
                res, p, widths, ns.baseline_rounds, 20, ns.fanout_bytes, 0
            )

        note("starting credvault serve with its engine port (mutual TLS) on a fresh database")
        vault = await start_vault(res, db, p)
        api = api_channel(vault, p)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            try:
                await asyncio.wait_for(api.channel_ready(), 30)
                note("a worker of an empty location (start-up cost and RSS holding nothing)")
                empty = await empty_worker(res, vault, p, api, http)
                result["empty_worker"] = empty
                note(f"  start -> synced {empty['process_start_to_synced_s']} s, RSS {empty['rss_kb']} KB")
                result["pairs"] = {}
                for monitors, width in pairs:
                    result["pairs"][f"{monitors}x{width}"] = await measure_pair(
                        ns, res, vault, p, db, api, http, monitors, width, empty["rss_kb"]
                    )
            finally:
                await api.close(None)
        result["vault_log_warnings"] = log_warnings(vault.child.log_text())
        result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        await stop_children(res, [vault.child])
    finally:
        await stop_children(res, list(res.children))
        if not ns.keep:
            await db.drop()
    result.update(evaluate(result))
    return result


def parse_pairs(text: str) -> list[tuple[int, int]]:
    pairs = []
    for part in text.split(","):
        if not part.strip():
            continue
        m, _, w = part.strip().lower().partition("x")
        pairs.append((int(m), int(w)))
    return pairs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer overwrites, resyncs and baseline rounds (same pairs)")
    p.add_argument("--pairs", default=DEFAULT_PAIRS, help=f"MxW pairs, comma-separated (default {DEFAULT_PAIRS})")
    p.add_argument("--repeats", type=int, help="measured overwrites per pair (20; 5 with --quick)")
    p.add_argument("--warmup-overwrites", type=int, default=1, help="overwrites per pair not counted (1)")
    p.add_argument("--pause-ms", type=float, default=300, help="pause between overwrites, +-20%% (300)")
    p.add_argument("--poll-interval-ms", type=float, default=1.0, help="sleep between ACK polls (1)")
    p.add_argument("--baseline-rounds", type=int, help="rounds per baseline (200; 100 with --quick)")
    p.add_argument("--resync-repeats", type=int, help="restarts of one 10,000-monitor worker (3; 1 with --quick)")
    p.add_argument("--resync-any", action="store_true", help="also measure a resync for pairs below 10,000 monitors")
    p.add_argument("--monitor-bytes", type=int, default=1024, help="target MonitorResource size (1024)")
    p.add_argument("--fanout-bytes", type=int, default=1024, help="fan-out baseline message size (1024)")
    p.add_argument(
        "--fanout-processes",
        type=int,
        default=2,
        help="processes the fan-out subscribers are spread over (2; 0 = one process per subscriber)",
    )
    p.add_argument(
        "--per-process-fanout",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the fan-out with one subscriber process per stream, for information (default on)",
    )
    p.add_argument("--create-concurrency", type=int, default=16, help="concurrent CreateMonitor calls (16)")
    p.add_argument("--ack-timeout", type=float, default=120, help="seconds to wait for all ACKs of one overwrite")
    p.add_argument("--sync-timeout", type=float, default=900, help="seconds to wait for workers' initial sync")
    p.add_argument("--database-url", default=DEFAULT_DATABASE_URL, help="administrative PostgreSQL URL")
    p.add_argument("--keep", action="store_true", help="keep the database and the temporary directory (logs)")
    ns = p.parse_args(argv)
    try:
        ns.pairs = parse_pairs(ns.pairs)
    except ValueError:
        p.error("--pairs must look like 1x1,100x10,10000x50")
    if not ns.pairs or any(m < 0 or w < 1 or w > 99 for m, w in ns.pairs):
        p.error("--pairs needs M >= 0 and 1 <= W <= 99")
    if ns.repeats is None:
        ns.repeats = 5 if ns.quick else 20
    if ns.baseline_rounds is None:
        ns.baseline_rounds = 100 if ns.quick else 200
    if ns.resync_repeats is None:
        ns.resync_repeats = 1 if ns.quick else 3
    if ns.repeats < 1 or ns.baseline_rounds < 1 or ns.resync_repeats < 1:
        p.error("--repeats, --baseline-rounds and --resync-repeats must be at least 1")
    if ns.monitor_bytes < 600 or ns.fanout_bytes < 8:
        p.error("--monitor-bytes must be at least 600 and --fanout-bytes at least 8")
    return ns


def main(argv: list[str] | None = None) -> None:
    run_script("propagation", parse_args(argv), run)


if __name__ == "__main__":
    main()
