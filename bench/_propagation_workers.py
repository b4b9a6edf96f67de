"""What bench/propagation.py reads of the engine workers and the vault: their /metrics and /introspection, the
lines of their logs, their RSS, and the engines' ACKs as the vault records them (``engines.applied_revision``)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import re
import statistics
import time
from typing import Any

import aiohttp
from _processes import Worker


def rss_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KB, from /proc/<pid>/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return {"rss_kb": out.get("VmRSS", 0), "hwm_kb": out.get("VmHWM", 0)}


def log_time(line_start: str) -> float:
    """Seconds (local wall clock) of a ``logging`` asctime such as ``2026-11-23 10:48:58,123``."""
    return datetime.datetime.strptime(line_start, "%Y-%m-%d %H:%M:%S,%f").timestamp()


# --- workers -------------------------------------------------------------------------------------------------------

_HELD = re.compile(r'^configs_held\{kind="(monitor|credential)"\} ([0-9.e+]+)$', re.MULTILINE)
_APPLIED = re.compile(r"^last_applied_revision ([0-9.e+]+)$", re.MULTILINE)


async def worker_metrics(http: aiohttp.ClientSession, w: Worker) -> dict[str, int]:
    async with http.get(f"http://127.0.0.1:{w.status_port}/metrics") as resp:
        text = await resp.text()
    held = {kind: int(float(v)) for kind, v in _HELD.findall(text)}
    applied = _APPLIED.search(text)
    return {
        "monitors": held.get("monitor", -1),
        "credentials": held.get("credential", -1),
        "last_applied_revision": int(float(applied.group(1))) if applied else -1,
    }


async def worker_introspection(http: aiohttp.ClientSession, w: Worker) -> dict[str, Any]:
    async with http.get(f"http://127.0.0.1:{w.status_port}/introspection") as resp:
        body: dict[str, Any] = await resp.json()
        return body


async def wait_workers_hold(
    http: aiohttp.ClientSession, workers: list[Worker], monitors: int, limit_s: float, every_s: float
) -> float:
    """Poll /metrics (small, unlike /introspection) until every worker holds ``monitors`` monitors; returns the time
    (perf_counter) it was first seen for the last of them."""
    deadline = time.monotonic() + limit_s
    pending = list(workers)
    last_seen = time.perf_counter()
    while pending:
        still = []
        for w in pending:
            if not w.child.alive():
                raise RuntimeError(f"{w.child.name} exited; log tail:\n{w.child.log_text()[-3000:]}")
            try:
                m = await worker_metrics(http, w)
            except aiohttp.ClientError:
                still.append(w)
                continue
            if m["monitors"] != monitors:
                still.append(w)
        last_seen = time.perf_counter()
        pending = still
        if pending:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{len(pending)} of {len(workers)} workers do not hold {monitors} monitors after {limit_s:g} s; "
                    f"first: {pending[0].child.name}, log tail:\n{pending[0].child.log_text()[-2000:]}"
                )
            await asyncio.sleep(every_s)
    return last_seen


_HELLO = re.compile(r"^(\S+ \S+) INFO engine_worker\.stream: sent hello as \S+ holding (\d+) monitors", re.MULTILINE)
_IN_SYNC = re.compile(
    r"^(\S+ \S+) INFO engine_worker\.stream: in sync with the vault at revision (\d+), holding (\d+) monitors",
    re.MULTILINE,
)


def hello_to_sync(w: Worker) -> dict[str, Any] | None:
    """From the worker's own log: the first Hello and the first SyncComplete after it (millisecond timestamps)."""
    text = w.child.log_text()
    hello = _HELLO.search(text)
    if hello is None:
        return None
    sync = _IN_SYNC.search(text, hello.end())
    if sync is None:
        return None
    return {
        "hello_to_sync_complete_ms": round((log_time(sync.group(1)) - log_time(hello.group(1))) * 1000, 1),
        "held_at_hello": int(hello.group(2)),
        "monitors_at_sync_complete": int(sync.group(3)),
        "sync_revision": int(sync.group(2)),
    }


# --- ACKs ----------------------------------------------------------------------------------------------------------

ACK_QUERY = """
SELECT (SELECT revision FROM change_head) AS head,
       array_agg(engine_id ORDER BY engine_id) AS engines,
       array_agg(applied_revision ORDER BY engine_id) AS applied
  FROM engines
 WHERE location_id = $1 AND revoked_at IS NULL
"""


_APPLIED_LINE = re.compile(r"^(\S+ \S+) INFO engine_worker\.stream: applied revision (\d+):", re.MULTILINE)


def applied_from_logs(workers: list[Worker], marks: list[tuple[int, float]]) -> list[tuple[float, float] | None]:
    """For each (revision, wall time): seconds until the first and until the last worker logged applying that
    revision (or a later one); None when a worker's log lacks it."""
    logs = [
        [(int(m.group(2)), log_time(m.group(1))) for m in _APPLIED_LINE.finditer(w.child.log_text())] for w in workers
    ]
    out: list[tuple[float, float] | None] = []
    for revision, wall in marks:
        times = [next((t for rev, t in entries if rev >= revision), None) for entries in logs]
        found = [t for t in times if t is not None]
        out.append(None if len(found) < len(times) else (min(found) - wall, max(found) - wall))
    return out


class Stuck(Exception):
    pass


@dataclasses.dataclass
class AckWait:
    last: float  # seconds from t0 to the poll that first saw the last engine's ACK
    first: float
    median: float
    target_revision: int
    polls: int
    query_seconds: list[float]


async def wait_all_acked(stmt: Any, location: str, engines: int, t0: float, interval: float, limit_s: float) -> AckWait:
    """Poll engines.applied_revision until every engine of ``location`` has ACKed the change-log head as read by
    the first poll (taken after the RPC returned, so it is at least the overwrite's revision; nothing else writes)."""
    target: int | None = None
    seen: dict[str, float] = {}
    polls = 0
    query_seconds: list[float] = []
    while True:
        q0 = time.perf_counter()
        row = await stmt.fetchrow(location)
        now = time.perf_counter()
        query_seconds.append(now - q0)
        polls += 1
        if target is None:
            target = int(row["head"])
        for engine, applied in zip(row["engines"] or [], row["applied"] or [], strict=True):
            if applied >= target and engine not in seen:
                seen[engine] = now
        if len(seen) >= engines:
            offsets = sorted(t - t0 for t in seen.values())
            return AckWait(offsets[-1], offsets[0], statistics.median(offsets), target, polls, query_seconds)
        if now - t0 > limit_s:
            behind = {e: a for e, a in zip(row["engines"] or [], row["applied"] or [], strict=True) if a < target}
            raise Stuck(
                f"after {limit_s:g} s, {len(behind)} of {engines} engines have not ACKed revision {target}: "
                f"{dict(list(behind.items())[:10])}"
            )
        await asyncio.sleep(interval)
