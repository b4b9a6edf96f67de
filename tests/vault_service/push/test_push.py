"""The push: monitors and the credentials they use reach the engines of their locations over mutual TLS, on create
and update; removals say why; engines of other locations see nothing; refused identities are refused."""

from __future__ import annotations

import asyncio
import pathlib
import shutil
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import grpc
import pytest

from credvault.identity import EngineIdentity
from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import engine_pb2 as epb
from credvault.v1 import engine_pb2_grpc as egrpc
from credvault.v1 import monitors_pb2 as mpb
from tests.conftest import Client, Connect, with_engine_port
from tests.helpers import create_req, token, up
from tests.local_pki import TRUST_DOMAIN, LocalPki
from tests.push_helpers import EngineClient
from tests.real_engine import RealEngine, real_engine, secret_buffer
from vault_service import pki
from vault_service.config import Settings
from vault_service.crypto import Keyring
from vault_service.server import RunningVault, start_vault


def status(client: EngineClient) -> grpc.StatusCode | None:
    return client.error.code() if client.error is not None else None


async def setup(admin: Client, *locations: str) -> None:
    for loc in locations:
        await admin.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id=loc)))
        await admin.AddEngine(mpb.AddEngineRequest(location_id=loc, engine_id="e1"))
        await admin.AddEngine(mpb.AddEngineRequest(location_id=loc, engine_id="e2"))


def monitor(cred_id: str, *locations: str, token_id: str = "") -> mpb.Monitor:
    req = mpb.HttpRequest(method="GET", url="https://shop.example/")
    req.authentication.basic_credential_id = cred_id
    if token_id:
        req.headers.add(name="Authorization", value=f"Bearer {{{{{token_id}}}}}")
    return mpb.Monitor(
        name="m", frequency_minutes=1, location_ids=list(locations), enabled=True, http=mpb.HttpScript(requests=[req])
    )


async def test_create_overwrite_disable_delete_propagate(admin_client: Client, connect: Connect) -> None:
    admin = admin_client
    await setup(admin, "loc-a", "loc-b")
    e1, e2 = await connect("loc-a", "e1"), await connect("loc-a", "e2")
    other = await connect("loc-b", "e1")
    assert not e1.monitors
    pair = (await admin.CreateCredential(create_req("pair", up("alice", "pw-1")))).credential.id
    tok = (await admin.CreateCredential(create_req("tok", token("t-1")))).credential.id
    unused = (await admin.CreateCredential(create_req("unused", up("x", "never-sent")))).credential.id
    m = (await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=monitor(pair, "loc-a", token_id=tok)))).monitor

    for e in (e1, e2):
        await e.wait_until(lambda e=e: m.id in e.monitors)
        assert e.monitors[m.id].version == m.revision  # the protocol's version is the revision
        assert e.credentials[pair].details.username_password.password == "pw-1"
        assert e.credentials[tok].details.token.token == "t-1"
        assert set(e.credentials) == {pair, tok}  # only what its monitors reference
    # overwrite the credential: one credential message, no monitor message
    sent_before = len(e1.batches)
    await admin.OverwriteCredential(cpb.OverwriteCredentialRequest(id=pair, contents=up("alice", "pw-2")))
    for e in (e1, e2):
        await e.wait_until(lambda e=e: e.credentials[pair].details.username_password.password == "pw-2")

    # the engines acknowledged: no lag behind their location's head
    async def caught_up() -> list[mpb.Engine]:
        while True:
            engines = (await admin.ListEngines(mpb.ListEnginesRequest(location_id="loc-a"))).engines
            if all(e.applied_revision > 0 and e.lag == 0 for e in engines):
                return list(engines)
            await asyncio.sleep(0.05)

    engines = await asyncio.wait_for(caught_up(), 10)
    assert all(e.connected and e.HasField("connected_since") for e in engines)
    new_batches = e1.batches[sent_before:]
    assert [len(b.monitors) for b in new_batches] == [0] * len(new_batches)
    assert sum(len(b.credentials) for b in new_batches) == 1
    # disable: removed with its credentials, reason DISABLED
    await admin.SetMonitorEnabled(mpb.SetMonitorEnabledRequest(id=m.id, enabled=False))
    for e in (e1, e2):
        await e.wait_until(lambda e=e: not e.monitors and not e.credentials)
        reasons = {(r.id, r.reason) for r in e.removals}
        assert (m.id, epb.REMOVAL_REASON_DISABLED) in reasons
    # re-enable, then delete the credential: monitor inactive -> removed (CREDENTIAL_DELETED)
    await admin.SetMonitorEnabled(mpb.SetMonitorEnabledRequest(id=m.id, enabled=True))
    await e1.wait_until(lambda: m.id in e1.monitors)
    await admin.DeleteCredential(cpb.DeleteCredentialRequest(id=pair))
    await e1.wait_until(lambda: m.id not in e1.monitors and pair not in e1.credentials)
    assert (m.id, epb.REMOVAL_REASON_CREDENTIAL_DELETED) in {(r.id, r.reason) for r in e1.removals}
    # the engine of the other location never received anything
    assert (other.batches, other.monitors, other.credentials) == ([], {}, {})
    for e in (e1, e2, other):
        for b in e.batches:
            assert unused not in {c.id for c in b.credentials}
            assert b"never-sent" not in b.SerializeToString()


