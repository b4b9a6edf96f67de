"""A wire probe of the engine port for the push tests: an engine client that records every batch as the vault sent
it, applying batches as a worker would.

It stands in for the worker only where a test needs what the real worker cannot be made to do: see each batch and
removal reason as sent (the exact difference on reconnect), reject a version on demand, stall without reading, stay
silent, report forged or hostile results, present a chosen certificate or none. What an engine ends up holding is
tested with the real worker: its stream and store in-process (tests/real_engine.py) and as processes
(tests/processes.py)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc

from credvault.v1 import engine_pb2 as epb
from credvault.v1 import engine_pb2_grpc as egrpc
from vault_service import pki


class EngineClient:
    """Opens a stream with a certificate and keeps what it receives (``batches``, ``removals``), applying batches like a
    worker would; ``reject`` holds ids to NACK."""

    def __init__(self, port: int, server_ca_pem: bytes, cert: pki.IssuedCertificate | None) -> None:
        creds = grpc.ssl_channel_credentials(
            root_certificates=server_ca_pem,
            private_key=cert.key_pem if cert else None,
            certificate_chain=cert.chain_pem if cert else None,
        )
        self.channel = grpc.aio.secure_channel(f"localhost:{port}", creds)
        self.monitors: dict[str, epb.MonitorResource] = {}
        self.credentials: dict[str, epb.CredentialResource] = {}
        self.batches: list[epb.ConfigBatch] = []
        self.removals: list[epb.Removal] = []
        self.synced = asyncio.Event()
        self.sync_revision = 0
        self.changed = asyncio.Event()
        self.error: grpc.aio.AioRpcError | None = None
        self._outgoing: asyncio.Queue[epb.StreamRequest | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.reject: set[str] = set()

    def held(self) -> list[epb.HeldResource]:
        return [
            *(
                epb.HeldResource(kind=epb.RESOURCE_KIND_MONITOR, id=i, version=m.version)
                for i, m in self.monitors.items()
            ),
            *(
                epb.HeldResource(kind=epb.RESOURCE_KIND_CREDENTIAL, id=i, version=c.version)
                for i, c in self.credentials.items()
            ),
        ]

    def start(self, location: str, engine: str) -> None:
        self._task = asyncio.ensure_future(self._run(location, engine))

    async def _write(self, call: Any) -> None:
        """Sends what the client queues. A write after the vault ended the call fails; the call's status (read by
        _run) says why, so the failure itself is not the result (with a request iterator, grpc would report such
        a late write as INTERNAL instead of the vault's status)."""
        while (msg := await self._outgoing.get()) is not None:
            try:
                await call.write(msg)
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
                return

    async def _run(self, location: str, engine: str) -> None:
        stub = egrpc.EngineConfigServiceStub(self.channel)
        call = stub.Stream(None)
        writer: asyncio.Future[None] | None = None
        try:
            await call.write(
                epb.StreamRequest(hello=epb.Hello(location_id=location, engine_id=engine, held=self.held()))
            )
            writer = asyncio.ensure_future(self._write(call))
            async for resp in call:
                if resp.HasField("batch"):
                    self._apply(resp.batch)
                elif resp.HasField("heartbeat"):
                    await self._outgoing.put(epb.StreamRequest(heartbeat=epb.Heartbeat(sent_unix_ms=1)))
                elif resp.HasField("sync_complete"):
                    self.sync_revision = resp.sync_complete.revision
                    self.synced.set()
                    self.changed.set()
                    await self._outgoing.put(epb.StreamRequest(ack=epb.Ack(revision=self.sync_revision)))
        except grpc.aio.AioRpcError as exc:
            self.error = exc
        finally:
            if writer is not None:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
            self.changed.set()

    def _apply(self, batch: epb.ConfigBatch) -> None:
        self.batches.append(batch)
        rejected = []
        for c in batch.credentials:
            self.credentials[c.id] = c
        for m in batch.monitors:
            if m.id in self.reject:
                rejected.append(epb.Rejection(monitor_id=m.id, version=m.version, reason="cannot run this"))
                continue
            assert all(cid in self.credentials for cid in m.monitor.credential_ids), "credential sent after monitor"
            self.monitors[m.id] = m
        for r in batch.removals:
            self.removals.append(r)
            (self.monitors if r.kind == epb.RESOURCE_KIND_MONITOR else self.credentials).pop(r.id, None)
        self._outgoing.put_nowait(epb.StreamRequest(ack=epb.Ack(revision=batch.revision, rejected=rejected)))
        self.changed.set()

    def send(self, message: epb.StreamRequest) -> None:
        self._outgoing.put_nowait(message)

    async def wait_until(self, predicate: Any, within: float = 15.0) -> None:
        async def loop() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), within)

    async def close(self) -> None:
        await self._outgoing.put(None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await self._task
        await self.channel.close(None)
