"""Browser monitors end to end with real processes: a `credvault serve` process pushes a form-login clickpath and its
username-password credential to an `engine-worker` process, whose Chromium logs in to a page served here and
validates the page behind the session cookie. Overwriting the credential changes what the next execution types,
with nothing restarted; disabling the monitor stops its executions. Canary: the typed secrets are in no result, log
line, metric, pg_dump, or file under the worker's temporary and home directories (scanned while it runs and after)."""

from __future__ import annotations

import pathlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import monitors_pb2 as mpb
from tests.browser_pages import Pages
from tests.conftest import Client
from tests.helpers import create_req, token, up
from tests.processes import System, eventually, introspect, stop_and_dump
from tests.vault_service.test_canary import _pg_dump

PASSWORD_1 = "canary-browser-proc-pw-1-Hk4"
PASSWORD_2 = "canary-browser-proc-pw-2-Jw8"
TOKEN = "canary-browser-proc-tok-Qe2"
SECRETS = (PASSWORD_1, PASSWORD_2, TOKEN)
SCALE = "0.02"  # a one-minute monitor every 1.2 s
SUCCESS, FAILED = mpb.EXECUTION_STATUS_SUCCESS, mpb.EXECUTION_STATUS_FAILED


@pytest.fixture
async def pages() -> AsyncIterator[Pages]:
    site = Pages(password=PASSWORD_1, token=TOKEN)
    await site.start()
    yield site
    await site.stop()


def typed(credential_id: str, selector: str, field: str = "", description: str = "") -> mpb.BrowserEvent:
    credential = mpb.CredentialField(credential_id=credential_id, field=field)
    return mpb.BrowserEvent(description=description, keystroke=mpb.Keystroke(selector=selector, credential=credential))


def files_holding(roots: list[pathlib.Path], secrets: tuple[str, ...]) -> list[str]:
    found = []
    for root in roots:
        for path in root.rglob("*"):
            try:
                data = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
            except OSError:
                continue
            for secret in secrets:
                for form in (secret.encode(), secret.encode("utf-16-le")):
                    if form in data:
                        found.append(f"{path} holds a form of {secret}")
    return found


async def test_a_browser_monitor_logs_in_rotates_and_stops_with_real_processes(
    system: System, system_admin: Client, pages: Pages, request: pytest.FixtureRequest
) -> None:
    admin = system_admin
    await admin.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id="loc-a")))
    await admin.AddEngine(mpb.AddEngineRequest(location_id="loc-a", engine_id="e1"))
    pair = (await admin.CreateCredential(create_req("pair", up("alice", PASSWORD_1)))).credential.id
    tok = (await admin.CreateCredential(create_req("tok", token(TOKEN)))).credential.id
    login = mpb.BrowserScript(
        url=pages.url("/login"),
        events=[
            typed(pair, "#user", "username", "username"),
            typed(pair, "#pass", "password", "password"),
            mpb.BrowserEvent(description="log in", click_selector="#go"),
        ],
        validation=[mpb.BrowserValidation(text_present="Welcome alice")],
    )
    failing = mpb.BrowserScript(
        url=pages.url("/field"),
        events=[typed(tok, "#f", description="the token")],
        validation=[mpb.BrowserValidation(text_present="never shown")],
    )
    ids = []
    for name, script in (("login", login), ("failing", failing)):
        definition = mpb.Monitor(name=name, frequency_minutes=1, location_ids=["loc-a"], enabled=True, browser=script)
        ids.append((await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=definition))).monitor.id)
    login_id, failing_id = ids
    # short: Chromium's singleton socket path must fit a UNIX socket address
    home, tmp = (pathlib.Path(tempfile.mkdtemp(prefix=f"cv-{name}-", dir="/tmp")) for name in ("h", "t"))

    def remove() -> None:
        for directory in (home, tmp):
            shutil.rmtree(directory, ignore_errors=True)

    request.addfinalizer(remove)
    worker, status_port = await system.start_worker(
        "loc-a", "e1", "--interval-scale", SCALE, HOME=str(home), TMPDIR=str(tmp)
    )

    async def results(monitor_id: str) -> list[mpb.MonitorResult]:
        request = mpb.GetResultsRequest(monitor_id=monitor_id, limit=500, include_screenshots=True)
        return list((await admin.GetResults(request)).results)

    async def successes(after_ns: int = 0) -> list[mpb.MonitorResult]:
        return [r for r in await results(login_id) if r.status == SUCCESS and r.start_time.ToNanoseconds() > after_ns]

    async def at_least(count: int, after_ns: int = 0) -> bool:
        return len(await successes(after_ns)) >= count

    await eventually(lambda: at_least(2), within=60)
    first = (await successes())[0]
    assert [e.success for e in first.events] == [True, True, True, True]
    assert first.main_document_status == 200
    failed = [r for r in await results(failing_id) if r.status == FAILED]
    assert failed
    assert failed[0].screenshot_png.startswith(b"\x89PNG")
    assert failed[0].failure_reason == "final validation: the page does not show the text 'never shown'"
    assert files_holding([home, tmp], SECRETS) == []  # while the browser runs

    # the password changes at the page, then in the vault: a later success typed the new one, nothing restarted
    pages.password = PASSWORD_2
    rotated_ns = time.time_ns()
    await admin.OverwriteCredential(cpb.OverwriteCredentialRequest(id=pair, contents=up("alice", PASSWORD_2)))
    await eventually(lambda: at_least(1, rotated_ns), within=60)
    assert worker.proc.returncode is None

    # disabled: the worker drops it, and while the other monitor runs three more times no login reaches the page
    await admin.SetMonitorEnabled(mpb.SetMonitorEnabledRequest(id=login_id, enabled=False))

    async def dropped() -> bool:
        return login_id not in (await introspect(status_port))["monitors"]

    await eventually(dropped)
    logins, other = pages.logins, len(await results(failing_id))

    async def other_ran_three_times() -> bool:
        return len(await results(failing_id)) >= other + 3

    await eventually(other_ran_three_times, within=60)
    assert pages.logins == logins

    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{status_port}/metrics") as response:
        metrics = await response.text()
    assert 'browser_executions_total{status="success"}' in metrics
    assert "browser_contexts_open" in metrics
    history = b""
    for monitor_id in ids:
        history += b"".join(r.SerializeToString() for r in await results(monitor_id))
    dump = await stop_and_dump(system, worker, _pg_dump())
    for secret in SECRETS:
        assert secret not in metrics
        assert not any(secret in line for line in worker.lines + system.procs[0].lines)
        assert secret.encode() not in dump
        assert secret.encode() not in history
    assert files_holding([home, tmp], SECRETS) == []  # after it stopped
