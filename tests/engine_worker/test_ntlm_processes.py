"""An NTLM-authenticated HTTP monitor end to end with real processes: a `credvault serve` process pushes the monitor
and its `DOMAIN\\user` credential to an `engine-worker` process, which logs in to a real NTLM acceptor
(tests/ntlm_target.py); overwriting the credential with a wrong password gives clean failed results, with no
restart; the passwords appear in no log, result or database row."""

from __future__ import annotations

import time

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import monitors_pb2 as mpb
from tests.conftest import Client
from tests.helpers import create_req, up
from tests.ntlm_target import ntlm_target
from tests.processes import System, eventually, stop_and_assert_unseen
from tests.vault_service.test_canary import _pg_dump

PASSWORD = "canary-ntlm-proc-pw-Hc4"
WRONG = "canary-ntlm-proc-wrong-Tn9"
SCALE = "0.02"  # a one-minute monitor every 1.2 s


async def test_an_ntlm_monitor_runs_in_a_real_worker(system: System, system_admin: Client) -> None:
    async with ntlm_target("CORP\\alice", PASSWORD) as target:
        await system_admin.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id="loc-a")))
        await system_admin.AddEngine(mpb.AddEngineRequest(location_id="loc-a", engine_id="e1"))
        pair = (await system_admin.CreateCredential(create_req("intranet", up("CORP\\alice", PASSWORD)))).credential
        request = mpb.HttpRequest(method="GET", url=target.url("/intranet"))
        request.authentication.ntlm_credential_id = pair.id
        request.validation.add().body_contains = "NTLM welcome CORP\\alice"
        definition = mpb.Monitor(
            name="intranet",
            frequency_minutes=1,
            location_ids=["loc-a"],
            enabled=True,
            http=mpb.HttpScript(requests=[request]),
        )
        m = (await system_admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=definition))).monitor
        worker, _ = await system.start_worker("loc-a", "e1", "--interval-scale", SCALE)

        async def results(status: int, after_ns: int = 0) -> list[mpb.MonitorResult]:
            got = (await system_admin.GetResults(mpb.GetResultsRequest(monitor_id=m.id, limit=500))).results
            return [r for r in got if r.status == status and r.start_time.ToNanoseconds() > after_ns]

        async def some(status: int, after_ns: int = 0) -> bool:
            return bool(await results(status, after_ns))

        await eventually(lambda: some(mpb.EXECUTION_STATUS_SUCCESS))
        assert {(s.domain, s.user) for s in target.accepted} == {("CORP", "alice")}

        overwritten_ns = time.time_ns()
        await system_admin.OverwriteCredential(
            cpb.OverwriteCredentialRequest(id=pair.id, contents=up("CORP\\alice", WRONG))
        )
        await eventually(lambda: some(mpb.EXECUTION_STATUS_FAILED, overwritten_ns))
        failed = (await results(mpb.EXECUTION_STATUS_FAILED, overwritten_ns))[0]
        assert failed.failure_reason == f"request 1 (GET {target.url('/intranet')}): HTTP status 401"
        assert any(s.stage == "authenticate" and not s.accepted for s in target.seen)

        every = [*await results(mpb.EXECUTION_STATUS_SUCCESS), *await results(mpb.EXECUTION_STATUS_FAILED)]
        history = b"".join(r.SerializeToString() for r in every)
        await stop_and_assert_unseen(system, worker, _pg_dump(), history, (PASSWORD, WRONG))
