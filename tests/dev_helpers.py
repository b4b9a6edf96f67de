"""A real `credvault dev` in a subprocess on ports chosen by the system, for the tests of dev mode and the README."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import re
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from tests.cli_helpers import CLI, base_env

START_TIMEOUT = 180  # initdb and the first migrations on a loaded machine


@dataclass
class DevProcess:
    proc: asyncio.subprocess.Process
    data_dir: pathlib.Path
    api_port: int = 0
    status_port: int = 0
    demo_site_port: int = 0
    stderr_lines: list[str] = field(default_factory=list)
    _drain: asyncio.Task[None] | None = None

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    async def _read_line(self) -> str:
        assert self.proc.stderr is not None
        line = (await asyncio.wait_for(self.proc.stderr.readline(), START_TIMEOUT)).decode()
        self.stderr_lines.append(line)
        assert line, f"credvault dev ended before it was ready:\n{self.stderr}"
        return line

    async def wait_ready(self) -> None:
        """Until the banner's API and demo site lines and the worker's status port are logged."""
        while not (self.api_port and self.status_port and self.demo_site_port):
            line = await self._read_line()
            if m := re.search(r"API:\s+127\.0\.0\.1:(\d+)", line):
                self.api_port = int(m.group(1))
            if m := re.search(r"status listening on 127\.0\.0\.1:(\d+)", line):
                self.status_port = int(m.group(1))
            if m := re.search(r"demo site:\s+http://127\.0\.0\.1:(\d+)/", line):
                self.demo_site_port = int(m.group(1))
        self._drain = asyncio.create_task(self._drain_rest())

    async def _drain_rest(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.stderr_lines.append(line.decode())

    async def kill_all(self) -> None:
        """SIGKILL to its process group (dev, its worker, the PostgreSQL it started), if it still runs."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        if self._drain is not None:
            self._drain.cancel()

    async def stop(self) -> int:
        """SIGTERM, then the exit status; the rest of its stderr is in :attr:`stderr`."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(self.proc.wait(), 60)
        if self._drain is not None:
            await asyncio.wait_for(self._drain, 10)
        return rc


async def start_dev(data_dir: pathlib.Path, env: dict[str, str] | None = None) -> DevProcess:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "dev",
        "--data-dir",
        str(data_dir),
        "--listen",
        "127.0.0.1:0",
        "--engine-listen",
        "127.0.0.1:0",
        "--worker-status-listen",
        "127.0.0.1:0",
        "--demo-site-listen",
        "127.0.0.1:0",
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env or base_env(),
        start_new_session=True,  # its own process group: kill_all() ends the worker and PostgreSQL it started too
    )
    return DevProcess(proc, data_dir)


@contextlib.asynccontextmanager
async def running_dev(data_dir: pathlib.Path) -> AsyncIterator[DevProcess]:
    dev = await start_dev(data_dir)
    try:
        await dev.wait_ready()
        yield dev
    finally:
        await dev.kill_all()


@contextlib.contextmanager
def outside_pytest_tmp(prefix: str = "credvault-dev-") -> Iterator[pathlib.Path]:
    """A directory for a dev data directory, not under pytest's temporary root: run as root, the embedded PostgreSQL
    runs as pgserver's user, and a pytest that starts meanwhile (a child, another run on the machine) makes that
    root private again, out of that user's reach, while the server starts."""
    directory = pathlib.Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
