"""The closed-loop measurement of bench/credentials_api.py, which every system under test goes through, and the
payload they all carry."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

from _processes import note, percentile

USERNAME_CHARS = 20
PASSWORD_CHARS = 40
Op = Callable[[int, int], Awaitable[None]]


def payload(n: int) -> tuple[str, str]:
    """A username of 20 and a password of 40 characters; varies with n so that nothing dedupes or caches."""
    return f"user-{n:015d}"[-USERNAME_CHARS:], f"pw-{n:012d}-{'x' * PASSWORD_CHARS}"[:PASSWORD_CHARS]


@dataclasses.dataclass
class PhaseResult:
    ops: int
    seconds: float
    latencies: list[float]
    errors: int
    first_error: str | None

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        out: dict[str, Any] = {
            "ops_s": round(self.ops / self.seconds, 1),
            "p50_ms": round(percentile(lat, 0.50) * 1000, 3),
            "p99_ms": round(percentile(lat, 0.99) * 1000, 3),
            "ops": self.ops,
        }
        if self.errors:
            out["errors"] = self.errors
            out["first_error"] = self.first_error
        return out


async def run_phase(label: str, op: Op, concurrency: int, warmup: float, seconds: float) -> dict[str, Any]:
    """Closed loop: ``concurrency`` workers call ``op(worker, n)`` back to back. Calls that start during the warm-up
    are not counted; throughput is the number of calls started within the window and finished, per second."""
    latencies: list[float] = []
    errors = 0
    first_error: str | None = None
    begin = time.perf_counter() + warmup
    end = begin + seconds

    async def worker(w: int) -> None:
        nonlocal errors, first_error
        n = 0
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                return
            try:
                await op(w, n)
            except Exception as exc:
                if t0 >= begin:
                    errors += 1
                    first_error = first_error or f"{type(exc).__name__}: {exc}"[:300]
                if errors > 1000 and not latencies:
                    raise RuntimeError(f"{label}: every call fails: {first_error}") from exc
            else:
                if t0 >= begin:
                    latencies.append(time.perf_counter() - t0)
            n += 1

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    result = PhaseResult(len(latencies), seconds, latencies, errors, first_error).summary()
    if not latencies:
        raise RuntimeError(f"{label}: no call succeeded: {first_error}")
    extra = f", {errors} errors (first: {first_error})" if errors else ""
    note(
        f"  {label:<28} {result['ops_s']:>9.1f} ops/s  p50 {result['p50_ms']:>7.2f} ms"
        f"  p99 {result['p99_ms']:>7.2f} ms{extra}"
    )
    return result
