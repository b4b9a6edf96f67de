"""What the engines of the chaos scenario hold, from their ``/introspection`` endpoints: whether they equal what the
database says (``converge``), and when each expected change reached every engine of its location (``PushTracker``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable

import aiohttp

from tests.chaos_database import Holdings, Rows, divergence
from tests.chaos_workload import Expected


@dataclasses.dataclass(frozen=True)
class Engine:
    name: str
    location: str
    status_port: int


async def held(http: aiohttp.ClientSession, engine: Engine) -> Holdings:
    url = f"http://127.0.0.1:{engine.status_port}/introspection"
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
        doc = await resp.json()
    return {kind: {oid: held["revision"] for oid, held in doc[kind].items()} for kind in ("monitors", "credentials")}


async def differences(http: aiohttp.ClientSession, engines: list[Engine], rows: Rows) -> list[str]:
    lines = []
    for engine in engines:
        lines += divergence(engine.name, rows.holdings(engine.location), await held(http, engine))
    return lines


async def converge(
    engines: list[Engine],
    read_rows: Callable[[], Awaitable[Rows]],
    within: float,
    since: float | None = None,
    every: float = 0.1,
) -> tuple[float | None, list[str]]:
    """Polls until every engine holds exactly what the database's rows say: (seconds since ``since``, a
    time.monotonic(), by default now; []), or after ``within`` seconds (None, the differing ids)."""
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        while True:
            lines = await differences(http, engines, await read_rows())
            if not lines:
                return time.monotonic() - (started if since is None else since), []
            if time.monotonic() - started > within:
                return None, lines
            await asyncio.sleep(every)


@dataclasses.dataclass
class Push:
    """One expected change and when each engine of its location was first seen holding it (or a later state of the
    same id): the push latency is the last of those minus the commit."""

    expected: Expected
    seen: dict[str, float] = dataclasses.field(default_factory=dict)
    done: float | None = None
    lost: bool = False  # never reached every engine before the run gave up on it

    @property
    def latency(self) -> float | None:
        return None if self.done is None else self.done - self.expected.committed


class PushTracker:
    """Polls every engine's /introspection in turn while running; ``track`` is the Workload's ``on_expected``."""

    def __init__(self, engines: list[Engine]) -> None:
        self.engines = engines
        self.pushes: list[Push] = []
        self._by_id: dict[tuple[str, str, str], list[Push]] = {}  # (location, kind, id) -> its pushes in order
        self._open: set[tuple[str, str, str]] = set()

    def track(self, changes: list[Expected]) -> None:
        for change in changes:
            push = Push(change)
            key = (change.location, change.kind, change.object_id)
            self.pushes.append(push)
            self._by_id.setdefault(key, []).append(push)
            self._open.add(key)

    def give_up(self) -> int:
        """Marks every push not yet done as lost (before engines are restarted: they would then get it by a full
        sync, not by a push); how many."""
        lost = [p for key in self._open for p in self._by_id[key] if p.done is None]
        for push in lost:
            push.lost = True
        self._by_id.clear()
        self._open.clear()
        return len(lost)

    async def run(self, every: float = 0.02) -> None:
        async with aiohttp.ClientSession() as http:
            while True:
                for engine in self.engines:
                    asked = time.monotonic()
                    try:
                        holdings = await held(http, engine)
                    except (aiohttp.ClientError, TimeoutError):
                        continue
                    self._observe(engine, holdings, asked, time.monotonic())
                await asyncio.sleep(every)

    def _observe(self, engine: Engine, holdings: Holdings, asked: float, answered: float) -> None:
        for key in [k for k in self._open if k[0] == engine.location]:
            _, kind, object_id = key
            version = holdings[kind].get(object_id)
            pushes = self._by_id[key]
            # the latest change committed before the question whose state the engine shows: it and all before it
            # have reached this engine
            reached = next(
                (
                    i
                    for i in range(len(pushes) - 1, -1, -1)
                    if pushes[i].expected.committed <= asked and pushes[i].expected.version == version
                ),
                -1,
            )
            for push in pushes[: reached + 1]:
                if engine.name not in push.seen:
                    push.seen[engine.name] = answered
                    if all(e.name in push.seen for e in self.engines if e.location == engine.location):
                        push.done = max(push.seen.values())
            if all(p.done is not None for p in pushes):
                self._open.discard(key)
