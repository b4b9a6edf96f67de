"""What the benches' helper servers (bench/_grpc_echo_server.py, bench/_http_target.py) share: they announce their
port on stdout and serve until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal


async def announce_and_wait(port: int) -> None:
    """Print ``PORT <port>`` (what the bench reads or waits for in the log), then return on SIGTERM or SIGINT."""
    print(f"PORT {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
