"""The engine stream: identify the engine by its client certificate, send the difference to what it holds, then
relay its location's deltas from its outbox. It computes nothing itself (``LocationState`` does)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from credvault.v1 import engine_pb2 as epb
from credvault.v1 import engine_pb2_grpc as egrpc
from vault_service.pki import EngineIdentity, identity_from_certificate
from vault_service.push.ack_recorder import AckRecorder
from vault_service.push.follower import ChangeFollower
from vault_service.push.location_state import CREDENTIAL, MONITOR, LocationState, PushTimer, removal_reason
from vault_service.push.outbox import Outbox, OutboxOverflow, batch_of, chunks, ordered_items
from vault_service.results import ResultService
from vault_service.storage.monitor_queries import Change
from vault_service.storage.store import Store

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]
CHUNK = 500  # resources per batch in the initial sync (messages stay far below the size limit)


@dataclasses.dataclass
class StreamSettings:
    trust_domain: str
    replica_id: str
    heartbeat_seconds: float = 10.0
    outbox_max: int = 20_000
    hello_timeout_seconds: float = 10.0


class _Live:
    """A connected engine's stream, which anything may cut (revocation, replacement, outbox overflow)."""

    def __init__(self, identity: EngineIdentity) -> None:
        self.identity = identity
        self.cut = asyncio.Event()
        self.cut_code = grpc.StatusCode.ABORTED
        self.cut_reason = ""

    def cut_with(self, code: grpc.StatusCode, reason: str) -> None:
        if not self.cut.is_set():
            self.cut_code, self.cut_reason = code, reason
            self.cut.set()


