"""How ``credvault serve`` runs: its event loop (uvloop by default: the same asyncio API on libuv, with cheaper
scheduling and socket I/O than the standard loop; ``event_loop = asyncio`` for the standard one), and the garbage
collector tuned for a long-running server once it is up."""

from __future__ import annotations

import gc

from credvault.event_loop import run

__all__ = ["GC_THRESHOLDS", "run", "tune_gc_for_serving"]

# Young collections every 20,000 net allocations instead of 700: a call's short-lived objects mostly die before
# one runs. The objects made while starting are frozen, so that no collection walks them again.
GC_THRESHOLDS = (20_000, 20, 20)


def tune_gc_for_serving() -> None:
    """Call once everything the process keeps has been made."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
