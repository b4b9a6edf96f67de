"""Monitors executed end to end with real processes: a `credvault serve` process pushes a monitor and its
credentials to an `engine-worker` process, which runs it against a real HTTP target at its frequency (scaled down)
and reports results that `GetResults` serves. Rotating the credential changes what the next execution sends,
without restarting anything; disabling the monitor stops its executions; the secrets appear nowhere but at the
target."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Awaitable, Sized

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import monitors_pb2 as mpb
from tests.conftest import Client
from tests.helpers import create_req, token, up
from tests.http_target import Target
from tests.processes import System, eventually, introspect, stop_and_dump
from tests.vault_service.test_canary import _pg_dump

PASSWORD_1 = "canary-exec-pw-1-Zq8"
PASSWORD_2 = "canary-exec-pw-2-Lm3"
TOKEN = "canary-exec-token-Vx5"
SCALE = "0.02"  # a one-minute monitor every 1.2 s


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    t = await Target(expected_password=PASSWORD_1, expected_token=TOKEN).start()
    yield t
    await t.stop()


async def metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_a_monitor_runs_rotates_and_stops_with_real_processes(
    system: System, system_admin: Client, target: Target, database_url: str
) -> None:
    await system_admin.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id="loc-a")))
    await system_admin.AddEngine(mpb.AddEngineRequest(location_id="loc-a", engine_id="e1"))
    pair = (await system_admin.CreateCredential(create_req("pair", up("alice", PASSWORD_1)))).credential.id
    tok = (await system_admin.CreateCredential(create_req("tok", token(TOKEN)))).credential.id
    login = mpb.HttpRequest(method="GET", url=target.url("/basic"))
    login.authentication.basic_credential_id = pair
    login.validation.add().body_contains = "welcome alice"
    api = mpb.HttpRequest(
        method="GET",
        url=target.url("/bearer"),
        headers=[mpb.Header(name="Authorization", value=f"Bearer {{{{{tok}}}}}")],
    )
    definition = mpb.Monitor(
        name="shop",
        frequency_minutes=1,
        location_ids=["loc-a"],
        enabled=True,
        http=mpb.HttpScript(requests=[login, api]),
    )
    m = (await system_admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=definition))).monitor
    worker, status_port = await system.start_worker("loc-a", "e1", "--interval-scale", SCALE)

    async def results() -> list[mpb.MonitorResult]:
        return list((await system_admin.GetResults(mpb.GetResultsRequest(monitor_id=m.id, limit=500))).results)

    async def successes_since(count: int) -> bool:
        got = await results()
        return sum(r.status == mpb.EXECUTION_STATUS_SUCCESS for r in got) >= count

    await eventually(lambda: successes_since(2))
    first = (await results())[0]
    assert (first.location_id, first.engine_id, first.monitor_version) == ("loc-a", "e1", m.version)
    assert [r.status_code for r in first.requests] == [200, 200]
    assert first.requests[1].url == target.url("/bearer")
    seen = await metrics(status_port)
    assert seen[("monitor_executions_total", (("monitor_id", m.id), ("status", "success")))] >= 2
    assert seen[("monitor_execution_duration_seconds_count", (("monitor_id", m.id),))] >= 2
    assert seen[("results_sent_total", ())] >= 2

    # the password rotates at the target (which refuses the old one from now on), then in the vault: an execution
    # that starts after that and succeeds sent the new one, without anything restarted
    target.expected_password = PASSWORD_2
    rotation_started_ns = time.time_ns()
    await system_admin.OverwriteCredential(cpb.OverwriteCredentialRequest(id=pair, contents=up("alice", PASSWORD_2)))

    async def succeeded_after_the_rotation() -> list[mpb.MonitorResult]:
        return [
            r
            for r in await results()
            if r.status == mpb.EXECUTION_STATUS_SUCCESS and r.start_time.ToNanoseconds() > rotation_started_ns
        ]

    await eventually(lambda: _any(succeeded_after_the_rotation()))
    newest = (await succeeded_after_the_rotation())[0]
    assert [r.status_code for r in newest.requests] == [200, 200]
    assert newest.monitor_version == m.version  # the monitor did not change, its credential did
    new_header = "Basic " + base64.b64encode(f"alice:{PASSWORD_2}".encode()).decode()
    assert any(s.authorization == new_header for s in target.requests_to("/basic"))

    # disabled: removed from the worker, and no execution reaches the target any more
    await system_admin.SetMonitorEnabled(mpb.SetMonitorEnabledRequest(id=m.id, enabled=False))
    await eventually(lambda: _holds_nothing(status_port))
    settled = len(target.seen)
    await asyncio.sleep(3.0)  # two and a half intervals
    assert len(target.seen) == settled
    assert ("monitor_executions_total", (("monitor_id", m.id), ("status", "success"))) not in await metrics(status_port)

    # the secrets went to the target and nowhere else
    history = b"".join(r.SerializeToString() for r in await results())
    dump = await stop_and_dump(system, worker, _pg_dump())
    for secret in (PASSWORD_1, PASSWORD_2, TOKEN):
        assert not any(secret in line for line in worker.lines + system.procs[0].lines)
        assert secret.encode() not in dump
        assert secret.encode() not in history


async def _holds_nothing(port: int) -> bool:
    doc = await introspect(port)
    return bool(doc["monitors"] == {} and doc["credentials"] == {})


async def _any(items: Awaitable[Sized]) -> bool:
    return len(await items) > 0