class _Ended(Exception):
    """The stream must end: the status to end it with."""

    def __init__(self, code: grpc.StatusCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class EngineStreamServicer(egrpc.EngineConfigServiceServicer):
    def __init__(
        self,
        store: Store,
        follower: ChangeFollower,
        settings: StreamSettings,
        results: ResultService,
        observe_push_latency: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        self._store = store
        self._results = results
        self._follower = follower
        self._settings = settings
        self._observe_push_latency = observe_push_latency
        self.acks = AckRecorder(store)
        self._live: dict[tuple[str, str], _Live] = {}
        follower.on_engine_change = self._engine_changed

    # --- identity -------------------------------------------------------------------------------------------------

    def _identity(self, context: Context) -> EngineIdentity | None:
        auth = context.auth_context()
        pems = list(auth.get("x509_pem_cert") or [])
        if not pems:
            return None
        try:
            return identity_from_certificate(pems[0], self._settings.trust_domain)
        except ValueError:
            return None

    def _engine_changed(self, change: Change) -> None:
        """An engine was revoked (object 'loc/engine') or a location deleted ('loc/*'): cut matching streams now;
        the stream re-checks the database before it ends."""
        location_id, _, engine_id = change.object_id.partition("/")
        for (loc, eng), live in list(self._live.items()):
            if loc == location_id and engine_id in ("*", eng):
                live.cut_with(grpc.StatusCode.PERMISSION_DENIED, "this engine was revoked")

    async def flush(self) -> None:
        """Writes what ACKs and results are still queued (before the pool closes)."""
        await self.acks.flush()
        await self._results.flush()

    def close_streams(self, reason: str) -> None:
        """On shutdown: end every stream with UNAVAILABLE, so its engine reconnects (to another replica)."""
        for live in list(self._live.values()):
            live.cut_with(grpc.StatusCode.UNAVAILABLE, reason)

    # --- the stream -----------------------------------------------------------------------------------------------

    async def Stream(self, request_iterator: Any, context: Context) -> None:  # type: ignore[override]
        identity = self._identity(context)
        if identity is None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "a client certificate with an engine identity is required"
            )
            return
        try:
            first = await asyncio.wait_for(anext(request_iterator, None), self._settings.hello_timeout_seconds)
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no Hello received")
            return
        if first is None or not first.HasField("hello"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be Hello")
            return
        hello = first.hello
        if (hello.location_id, hello.engine_id) != (identity.location_id, identity.engine_id):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this certificate is for location {identity.location_id!r}, engine {identity.engine_id!r}",
            )
            return
        key = (identity.location_id, identity.engine_id)
        async with self._store.read() as tx:
            row = await tx.get_engine_state(*key)
        if row is None or row.revoked_at is not None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "this engine is not registered or is revoked")
            return
        previous = self._live.get(key)
        if previous is not None:
            previous.cut_with(grpc.StatusCode.ABORTED, "replaced by a newer connection of the same engine")
        live = _Live(identity)
        self._live[key] = live
        outbox = Outbox(
            self._settings.outbox_max,
            CHUNK,
            on_overflow=lambda: live.cut_with(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "the engine fell too far behind; reconnect to resync"
            ),
        )
        rejected = {r["monitor_id"]: (int(r["version"]), str(r["reason"])) for r in row.rejected}
        try:
            state = await self._follower.subscribe(identity.location_id, outbox)
            try:
                await self._serve(context, request_iterator, live, state, outbox, hello, rejected)
            except _Ended as ended:
                await self._end(context, live, ended, state)
            finally:
                self._follower.unsubscribe(identity.location_id, outbox)
        finally:
            if self._live.get(key) is live:
                del self._live[key]
                async with self._store.read() as tx:
                    await tx.engine_connected(*key, None)

    async def _serve(
        self,
        context: Context,
        requests: Any,
        live: _Live,
        state: LocationState,
        outbox: Outbox,
        hello: epb.Hello,
        rejected: dict[str, tuple[int, str]],
    ) -> None:
        loc, eng = live.identity.location_id, live.identity.engine_id
        # the snapshot: copy now, before any await, so it matches state.revision exactly
        revision = state.revision
        monitors = dict(state.monitors)
        credentials = dict(state.credentials)
        for batch in await self._initial_batches(hello, revision, monitors, credentials, rejected):
            await self._send(context, live, epb.StreamResponse(batch=batch))
        await self._send(context, live, epb.StreamResponse(sync_complete=epb.SyncComplete(revision=revision)))
        async with self._store.read() as tx:
            await tx.engine_connected(loc, eng, self._settings.replica_id)
        log.info("engine %s/%s synced at revision %d", loc, eng, revision)

        last_heard = time.monotonic()
        push_timer = PushTimer(state, revision, self._observe_push_latency)

        async def read_acks() -> None:
            nonlocal last_heard
            async for msg in requests:
                last_heard = time.monotonic()
                if msg.HasField("ack"):
                    self._record_ack(loc, eng, msg.ack, rejected)
                    push_timer.acked(msg.ack.revision)
                elif msg.HasField("results"):
                    self._results.submit(loc, eng, list(msg.results.results), state.secret_values)  # in the background

        # Three tasks for the stream's life, none per message: the relay of the outbox, the reader of the engine's
        # ACKs, and the cut. The first to end ends the stream.
        reader = asyncio.create_task(read_acks())
        relay = asyncio.create_task(self._relay(context, outbox, rejected, lambda: last_heard))
        cut = asyncio.create_task(live.cut.wait())
        try:
            done, _ = await asyncio.wait((reader, relay, cut), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, relay, cut):
                task.cancel()
            await asyncio.gather(reader, relay, cut, return_exceptions=True)
        if cut in done:
            raise _Ended(live.cut_code, live.cut_reason)
        if relay in done:
            relay.result()  # it ends only by raising _Ended
        log.info("engine %s/%s closed its stream", loc, eng)

    async def _relay(
        self, context: Context, outbox: Outbox, rejected: dict[str, tuple[int, str]], last_heard: Callable[[], float]
    ) -> None:
        """Writes each batch the outbox hands out, and a heartbeat when it has had none for a heartbeat interval.
        Raises _Ended when the engine has been silent for three intervals, stops reading, or the outbox overflows."""
        hb = self._settings.heartbeat_seconds
        while True:
            message: epb.StreamResponse
            try:
                async with asyncio.timeout(hb):
                    batch = await outbox.take()
            except TimeoutError:
                if time.monotonic() - last_heard() > 3 * hb:
                    raise _Ended(grpc.StatusCode.UNAVAILABLE, "no heartbeat from the engine") from None
                message = epb.StreamResponse(heartbeat=epb.Heartbeat(sent_unix_ms=int(time.time() * 1000)))
            except OutboxOverflow as exc:
                raise _Ended(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
            else:
                _skip_rejected(batch, rejected)
                message = epb.StreamResponse(batch=batch)
            try:
                async with asyncio.timeout(3 * hb):  # flow control never frees when the engine stops reading
                    await context.write(message)
            except TimeoutError:
                raise _Ended(grpc.StatusCode.UNAVAILABLE, "the engine stopped reading") from None

    async def _send(self, context: Context, live: _Live, message: epb.StreamResponse) -> None:
        """Write, unless the stream is cut meanwhile or the engine stops reading (flow control never frees)."""
        write = asyncio.ensure_future(context.write(message))
        cut = asyncio.ensure_future(live.cut.wait())
        done = await _first_of(3 * self._settings.heartbeat_seconds, write, cut)
        if write in done:
            write.result()
            return
        if cut in done:
            raise _Ended(live.cut_code, live.cut_reason)
        raise _Ended(grpc.StatusCode.UNAVAILABLE, "the engine stopped reading")

    async def _end(self, context: Context, live: _Live, ended: _Ended, state: LocationState) -> None:
        if ended.code == grpc.StatusCode.PERMISSION_DENIED:
            async with self._store.read() as tx:  # re-check: only a revoked engine is told it is refused
                row = await tx.get_engine_state(live.identity.location_id, live.identity.engine_id)
            if row is not None and row.revoked_at is None:
                ended = _Ended(grpc.StatusCode.ABORTED, "stream closed; reconnect")
            else:  # tell it to drop everything (it flushes on the refusal anyway), then refuse
                removals = [
                    *(
                        epb.Removal(kind=MONITOR, id=i, reason=epb.REMOVAL_REASON_ENGINE_REVOKED)
                        for i in state.monitors
                    ),
                    *(
                        epb.Removal(kind=CREDENTIAL, id=i, reason=epb.REMOVAL_REASON_ENGINE_REVOKED)
                        for i in state.credentials
                    ),
                ]
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        context.write(epb.StreamResponse(batch=batch_of(state.revision, removals))), 1.0
                    )
        log.info("engine %s/%s: stream ended: %s", live.identity.location_id, live.identity.engine_id, ended.reason)
        await context.abort(ended.code, ended.reason)

    async def _initial_batches(
        self,
        hello: epb.Hello,
        revision: int,
        monitors: dict[str, epb.MonitorResource],
        credentials: dict[str, epb.CredentialResource],
        rejected: dict[str, tuple[int, str]],
    ) -> list[epb.ConfigBatch]:
        """Exactly the difference between what the engine holds and what it should hold."""
        held_monitors = {h.id: h.version for h in hello.held if h.kind == MONITOR}
        held_creds = {h.id: h.version for h in hello.held if h.kind == CREDENTIAL}
        items: list[Any] = []
        items += [c for cid, c in credentials.items() if held_creds.get(cid) != c.version]
        items += [
            m
            for mid, m in monitors.items()
            if held_monitors.get(mid) != m.version and rejected.get(mid, (None,))[0] != m.version
        ]
        gone = [mid for mid in held_monitors if mid not in monitors]
        if gone:
            async with self._store.read() as tx:
                current = await tx.monitors_by_id(gone)
            location_id = hello.location_id
            items += [
                epb.Removal(kind=MONITOR, id=mid, reason=removal_reason(current.get(mid), location_id))  # type: ignore[arg-type]
                for mid in gone
            ]
        items += [
            epb.Removal(kind=CREDENTIAL, id=cid, reason=epb.REMOVAL_REASON_UNREFERENCED)
            for cid in held_creds
            if cid not in credentials
        ]
        flat = ordered_items(items)  # apply order: credentials, monitors, removals
        return [batch_of(revision, chunk) for chunk in chunks(flat, CHUNK)]

    def _record_ack(self, loc: str, eng: str, ack: epb.Ack, rejected: dict[str, tuple[int, str]]) -> None:
        for r in ack.rejected:
            rejected[r.monitor_id] = (r.version, r.reason[:500])
        listed = [{"monitor_id": m, "version": v, "reason": why} for m, (v, why) in sorted(rejected.items())]
        self.acks.record(loc, eng, ack.revision, listed)


async def _first_of(within: float, *futures: asyncio.Future[Any]) -> set[asyncio.Future[Any]]:
    """Wait for the first of ``futures`` (or the timeout); the others are cancelled, also when we are."""
    try:
        done, _ = await asyncio.wait(futures, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for f in futures:
            if not f.done():
                f.cancel()
    return done


def _skip_rejected(batch: epb.ConfigBatch, rejected: dict[str, tuple[int, str]]) -> None:
    """Never re-send a version the engine rejected; a newer version clears the rejection."""
    keep = []
    for m in batch.monitors:
        if rejected.get(m.id, (None,))[0] == m.version:
            continue
        rejected.pop(m.id, None)
        keep.append(m)
    del batch.monitors[:]
    batch.monitors.extend(keep)
