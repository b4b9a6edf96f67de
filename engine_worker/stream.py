"""The connection to the vault: ``EngineConfigService.Stream`` over mutual TLS, open for as long as the engine runs.

One session: open the stream, send Hello (the engine's identity and everything it holds), then apply each ConfigBatch
to the :class:`~engine_worker.config_store.ConfigStore` and acknowledge its revision (with the rejected monitors),
acknowledge SyncComplete, and send a Heartbeat every ``heartbeat_interval``. A session is dead when the vault has sent
nothing for ``dead_after_intervals`` intervals (HTTP/2 keepalive catches a dead connection underneath as well).

Between sessions the engine waits an exponential backoff with full jitter (reset after a session that delivered
SyncComplete) and then resumes with what it holds. It keeps its configs through an outage, but once it has had no
contact with the vault for ``max_disconnected`` it flushes (wipes) everything: fail-safe. "Contact" means a session on
which the vault has sent at least one message. The fail-safe has its own timer, so the deadline holds whatever the
connection is doing; and connecting (TCP and the TLS handshake) is bounded by the dead-session limit, so a vault that
accepts connections but never answers (frozen) does not hold a session open. A vault that answers PERMISSION_DENIED
refuses this engine (for example, it was revoked): the engine flushes at once.

Logs name ids, versions, revisions, counts and reasons; never contents.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable

import grpc

from credvault.identity import EngineIdentity
from credvault.v1 import engine_pb2, engine_pb2_grpc
from engine_worker.backoff import Backoff
from engine_worker.config_store import ConfigStore
from engine_worker.result_reporter import ResultReporter
from engine_worker.stream_settings import StreamSettings, StreamState
from engine_worker.tls import ChannelFactory, ClientCertificate

__all__ = ["EngineStream", "StreamSettings", "StreamState"]

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Send = Callable[[engine_pb2.StreamRequest], Awaitable[None]]


class _StreamDead(Exception):
    pass


class _Reconnect(Exception):
    """The session ends so that the next one presents the renewed certificate: reconnect at once."""


class EngineStream:
    """The engine's side of ``EngineConfigService.Stream``. :meth:`run` until cancelled.

    Hooks for callers and tests: :attr:`synced` is set once SyncComplete has arrived on the current session (just
    before it is acknowledged; cleared when the session ends), :attr:`flushed` is set when the store was flushed
    because of the fail-safe or a refusal. ``clock``, ``sleep`` and ``rng`` replace time and randomness in tests.
    """

    def __init__(
        self,
        store: ConfigStore,
        identity: EngineIdentity,
        channel_factory: ChannelFactory,
        settings: StreamSettings | None = None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        results: ResultReporter | None = None,
        certificate: ClientCertificate | None = None,
    ) -> None:
        self._store = store
        self._results = results
        self._certificate = certificate
        self._reconnect_now = False
        self._identity = identity
        self._channel_factory = channel_factory
        self._settings = settings or StreamSettings()
        self._clock = clock
        self._sleep = sleep
        self._backoff = Backoff(self._settings.backoff_base, self._settings.backoff_cap, rng)
        self.synced = asyncio.Event()
        self.flushed = asyncio.Event()
        self._connected = False
        self._session_synced = False
        self._last_applied_revision = 0
        self._reconnects = 0
        self._flushes = 0
        self._offline_since: float | None = None
        self._flushed_this_outage = False
        self._outage_changed = asyncio.Event()  # wakes the fail-safe timer: contact began or ended
        self._last_received = 0.0
        self.results_sent = 0

    @property
    def state(self) -> StreamState:
        return StreamState(
            connected=self._connected,
            synced=self.synced.is_set(),
            last_applied_revision=self._last_applied_revision,
            reconnects=self._reconnects,
            flushes=self._flushes,
            results_sent=self.results_sent,
            certificate_not_after=self._certificate.not_after if self._certificate is not None else None,
        )

    # --- the loop --------------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connects, and reconnects, until cancelled. Never flushes on its own exit: the caller decides."""
        self._offline_since = self._clock()
        timer = asyncio.create_task(self._failsafe_timer(), name="engine-failsafe-timer")
        try:
            await self._reconnect_forever()
        finally:
            timer.cancel()
            await asyncio.wait([timer])

    async def _reconnect_forever(self) -> None:
        first = True
        while True:
            self._check_failsafe()
            if not first:
                self._reconnects += 1
            first = False
            if await self._session():
                self._backoff.reset()
            if self._reconnect_now:
                self._reconnect_now = False
                continue
            delay = self._backoff.next_delay()
            log.info("reconnecting to the vault in %.2f s", delay)
            await self._pause(delay)

    async def _pause(self, delay: float) -> None:
        """Sleeps ``delay``, waking up at the fail-safe deadline if it comes first."""
        end = self._clock() + delay
        while True:
            self._check_failsafe()
            now = self._clock()
            if now >= end:
                return
            step = end - now
            deadline = self._failsafe_deadline()
            if deadline is not None and deadline > now:
                step = min(step, deadline - now)
            await self._sleep(step)

    # --- fail-safe -------------------------------------------------------------------------------------------------

    def _failsafe_deadline(self) -> float | None:
        if self._offline_since is None or self._flushed_this_outage:
            return None
        return self._offline_since + self._settings.max_disconnected

    async def _failsafe_timer(self) -> None:
        """Flushes at the fail-safe deadline whatever the session is doing (a connect or a TLS handshake that hangs
        included). It waits on the event loop's timer for the time left on ``clock``; the checks at each step of the
        loop (pause, watchdog) flush at the same deadline, and are what a test's injected sleep drives."""
        while True:
            self._outage_changed.clear()
            self._check_failsafe()
            deadline = self._failsafe_deadline()
            remaining = None if deadline is None else max(deadline - self._clock(), 0.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outage_changed.wait(), remaining)

    def _check_failsafe(self) -> None:
        deadline = self._failsafe_deadline()
        if deadline is None or self._clock() < deadline:
            return
        self._flushed_this_outage = True
        self._flush(f"no contact with the vault for {self._settings.max_disconnected:g} s (fail-safe)")

    def _flush(self, why: str) -> None:
        count = self._store.flush()
        if count:
            self._flushes += 1
            log.warning("flushed %d held monitors and credentials: %s", count, why)
        else:
            log.info("nothing held to flush: %s", why)
        self.flushed.set()

    def _begin_contact(self) -> None:
        if not self._connected:
            self._connected = True
            self._offline_since = None
            self._flushed_this_outage = False
            self._outage_changed.set()
            log.info("connected to the vault")

    def _end_contact(self) -> None:
        self.synced.clear()
        if self._connected:
            self._connected = False
            self._offline_since = self._clock()
            self._outage_changed.set()
            log.warning("disconnected from the vault; keeping %s", self._held_summary())

    def _held_summary(self) -> str:
        return f"{self._store.monitor_count} monitors and {self._store.credential_count} credentials"

    # --- one session -----------------------------------------------------------------------------------------------

    async def _session(self) -> bool:
        """One stream, until it ends. True when it delivered SyncComplete. Never raises, except when cancelled."""
        self._session_synced = False
        try:
            channel = self._channel_factory()
        except Exception as exc:
            log.error("cannot connect to the vault: %s", exc)
            return False
        call: grpc.aio.StreamStreamCall[engine_pb2.StreamRequest, engine_pb2.StreamResponse] | None = None
        try:
            await self._until_ready(channel)
            stub = engine_pb2_grpc.EngineConfigServiceStub(channel)
            call = stub.Stream(None)
            await self._converse(call)
            log.warning("the vault closed the stream")
        except grpc.aio.AioRpcError as exc:
            log.warning("the stream to the vault failed: %s: %s", exc.code().name, exc.details())
            if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
                self._flushed_this_outage = True
                self._flush("the vault refused this engine (PERMISSION_DENIED)")
        except _StreamDead as exc:
            log.warning("the stream to the vault is dead: %s", exc)
        except _Reconnect as exc:
            log.info("connecting again: %s", exc)
            self._reconnect_now = True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("the stream to the vault failed: %s: %s", type(exc).__name__, exc)
        finally:
            if call is not None:
                call.cancel()
            await channel.close(None)
            self._end_contact()
        return self._session_synced

    async def _until_ready(self, channel: grpc.aio.Channel) -> None:
        """Until ``channel`` is ready (TCP and the TLS handshake done). A connection that fails, or that takes as
        long as a session may stay silent (a frozen vault accepts and never answers), ends the session."""
        limit = self._settings.heartbeat_interval * self._settings.dead_after_intervals

        async def ready() -> None:
            state = channel.get_state(try_to_connect=True)
            while state is not grpc.ChannelConnectivity.READY:
                if state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN):
                    raise _StreamDead(f"cannot connect ({state.name})")
                await channel.wait_for_state_change(state)
                state = channel.get_state(try_to_connect=True)

        try:
            await asyncio.wait_for(ready(), limit)
        except TimeoutError:
            raise _StreamDead(f"no connection (TCP and TLS handshake) within {limit:g} s") from None

    async def _converse(
        self, call: grpc.aio.StreamStreamCall[engine_pb2.StreamRequest, engine_pb2.StreamResponse]
    ) -> None:
        lock = asyncio.Lock()

        async def send(request: engine_pb2.StreamRequest) -> None:
            async with lock:
                await call.write(request)

        self._last_received = self._clock()
        await send(engine_pb2.StreamRequest(hello=self._hello()))
        log.info("sent hello as %s holding %s", self._identity.spiffe_uri, self._held_summary())
        tasks = [
            asyncio.create_task(self._receive(call, send), name="engine-stream-receive"),
            asyncio.create_task(self._heartbeats(send), name="engine-stream-heartbeats"),
            asyncio.create_task(self._watchdog(), name="engine-stream-watchdog"),
        ]
        if self._results is not None:
            tasks.append(asyncio.create_task(self._send_results(self._results, send), name="engine-stream-results"))
        if self._certificate is not None:
            tasks.append(asyncio.create_task(self._certificate_watch(self._certificate), name="engine-stream-cert"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:  # the first one to finish tells how the session ended
            if task in done and not task.cancelled():
                error = task.exception()
                if error is not None:
                    raise error

    def _hello(self) -> engine_pb2.Hello:
        """Who this engine is and everything it holds: opens a session, and answers the vault's ResyncRequest."""
        return engine_pb2.Hello(
            location_id=self._identity.location_id, engine_id=self._identity.engine_id, held=self._store.held()
        )

    async def _receive(
        self, call: grpc.aio.StreamStreamCall[engine_pb2.StreamRequest, engine_pb2.StreamResponse], send: Send
    ) -> None:
        while True:
            response = await call.read()
            if not isinstance(response, engine_pb2.StreamResponse):  # grpc.aio.EOF
                return
            self._last_received = self._clock()
            self._begin_contact()
            which = response.WhichOneof("message")
            if which == "batch":
                await self._apply(response.batch, send)
            elif which == "sync_complete":
                revision = response.sync_complete.revision
                self._last_applied_revision = revision
                self._session_synced = True
                self.synced.set()
                log.info("in sync with the vault at revision %d, holding %s", revision, self._held_summary())
                held = self._store.held_state(revision)
                await send(engine_pb2.StreamRequest(ack=engine_pb2.Ack(revision=revision, held=held)))
            elif which == "heartbeat":
                log.debug("heartbeat from the vault")
            elif which == "resync":
                log.warning("the vault asks what this engine holds (%s)", response.resync.reason)
                await send(engine_pb2.StreamRequest(hello=self._hello()))
            else:
                log.warning("ignored a message of unknown type from the vault")

    async def _apply(self, batch: engine_pb2.ConfigBatch, send: Send) -> None:
        rejected = self._store.apply(batch)
        self._last_applied_revision = batch.revision
        log.info(
            "applied revision %d: %d credential and %d monitor upserts, %d removals, %d rejected",
            batch.revision,
            len(batch.credentials),
            len(batch.monitors),
            len(batch.removals),
            len(rejected),
        )
        ack = engine_pb2.Ack(revision=batch.revision, rejected=rejected, held=self._held_state(batch.revision))
        await send(engine_pb2.StreamRequest(ack=ack))

    def _held_state(self, revision: int) -> engine_pb2.HeldState | None:
        """What this engine holds, for the vault's anti-entropy check; None until SyncComplete on this session: the
        batches of the initial sync all carry the sync's revision, and the set is whole only after the last one."""
        return self._store.held_state(revision) if self._session_synced else None

    async def _send_results(self, results: ResultReporter, send: Send) -> None:
        """Drains execution results onto the stream; a batch that could not be written waits for the next session."""
        while True:
            batch = await results.next_batch()
            try:
                await send(engine_pb2.StreamRequest(results=engine_pb2.ResultBatch(results=batch)))
            except BaseException:
                results.put_back(batch)
                raise
            self.results_sent += len(batch)

    async def _certificate_watch(self, certificate: ClientCertificate) -> None:
        """Ends the session when the files hold a renewed certificate (or the one in use expired)."""
        while True:
            await self._sleep(self._settings.certificate_check_interval)
            reason = certificate.renewal_due(time.time())
            if reason is not None:
                raise _Reconnect(reason)

    async def _heartbeats(self, send: Send) -> None:
        while True:
            await self._sleep(self._settings.heartbeat_interval)
            held = self._held_state(self._last_applied_revision)
            beat = engine_pb2.Heartbeat(sent_unix_ms=int(time.time() * 1000), held=held)
            await send(engine_pb2.StreamRequest(heartbeat=beat))

    async def _watchdog(self) -> None:
        interval = self._settings.heartbeat_interval
        limit = interval * self._settings.dead_after_intervals
        while True:
            self._check_failsafe()
            silent = self._clock() - self._last_received
            if silent >= limit:
                raise _StreamDead(f"nothing from the vault for {silent:.1f} s")
            step = min(interval, limit - silent)
            deadline = self._failsafe_deadline()
            if deadline is not None:
                step = max(min(step, deadline - self._clock()), 0.0)
            await self._sleep(step)
