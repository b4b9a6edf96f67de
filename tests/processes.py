"""Real processes for the end-to-end tests: a `credvault serve` process and `engine-worker` processes on a PKI of the
test's, their stderr collected as they run, and an admin client of the vault."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aiohttp

from tests.conftest import Client
from tests.local_pki import LocalPki
from vault_service.bootstrap import migrate_and_bootstrap
from vault_service.crypto import Keyring


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- how the two processes are started: shared with bench/_processes.py ------------------------------------------

VAULT_MODULE_ARGV = ["-c", "from vault_service.cli.main import main; main()"]
WORKER_MODULE_ARGV = ["-m", "engine_worker"]
API_LISTENING = r"credvault API listening"
ENGINE_PORT_LISTENING = r"engine port listening"
STATUS_LISTENING = r"status listening on [\d.]+:(\d+)"


def child_environment(*, without_pythonpath: bool = False, **extra: str) -> dict[str, str]:
    """This process's environment without the settings of the systems under test (and PYTHONPATH: a child that must
    run from an installed package), plus ``extra``."""
    dropped = ("CREDVAULT_", "ENGINE_", "BAO_", "VAULT_", *(("PYTHONPATH",) if without_pythonpath else ()))
    return {k: v for k, v in os.environ.items() if not k.startswith(dropped)} | extra


def vault_environment(
    pki: LocalPki, database_url: str, keyring_json: str, api_port: int, engine_port: int, **extra: str
) -> dict[str, str]:
    """The settings of a `credvault serve` with its engine port, both on ``pki``'s server certificate."""
    return {
        "CREDVAULT_DATABASE_URL": database_url,
        "CREDVAULT_KEYRING": keyring_json,
        "CREDVAULT_LISTEN": f"127.0.0.1:{api_port}",
        "CREDVAULT_TLS_CERT_FILE": str(pki.server_pem),
        "CREDVAULT_TLS_KEY_FILE": str(pki.server_key),
        "CREDVAULT_ENGINE_LISTEN": f"127.0.0.1:{engine_port}",
        "CREDVAULT_ENGINE_TLS_CERT_FILE": str(pki.server_pem),
        "CREDVAULT_ENGINE_TLS_KEY_FILE": str(pki.server_key),
        "CREDVAULT_ENGINE_CA_FILE": str(pki.engine_ca_pem),
        "CREDVAULT_TRUST_DOMAIN": pki.trust_domain,
        **extra,
    }


def worker_arguments(pki: LocalPki, engine_port: int, location: str, engine: str, *extra: str) -> list[str]:
    """The command-line arguments of an `engine-worker` of ``location``/``engine`` (its certificate issued by ``pki``
    on first use), with its status endpoint on a port of the system's choice (logged: STATUS_LISTENING)."""
    cert, key = pki.engine_files(location, engine)
    return [
        *("--vault", f"localhost:{engine_port}", "--cert", str(cert), "--key", str(key)),
        *("--ca", str(pki.server_ca_pem), "--status-listen", "127.0.0.1:0", "--log-level", "INFO"),
        *extra,
    ]


