"""How long the engine waits before it connects to the vault again."""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    """Exponential backoff with full jitter: attempt n waits ``rng() * min(cap, base * 2**n)``."""

    def __init__(self, base: float, cap: float, rng: Callable[[], float] = random.random) -> None:
        self._base = base
        self._cap = cap
        self._rng = rng
        self._attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self._cap, self._base * (1 << min(self._attempt, 62)))
        self._attempt += 1
        return self._rng() * ceiling

    def reset(self) -> None:
        self._attempt = 0
