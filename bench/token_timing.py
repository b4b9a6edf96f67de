"""Timing of token verification failures: an unknown public id vs a wrong secret for a known id.

Both must take the same path (tests/test_tokens.py proves it by counting the hash and constant-time comparison
calls); this script measures the wall-clock side, which does not belong in a test on a noisy machine. Prints JSON.

    python bench/token_timing.py [--database-url URL] [--samples 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
import uuid

import asyncpg

from vault_service.bootstrap import bootstrap_admin
from vault_service.errors import Unauthenticated
from vault_service.storage.migrate import migrate
from vault_service.storage.pool import Store
from vault_service.tokens import TokenService, new_token


async def _measure(service: TokenService, header: str) -> float:
    start = time.perf_counter_ns()
    try:
        await service.authenticate(header)
    except Unauthenticated:
        pass
    else:
        raise AssertionError("a bad token was accepted")
    return (time.perf_counter_ns() - start) / 1000.0


async def run(base_url: str, samples: int) -> dict[str, object]:
    name = f"bench_tokens_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(base_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = base_url.rsplit("/", 1)[0] + "/" + name
    try:
        store = await Store.connect(url, min_size=1, max_size=2)
        try:
            async with store.pool.acquire() as conn:
                await migrate(conn)
            issued = await bootstrap_admin(store, "admin")
            service = TokenService(store)
            known_id = issued.info.id
            wrong_secret = f"Api-Token {known_id}.{'A' * 64}"
            unknown = f"Api-Token {new_token()[1]}"
            cases = {"unknown_id": unknown, "wrong_secret": wrong_secret}
            times: dict[str, list[float]] = {k: [] for k in cases}
            order = list(cases) * samples
            random.shuffle(order)  # interleaved, so drift and noise hit both alike
            for kind in order:
                times[kind].append(await _measure(service, cases[kind]))
        finally:
            await store.close()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
    out: dict[str, object] = {}
    for kind, values in times.items():
        values.sort()
        out[kind] = {
            "samples": len(values),
            "p50_us": round(statistics.median(values), 1),
            "p90_us": round(values[int(len(values) * 0.9)], 1),
            "mean_us": round(statistics.fmean(values), 1),
        }
    p50 = {k: statistics.median(v) for k, v in times.items()}
    out["p50_ratio_wrong_secret_vs_unknown_id"] = round(p50["wrong_secret"] / p50["unknown_id"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--samples", type=int, default=4000)
    ns = parser.parse_args()
    result = asyncio.run(run(ns.database_url, ns.samples))
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
