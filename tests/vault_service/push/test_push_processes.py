"""The whole push with real processes: a `credvault serve` process, `engine-worker` processes, real PostgreSQL and
mutual TLS. Worker killed and restarted -> full sync; vault SIGKILLed mid-stream -> the worker keeps its configs,
reconnects and converges; disable -> the worker holds no trace of the monitor."""

from __future__ import annotations

import signal

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import monitors_pb2 as mpb
from tests.conftest import Client
from tests.helpers import create_req, up
from tests.processes import System, eventually, introspect


def http_monitor(cred_id: str) -> mpb.Monitor:
    req = mpb.HttpRequest(method="GET", url="https://shop.example/")
    req.authentication.basic_credential_id = cred_id
    return mpb.Monitor(
        name="m", frequency_minutes=1, location_ids=["loc-a"], enabled=True, http=mpb.HttpScript(requests=[req])
    )


async def test_restart_kill_and_flush_with_real_processes(system: System, system_admin: Client) -> None:
    await system_admin.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id="loc-a")))
    await system_admin.AddEngine(mpb.AddEngineRequest(location_id="loc-a", engine_id="e1"))
    pair = (await system_admin.CreateCredential(create_req("pair", up("alice", "pw-1")))).credential.id
    m = (await system_admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=http_monitor(pair)))).monitor
    worker, port = await system.start_worker("loc-a", "e1")

    async def holds(monitors: set[str], credential_version: int | None = None) -> bool:
        doc = await introspect(port)
        if set(doc["monitors"]) != monitors:
            return False
        return credential_version is None or doc["credentials"].get(pair) == credential_version

    await eventually(lambda: holds({m.id}))
    first = await introspect(port)

    # the worker killed and restarted: a full sync from nothing
    await worker.stop(signal.SIGKILL)
    worker, port = await system.start_worker("loc-a", "e1")
    await eventually(lambda: holds({m.id}))
    assert (await introspect(port))["credentials"] == first["credentials"]

    # the vault SIGKILLed mid-stream: the worker keeps its configs while it is gone ...
    vault = system.procs[0]
    await vault.stop(signal.SIGKILL)

    async def disconnected() -> bool:
        return not (await introspect(port))["connected"]

    await eventually(disconnected)
    during = await introspect(port)
    assert set(during["monitors"]) == {m.id}
    assert not during["connected"]
    # ... and converges once a vault is back, with a change made meanwhile
    old_version = during["credentials"][pair]
    vault = await system.start_vault()
    await system_admin.OverwriteCredential(cpb.OverwriteCredentialRequest(id=pair, contents=up("alice", "pw-2")))

    async def newer() -> bool:
        doc = await introspect(port)
        return bool(doc["connected"]) and doc["credentials"].get(pair, old_version) != old_version

    await eventually(newer)

    # disabled: the worker holds no trace of the monitor or its credential
    await system_admin.SetMonitorEnabled(mpb.SetMonitorEnabledRequest(id=m.id, enabled=False))
    await eventually(lambda: holds(set()))
    assert (await introspect(port))["credentials"] == {}
    # no secret in the worker's logs
    assert not any("pw-1" in line or "pw-2" in line for line in worker.lines)
    assert await worker.stop(signal.SIGTERM) == 0
    # every engine disconnect above ended cleanly in the vault (no stray tasks, no errors)
    assert await vault.stop(signal.SIGTERM) == 0
    errors = [line for line in vault.lines if " ERROR " in line or "Task was destroyed" in line]
    assert errors == [], errors
