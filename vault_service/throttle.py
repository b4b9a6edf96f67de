"""Folding repeated events that must not flood a log or the audit log: per key, at most one report per interval,
carrying how many events there were since the key's previous report (nothing is dropped, only folded)."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Throttle(Generic[K]):
    """``count(key)`` for each event; it says when to report, for which key, and how many events the report stands
    for.

    At most ``max_keys`` keys are tracked: when they are all in use, a new key counts under ``overflow`` (so a
    caller who invents keys, say from many source addresses, cannot grow this or the reports without bound).
    Events of a key that never occurs again after its last report stay unreported."""

    def __init__(
        self, interval: float, overflow: K, *, max_keys: int = 1000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self._overflow = overflow
        self._max_keys = max_keys
        self._clock = clock
        self._reported_at: dict[K, float] = {}
        self._pending: dict[K, int] = {}

    def count(self, key: K) -> tuple[K, int] | None:
        """Counts one event of ``key``: the key to report (``key``, or the overflow key) and the number of events to
        report now (this one and those folded since that key's last report); None while the key's interval since
        that report has not passed."""
        now = self._clock()
        if key not in self._reported_at:
            key = self._room_for(key, now)
        pending = self._pending.get(key, 0) + 1
        last = self._reported_at.get(key)
        if last is not None and now - last < self.interval:
            self._pending[key] = pending
            return None
        self._reported_at[key] = now
        self._pending.pop(key, None)
        return key, pending

    def _room_for(self, key: K, now: float) -> K:
        """``key`` if it can be tracked (forgetting keys whose interval is over and that have nothing pending),
        else the overflow key."""
        if len(self._reported_at) < self._max_keys:
            return key
        for old, at in list(self._reported_at.items()):
            if now - at >= self.interval and old not in self._pending and old != self._overflow:
                del self._reported_at[old]
        return key if len(self._reported_at) < self._max_keys else self._overflow
