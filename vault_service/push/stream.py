"""The engine stream, transport only: identify the engine by its client certificate, take its Hello, send the
difference to what it holds, then relay its location's deltas from its outbox, with heartbeats. It computes nothing
itself (``LocationState`` computes what to send; ``HeldCheck`` compares what the engine reports holding with it) and
touches no database (``EngineSessions`` records connections, ACKs and results)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from credvault.identity import EngineIdentity, identity_from_certificate
from credvault.v1 import engine_pb2 as epb
from credvault.v1 import engine_pb2_grpc as egrpc
from vault_service.push.engine_sessions import EngineSessions, Rejections
from vault_service.push.follower import ChangeFollower
from vault_service.push.held_check import HeldCheck
from vault_service.push.location_state import LocationState, PushTimer
from vault_service.push.outbox import Outbox, OutboxOverflow, batch_of, chunks, ordered_items
from vault_service.storage.changes import Change

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]
CHUNK = 500  # resources per batch in the initial sync (messages stay far below the size limit)


@dataclasses.dataclass
class EnginePortSettings:
    trust_domain: str
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
        sessions: EngineSessions,
        follower: ChangeFollower,
        settings: EnginePortSettings,
        observe_push_latency: Callable[[float], None] = lambda seconds: None,
        count_divergence: Callable[[str], None] = lambda location_id: None,
    ) -> None:
        self.sessions = sessions
        self._follower = follower
        self._settings = settings
        self._observe_push_latency = observe_push_latency
        self._count_divergence = count_divergence
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
        rejected = await self.sessions.admitted(*key)
        if rejected is None:
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
                await self.sessions.disconnected(*key)

    async def _serve(
        self,
        context: Context,
        requests: Any,
        live: _Live,
        state: LocationState,
        outbox: Outbox,
        hello: epb.Hello,
        rejected: Rejections,
    ) -> None:
        loc, eng = live.identity.location_id, live.identity.engine_id
        reasons = await self.sessions.removal_reasons(loc, state.gone_monitors(hello.held))
        # what the engine must be sent, computed with no await after it: it matches state.revision exactly
        revision = state.revision
        items = ordered_items(state.diff(hello.held, rejected, reasons))  # apply order
        for chunk in chunks(items, CHUNK):
            await self._send(context, live, epb.StreamResponse(batch=batch_of(revision, chunk)))
        await self._send(context, live, epb.StreamResponse(sync_complete=epb.SyncComplete(revision=revision)))
        await self.sessions.connected(loc, eng)
        log.info("engine %s/%s synced at revision %d", loc, eng, revision)

        last_heard = time.monotonic()
        push_timer = PushTimer(state, revision, self._observe_push_latency)
        check = HeldCheck(
            f"{loc}/{eng}",
            state,
            outbox,
            rejected,
            revision,
            interval=self._settings.heartbeat_seconds,
            on_divergence=lambda: self._count_divergence(loc),
            on_unanswered=lambda: live.cut_with(
                grpc.StatusCode.ABORTED, "what the engine holds differs from what it should hold; reconnect"
            ),
        )

        async def read_acks() -> None:
            nonlocal last_heard
            async for msg in requests:
                last_heard = time.monotonic()
                which = msg.WhichOneof("message")
                if which == "ack":
                    self.sessions.acked(loc, eng, msg.ack, rejected)
                    push_timer.acked(msg.ack.revision)
                    outbox.acked(msg.ack.revision)
                    if msg.ack.HasField("held"):
                        check.reported(msg.ack.held)
                elif which == "heartbeat":
                    if msg.heartbeat.HasField("held"):
                        check.reported(msg.heartbeat.held)
                elif which == "results":
                    self.sessions.reported(loc, eng, list(msg.results.results), state.secret_values)
                elif which == "hello":  # the engine's answer to a ResyncRequest: what it holds
                    held = list(msg.hello.held)
                    check.answered(held, await self.sessions.removal_reasons(loc, check.gone_monitors(held)))

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
        self, context: Context, outbox: Outbox, rejected: Rejections, last_heard: Callable[[], float]
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
                if isinstance(batch, epb.ResyncRequest):
                    message = epb.StreamResponse(resync=batch)
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
            # re-check: only a revoked engine is told it is refused
            if await self.sessions.admitted(live.identity.location_id, live.identity.engine_id) is not None:
                ended = _Ended(grpc.StatusCode.ABORTED, "stream closed; reconnect")
            else:  # tell it to drop everything (it flushes on the refusal anyway), then refuse
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        context.write(epb.StreamResponse(batch=batch_of(state.revision, state.revocation()))), 1.0
                    )
        log.info("engine %s/%s: stream ended: %s", live.identity.location_id, live.identity.engine_id, ended.reason)
        await context.abort(ended.code, ended.reason)


async def _first_of(within: float, *futures: asyncio.Future[Any]) -> set[asyncio.Future[Any]]:
    """Wait for the first of ``futures`` (or the timeout); the others are cancelled, also when we are."""
    try:
        done, _ = await asyncio.wait(futures, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for f in futures:
            if not f.done():
                f.cancel()
                # A cancelled grpc write may still end with its own error (the stream went away meanwhile): nobody
                # waits for it any more, so take its outcome here rather than log it as never retrieved.
                f.add_done_callback(_discard_outcome)
    return done


def _discard_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _skip_rejected(batch: epb.ConfigBatch, rejected: Rejections) -> None:
    """Never re-send a version the engine rejected; a newer version clears the rejection."""
    keep = []
    for m in batch.monitors:
        if rejected.get(m.id, (None,))[0] == m.version:
            continue
        rejected.pop(m.id, None)
        keep.append(m)
    del batch.monitors[:]
    batch.monitors.extend(keep)
