"""Execution results: engines report them over their stream, the vault keeps a bounded recent history per monitor,
and `Monitors.GetResults` serves it to those who may see the monitor. An engine is trusted only for what its
certificate says: its results carry its own location and engine, and results for other locations' monitors are
dropped."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
import pytest

from credvault.v1 import engine_pb2 as epb
from credvault.v1 import identity_pb2 as ipb
from credvault.v1 import monitors_pb2 as mpb
from tests.conftest import Client, Connect, Users
from tests.helpers import create_req, expect_code, up
from tests.local_pki import LocalPki
from tests.processes import eventually
from tests.push_helpers import EngineClient
from vault_service.server import RunningVault

SUCCESS, FAILED = mpb.EXECUTION_STATUS_SUCCESS, mpb.EXECUTION_STATUS_FAILED


def monitor(cred_id: str, location: str, zone: str = "") -> mpb.Monitor:
    req = mpb.HttpRequest(method="GET", url="https://shop.example/")
    req.authentication.basic_credential_id = cred_id
    return mpb.Monitor(
        name="m",
        frequency_minutes=1,
        location_ids=[location],
        enabled=True,
        management_zone=zone,
        http=mpb.HttpScript(requests=[req]),
    )


def result(monitor_id: str, n: int, status: int = SUCCESS, **fields: object) -> mpb.MonitorResult:
    values: dict[str, object] = {
        "monitor_id": monitor_id,
        "monitor_version": 1,
        "duration_ms": 12.5,
        "status": status,
        "failure_reason": "" if status == SUCCESS else "request 1 (GET https://shop.example/): HTTP status 500",
    }
    r = mpb.MonitorResult(**(values | fields))
    r.start_time.FromSeconds(int(time.time()) - 1000 + n)
    r.requests.add(index=0, method="GET", url="https://shop.example/", status_code=200, duration_ms=12.0, success=True)
    return r


async def report(engine: EngineClient, *results: mpb.MonitorResult) -> None:
    engine.send(epb.StreamRequest(results=epb.ResultBatch(results=results)))


async def results_of(client: Client, monitor_id: str, **kw: object) -> list[mpb.MonitorResult]:
    response = await client.GetResults(mpb.GetResultsRequest(monitor_id=monitor_id, **kw))
    return list(response.results)


async def eventually_results(client: Client, monitor_id: str, count: int) -> list[mpb.MonitorResult]:
    """At least ``count`` results of the monitor, once the vault stores them (within the deadline of eventually)."""
    got: list[mpb.MonitorResult] = []

    async def enough() -> bool:
        nonlocal got
        got = await results_of(client, monitor_id, limit=500)
        return len(got) >= count

    await eventually(enough)
    return got


@pytest.fixture
async def users(push_vault: RunningVault, admin_client: Client, local_pki: LocalPki) -> AsyncIterator[Users]:
    async with local_pki.channel(push_vault.port) as ch:
        yield Users(ch, Client(ch, admin_client.token, "admin"))


async def prepare(admin: Client) -> tuple[str, str]:
    for loc in ("loc-a", "loc-b"):
        await admin.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id=loc)))
        await admin.AddEngine(mpb.AddEngineRequest(location_id=loc, engine_id="e1"))
    pair = (await admin.CreateCredential(create_req("pair", up()))).credential.id
    in_a = (await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=monitor(pair, "loc-a")))).monitor.id
    in_b = (await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=monitor(pair, "loc-b")))).monitor.id
    return in_a, in_b


async def test_reported_results_are_served_newest_first(admin_client: Client, connect: Connect) -> None:
    in_a, _ = await prepare(admin_client)
    engine = await connect("loc-a", "e1")
    await report(engine, result(in_a, 1), result(in_a, 2, FAILED), result(in_a, 3))
    got = await eventually_results(admin_client, in_a, 3)
    assert [r.status for r in got] == [SUCCESS, FAILED, SUCCESS]  # newest first
    assert got[0].start_time.seconds > got[1].start_time.seconds > got[2].start_time.seconds
    assert {(r.location_id, r.engine_id) for r in got} == {("loc-a", "e1")}
    assert got[1].failure_reason.endswith("HTTP status 500")
    assert got[0].requests[0].status_code == 200
    assert got[0].duration_ms == pytest.approx(12.5)
    assert [r.start_time.seconds for r in await results_of(admin_client, in_a, limit=1)] == [got[0].start_time.seconds]
    assert await results_of(admin_client, in_a, location_id="loc-b") == []


async def test_an_engine_cannot_report_for_another_location_or_claim_another_identity(
    admin_client: Client, connect: Connect
) -> None:
    in_a, in_b = await prepare(admin_client)
    engine = await connect("loc-a", "e1")
    await report(
        engine,
        result(in_b, 1),  # a monitor of loc-b: dropped
        result(in_a, 2, location_id="loc-b", engine_id="forged"),  # the claim is replaced by the certificate's
        result("SYNTHETIC_TEST-FFFFFFFFFFFFFFFF", 3),  # no such monitor
        result("not-a-monitor", 4),
        result(in_a, 5, status=0),  # no status
    )
    got = await eventually_results(admin_client, in_a, 1)
    assert [(r.location_id, r.engine_id) for r in got] == [("loc-a", "e1")]
    assert await results_of(admin_client, in_b) == []


async def test_results_are_bounded_and_sanitized(
    push_vault: RunningVault, admin_client: Client, connect: Connect
) -> None:
    in_a, _ = await prepare(admin_client)
    engine = await connect("loc-a", "e1")
    long_reason = "x" * 5000
    await report(engine, *(result(in_a, n, FAILED) for n in range(150)))
    await report(engine, result(in_a, 200, FAILED, failure_reason=long_reason, duration_ms=float("nan")))
    got = await eventually_results(admin_client, in_a, 100)
    await report(engine, result(in_a, 201))
    for _ in range(100):
        got = await results_of(admin_client, in_a, limit=500)
        if got[0].status == SUCCESS:
            break
    assert len(got) == 100  # the default history: the newest 100 per monitor
    assert got[0].status == SUCCESS
    assert len(got[1].failure_reason) == 1000
    assert got[1].duration_ms == 0
    async with push_vault.store.autocommit() as tx:
        assert await tx.conn.fetchval("SELECT count(*) FROM monitor_results WHERE monitor_id = $1", in_a) == 100


async def test_who_may_read_results(admin_client: Client, connect: Connect, users: Users) -> None:
    in_a, _ = await prepare(admin_client)
    pair = (await admin_client.CreateCredential(create_req("z", up()))).credential.id
    zoned = (
        await admin_client.CreateMonitor(mpb.CreateMonitorRequest(monitor=monitor(pair, "loc-a", "zone-1")))
    ).monitor
    engine = await connect("loc-a", "e1")
    await report(engine, result(in_a, 1), result(zoned.id, 2))
    await eventually_results(admin_client, zoned.id, 1)

    viewer = await users.make("viewer", [ipb.PERMISSION_VIEW_ENVIRONMENT], scopes=["syntheticMonitors.read"])
    assert len(await results_of(viewer, in_a)) == 1
    other_zone = await users.make("z2", [], zones={"zone-2": [ipb.PERMISSION_VIEW_ENVIRONMENT]})
    await expect_code(results_of(other_zone, zoned.id), grpc.StatusCode.NOT_FOUND)  # does not even exist for it
    no_scope = await users.make("writer", [ipb.PERMISSION_VIEW_ENVIRONMENT], scopes=["syntheticMonitors.write"])
    await expect_code(results_of(no_scope, in_a), grpc.StatusCode.PERMISSION_DENIED)
    anonymous = Client(users.channel, None)
    await expect_code(results_of(anonymous, in_a), grpc.StatusCode.UNAUTHENTICATED)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"monitor_id": "bogus"}, "id"),
        ({"limit": 501}, "limit"),
        ({"limit": -1}, "limit"),
        ({"location_id": "Not A Slug"}, "location_id"),
    ],
)
async def test_bad_requests_name_the_field(admin_client: Client, fields: dict[str, object], named: str) -> None:
    in_a, _ = await prepare(admin_client)
    request = mpb.GetResultsRequest(monitor_id=in_a)
    for key, value in fields.items():
        setattr(request, key, value)
    err = await expect_code(admin_client.GetResults(request), grpc.StatusCode.INVALID_ARGUMENT)
    assert named in (err.details() or "")


async def test_deleting_a_monitor_deletes_its_results(
    push_vault: RunningVault, admin_client: Client, connect: Connect
) -> None:
    in_a, _ = await prepare(admin_client)
    engine = await connect("loc-a", "e1")
    await report(engine, result(in_a, 1))
    await eventually_results(admin_client, in_a, 1)
    await admin_client.DeleteMonitor(mpb.DeleteMonitorRequest(id=in_a))
    await expect_code(results_of(admin_client, in_a), grpc.StatusCode.NOT_FOUND)
    async with push_vault.store.autocommit() as tx:
        assert await tx.conn.fetchval("SELECT count(*) FROM monitor_results") == 0
