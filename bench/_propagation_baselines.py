"""The baselines of bench/propagation.py: (a) one PostgreSQL commit (INSERT + NOTIFY) delivered to a LISTENing
connection; (b) a bare grpc.aio fan-out over mutual TLS to W subscribers (bench/_propagation_fanout.py processes)."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import random
import sys
import time
from typing import Any

import asyncpg
import grpc
from _harness import child_env
from _processes import Resources, note, poll_until, stop_children, summary_ms

from tests.local_pki import LocalPki

BENCH_DIR = pathlib.Path(__file__).resolve().parent


# --- baseline (a): commit + NOTIFY -------------------------------------------------------------------------------

NOTIFY_CHANNEL = "bench_propagation"
NOTIFY_TABLE = """
CREATE TABLE IF NOT EXISTS bench_notify_log (
    revision      bigserial PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    kind          text NOT NULL,
    object_id     text NOT NULL,
    location_ids  text[] NOT NULL
)
"""


async def baseline_notify(db_url: str, rounds: int, warmup: int) -> dict[str, Any]:
    """One connection LISTENs; another runs BEGIN; INSERT (a change-log-sized row); NOTIFY; COMMIT. Time from
    before BEGIN, and from COMMIT's return, to the notification's arrival at the listener."""
    loop = asyncio.get_running_loop()
    listener = await asyncpg.connect(db_url)
    notifier = await asyncpg.connect(db_url)
    waiting: dict[str, asyncio.Future[float]] = {}

    def on_notification(conn: object, pid: int, channel: str, payload: str) -> None:
        fut = waiting.pop(payload, None)
        if fut is not None and not fut.done():
            fut.set_result(time.perf_counter())

    try:
        await notifier.execute(NOTIFY_TABLE)
        await listener.add_listener(NOTIFY_CHANNEL, on_notification)
        total: list[float] = []
        after_commit: list[float] = []
        commit: list[float] = []
        for i in range(warmup + rounds):
            key = str(i)
            fut: asyncio.Future[float] = loop.create_future()
            waiting[key] = fut
            t0 = time.perf_counter()
            async with notifier.transaction():
                await notifier.execute(
                    "INSERT INTO bench_notify_log (kind, object_id, location_ids) VALUES ($1, $2, $3)",
                    "credential",
                    f"CREDENTIALS_VAULT-{i:016X}",
                    ["bench"],
                )
                await notifier.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, key)
            t_commit = time.perf_counter()
            delivered = await asyncio.wait_for(fut, 10)
            if i >= warmup:
                total.append(delivered - t0)
                after_commit.append(delivered - t_commit)
                commit.append(t_commit - t0)
            await asyncio.sleep(random.uniform(0.002, 0.006))
        await listener.remove_listener(NOTIFY_CHANNEL, on_notification)
        await notifier.execute("DROP TABLE bench_notify_log")
    finally:
        await listener.close()
        await notifier.close()
    return {
        "what": "BEGIN; INSERT change-log row; SELECT pg_notify(); COMMIT on one connection, LISTEN on another "
        "(asyncpg, both in the bench process); timed from before BEGIN to the listener's callback",
        "commit_and_delivery": summary_ms(total),
        "commit_only": summary_ms(commit),
        "delivery_after_commit_returned": summary_ms(after_commit),
        "warmup_rounds_discarded": warmup,
    }


# --- baseline (b): bare grpc.aio mTLS fan-out --------------------------------------------------------------------


class FanoutServer:
    """/bench.Fanout/Subscribe: one bidirectional stream per subscriber, with an outbox (queue) each, like the vault's
    engine streams. A round writes one message to every stream and ends when every subscriber has answered it."""

    def __init__(self, message_bytes: int) -> None:
        self.message_bytes = message_bytes
        self.outboxes: list[asyncio.Queue[bytes | None]] = []
        self.changed = asyncio.Event()
        self.round = -1
        self.acked = 0
        self.all_acked = asyncio.Event()
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self, p: LocalPki) -> None:
        handler = grpc.method_handlers_generic_handler(
            "bench.Fanout",
            {
                "Subscribe": grpc.stream_stream_rpc_method_handler(
                    self._subscribe, request_deserializer=None, response_serializer=None
                )
            },
        )
        # The engine port's transport options (vault_service.server._start_engine_port).
        server = grpc.aio.server(
            options=[
                ("grpc.keepalive_time_ms", 10_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
            ]
        )
        server.add_generic_rpc_handlers((handler,))
        creds = grpc.ssl_server_credentials(
            [(p.server_key.read_bytes(), p.server_pem.read_bytes())],
            root_certificates=p.engine_ca_pem.read_bytes(),
            require_client_auth=True,
        )
        self.port = server.add_secure_port("127.0.0.1:0", creds)
        await server.start()
        self.server = server

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(1)
            self.server = None

    async def _subscribe(self, request_iterator: Any, context: Any) -> None:
        hello = await context.read()
        if hello is grpc.aio.EOF:
            return
        outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.outboxes.append(outbox)
        self.changed.set()

        async def read_acks() -> None:
            while True:
                message = await context.read()
                if message is grpc.aio.EOF:
                    return
                if int.from_bytes(message[:8], "big") == self.round:
                    self.acked += 1
                    if self.acked >= len(self.outboxes):
                        self.all_acked.set()

        reader = asyncio.create_task(read_acks())
        try:
            while (item := await outbox.get()) is not None:
                await context.write(item)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            self.outboxes.remove(outbox)
            self.changed.set()

    async def wait_subscribers(self, count: int, limit_s: float) -> None:
        async def loop() -> None:
            while len(self.outboxes) < count:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), limit_s)

    async def one_round(self, n: int) -> float:
        self.round = n
        self.acked = 0
        self.all_acked.clear()
        message = n.to_bytes(8, "big") + b"x" * (self.message_bytes - 8)
        t0 = time.perf_counter()
        for outbox in self.outboxes:
            outbox.put_nowait(message)
        await asyncio.wait_for(self.all_acked.wait(), 30)
        return time.perf_counter() - t0

    def end_streams(self) -> None:
        for outbox in self.outboxes:
            outbox.put_nowait(None)


async def baseline_fanout(
    res: Resources, p: LocalPki, widths: list[int], rounds: int, warmup: int, message_bytes: int, processes: int
) -> dict[str, Any]:
    server = FanoutServer(message_bytes)
    await server.start(p)
    out: dict[str, Any] = {
        "what": f"grpc.aio server in the bench process writes one {message_bytes}-byte message to W bidirectional "
        "mutual-TLS streams (one outbox task each); each subscriber answers with 8 bytes on its stream; timed until "
        "all W answered",
        "message_bytes": message_bytes,
        "subscriber_layout": (
            "one process per subscriber"
            if processes <= 0
            else f"W subscribers spread over min(W, {processes}) processes, one channel and TCP/TLS connection each"
        ),
        "by_w": {},
    }
    cert, key = p.engine_files("fanout", "subscriber")
    helper = str(BENCH_DIR / "_propagation_fanout.py")
    try:
        for width in widths:
            nproc = width if processes <= 0 else min(width, processes)
            counts = [width // nproc + (1 if i < width % nproc else 0) for i in range(nproc)]
            children = []
            first = 0
            for i, count in enumerate(counts):
                argv = [sys.executable, helper, "--target", f"127.0.0.1:{server.port}", "--count", str(count)]
                argv += ["--first-index", str(first), "--cert", str(cert), "--key", str(key)]
                argv += ["--ca", str(p.server_ca_pem)]
                log = res.root / f"fanout-w{width}-{i}.log"
                children.append(res.spawn(f"fan-out subscriber {i} (W={width})", argv, child_env(), log))
                first += count
            try:
                await server.wait_subscribers(width, 60)
            except TimeoutError:
                tails = "\n".join(c.log_text()[-1000:] for c in children)
                raise RuntimeError(
                    f"fan-out W={width}: only {len(server.outboxes)} subscribers connected\n{tails}"
                ) from None
            times = []
            for n in range(warmup + rounds):
                dt = await server.one_round(n)
                if n >= warmup:
                    times.append(dt)
                await asyncio.sleep(random.uniform(0.002, 0.006))
            server.end_streams()
            await poll_until(lambda children=children: not any(c.alive() for c in children), 15)
            await stop_children(res, children)
            out["by_w"][str(width)] = {**summary_ms(times), "subscriber_processes": nproc}
            note(
                f"  fan-out W={width:<3} p50 {out['by_w'][str(width)]['p50_ms']:7.2f} ms"
                f"  p99 {out['by_w'][str(width)]['p99_ms']:7.2f} ms ({nproc} subscriber processes)"
            )
    finally:
        server.end_streams()
        await server.stop()
    out["warmup_rounds_discarded"] = warmup
    return out
