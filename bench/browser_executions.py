"""Browser monitor executions per minute and CPU per execution of the worker's browser executor, next to a bare
Playwright loop doing the same steps with the same browser in the same run, and the memory of 20 open contexts.
Prints JSON.

In one process (the executor is what an engine worker runs; the stream and scheduler add nothing per execution that
matters next to a browser): a page server on loopback (tests/browser_pages.py) and the worker's BrowserRuntime over
the distribution's Chromium. The clickpath has 3 events: type a token into the form, click send, check the text
of the page it lands on. Both sides run it ``--executions`` times at a concurrency of ``--concurrency`` (default 2,
the CPU count of the machine it was written on), each execution in a fresh context.

CPU is the whole process tree's (this process, Playwright's driver, Chromium and its helpers: /proc stat of each
descendant, summed before and after; processes that ended in between are missed, so the figure is a lower bound
for both sides alike). Memory with 20 contexts: 20 contexts open at once, each on the form page, the tree's summed
PSS (and RSS, which counts shared pages in every process).

    python bench/browser_executions.py            # 60 executions a side
    python bench/browser_executions.py --quick    # 20 a side
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from credvault.v1 import monitors_pb2 as mpb
from tests.browser_monitors import (
    TOKEN,
    BrowserEngine,
    browser_monitor,
    click,
    shows,
    token,
    typed,
)
from tests.browser_pages import Pages

SECRET = "bench-token-value"
_TICKS = os.sysconf("SC_CLK_TCK")


def _tree(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [root], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def tree_cpu() -> float:
    """CPU seconds (user + system) of this process and its living descendants."""
    total = 0
    for pid in _tree(os.getpid()):
        try:
            fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def tree_memory_mib() -> dict[str, float]:
    """The tree's summed PSS (shared pages split among their processes: what the tree costs the machine) and RSS
    (shared pages counted in each process: an upper bound)."""
    totals = {"pss": 0, "rss": 0}
    for pid in _tree(os.getpid()):
        try:
            lines = pathlib.Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            key, _, value = line.partition(":")
            if key.lower() in totals:
                totals[key.lower()] += int(value.split()[0])
    return {k: v / 1024 for k, v in totals.items()}


async def timed(n: int, concurrency: int, one: Any) -> dict[str, float]:
    slots = asyncio.Semaphore(concurrency)

    async def guarded() -> None:
        async with slots:
            await one()

    cpu, wall = tree_cpu(), time.perf_counter()
    await asyncio.gather(*(guarded() for _ in range(n)))
    wall, cpu = time.perf_counter() - wall, tree_cpu() - cpu
    return {"executions": n, "per_minute": n / wall * 60, "cpu_ms_per_execution": cpu / n * 1000, "seconds": wall}


async def main(ns: argparse.Namespace) -> dict[str, Any]:
    pages = Pages(token=SECRET)
    await pages.start()
    engine = BrowserEngine()
    engine.executor._slots = asyncio.Semaphore(ns.concurrency)  # the bench's concurrency, not the default
    monitor = browser_monitor(
        "SYNTHETIC_TEST-00000000000000AB",
        pages.url("/token-form"),
        typed("#tok", TOKEN),
        click("#send"),
        mpb.BrowserEvent(navigate_url=pages.url("/field"), validation=[shows("Type here:")]),
    )
    engine.push(token(SECRET), monitor)
    held = engine.store.monitor(monitor.id)
    assert held is not None
    browser = await engine.runtime._current()

    async def executor() -> None:
        result = await engine.executor.execute(held)
        assert result.status == mpb.EXECUTION_STATUS_SUCCESS, result.failure_reason

    async def bare() -> None:
        context = await browser.new_context()
        try:
            page = await context.new_page()
            await page.goto(pages.url("/token-form"))
            await page.locator("#tok").first.fill("")
            await page.locator("#tok").first.press_sequentially(SECRET)
            await page.locator("#send").first.click()
            await page.wait_for_load_state("load")
            await page.goto(pages.url("/field"))
            assert "Type here:" in await page.locator("body").inner_text()
        finally:
            await context.close()

    try:
        await timed(ns.concurrency * 2, ns.concurrency, bare)  # warm-up: the browser's first pages
        await timed(ns.concurrency * 2, ns.concurrency, executor)
        rounds = []
        for _ in range(ns.rounds):  # interleaved, so that machine noise hits both
            rounds.append(
                (await timed(ns.executions, ns.concurrency, executor), await timed(ns.executions, ns.concurrency, bare))
            )
        contexts = [await browser.new_context() for _ in range(20)]
        for context in contexts:
            await (await context.new_page()).goto(pages.url("/token-form"))
        memory_20 = tree_memory_mib()
        for context in contexts:
            await context.close()
    finally:
        await engine.close()
        await pages.stop()
    best_executor = max((r[0] for r in rounds), key=lambda r: r["per_minute"])
    best_bare = max((r[1] for r in rounds), key=lambda r: r["per_minute"])
    return {
        "clickpath": "3 events: type a token, click send, navigate and check a text",
        "concurrency": ns.concurrency,
        "cpus": os.cpu_count(),
        "executor": best_executor,
        "bare_playwright": best_bare,
        "ratio_per_minute": best_executor["per_minute"] / best_bare["per_minute"],
        "ratio_cpu": best_bare["cpu_ms_per_execution"] / best_executor["cpu_ms_per_execution"],
        "rounds": [{"executor": e, "bare_playwright": b} for e, b in rounds],
        "memory_mib_with_20_contexts": memory_20,
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="20 executions a side, 2 rounds")
    p.add_argument("--executions", type=int, default=60)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=2)
    args = p.parse_args()
    if args.quick:
        args.executions, args.rounds = 20, 2
    print(json.dumps(asyncio.run(main(args)), indent=2))