async def test_the_real_engine_holds_each_step_and_wipes_what_it_drops(
    admin_client: Client, push_vault: RunningVault, local_pki: LocalPki
) -> None:
    """The same lifecycle as above, seen from the worker's own stream and store instead of the wire: what the engine
    holds, with the resolved secret, at every step; a disabled monitor's credential wiped from its memory."""
    admin = admin_client
    await setup(admin, "loc-a")
    async with real_engine(push_vault.engine_port, local_pki, "loc-a", "e1") as engine:
        store = engine.store
        pair = (await admin.CreateCredential(create_req("pair", up("alice", "pw-1")))).credential.id
        m = (await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=monitor(pair, "loc-a")))).monitor
        await engine.wait_until(lambda: store.monitor(m.id) is not None and store.credential(pair) is not None)
        held = store.credential(pair)
        assert held is not None
        assert held.details().username_password.password == "pw-1"
        first_buffer = secret_buffer(held)

        await admin.OverwriteCredential(cpb.OverwriteCredentialRequest(id=pair, contents=up("alice", "pw-2")))
        await engine.wait_until(lambda: (c := store.credential(pair)) is not None and c.version > held.version)
        now = store.credential(pair)
        assert now is not None
        assert now.details().username_password.password == "pw-2"
        assert not any(first_buffer)  # the old version's secret was wiped when it was replaced

        second_buffer = secret_buffer(now)
        await admin.SetMonitorEnabled(mpb.SetMonitorEnabledRequest(id=m.id, enabled=False))
        await engine.wait_until(lambda: store.monitor(m.id) is None and store.credential(pair) is None)
        assert not any(second_buffer)

        await admin.SetMonitorEnabled(mpb.SetMonitorEnabledRequest(id=m.id, enabled=True))
        await engine.wait_until(lambda: store.monitor(m.id) is not None)
        await admin.DeleteCredential(cpb.DeleteCredentialRequest(id=pair))
        await engine.wait_until(lambda: store.monitor(m.id) is None and store.credential(pair) is None)
        assert engine.holds() == {"monitors": {}, "credentials": {}}


async def test_reconnect_gets_exactly_the_difference(admin_client: Client, connect: Connect) -> None:
    admin = admin_client
    await setup(admin, "loc-a")
    pair = (await admin.CreateCredential(create_req("pair", up("alice", "pw-1")))).credential.id
    kept = (await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=monitor(pair, "loc-a")))).monitor
    gone = (await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=monitor(pair, "loc-a")))).monitor
    e1 = await connect("loc-a", "e1")
    assert set(e1.monitors) == {kept.id, gone.id}
    await e1.close()
    await admin.DeleteMonitor(mpb.DeleteMonitorRequest(id=gone.id))
    added = (await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=monitor(pair, "loc-a")))).monitor
    resumed = await connect("loc-a", "e1", resume=e1)
    sent = [m.id for b in resumed.batches for m in b.monitors]
    removed = [(r.id, r.reason) for b in resumed.batches for r in b.removals]
    assert sent == [added.id]  # the held, unchanged monitor is not re-sent
    assert removed == [(gone.id, epb.REMOVAL_REASON_DELETED)]
    assert set(resumed.monitors) == {kept.id, added.id}


