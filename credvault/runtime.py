"""How a long-running credvault process (the vault's ``serve``, the engine worker) runs: its event loop (uvloop by
default: the same asyncio API on libuv, with cheaper scheduling and socket I/O than the standard loop; or asyncio's
own), and the garbage collector tuned once it is up."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any

__all__ = ["EVENT_LOOPS", "GC_THRESHOLDS", "run", "tune_gc_for_serving"]

EVENT_LOOPS = ("uvloop", "asyncio")
# Young collections every 20,000 net allocations instead of 700: a call's (an execution's) short-lived objects mostly
# die before one runs. The objects made while starting are frozen, so that no collection walks them again.
GC_THRESHOLDS = (20_000, 20, 20)


def run(main: Coroutine[Any, Any, None], event_loop: str) -> None:
    if event_loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


def tune_gc_for_serving() -> None:
    """Call once everything the process keeps has been made."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
