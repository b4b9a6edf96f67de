"""The event loop a credvault process runs on: uvloop by default (the same asyncio API on libuv, with cheaper
scheduling and socket I/O than the standard loop), or asyncio's own. Shared by the vault and the engine worker."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

__all__ = ["EVENT_LOOPS", "run"]

EVENT_LOOPS = ("uvloop", "asyncio")


def run(main: Coroutine[Any, Any, None], event_loop: str) -> None:
    if event_loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)