async def test_rejected_versions_are_not_resent(admin_client: Client, connect: Connect) -> None:
    admin = admin_client
    await setup(admin, "loc-a")
    pair = (await admin.CreateCredential(create_req("pair", up()))).credential.id
    e1 = await connect("loc-a", "e1")
    bad = monitor(pair, "loc-a")
    bad.name = "cannot run"
    m = (await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=bad))).monitor
    e1.reject = {m.id}
    await e1.wait_until(lambda: any(x.id == m.id for b in e1.batches for x in b.monitors))

    async def rejection_recorded() -> list[tuple[str, int]]:
        while True:
            engines = (await admin.ListEngines(mpb.ListEnginesRequest(location_id="loc-a"))).engines
            found = [(r.monitor_id, r.revision) for e in engines if e.engine_id == "e1" for r in e.rejected_monitors]
            if found:
                return found
            await asyncio.sleep(0.05)

    assert await asyncio.wait_for(rejection_recorded(), 30) == [(m.id, m.revision)]  # a deadline, not a bound
    # a reconnect does not get the rejected version again; the valid rest still flows
    await e1.close()
    good = (await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=monitor(pair, "loc-a")))).monitor
    resumed = await connect("loc-a", "e1", resume=e1)
    assert [x.id for b in resumed.batches for x in b.monitors] == [good.id]
    # a newer version of the rejected monitor is sent
    fixed = mpb.Monitor()
    fixed.CopyFrom(m)
    fixed.name = "fixed"
    newer = (await admin.UpdateMonitor(mpb.UpdateMonitorRequest(monitor=fixed))).monitor
    await resumed.wait_until(lambda: m.id in resumed.monitors)
    assert resumed.monitors[m.id].version == newer.revision


async def test_refused_identities(
    connect: Connect, admin_client: Client, local_pki: LocalPki, tmp_path: pathlib.Path
) -> None:
    await setup(admin_client, "loc-a", "loc-b")
    # a certificate for location X asking for location Y
    wrong = await connect("loc-b", "e1", local_pki.engine("loc-a", "e1"))
    assert status(wrong) == grpc.StatusCode.PERMISSION_DENIED
    # an engine that is not registered
    unknown = await connect("loc-a", "e9")
    assert status(unknown) == grpc.StatusCode.PERMISSION_DENIED
    # an expired certificate, a certificate of another CA, no certificate: the TLS handshake fails
    other_ca = pki.create_ca("other", trust_domain=TRUST_DOMAIN)
    foreign = pki.issue_engine_certificate(other_ca, EngineIdentity(TRUST_DOMAIN, "loc-a", "e1"))
    for cert in (local_pki.expired_engine("loc-a", "e1"), foreign):
        refused = await connect("loc-a", "e1", cert)
        assert status(refused) == grpc.StatusCode.UNAVAILABLE
    no_cert = await connect("loc-a", "e1", None)
    assert status(no_cert) == grpc.StatusCode.UNAVAILABLE


async def test_revoke_cuts_the_stream_and_refuses_it_afterwards(admin_client: Client, connect: Connect) -> None:
    await setup(admin_client, "loc-a")
    pair = (await admin_client.CreateCredential(create_req("pair", up()))).credential.id
    m = (await admin_client.CreateMonitor(mpb.CreateMonitorRequest(monitor=monitor(pair, "loc-a")))).monitor
    e1 = await connect("loc-a", "e1")
    assert e1.error is None
    assert set(e1.monitors) == {m.id}
    await admin_client.RevokeEngine(mpb.RevokeEngineRequest(location_id="loc-a", engine_id="e1"))
    await e1.wait_until(lambda: e1.error is not None)
    assert {(r.id, r.reason) for r in e1.removals} == {
        (m.id, epb.REMOVAL_REASON_ENGINE_REVOKED),
        (pair, epb.REMOVAL_REASON_ENGINE_REVOKED),
    }
    assert (e1.monitors, e1.credentials) == ({}, {})
    assert status(e1) == grpc.StatusCode.PERMISSION_DENIED
    again = await connect("loc-a", "e1")
    assert status(again) == grpc.StatusCode.PERMISSION_DENIED
    listed = (await admin_client.ListEngines(mpb.ListEnginesRequest(location_id="loc-a"))).engines
    assert [(e.engine_id, e.revoked) for e in listed] == [("e1", True), ("e2", False)]


def _holds_monitor(engine: RealEngine, monitor_id: str) -> bool:
    return engine.store.monitor(monitor_id) is not None


