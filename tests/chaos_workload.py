"""The changes of the chaos scenario (tests/test_chaos.py and bench/chaos.py): bursts of monitor and credential
changes through the API of every vault replica, tolerating failures while faults last.

Each change locks the objects it touches (a monitor and its credentials, or a credential and the monitors using it),
so at most one change of an object is in flight. After each call, successful or not, the rows of those objects are
read back from the database into ``rows`` (what the run believes the database holds); the difference it makes to
what each location's engines should hold becomes one ``Expected`` per location and id, for push latencies.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import random
import time
from collections.abc import Awaitable, Callable

import asyncpg
import grpc

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import credentials_pb2_grpc as cgrpc
from credvault.v1 import monitors_pb2 as mpb
from credvault.v1 import monitors_pb2_grpc as mgrpc
from tests.chaos_database import Rows, create_pool, read_rows

# Codes with which a call surely changed nothing; after any other failure the change may have committed.
NOTHING_CHANGED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.ALREADY_EXISTS,
}
READ_BACK_SECONDS = 120.0  # how long reading rows back may wait for the database (a stop lasts seconds)


class Replica:
    """The API of one vault replica, as the admin."""

    def __init__(self, channel: grpc.aio.Channel, token: str) -> None:
        self.credentials = cgrpc.CredentialsServiceStub(channel)
        self.monitors = mgrpc.MonitorsServiceStub(channel)
        self.metadata = (("authorization", f"Api-Token {token}"),)


@dataclasses.dataclass
class Expected:
    """After a change committed at ``committed`` (time.monotonic()), the engines of ``location`` should hold
    ``object_id`` (a monitor or a credential: ``kind`` as in Holdings) at ``version`` (None: not at all)."""

    location: str
    kind: str
    object_id: str
    version: int | None
    committed: float
    phase: str


def contents(n: int) -> cpb.CredentialContents:
    return cpb.CredentialContents(username_password=cpb.UsernamePassword(username=f"user-{n}", password=f"pw-{n}"))


def monitor(n: int, credential_id: str, location_ids: list[str], enabled: bool, monitor_id: str = "") -> mpb.Monitor:
    req = mpb.HttpRequest(method="GET", url=f"https://127.0.0.1:9/chaos/{n}")  # refused at once if run
    req.authentication.basic_credential_id = credential_id
    return mpb.Monitor(
        id=monitor_id,
        name=f"chaos {n}",
        frequency_minutes=60,
        location_ids=sorted(location_ids),
        enabled=enabled,
        http=mpb.HttpScript(requests=[req]),
    )


class Workload:
    def __init__(self, replicas: list[Replica], database_url: str, locations: list[str], seed: int = 0) -> None:
        self.replicas = replicas
        self.locations = locations
        self.rows = Rows()
        self.phase = "setup"
        self.expected: list[Expected] = []
        self.calls = 0
        self.failures = 0
        self.on_expected: Callable[[list[Expected]], None] = lambda changes: None
        self._url = database_url
        self._pool: asyncpg.Pool | None = None
        self._rng = random.Random(seed)
        self._busy: set[str] = set()
        self._serial = itertools.count(1)
        self._committed = asyncio.Condition()

    async def __aenter__(self) -> Workload:
        self._pool = await create_pool(self._url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._pool is not None:
            await self._pool.close()

    # --- setting up -----------------------------------------------------------------------------------------------

    async def populate(self, credentials: int, monitors: int) -> None:
        for _ in range(credentials):
            await self._create_credential()
        for _ in range(monitors):
            await self._create_monitor()

    # --- bursts -----------------------------------------------------------------------------------------------------

    async def burst_around(self, rate: float, fault: Awaitable[object], lead_in: float = 1.0) -> float:
        """A burst that starts ``lead_in`` seconds before ``fault`` and stops when it ends; returns when the fault
        ended (time.monotonic()), once the calls in flight have finished."""
        stop = asyncio.Event()
        burst = asyncio.create_task(self.burst(rate, stop))
        try:
            await asyncio.sleep(lead_in)
            await fault
            ended = time.monotonic()
        finally:
            stop.set()
            await burst
        return ended

    async def burst(self, rate: float, until: asyncio.Event, lanes: int = 6) -> None:
        """Changes at about ``rate`` a second in ``lanes`` concurrent lanes until ``until`` is set; then the calls in
        flight finish (their rows read back) before this returns."""
        slots = _Pacer(rate)
        await asyncio.gather(*(self._lane(slots, until) for _ in range(lanes)))

    async def _lane(self, pacer: _Pacer, until: asyncio.Event) -> None:
        changes: list[tuple[int, Callable[[], Awaitable[None]]]] = [
            (3, self._create_monitor),
            (6, self._update_monitor),
            (5, self._toggle_monitor),
            (2, self._delete_monitor),
            (5, self._overwrite_credential),
            (1, self._delete_credential),
            (1, self._create_credential),
        ]
        weights = [w for w, _ in changes]
        while not until.is_set():
            await pacer.next(until)
            if until.is_set():
                return
            (change,) = self._rng.choices([c for _, c in changes], weights)
            await change()

    # --- the changes --------------------------------------------------------------------------------------------------

    async def _create_credential(self) -> None:
        n = next(self._serial)
        req = cpb.CreateCredentialRequest(
            name=f"chaos {n}", scopes=[cpb.CREDENTIAL_SCOPE_SYNTHETIC], contents=contents(n)
        )

        async def call(api: Replica) -> str:
            return (await api.credentials.CreateCredential(req, metadata=api.metadata)).credential.id

        await self._change(set(), set(), call, creates="credentials")

    async def _create_monitor(self) -> None:
        cid = self._pick(self.rows.credentials)
        if cid is None:
            return
        req = mpb.CreateMonitorRequest(monitor=monitor(next(self._serial), cid, self._some_locations(), enabled=True))

        async def call(api: Replica) -> str:
            return (await api.monitors.CreateMonitor(req, metadata=api.metadata)).monitor.id

        await self._change(set(), {cid}, call, creates="monitors")

    async def _update_monitor(self) -> None:
        mid = self._pick(self.rows.monitors)
        cid = self._pick(self.rows.credentials)
        if mid is None or cid is None:
            return
        current = self.rows.monitors[mid]
        enabled = current.enabled or self._rng.random() < 0.5
        req = mpb.UpdateMonitorRequest(monitor=monitor(next(self._serial), cid, self._some_locations(), enabled, mid))

        async def call(api: Replica) -> str:
            await api.monitors.UpdateMonitor(req, metadata=api.metadata)
            return ""

        await self._change({mid}, {cid, *current.credential_ids}, call)

    async def _toggle_monitor(self) -> None:
        mid = self._pick(self.rows.monitors)
        if mid is None:
            return
        current = self.rows.monitors[mid]
        req = mpb.SetMonitorEnabledRequest(id=mid, enabled=not current.enabled)

        async def call(api: Replica) -> str:
            await api.monitors.SetMonitorEnabled(req, metadata=api.metadata)
            return ""

        await self._change({mid}, set(current.credential_ids), call)

    async def _delete_monitor(self) -> None:
        mid = self._pick(self.rows.monitors)
        if mid is None:
            return

        async def call(api: Replica) -> str:
            await api.monitors.DeleteMonitor(mpb.DeleteMonitorRequest(id=mid), metadata=api.metadata)
            return ""

        await self._change({mid}, set(self.rows.monitors[mid].credential_ids), call)

    async def _overwrite_credential(self) -> None:
        cid = self._pick(self.rows.credentials)
        if cid is None:
            return
        req = cpb.OverwriteCredentialRequest(id=cid, contents=contents(next(self._serial)))

        async def call(api: Replica) -> str:
            await api.credentials.OverwriteCredential(req, metadata=api.metadata)
            return ""

        await self._change(self.rows.users_of(cid), {cid}, call)

    async def _delete_credential(self) -> None:
        cid = self._pick(self.rows.credentials)
        if cid is None or len(self.rows.credentials) < 3:
            return

        async def call(api: Replica) -> str:
            await api.credentials.DeleteCredential(cpb.DeleteCredentialRequest(id=cid), metadata=api.metadata)
            return ""

        await self._change(self.rows.users_of(cid), {cid}, call)

    # --- bookkeeping ------------------------------------------------------------------------------------------------

    async def _change(
        self,
        monitor_ids: set[str],
        credential_ids: set[str],
        call: Callable[[Replica], Awaitable[str]],
        creates: str = "",
    ) -> None:
        """Runs ``call`` (which returns the id of what it ``creates``, a Holdings kind) against a replica with the
        ids locked, unless another lane holds one of them; then reads their rows back and records what the change
        means to each location's engines. A failed call whose change may have committed is read back too, but
        without expectations (its commit time is unknown)."""
        locked = monitor_ids | credential_ids
        if locked & self._busy:
            return
        self._busy |= locked
        touched = {"monitors": set(monitor_ids), "credentials": set(credential_ids)}
        committed: float | None = None
        rescan = False
        self.calls += 1
        try:
            try:
                created = await call(self._replica())
                committed = time.monotonic()
                async with self._committed:
                    self._committed.notify_all()
                if creates:
                    touched[creates].add(created)
            except grpc.aio.AioRpcError as exc:
                self.failures += 1
                rescan = creates == "monitors" and exc.code() not in NOTHING_CHANGED
            await self._read_back(touched["monitors"], touched["credentials"], committed, rescan)
        finally:
            self._busy -= locked

    async def _read_back(
        self, monitor_ids: set[str], credential_ids: set[str], committed: float | None, rescan: bool
    ) -> None:
        """``rescan``: a monitor may have been created that the run does not know; read all monitors to find it."""
        before = {loc: self.rows.holdings(loc) for loc in self.locations}
        monitors = set(monitor_ids).union(*(self.rows.users_of(cid) for cid in credential_ids))
        found = await self._read(None if rescan else sorted(monitors), sorted(credential_ids))
        if rescan:
            monitors |= found.monitors.keys() - self.rows.monitors.keys()
        self.rows.merge(found, monitors, credential_ids)
        if committed is None:
            return
        changes = [
            Expected(loc, kind, rid, after[kind].get(rid), committed, self.phase)
            for loc in self.locations
            for after in [self.rows.holdings(loc)]
            for kind in ("monitors", "credentials")
            for rid in before[loc][kind].keys() | after[kind].keys()
            if before[loc][kind].get(rid) != after[kind].get(rid)
        ]
        self.expected += changes
        self.on_expected(changes)

    async def next_commit(self) -> None:
        """Returns when the next change's call returns successfully."""
        async with self._committed:
            await self._committed.wait()

    async def read_all(self) -> Rows:
        return await self._read(None, None)

    async def _read(self, monitor_ids: list[str] | None, credential_ids: list[str] | None) -> Rows:
        assert self._pool is not None
        deadline = time.monotonic() + READ_BACK_SECONDS
        while True:
            try:
                async with self._pool.acquire() as conn:
                    return await read_rows(conn, monitor_ids, credential_ids)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    def _pick(self, ids: dict[str, object]) -> str | None:
        free = sorted(ids.keys() - self._busy)
        return self._rng.choice(free) if free else None

    def _replica(self) -> Replica:
        return self._rng.choice(self.replicas)

    def _some_locations(self) -> list[str]:
        return self._rng.sample(self.locations, self._rng.randint(1, len(self.locations)))


class _Pacer:
    """Hands out start times ``1 / rate`` apart to the lanes."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = time.monotonic()

    async def next(self, until: asyncio.Event) -> None:
        now = time.monotonic()
        self._next = max(self._next + self._interval, now)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(until.wait(), self._next - now)
