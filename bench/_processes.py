"""Real processes for the bench scripts: children with logs and cleanup, a ``credvault serve`` with its engine port on
a throwaway database and ``engine-worker`` processes (on the tests' PKI and launch spec), the figures' summaries, and
the scripts' main (run_bench, run_script)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import pathlib
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import grpc
from _harness import Database, child_env, free_port, venv_bin

from tests.local_pki import LocalPki
from tests.processes import (
    API_LISTENING,
    ENGINE_PORT_LISTENING,
    STATUS_LISTENING,
    VAULT_MODULE_ARGV,
    WORKER_MODULE_ARGV,
    vault_environment,
    worker_arguments,
)
from vault_service.bootstrap import migrate_and_bootstrap
from vault_service.crypto import new_keyring


def note(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (with fewer than 100 samples, p99 is the maximum)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summary_ms(seconds: list[float]) -> dict[str, Any]:
    if not seconds:
        return {"n": 0}
    return {
        "n": len(seconds),
        "p50_ms": round(percentile(seconds, 0.50) * 1000, 3),
        "p99_ms": round(percentile(seconds, 0.99) * 1000, 3),
        "min_ms": round(min(seconds) * 1000, 3),
        "max_ms": round(max(seconds) * 1000, 3),
        "mean_ms": round(statistics.fmean(seconds) * 1000, 3),
    }


@dataclasses.dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: pathlib.Path
    started: float  # time.perf_counter() just before the spawn

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


class Resources:
    """Child processes, temporary files and cleanups, undone at most once (also from a signal-interrupted run)."""

    def __init__(self, keep: bool, name: str = "bench") -> None:
        self.keep = keep
        self.root = pathlib.Path(tempfile.mkdtemp(prefix=f"credvault-{name}-"))
        self.children: list[Child] = []
        self._cleanups: list[tuple[str, Callable[[], None]]] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str], log: pathlib.Path) -> Child:
        with log.open("wb") as out:
            started = time.perf_counter()
            # Own session: a Ctrl-C in the terminal reaches only this script, which stops the children itself.
            proc = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        child = Child(name, proc, log, started)
        self.children.append(child)
        return child

    def on_close(self, name: str, fn: Callable[[], None]) -> None:
        self._cleanups.append((name, fn))

    def forget(self, children: Iterable[Child]) -> None:
        gone = {id(c) for c in children}
        self.children = [c for c in self.children if id(c) not in gone]

    def stop_sync(self, children: list[Child], grace: float = 15.0) -> None:
        """SIGTERM all at once, wait up to ``grace`` seconds in total, then SIGKILL what is left."""
        for c in children:
            if c.alive():
                with contextlib.suppress(ProcessLookupError):
                    c.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for c in children:
            try:
                c.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                note(f"{c.name} (pid {c.pid}) ignored SIGTERM; killing it")
                c.proc.kill()
                c.proc.wait()
            if c.proc.stdout is not None:
                c.proc.stdout.close()
        self.forget(children)

    def close(self) -> None:
        self.stop_sync(list(reversed(self.children)))
        while self._cleanups:
            name, fn = self._cleanups.pop()
            try:
                fn()
            except Exception as exc:
                note(f"cleanup of {name} failed: {type(exc).__name__}: {exc}")
        if self.keep:
            note(f"kept {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)


async def stop_children(res: Resources, children: list[Child], grace: float = 15.0) -> None:
    """The asynchronous form of Resources.stop_sync: SIGTERM all, poll until gone, SIGKILL after ``grace``."""
    for c in children:
        if c.alive():
            with contextlib.suppress(ProcessLookupError):
                c.proc.send_signal(signal.SIGTERM)
    await poll_until(lambda: not any(c.alive() for c in children), grace)
    res.stop_sync(children, grace=5.0)  # kills stragglers, reaps, forgets


async def poll_until(done: Callable[[], bool], limit_s: float, step_s: float = 0.05) -> bool:
    """Check ``done`` every ``step_s`` (for conditions nothing signals, like a child's exit); False on time-out."""
    for _ in range(max(1, math.ceil(limit_s / step_s))):
        if done():
            return True
        await asyncio.sleep(step_s)
    return done()


async def wait_for_log(child: Child, pattern: str, limit_s: float) -> re.Match[str]:
    regex = re.compile(pattern, re.MULTILINE)
    deadline = time.monotonic() + limit_s
    while True:
        text = child.log_text()
        m = regex.search(text)
        if m:
            return m
        if not child.alive() or time.monotonic() > deadline:
            why = f"exited with {child.proc.returncode}" if not child.alive() else f"not ready after {limit_s:g} s"
            raise RuntimeError(f"{child.name} {why}; log tail:\n{text[-3000:]}")
        await asyncio.sleep(0.05)


@dataclasses.dataclass
class Vault:
    child: Child
    api_port: int
    engine_port: int
    token: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Api-Token {self.token}"),)


async def start_vault(res: Resources, db: Database, p: LocalPki, **extra_env: str) -> Vault:
    """Migrate and bootstrap an admin from here, then run ``credvault serve`` with its engine port (``extra_env``:
    more settings, as start_replica)."""
    issued = await migrate_and_bootstrap(db.url, "bench-admin")
    return await start_replica(res, db.url, p, new_keyring().to_json(), issued.token, **extra_env)


async def start_replica(
    res: Resources,
    database_url: str,
    p: LocalPki,
    keyring: str,
    token: str,
    name: str = "vault",
    **extra_env: str,
) -> Vault:
    """``credvault serve`` with its engine port on a migrated database; replicas of one vault share ``keyring``
    (JSON) and the admin's ``token``. ``name`` names its log; ``extra_env`` adds settings (such as
    ``CREDVAULT_DB_POOL_MAX``). The log level is INFO unless ``extra_env`` sets another: readiness is read from INFO
    lines (the vault logs nothing per call at INFO)."""
    exe = venv_bin("credvault")
    argv = [exe] if exe else [sys.executable, *VAULT_MODULE_ARGV]
    api_port = engine_port = free_port()
    while engine_port == api_port:
        engine_port = free_port()
    settings = {"CREDVAULT_LOG_LEVEL": "INFO", **extra_env}
    env = child_env() | vault_environment(p, database_url, keyring, api_port, engine_port, **settings)
    child = res.spawn(f"credvault serve ({name})", [*argv, "serve"], env, res.root / f"{name}.log")
    await wait_for_log(child, ENGINE_PORT_LISTENING, 60)
    await wait_for_log(child, API_LISTENING, 60)
    return Vault(child, api_port, engine_port, token)


def api_channel(vault: Vault, p: LocalPki) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(f"127.0.0.1:{vault.api_port}", p.channel_credentials())


@dataclasses.dataclass
class Worker:
    engine_id: str
    child: Child
    status_port: int = 0


def spawn_worker(
    res: Resources, vault: Vault, p: LocalPki, location: str, engine: str, tag: str = "", extra: tuple[str, ...] = ()
) -> Worker:
    exe = venv_bin("engine-worker")
    argv = [exe] if exe else [sys.executable, *WORKER_MODULE_ARGV]
    argv += worker_arguments(p, vault.engine_port, location, engine, *extra)
    log = res.root / f"worker-{location}-{engine}{tag}.log"
    return Worker(engine, res.spawn(f"engine-worker {location}/{engine}", argv, child_env(), log))


async def worker_port(w: Worker, limit_s: float) -> int:
    m = await wait_for_log(w.child, STATUS_LISTENING, limit_s)
    w.status_port = int(m.group(1))
    return w.status_port


def _terminate(signum: int, frame: object) -> None:
    signal.raise_signal(signal.SIGINT)  # asyncio.run's handler: cancel the run, then KeyboardInterrupt


def run_bench(res: Resources, run: Callable[[], Coroutine[Any, Any, dict[str, Any]]]) -> None:
    """Runs a bench's ``run`` and prints its result as JSON with the elapsed time; cleans ``res`` up at the end,
    also on Ctrl-C or SIGTERM."""
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    try:
        result = asyncio.run(run())
    except KeyboardInterrupt:
        note("interrupted; cleaning up")
        sys.exit(130)
    finally:
        res.close()
    result["elapsed_seconds"] = round(time.monotonic() - started, 1)
    note(f"done in {result['elapsed_seconds']} s")
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


def run_script(
    name: str,
    ns: argparse.Namespace,
    run: Callable[[argparse.Namespace, Resources], Coroutine[Any, Any, dict[str, Any]]],
) -> None:
    """A bench script's main: ``run(ns, res)`` through run_bench, its files under a temporary directory named after
    ``name`` (kept with ``ns.keep``, where the script has --keep)."""
    res = Resources(getattr(ns, "keep", False), name)
    run_bench(res, lambda: run(ns, res))
