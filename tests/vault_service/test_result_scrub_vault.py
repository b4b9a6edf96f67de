"""The vault scrubs engines' results again, on its own, with the values it resolved for the monitor: an engine that
reports a secret (here a raw engine client, on purpose, in every encoding and straddling the clip limit) never gets
it into storage, a pg_dump, a log line or a reader's response, and the vault counts what it removed."""

from __future__ import annotations

import asyncio
import base64
import logging
import subprocess
import time

import pytest

from credvault.v1 import engine_pb2 as epb
from credvault.v1 import monitors_pb2 as mpb
from tests.conftest import Client, Connect
from tests.credvault.test_secret_scrub import every_form
from tests.helpers import create_req, token, up
from tests.vault_service.test_canary import _pg_dump
from tests.vault_service.test_results import eventually_results
from vault_service.results import MAX_TEXT
from vault_service.server import RunningVault

SECRET_TOKEN = "CvPriv5B89-Tok3n-0123456789abcdef"
SECRET_PASSWORD = "Pa ss+wörd Zq8&x/y"


def leaked_forms() -> dict[str, str]:
    forms = {f"token {name}": form for name, form in every_form(SECRET_TOKEN).items()}
    forms |= {f"password {name}": form for name, form in every_form(SECRET_PASSWORD).items()}
    forms["basic header"] = base64.b64encode(f"alice:{SECRET_PASSWORD}".encode()).decode()
    forms["token cut"] = SECRET_TOKEN[:10]
    return forms


def leaky_result(monitor_id: str) -> mpb.MonitorResult:
    """What a broken engine might report: the values in every form, one of them across the clip limit."""
    forms = every_form(SECRET_TOKEN) | {f"pw {k}": v for k, v in every_form(SECRET_PASSWORD).items()}
    reason = " | ".join(forms.values())
    straddling = "x" * (MAX_TEXT - 24) + SECRET_TOKEN + " and more"  # clipped first, 23 of 33 would survive
    result = mpb.MonitorResult(
        monitor_id=monitor_id,
        monitor_version=1,
        status=mpb.EXECUTION_STATUS_FAILED,
        failure_reason=f"request 1: cannot connect to {SECRET_TOKEN.lower()}.invalid:80; {reason}",
    )
    result.start_time.FromSeconds(int(time.time()) - 5)
    basic = base64.b64encode(f"alice:{SECRET_PASSWORD}".encode()).decode()
    result.requests.add(
        index=0,
        description=f"login with Authorization: Basic {basic}",
        method="GET",
        url=f"https://shop.example/login?p={forms['pw yarl query']}",
        failure_reason=straddling,
    )
    return result


async def test_the_vault_scrubs_what_an_engine_leaks_and_counts_it(
    push_vault: RunningVault,
    admin_client: Client,
    connect: Connect,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    await admin_client.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id="loc-a")))
    await admin_client.AddEngine(mpb.AddEngineRequest(location_id="loc-a", engine_id="e1"))
    pair = (await admin_client.CreateCredential(create_req("pair", up("alice", SECRET_PASSWORD)))).credential.id
    tok = (await admin_client.CreateCredential(create_req("tok", token(SECRET_TOKEN)))).credential.id
    req = mpb.HttpRequest(
        method="GET",
        url="https://shop.example/login",
        headers=[mpb.Header(name="X-Api-Key", value=f"{{{{{tok}}}}}")],
    )
    req.authentication.basic_credential_id = pair
    definition = mpb.Monitor(
        name="m", frequency_minutes=1, location_ids=["loc-a"], enabled=True, http=mpb.HttpScript(requests=[req])
    )
    monitor = (await admin_client.CreateMonitor(mpb.CreateMonitorRequest(monitor=definition))).monitor
    engine = await connect("loc-a", "e1")
    await engine.wait_until(lambda: monitor.id in engine.monitors)
    assert engine.credentials[tok].details.token.token == SECRET_TOKEN  # the engine does hold the values
    redacted_before = _redacted(push_vault)

    engine.send(epb.StreamRequest(results=epb.ResultBatch(results=[leaky_result(monitor.id)])))
    stored = (await eventually_results(admin_client, monitor.id, 1))[0]

    texts = [stored.failure_reason, *(t for s in stored.requests for t in (s.failure_reason, s.url, s.description))]
    _assert_nowhere("stored result", *texts, stored.SerializeToString().decode("utf-8", "replace"))
    assert stored.failure_reason.startswith(f"request 1: cannot connect to {{{{{tok}}}}}.invalid:80; ")
    assert stored.requests[0].url == f"https://shop.example/login?p={{{{{pair}.password}}}}"
    assert stored.requests[0].failure_reason.endswith("…")
    assert len(stored.requests[0].failure_reason) <= MAX_TEXT
    assert _redacted(push_vault) - redacted_before >= 4  # at least one in each of the four texts
    assert "removed" in caplog.text
    assert "secret values from its results of monitor" in caplog.text
    _assert_nowhere("logs", caplog.text)

    dump = await asyncio.to_thread(
        subprocess.run, [_pg_dump(), "--no-owner", "--dbname", database_url], capture_output=True, check=True
    )
    assert b"COPY public.monitor_results" in dump.stdout
    _assert_nowhere("pg_dump", dump.stdout.decode("utf-8", "replace"))


def _redacted(vault: RunningVault) -> float:
    value = vault.metrics.registry.get_sample_value("credvault_results_redacted_total", {"location": "loc-a"})
    return value or 0.0


def _assert_nowhere(where: str, *texts: str) -> None:
    found = sorted({name for text in texts for name, form in leaked_forms().items() if form in text})
    assert not found, f"secret forms found in {where}: {found}"