async def test_two_replicas_one_database(
    admin_client: Client, push_vault: RunningVault, settings: Settings, keyring: Keyring, local_pki: LocalPki
) -> None:
    """A change made through replica A reaches a real engine connected to replica B (LISTEN/NOTIFY + catch-up), and
    one connected to A."""
    await setup(admin_client, "loc-a")
    replica_b = await start_vault(with_engine_port(settings, local_pki), keyring=keyring)
    try:
        async with (
            real_engine(replica_b.engine_port, local_pki, "loc-a", "e2") as on_b,
            real_engine(push_vault.engine_port, local_pki, "loc-a", "e1") as on_a,
        ):
            pair = (await admin_client.CreateCredential(create_req("pair", up("u", "pw-1")))).credential.id
            m = (await admin_client.CreateMonitor(mpb.CreateMonitorRequest(monitor=monitor(pair, "loc-a")))).monitor
            for engine in (on_a, on_b):
                await engine.wait_until(partial(_holds_monitor, engine, m.id))
            await admin_client.OverwriteCredential(cpb.OverwriteCredentialRequest(id=pair, contents=up("u", "pw-2")))

            def holds_pw_2() -> bool:
                held = on_b.store.credential(pair)
                return held is not None and held.details().username_password.password == "pw-2"

            await on_b.wait_until(holds_pw_2)
            engines = (await admin_client.ListEngines(mpb.ListEnginesRequest(location_id="loc-a"))).engines
            assert {e.engine_id for e in engines if e.connected} == {"e1", "e2"}
    finally:
        await replica_b.stop(0)


async def test_an_engine_that_moved_to_another_replica_stays_connected_when_the_old_stream_ends(
    admin_client: Client,
    connect: Connect,
    push_vault: RunningVault,
    settings: Settings,
    keyring: Keyring,
    local_pki: LocalPki,
) -> None:
    await setup(admin_client, "loc-a")
    on_a = await connect("loc-a", "e1")
    replica_b = await start_vault(
        with_engine_port(settings, local_pki).model_copy(update={"replica_id": "replica-b"}), keyring=keyring
    )
    try:
        on_b = EngineClient(replica_b.engine_port, local_pki.server_ca.cert_pem, local_pki.engine("loc-a", "e1"))
        on_b.start("loc-a", "e1")
        await on_b.wait_until(lambda: on_b.synced.is_set())
        await on_a.close()  # the old stream ends on replica A after the engine is connected to B

        def streams_ended_on_a() -> float:
            return sum(
                sample.value
                for metric in push_vault.metrics.registry.collect()
                if metric.name == "grpc_server_handled"
                for sample in metric.samples
                if sample.name == "grpc_server_handled_total" and sample.labels["grpc_method"] == "Stream"
            )

        async def e1_connected() -> bool:
            engines = (await admin_client.ListEngines(mpb.ListEnginesRequest(location_id="loc-a"))).engines
            return any(e.engine_id == "e1" and e.connected for e in engines)

        for _ in range(200):  # the handler on A is done, its row update included
            if streams_ended_on_a() >= 1:
                break
            await asyncio.sleep(0.05)
        assert streams_ended_on_a() >= 1
        assert await e1_connected()
        await on_b.close()
    finally:
        await replica_b.stop(0)


