"""The three leaks seen with a real target, end to end with real processes: a `credvault serve` process, an
`engine-worker` process and a hostile target. A token in the host is refused at create; a password with spaces and
'+' in the query of a target answering ``HTTP/1.1 abc``, a long URL, a redirect to a host carrying the token and an
error page echoing the headers all fail with a useful reason, and no form of a value is in the results, the
processes' logs or a pg_dump. The worker's reasons are clean already: the vault had nothing to remove."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from credvault.v1 import monitors_pb2 as mpb
from tests.conftest import Client
from tests.engine_worker.test_result_leaks import SECRET_PASSWORD, SECRET_TOKEN, assert_nowhere
from tests.helpers import create_req, expect_code, token, up
from tests.hostile_target import HostileTarget
from tests.processes import System, eventually, stop_and_dump
from tests.vault_service.test_canary import _pg_dump

SCALE = "0.02"  # a one-minute monitor every 1.2 s


@pytest.fixture
async def hostile() -> AsyncIterator[HostileTarget]:
    t = await HostileTarget().start()
    yield t
    await t.stop()


def one_request(name: str, url: str, pair: str = "", **fields: object) -> mpb.Monitor:
    req = mpb.HttpRequest(method="GET", url=url, description=name, **fields)
    if pair:
        req.authentication.basic_credential_id = pair
    return mpb.Monitor(
        name=name, frequency_minutes=1, location_ids=["loc-a"], enabled=True, http=mpb.HttpScript(requests=[req])
    )


async def test_no_secret_leaves_through_results_with_real_processes(
    system: System, system_admin: Client, hostile: HostileTarget
) -> None:
    admin = system_admin
    await admin.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id="loc-a")))
    await admin.AddEngine(mpb.AddEngineRequest(location_id="loc-a", engine_id="e1"))
    pair = (await admin.CreateCredential(create_req("pair", up("alice", SECRET_PASSWORD)))).credential.id
    tok = (await admin.CreateCredential(create_req("tok", token(SECRET_TOKEN)))).credential.id
    tok_ref, pw_ref = f"{{{{{tok}}}}}", f"{{{{{pair}.password}}}}"

    in_host = one_request("token in the host", f"http://{tok_ref}.invalid/")
    err = await expect_code(
        admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=in_host)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "move the credential into a header" in (err.details() or "")

    expected = {
        "malformed": (
            one_request("malformed", hostile.url(f"/malformed?p={pw_ref}&k={tok_ref}"), pair),
            "the response is not valid HTTP",
        ),
        "long URL": (
            one_request("long URL", hostile.url("/malformed/" + "a" * 364 + f"?k={tok_ref}&p={pw_ref}")),
            "the response is not valid HTTP",
        ),
        "redirect": (
            one_request("redirect", hostile.url(f"/redirect-host?v={tok_ref}"), follow_redirects=True),
            "cannot connect to the host a redirect led to: the host name does not resolve",
        ),
        "echo": (
            one_request(
                "echo", hostile.url(f"/echo?k={tok_ref}"), pair, headers=[mpb.Header(name="X-Api-Key", value=tok_ref)]
            ),
            "HTTP status 500",
        ),
    }
    ids = {}
    for name, (definition, _) in expected.items():
        ids[name] = (await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=definition))).monitor.id
    worker, _ = await system.start_worker("loc-a", "e1", "--interval-scale", SCALE)

    async def results(monitor_id: str) -> list[mpb.MonitorResult]:
        return list((await admin.GetResults(mpb.GetResultsRequest(monitor_id=monitor_id, limit=500))).results)

    async def every_monitor_reported() -> bool:
        return all([await results(i) for i in ids.values()])

    await eventually(every_monitor_reported)
    texts = []
    for name, (_, reason) in expected.items():
        first = (await results(ids[name]))[0]
        assert first.status == mpb.EXECUTION_STATUS_FAILED
        assert first.failure_reason.startswith(f"request 1 ({name}): {reason}"), first.failure_reason
        texts += [first.failure_reason, first.SerializeToString().decode("utf-8", "replace")]
    assert any(SECRET_TOKEN in line for line in hostile.request_lines)  # the values went out to the target

    dump = await stop_and_dump(system, worker, _pg_dump())
    vault = system.procs[0]
    assert_nowhere(*texts, *worker.lines, *vault.lines, dump.decode("utf-8", "replace"))
    assert not any("secret values from its results" in line for line in vault.lines)  # the worker leaked nothing
