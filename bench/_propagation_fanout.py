"""Subscribers of the bare gRPC fan-out baseline of bench/propagation.py (not run on its own).

Opens --count bidirectional streams to /bench.Fanout/Subscribe over mutual TLS, each on its own channel and TCP
connection (a local subchannel pool per channel), like one engine worker each; sends one hello per stream, then
answers every message the server writes with its first 8 bytes (the round number) on the same stream: the ACK. Exits
when the server has ended every stream, or on SIGTERM/SIGINT. Prints ``CONNECTED <n>`` on stdout once all streams
are open.

    python bench/_propagation_fanout.py --target 127.0.0.1:50099 --count 25 --cert c.pem --key c.key --ca ca.pem
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import pathlib
import signal
import sys

import grpc

PATH = "/bench.Fanout/Subscribe"
ACK_BYTES = 8


async def subscriber(target: str, credentials: grpc.ChannelCredentials, index: int, opened: asyncio.Queue[int]) -> None:
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.keepalive_time_ms", 20_000)]
    async with grpc.aio.secure_channel(target, credentials, options=options) as channel:
        call = channel.stream_stream(PATH, request_serializer=None, response_deserializer=None)()
        await call.write(b"hello %d" % index)
        opened.put_nowait(index)
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                return
            await call.write(bytes(message[:ACK_BYTES]))


async def run(ns: argparse.Namespace) -> None:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ns.ca.read_bytes(), private_key=ns.key.read_bytes(), certificate_chain=ns.cert.read_bytes()
    )
    opened: asyncio.Queue[int] = asyncio.Queue()
    tasks = [
        asyncio.create_task(subscriber(ns.target, credentials, ns.first_index + i, opened)) for i in range(ns.count)
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def announce() -> None:
        for _ in range(ns.count):
            await opened.get()
        print(f"CONNECTED {ns.count}", flush=True)

    announcer = asyncio.create_task(announce())
    stopper = asyncio.create_task(stop.wait())
    everything = asyncio.gather(*tasks)
    try:
        await asyncio.wait({everything, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (*tasks, announcer, stopper):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await everything
    if everything.done() and not everything.cancelled() and everything.exception() is not None:
        error = everything.exception()
        print(f"subscriber failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        sys.exit(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True, help="host:port of the fan-out server")
    p.add_argument("--count", type=int, required=True, help="streams (subscribers) in this process")
    p.add_argument("--first-index", type=int, default=0, help="number of the first subscriber (for its hello)")
    p.add_argument("--cert", type=pathlib.Path, required=True, help="client certificate chain PEM")
    p.add_argument("--key", type=pathlib.Path, required=True, help="client private key PEM")
    p.add_argument("--ca", type=pathlib.Path, required=True, help="CA PEM of the server certificate")
    ns = p.parse_args()
    try:
        asyncio.run(run(ns))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
