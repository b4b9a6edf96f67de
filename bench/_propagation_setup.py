"""The data bench/propagation.py creates through the vault's API: per pair a location, its engines, a credential and
M monitors of about --monitor-bytes each as an engine receives them."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid

from _processes import note

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import credentials_pb2_grpc as cgrpc
from credvault.v1 import engine_pb2 as epb
from credvault.v1 import monitors_pb2 as mpb
from credvault.v1 import monitors_pb2_grpc as mgrpc


def up_contents(n: int) -> cpb.CredentialContents:
    return cpb.CredentialContents(
        username_password=cpb.UsernamePassword(username="bench-user", password=f"pw-{n:08d}-{uuid.uuid4().hex}")
    )


def monitor_definition(location: str, credential_id: str, i: int, padding: int) -> mpb.Monitor:
    req = mpb.HttpRequest(
        description=f"bench request {i}",
        method="POST",
        # The workers execute what they hold: an hourly monitor against a closed loopback port fails fast and
        # cheaply (10,000 monitors x 50 workers: ~140 executions/s in all, reported to the vault as results).
        url=f"https://127.0.0.1:9/api/bench/{location}/{i:06d}",
        headers=[
            mpb.Header(name="Accept", value="application/json"),
            mpb.Header(name="X-Bench-Padding", value="p" * max(0, padding)),
        ],
        body=f'{{"probe": "login", "sku": "{i:06d}"}}',
        follow_redirects=True,
        timeout_ms=10_000,
        validation=[mpb.ValidationRule(status_code_in=mpb.StatusCodes(codes=[200, 204]))],
    )
    req.authentication.basic_credential_id = credential_id
    return mpb.Monitor(
        name=f"bench {location} {i:05d}",
        frequency_minutes=60,
        location_ids=[location],
        enabled=True,
        http=mpb.HttpScript(requests=[req]),
    )


def padding_for(location: str, credential_id: str, target_bytes: int) -> int:
    """Padding that makes the MonitorResource about ``target_bytes``, with what the vault adds (id, version, type,
    credential ids, timestamps) filled in locally."""
    probe = monitor_definition(location, credential_id, 0, 0)
    probe.id = "SYNTHETIC_TEST-0123456789ABCDEF"
    probe.version = 100
    probe.revision = 100_000
    probe.type = mpb.MONITOR_TYPE_HTTP
    probe.credential_ids.append(credential_id)
    probe.create_time.GetCurrentTime()
    probe.update_time.GetCurrentTime()
    base = resource_bytes(probe)
    padding = max(0, target_bytes - base - 2)
    probe.http.requests[0].headers[1].value = "p" * padding
    return max(0, padding + target_bytes - resource_bytes(probe))


def resource_bytes(m: mpb.Monitor) -> int:
    """Size of the monitor as an engine receives it: a MonitorResource (id, version, the Monitor)."""
    return epb.MonitorResource(id=m.id, version=m.revision, monitor=m).ByteSize()


@dataclasses.dataclass
class PairSetup:
    location: str
    credential_id: str
    monitor_ids: list[str]
    monitor_bytes: list[int]
    create_seconds: float


async def set_up_pair(
    mon: mgrpc.MonitorsServiceAsyncStub,
    creds: cgrpc.CredentialsServiceAsyncStub,
    md: tuple[tuple[str, str], ...],
    location: str,
    engines: list[str],
    monitors: int,
    target_bytes: int,
    concurrency: int,
) -> PairSetup:
    await mon.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id=location, name=location)), metadata=md)
    for e in engines:
        await mon.AddEngine(mpb.AddEngineRequest(location_id=location, engine_id=e), metadata=md)
    cred = (
        await creds.CreateCredential(
            cpb.CreateCredentialRequest(
                name=f"{location}-login", scopes=[cpb.CREDENTIAL_SCOPE_SYNTHETIC], contents=up_contents(0)
            ),
            metadata=md,
        )
    ).credential
    ids: list[str] = []
    sizes: list[int] = []
    t0 = time.perf_counter()
    if monitors:
        # Padding so that the MonitorResource is about target_bytes: estimated locally, corrected after the first.
        guess = padding_for(location, cred.id, target_bytes)
        first = (
            await mon.CreateMonitor(
                mpb.CreateMonitorRequest(monitor=monitor_definition(location, cred.id, 0, guess)), metadata=md
            )
        ).monitor
        ids.append(first.id)
        sizes.append(resource_bytes(first))
        padding = guess + (target_bytes - sizes[0])
        next_index = 1
        lock = asyncio.Lock()

        async def creator() -> None:
            nonlocal next_index
            while True:
                async with lock:
                    i = next_index
                    next_index += 1
                if i >= monitors:
                    return
                m = (
                    await mon.CreateMonitor(
                        mpb.CreateMonitorRequest(monitor=monitor_definition(location, cred.id, i, padding)),
                        metadata=md,
                    )
                ).monitor
                ids.append(m.id)
                sizes.append(resource_bytes(m))
                if len(ids) % 2000 == 0:
                    note(f"    {len(ids)}/{monitors} monitors created")

        await asyncio.gather(*(creator() for _ in range(min(concurrency, monitors))))
    return PairSetup(location, cred.id, ids, sizes, time.perf_counter() - t0)


def credential_push_bytes() -> int:
    """Size of the message an overwrite pushes to each engine: a StreamResponse with one resolved credential."""
    cred = epb.CredentialResource(id="CREDENTIALS_VAULT-0123456789ABCDEF", version=123456)
    cred.details.username_password.CopyFrom(up_contents(1).username_password)
    return epb.StreamResponse(batch=epb.ConfigBatch(revision=123456, credentials=[cred])).ByteSize()
