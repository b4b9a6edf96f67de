"""Engines converging to exactly what the database says under database faults, next to the same bursts without a
fault, in one run. Prints JSON.

The scenario is tests/test_chaos.py's (its pieces are tests/chaos_database.py, chaos_workload.py, chaos_observer.py),
longer and measured: two ``credvault serve`` replicas on one database, an embedded PostgreSQL of the run's own (in a
temporary directory: it is stopped and started), two locations with --workers-per-location ``engine-worker``
processes each, spread over the replicas, and bursts of changes (create, update, disable, enable and delete
monitors; overwrite, delete and create credentials) at --rate changes a second through both replicas' API.

Each round runs, in turn: a baseline (a burst of the faults' length, no fault), a session-kill fault
(pg_terminate_backend of every vault session for --kill-seconds, each time just after a change's call returns and at
most every --kill-every seconds, so that kills land while the replicas follow the change log) and a database stop
(``pg_ctl stop -m immediate``, --stop-seconds down, start). Each burst starts --lead-in seconds before its fault
and stops when the fault ends. Figures:

- convergence: from the fault's end until every worker's /introspection equals what the database's rows say (the
  enabled monitors of its location at their versions, exactly the credentials those use at their resource
  versions); p50/p99 over the rounds of each fault. A round that does not converge within --converge-within seconds
  is counted with the ids that differ; then every worker is restarted (a vault rebuilds a location's state when its
  last engine there reconnects) so that the next round starts from a converged system.
- push latency: for each change and location whose engines' holdings it alters, from the change's RPC returning
  (just after its commit) until every engine of the location was seen (polling /introspection) holding it or a
  later state of the same id; p50/p90/p99/max by fault, the pushes slower than the follower's poll interval (2 s;
  the goal is none), and the pushes never seen before the round's end (lost).

    python bench/chaos.py            # 3 rounds, 10 s faults: about 5 minutes on 2 cores
    python bench/chaos.py --quick    # 1 round, 4 s faults: about 1.5 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any

from _processes import (
    Resources,
    Vault,
    Worker,
    api_channel,
    note,
    percentile,
    run_script,
    spawn_worker,
    start_replica,
    stop_children,
    worker_port,
)

# The scenario lives beside the test that runs it in CI.
from credvault.v1 import monitors_pb2 as mpb
from tests.chaos_database import StoppablePostgres, kill_sessions_for, stop_for
from tests.chaos_observer import Engine, PushTracker, converge
from tests.chaos_workload import Replica, Workload
from tests.local_pki import LocalPki
from vault_service.bootstrap import migrate_and_bootstrap
from vault_service.crypto import new_keyring

LOCATIONS = ["loc-a", "loc-b"]
DATABASE = "chaos"
FOLLOWER_POLL_SECONDS = 2.0  # vault_service/push/follower.py: ChangeFollower's poll_interval
FAULTS = ("none", "session_kills", "database_stop")


def latency_summary(seconds: list[float]) -> dict[str, Any]:
    if not seconds:
        return {"n": 0}
    return {
        "n": len(seconds),
        **{f"p{q}_ms": round(percentile(seconds, q / 100) * 1000, 1) for q in (50, 90, 99)},
        "max_ms": round(max(seconds) * 1000, 1),
        f"over_{FOLLOWER_POLL_SECONDS:g}s": sum(s > FOLLOWER_POLL_SECONDS for s in seconds),
    }


class Chaos:
    """The running system: replicas, workers, the workload and the push tracker."""

    def __init__(self, ns: argparse.Namespace, res: Resources, pg: StoppablePostgres, p: LocalPki) -> None:
        self.ns = ns
        self.res = res
        self.pg = pg
        self.p = p
        self.vaults: list[Vault] = []
        self.engines: list[Engine] = []
        self.workers: list[Worker] = []
        self.generation = 0  # worker restarts, for their log names

    async def start_workers(self) -> None:
        self.engines, self.workers = [], []
        for i, location in enumerate(LOCATIONS):
            for j in range(self.ns.workers_per_location):
                vault = self.vaults[(i + j) % len(self.vaults)]  # each location on every replica
                worker = spawn_worker(self.res, vault, self.p, location, f"e{j + 1}", tag=f"-{self.generation}")
                self.workers.append(worker)
                self.engines.append(Engine(f"{location}/e{j + 1}", location, await worker_port(worker, 60)))

    async def restart_workers(self) -> None:
        await stop_children(self.res, [w.child for w in self.workers])
        self.generation += 1
        await self.start_workers()


def fault(chaos: Chaos, work: Workload, kind: str) -> Awaitable[object]:
    ns = chaos.ns
    if kind == "session_kills":
        return kill_sessions_for(chaos.pg.admin_url, DATABASE, ns.kill_seconds, ns.kill_every, aim=work.next_commit)
    if kind == "database_stop":
        return stop_for(chaos.pg, ns.stop_seconds)
    return asyncio.sleep(max(ns.kill_seconds, ns.stop_seconds))


async def run(ns: argparse.Namespace, res: Resources) -> dict[str, Any]:
    pg = await asyncio.to_thread(StoppablePostgres)
    res.on_close("the embedded PostgreSQL", pg.close)
    url = await pg.create_database(DATABASE)
    p = LocalPki.make(res.root)
    issued = await migrate_and_bootstrap(url, "bench-admin")
    keyring = new_keyring().to_json()
    chaos = Chaos(ns, res, pg, p)
    chaos.vaults = [await start_replica(res, url, p, keyring, issued.token, f"vault-{i}") for i in range(2)]
    async with contextlib.AsyncExitStack() as stack:
        channels = [await stack.enter_async_context(api_channel(v, p)) for v in chaos.vaults]
        replicas = [Replica(ch, issued.token) for ch in channels]
        for location in LOCATIONS:
            await replicas[0].monitors.CreateLocation(
                mpb.CreateLocationRequest(location=mpb.Location(id=location)), metadata=replicas[0].metadata
            )
            for j in range(ns.workers_per_location):
                req = mpb.AddEngineRequest(location_id=location, engine_id=f"e{j + 1}")
                await replicas[0].monitors.AddEngine(req, metadata=replicas[0].metadata)
        await chaos.start_workers()
        work = await stack.enter_async_context(Workload(replicas, url, LOCATIONS, seed=ns.seed))
        await work.populate(ns.credentials, ns.monitors)
        tracker = PushTracker(chaos.engines)
        work.on_expected = tracker.track
        polling = asyncio.create_task(tracker.run())
        stack.callback(polling.cancel)
        rounds: list[dict[str, Any]] = []
        for n in range(ns.rounds):
            for kind in FAULTS:
                work.phase = kind
                note(f"round {n + 1}/{ns.rounds}: {kind}")
                ended = await work.burst_around(ns.rate, fault(chaos, work, kind), ns.lead_in)
                seconds, lines = await converge(chaos.engines, work.read_all, ns.converge_within, since=ended)
                rounds.append({"round": n + 1, "fault": kind, "converged_after_s": seconds, "differing": lines[:20]})
                note(f"  converged after {seconds:.2f} s" if seconds is not None else f"  NOT converged: {lines[:5]}")
                if seconds is None:
                    rounds[-1]["pushes_lost"] = tracker.give_up()
                    await chaos.restart_workers()
                    tracker.engines = chaos.engines
                    again, _ = await converge(chaos.engines, work.read_all, ns.converge_within)
                    rounds[-1]["workers_restarted_converged_after_s"] = again
        tracker.give_up()
    return report(ns, work, tracker, rounds)


def report(
    ns: argparse.Namespace, work: Workload, tracker: PushTracker, rounds: list[dict[str, Any]]
) -> dict[str, Any]:
    by_fault: dict[str, Any] = {}
    for kind in FAULTS:
        mine = [r for r in rounds if r["fault"] == kind]
        converged = [r["converged_after_s"] for r in mine if r["converged_after_s"] is not None]
        pushes = [p for p in tracker.pushes if p.expected.phase == kind]
        by_fault[kind] = {
            "convergence_after_fault_end": {
                "rounds": len(mine),
                "not_converged": len(mine) - len(converged),
                **(
                    {
                        "p50_s": round(percentile(converged, 0.5), 3),
                        "p99_s": round(percentile(converged, 0.99), 3),
                    }
                    if converged
                    else {}
                ),
            },
            "push_latency": latency_summary([p.latency for p in pushes if p.latency is not None]),
            "pushes_lost": sum(p.lost for p in pushes),
        }
    return {
        "what": __doc__.split("\n\n")[0] if __doc__ else "",
        "parameters": {k: v for k, v in vars(ns).items() if k not in ("keep",)},
        "changes": {"calls": work.calls, "failed": work.failures},
        "by_fault": by_fault,
        "rounds": rounds,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round, 4 s faults")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=40.0, help="changes a second during a burst")
    ap.add_argument("--kill-seconds", type=float, default=10.0)
    ap.add_argument("--kill-every", type=float, default=0.5)
    ap.add_argument("--stop-seconds", type=float, default=10.0)
    ap.add_argument("--lead-in", type=float, default=1.0, help="seconds of burst before each fault")
    ap.add_argument("--converge-within", type=float, default=40.0)
    ap.add_argument("--workers-per-location", type=int, default=2)
    ap.add_argument("--monitors", type=int, default=30)
    ap.add_argument("--credentials", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    ns = ap.parse_args(argv)
    if ns.quick:
        ns.rounds, ns.kill_seconds, ns.stop_seconds = 1, 4.0, 4.0
    return ns


def main(argv: list[str] | None = None) -> None:
    run_script("chaos", parse_args(argv), run)


if __name__ == "__main__":
    main()