class Proc:
    """A child process whose stderr is collected (and searched) as it runs."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._new = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.lines.append(line.decode(errors="replace"))
            self._new.set()
        await self.proc.wait()
        self._new.set()  # a waiter sees the exit at once

    async def wait_for_line(self, pattern: str, within: float = 30.0) -> re.Match[str]:
        async def look() -> re.Match[str]:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if m := re.search(pattern, line):
                        return m
                seen = len(self.lines)
                if self.proc.returncode is not None:
                    raise AssertionError("process exited:\n" + "".join(self.lines[-30:]))
                self._new.clear()
                await self._new.wait()

        return await asyncio.wait_for(look(), within)

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        return await self.exited()

    async def exited(self, within: float = 30.0) -> int:
        """Its exit status, once it exited by itself and all its stderr is read."""
        code = await asyncio.wait_for(self.proc.wait(), within)
        await self._reader
        return code


async def spawn(
    *args: str,
    env: dict[str, str],
    cwd: pathlib.Path | None = None,
    launcher: Sequence[str] = (),
) -> Proc:
    """``launcher``: a command that sets the child up and execs the rest (tests/child_launcher.py: drop a capability,
    lower a limit). Never a preexec_fn: Python code between fork and exec in a process with gRPC threads is unsafe."""
    proc = await asyncio.create_subprocess_exec(
        *launcher,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    return Proc(proc)


class System:
    """A vault process and worker processes. By default they run from this interpreter (the source tree); with
    ``installed``, a virtual environment's bin directory, they are its console scripts, run from the PKI directory
    (outside the source tree) without PYTHONPATH."""

    def __init__(
        self, pki: LocalPki, database_url: str, keyring: Keyring, installed: pathlib.Path | None = None
    ) -> None:
        self.pki = pki
        self.database_url = database_url
        self.keyring = keyring
        self.installed = installed
        self.api_port = free_port()
        self.engine_port = free_port()
        self.procs: list[Proc] = []

    def _env(self) -> dict[str, str]:
        return child_environment(without_pythonpath=self.installed is not None)

    def _command(self, script: str, module_argv: list[str]) -> list[str]:
        return [str(self.installed / script)] if self.installed else [sys.executable, *module_argv]

    async def _spawn(self, *args: str, env: dict[str, str], launcher: Sequence[str] = ()) -> Proc:
        proc = await spawn(*args, env=env, cwd=self.pki.directory if self.installed else None, launcher=launcher)
        self.procs.append(proc)
        return proc

    async def start_vault(self, launcher: Sequence[str] = (), **extra_env: str) -> Proc:
        vault = await self.spawn_vault(launcher, **extra_env)
        await vault.wait_for_line(API_LISTENING)
        return vault

    async def spawn_vault(self, launcher: Sequence[str] = (), **extra_env: str) -> Proc:
        """A `credvault serve` process, not waited for."""
        env = self._env() | vault_environment(
            self.pki,
            self.database_url,
            self.keyring.to_json(),
            self.api_port,
            self.engine_port,
            CREDVAULT_ENGINE_HEARTBEAT_SECONDS="1",
            **extra_env,
        )
        return await self._spawn(*self._command("credvault", VAULT_MODULE_ARGV), "serve", env=env, launcher=launcher)

    async def start_worker(
        self, location: str, engine: str, *extra: str, launcher: Sequence[str] = (), **extra_env: str
    ) -> tuple[Proc, int]:
        worker = await self.spawn_worker(location, engine, *extra, launcher=launcher, **extra_env)
        m = await worker.wait_for_line(STATUS_LISTENING)
        return worker, int(m.group(1))

    async def spawn_worker(
        self, location: str, engine: str, *extra: str, launcher: Sequence[str] = (), **extra_env: str
    ) -> Proc:
        """An `engine-worker` process, not waited for (``extra_env`` on top of its environment)."""
        args = worker_arguments(self.pki, self.engine_port, location, engine, "--heartbeat-interval", "1", *extra)
        return await self._spawn(
            *self._command("engine-worker", WORKER_MODULE_ARGV),
            *args,
            env=self._env() | extra_env,
            launcher=launcher,
        )

    async def stop_all(self) -> None:
        for p in self.procs:
            if p.proc.returncode is None:
                p.proc.kill()
            with contextlib.suppress(Exception):
                await p.stop(signal.SIGKILL)


async def introspect(port: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/introspection") as resp:
        assert resp.status == 200
        doc: dict[str, Any] = json.loads(await resp.text())
        return doc


async def scraped(scrape_port: int, name: str, **labels: str) -> float | None:
    """The value of one sample at ``http://127.0.0.1:<port>/metrics`` (vault or worker), None when absent."""
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{scrape_port}/metrics") as resp:
        text = await resp.text()
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = rf"^{re.escape(name)}{re.escape('{' + wanted + '}') if wanted else ''} (\S+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else None


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 30.0) -> None:
    async def loop() -> None:
        while not await check():  # noqa: ASYNC110 - polling another process's HTTP endpoint
            await asyncio.sleep(0.1)

    await asyncio.wait_for(loop(), within)


async def stop_and_dump(system: System, worker: Proc, pg_dump: str) -> bytes:
    """Stops the worker and the vault (both must exit cleanly, so their logs are complete) and returns a plain
    ``pg_dump`` of the database, which must hold the results table."""
    assert await worker.stop(signal.SIGTERM) == 0
    assert await system.procs[0].stop(signal.SIGTERM) == 0
    dump = await asyncio.to_thread(
        subprocess.run, [pg_dump, "--no-owner", "--dbname", system.database_url], capture_output=True, check=True
    )
    assert b"COPY public.monitor_results" in dump.stdout
    return dump.stdout


async def stop_and_assert_unseen(
    system: System, worker: Proc, pg_dump: str, history: bytes, secrets: tuple[str, ...]
) -> bytes:
    """:func:`stop_and_dump`, then asserts that none of ``secrets`` is in the worker's or the vault's log, the dump or
    ``history`` (serialized results); returns the dump."""
    dump = await stop_and_dump(system, worker, pg_dump)
    for secret in secrets:
        assert not any(secret in line for line in worker.lines + system.procs[0].lines)
        assert secret.encode() not in dump
        assert secret.encode() not in history
    return dump


@contextlib.asynccontextmanager
async def vault_admin(system: System, database_url: str, **extra_env: str) -> AsyncIterator[Client]:
    """Migrates, bootstraps an admin, starts the vault process (with ``extra_env``), and yields the admin's client."""
    issued = await migrate_and_bootstrap(database_url, "admin")
    await system.start_vault(**extra_env)
    async with system.pki.channel(system.api_port) as ch:
        yield Client(ch, issued.token, "admin")
