"""Real processes for the bench scripts: children with logs and cleanup, a bench PKI, a ``credvault serve`` with its
engine port on a throwaway database, and ``engine-worker`` processes."""

from __future__ import annotations

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

from credvault.identity import EngineIdentity
from vault_service import pki
from vault_service.bootstrap import migrate_and_bootstrap
from vault_service.crypto import new_keyring

TRUST_DOMAIN = "bench.credvault.local"


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
class BenchPki:
    directory: pathlib.Path
    engine_ca: pki.IssuedCertificate
    server_ca_pem: pathlib.Path
    server_pem: pathlib.Path
    server_key: pathlib.Path
    engine_ca_pem: pathlib.Path

    @classmethod
    def make(cls, directory: pathlib.Path) -> BenchPki:
        engine_ca = pki.create_ca("bench engine CA", trust_domain=TRUST_DOMAIN)
        server_ca = pki.create_ca("bench server CA")
        server = pki.issue_server_certificate(server_ca, ["localhost", "127.0.0.1"])
        engine_ca_pem, _ = pki.write_files(directory, pki.ENGINE_CA, engine_ca)
        server_pem, server_key = pki.write_files(directory, pki.SERVER, server)
        server_ca_pem = directory / "server-ca.pem"
        server_ca_pem.write_bytes(server_ca.cert_pem)
        return cls(directory, engine_ca, server_ca_pem, server_pem, server_key, engine_ca_pem)

    def engine(self, location: str, engine: str) -> tuple[pathlib.Path, pathlib.Path]:
        identity = EngineIdentity(TRUST_DOMAIN, location, engine)
        name = pki.engine_file_name(identity)
        pem, key = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        if not pem.exists():
            pem, key = pki.write_files(self.directory, name, pki.issue_engine_certificate(self.engine_ca, identity))
        return pem, key


@dataclasses.dataclass
class Vault:
    child: Child
    api_port: int
    engine_port: int
    token: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Api-Token {self.token}"),)


async def start_vault(res: Resources, db: Database, p: BenchPki) -> Vault:
    """Migrate and bootstrap an admin from here, then run ``credvault serve`` with its engine port."""
    issued = await migrate_and_bootstrap(db.url, "bench-admin")
    return await start_replica(res, db.url, p, new_keyring().to_json(), issued.token)


async def start_replica(
    res: Resources, database_url: str, p: BenchPki, keyring: str, token: str, name: str = "vault"
) -> Vault:
    """``credvault serve`` with its engine port on a migrated database; replicas of one vault share ``keyring``
    (JSON) and the admin's ``token``. ``name`` names its log."""
    exe = venv_bin("credvault")
    argv = [exe] if exe else [sys.executable, "-c", "from vault_service.cli.main import main; main()"]
    argv.append("serve")
    api_port = engine_port = free_port()
    while engine_port == api_port:
        engine_port = free_port()
    env = child_env(
        CREDVAULT_DATABASE_URL=database_url,
        CREDVAULT_KEYRING=keyring,
        CREDVAULT_LISTEN=f"127.0.0.1:{api_port}",
        CREDVAULT_TLS_CERT_FILE=str(p.server_pem),
        CREDVAULT_TLS_KEY_FILE=str(p.server_key),
        CREDVAULT_ENGINE_LISTEN=f"127.0.0.1:{engine_port}",
        CREDVAULT_ENGINE_TLS_CERT_FILE=str(p.server_pem),
        CREDVAULT_ENGINE_TLS_KEY_FILE=str(p.server_key),
        CREDVAULT_ENGINE_CA_FILE=str(p.engine_ca_pem),
        CREDVAULT_TRUST_DOMAIN=TRUST_DOMAIN,
        CREDVAULT_LOG_LEVEL="INFO",
    )
    child = res.spawn(f"credvault serve ({name})", argv, env, res.root / f"{name}.log")
    await wait_for_log(child, r"engine port listening", 60)
    await wait_for_log(child, r"credvault API listening", 60)
    return Vault(child, api_port, engine_port, token)


def api_channel(vault: Vault, p: BenchPki) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=p.server_ca_pem.read_bytes())
    return grpc.aio.secure_channel(f"127.0.0.1:{vault.api_port}", creds)


@dataclasses.dataclass
class Worker:
    engine_id: str
    child: Child
    status_port: int = 0


def spawn_worker(
    res: Resources, vault: Vault, p: BenchPki, location: str, engine: str, tag: str = "", extra: tuple[str, ...] = ()
) -> Worker:
    cert, key = p.engine(location, engine)
    exe = venv_bin("engine-worker")
    argv = [exe] if exe else [sys.executable, "-m", "engine_worker"]
    argv += ["--vault", f"127.0.0.1:{vault.engine_port}", "--cert", str(cert), "--key", str(key)]
    argv += ["--ca", str(p.server_ca_pem), "--status-listen", "127.0.0.1:0", "--log-level", "INFO", *extra]
    log = res.root / f"worker-{location}-{engine}{tag}.log"
    return Worker(engine, res.spawn(f"engine-worker {location}/{engine}", argv, child_env(), log))


async def worker_port(w: Worker, limit_s: float) -> int:
    m = await wait_for_log(w.child, r"status listening on [\d.]+:(\d+)", limit_s)
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