async def test_a_stalled_engine_delays_nobody_and_is_cut_on_overflow(
    admin_client: Client, connect: Connect, push_vault: RunningVault, local_pki: LocalPki
) -> None:
    """An engine that stops reading fills only its own outbox; the other engine keeps up, and the stalled one is
    closed (RESOURCE_EXHAUSTED) once its coalesced outbox passes the bound, so it resyncs."""
    await setup(admin_client, "loc-a")
    healthy = await connect("loc-a", "e1")
    e2 = local_pki.engine("loc-a", "e2")
    creds = grpc.ssl_channel_credentials(
        root_certificates=local_pki.server_ca.cert_pem, private_key=e2.key_pem, certificate_chain=e2.chain_pem
    )
    # no window growth: the vault's writes to this engine block once 64 KiB are unread
    small_window = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 65536)]
    async with grpc.aio.secure_channel(f"localhost:{push_vault.engine_port}", creds, options=small_window) as ch:

        async def hello_then_heartbeats() -> AsyncIterator[epb.StreamRequest]:
            yield epb.StreamRequest(hello=epb.Hello(location_id="loc-a", engine_id="e2"))
            while True:  # alive, but it never reads what the vault sends
                await asyncio.sleep(0.3)
                yield epb.StreamRequest(heartbeat=epb.Heartbeat())

        stalled = egrpc.EngineConfigServiceStub(ch).Stream(hello_then_heartbeats())
        pair = (await admin_client.CreateCredential(create_req("pair", up()))).credential.id
        big = monitor(pair, "loc-a")
        big.http.requests[0].body = "x" * 60_000  # fills the stalled stream's flow-control window quickly
        created = [
            (await admin_client.CreateMonitor(mpb.CreateMonitorRequest(monitor=big))).monitor.id for _ in range(120)
        ]
        await healthy.wait_until(lambda: set(created) <= set(healthy.monitors), 60)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(_drain_after(stalled, 1.0), 60)
        # cut for its overflowing outbox, or for not reading at all: either way it must reconnect and resync
        assert (info.value.code(), info.value.details()) in {
            (grpc.StatusCode.RESOURCE_EXHAUSTED, "the engine fell too far behind; reconnect to resync"),
            (grpc.StatusCode.UNAVAILABLE, "the engine stopped reading"),
        }


async def test_a_silent_engine_gets_heartbeats_then_is_cut(
    admin_client: Client, push_vault: RunningVault, local_pki: LocalPki
) -> None:
    """An engine that sends Hello and then nothing: the vault sends heartbeats (one per interval, 1 s here) and ends
    the stream (UNAVAILABLE) once it has heard nothing for three intervals."""
    await setup(admin_client, "loc-a")
    e1 = local_pki.engine("loc-a", "e1")
    creds = grpc.ssl_channel_credentials(
        root_certificates=local_pki.server_ca.cert_pem, private_key=e1.key_pem, certificate_chain=e1.chain_pem
    )
    async with grpc.aio.secure_channel(f"localhost:{push_vault.engine_port}", creds) as ch:
        call = egrpc.EngineConfigServiceStub(ch).Stream(None)
        await call.write(epb.StreamRequest(hello=epb.Hello(location_id="loc-a", engine_id="e1")))
        kinds: list[str] = []

        async def read_until_ended() -> None:
            while True:
                message = await call.read()
                assert isinstance(message, epb.StreamResponse), kinds  # not EOF: the stream must end with a status
                kinds.append(str(message.WhichOneof("message")))

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(read_until_ended(), 30)
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.UNAVAILABLE, "no heartbeat from the engine")
    assert kinds[0] == "sync_complete"
    assert kinds.count("heartbeat") >= 2, kinds


async def _drain_after(call: Any, delay: float) -> None:
    """Start reading only after ``delay`` (the vault must have cut the stream by then)."""
    await asyncio.sleep(delay)
    async for _ in call:
        pass


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not on PATH")
async def test_engine_port_negotiates_tls13(
    push_vault: RunningVault, local_pki: LocalPki, tmp_path: pathlib.Path
) -> None:
    pem, key = pki.write_files(tmp_path, "engine", local_pki.engine("loc-a", "e1"))
    proc = await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-connect", f"127.0.0.1:{push_vault.engine_port}", "-cert", str(pem), "-key", str(key),
        "-CAfile", str(local_pki.directory / "server-ca.pem"), "-verify_return_error", "-alpn", "h2", "-brief",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    out = (stdout + stderr).decode(errors="replace")  # the server may already have sent HTTP/2 bytes
    assert "Protocol version: TLSv1.3" in out, out
    assert "Verification: OK" in out, out


async def test_a_write_abandoned_by_a_cut_leaves_no_unretrieved_error() -> None:
    """A grpc write that is cancelled but still ends with its own error (the stream went away) must not surface as
    "Task exception was never retrieved" in the vault's log."""
    import gc

    from vault_service.push.stream import _first_of

    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))

    async def write_failing_on_cancel() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise RuntimeError("the stream went away") from None

    write = asyncio.ensure_future(write_failing_on_cancel())
    cut = asyncio.ensure_future(asyncio.sleep(0))
    done = await _first_of(5, write, cut)
    assert done == {cut}
    await asyncio.sleep(0.01)  # the cancelled write ends with its error
    assert write.done()
    del write, cut, done
    gc.collect()
    loop.set_exception_handler(None)
    assert not [c for c in reported if "never retrieved" in str(c.get("message"))]
