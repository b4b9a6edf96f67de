"""A browser monitor with an NTLM login end to end with real processes: a `credvault serve` process pushes the monitor
and its `DOMAIN\\user` credential to an `engine-worker` process, whose Chromium answers the NTLM challenge of a real
acceptor (tests/ntlm_target.py) with the credential as the context's HTTP login. The acceptor sees the domain and the
user apart; overwriting the credential with a wrong password gives failed results (the page stays at 401), with no
restart; the passwords appear in no log, result or database row."""

from __future__ import annotations

import pathlib
import shutil
import tempfile
import time

import pytest

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import monitors_pb2 as mpb
from tests.conftest import Client
from tests.helpers import create_req, up
from tests.ntlm_target import ntlm_target
from tests.processes import System, eventually, stop_and_assert_unseen
from tests.vault_service.test_canary import _pg_dump

PASSWORD = "canary-browser-ntlm-pw-Vb7"
WRONG = "canary-browser-ntlm-wrong-Lq3"
SCALE = "0.02"  # a one-minute monitor every 1.2 s
SUCCESS, FAILED = mpb.EXECUTION_STATUS_SUCCESS, mpb.EXECUTION_STATUS_FAILED


async def test_a_browser_monitor_logs_in_with_ntlm_in_a_real_worker(
    system: System, system_admin: Client, request: pytest.FixtureRequest
) -> None:
    admin = system_admin
    async with ntlm_target("CORP\\alice", PASSWORD) as target:
        await admin.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id="loc-a")))
        await admin.AddEngine(mpb.AddEngineRequest(location_id="loc-a", engine_id="e1"))
        pair = (await admin.CreateCredential(create_req("intranet", up("CORP\\alice", PASSWORD)))).credential
        script = mpb.BrowserScript(
            url=target.url("/intranet"),
            login_credential_id=pair.id,
            validation=[mpb.BrowserValidation(text_present="NTLM welcome CORP\\alice")],
        )
        definition = mpb.Monitor(
            name="intranet", frequency_minutes=1, location_ids=["loc-a"], enabled=True, browser=script
        )
        m = (await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=definition))).monitor
        # short: Chromium's singleton socket path must fit a UNIX socket address
        home, tmp = (pathlib.Path(tempfile.mkdtemp(prefix=f"cv-{name}-", dir="/tmp")) for name in ("h", "t"))

        def remove() -> None:
            for directory in (home, tmp):
                shutil.rmtree(directory, ignore_errors=True)

        request.addfinalizer(remove)
        worker, _ = await system.start_worker("loc-a", "e1", "--interval-scale", SCALE, HOME=str(home), TMPDIR=str(tmp))

        async def results(status: int, after_ns: int = 0) -> list[mpb.MonitorResult]:
            got = (await admin.GetResults(mpb.GetResultsRequest(monitor_id=m.id, limit=500))).results
            return [r for r in got if r.status == status and r.start_time.ToNanoseconds() > after_ns]

        async def some(status: int, after_ns: int = 0) -> bool:
            return bool(await results(status, after_ns))

        await eventually(lambda: some(SUCCESS), within=60)
        assert (await results(SUCCESS))[0].main_document_status == 200
        assert {(s.domain, s.user) for s in target.accepted} == {("CORP", "alice")}

        overwritten_ns = time.time_ns()
        await admin.OverwriteCredential(cpb.OverwriteCredentialRequest(id=pair.id, contents=up("CORP\\alice", WRONG)))
        await eventually(lambda: some(FAILED, overwritten_ns), within=60)
        failed = (await results(FAILED, overwritten_ns))[0]
        assert failed.main_document_status == 401
        assert any(s.stage == "authenticate" and not s.accepted and s.domain == "CORP" for s in target.seen)
        assert worker.proc.returncode is None

        every = [*await results(SUCCESS), *await results(FAILED)]
        history = b"".join(r.SerializeToString() for r in every)
        await stop_and_assert_unseen(system, worker, _pg_dump(), history, (PASSWORD, WRONG))
