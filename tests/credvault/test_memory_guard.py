"""Memory only means no disk either (seed 000: configurations are held "in Synthetic engine memory (with no
persistence layers involved)"): a real engine worker holding a credential and a real `credvault serve` are not
dumpable (another process of the same user can neither read their memory nor attach), have a core limit of 0, keep
their resident memory locked when they hold CAP_IPC_LOCK, and say so (warning, metric, or a refusal to start) when
they do not. A worker sent SIGSEGV leaves no core file."""

from __future__ import annotations

import os
import pathlib
import signal
import sys

import aiohttp
import pytest

from credvault.v1 import monitors_pb2 as mpb
from tests.conftest import Client
from tests.helpers import create_req, up
from tests.memory_probes import (
    CAP_IPC_LOCK,
    CAP_SYS_PTRACE,
    capabilities,
    child_setup,
    core_file_places,
    core_limit,
    kib,
    proc_status,
    read_as_same_user,
)
from tests.processes import Proc, System, eventually, free_port, introspect
from tests.vault_service.push.test_push_processes import http_monitor

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0, reason="Linux, as root (the tests drop capabilities of children)"
)

SECRET = "pw-held-in-memory-only"
LOW_MEMLOCK = 64 * 1024  # far below any Python process's size
UNLOCKED_WARNING = r"WARNING .*memory is not locked .*IPC_LOCK.*RLIMIT_MEMLOCK"
# The processes under test run as a user's would: without CAP_SYS_PTRACE (root's lets it read any process's memory).
AS_A_USER = (CAP_SYS_PTRACE,)
WITH_IPC_LOCK = child_setup(drop=AS_A_USER)
WITHOUT_IPC_LOCK = child_setup(drop=(*AS_A_USER, CAP_IPC_LOCK), memlock_bytes=LOW_MEMLOCK)


async def worker_holding_a_credential(
    system: System, admin: Client, *extra: str, launcher: list[str] = WITH_IPC_LOCK
) -> tuple[Proc, int]:
    await admin.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id="loc-a")))
    await admin.AddEngine(mpb.AddEngineRequest(location_id="loc-a", engine_id="e1"))
    cred = (await admin.CreateCredential(create_req("pair", up("alice", SECRET)))).credential.id
    await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=http_monitor(cred)))
    worker, port = await system.start_worker("loc-a", "e1", *extra, launcher=launcher)

    async def holds() -> bool:
        return cred in (await introspect(port))["credentials"]

    await eventually(holds)
    return worker, port


async def gauge(port: int, name: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))


async def assert_unreadable_and_undumpable(pid: int) -> None:
    """Another process of the same user with the same capabilities (root without CAP_SYS_PTRACE, as both run here)
    can neither read pid's memory nor attach to it; and pid cannot write a core file."""
    report = await read_as_same_user(pid)
    assert report["uid"] == int(proc_status(pid)["Uid"].split()[0]) == 0
    assert report["capabilities"] == capabilities(pid)
    assert not capabilities(pid) >> CAP_SYS_PTRACE & 1
    assert report["mem"] in ("EACCES", "EPERM"), report
    assert report["ptrace"] == "EPERM", report
    assert core_limit(pid) == ("0", "0")


def assert_resident_memory_locked(pid: int) -> None:
    status = proc_status(pid)
    assert kib(status["VmLck"]) >= kib(status["VmRSS"]) > 0, status


async def assert_runs_unlocked(proc: Proc, metrics_port: int, metric: str) -> None:
    """Started without CAP_IPC_LOCK under a low RLIMIT_MEMLOCK: it warns once, shows it in its metric, runs unlocked,
    and is still unreadable and undumpable (that needs no privilege)."""
    await proc.wait_for_line(UNLOCKED_WARNING)
    assert sum("memory is not locked" in line for line in proc.lines) == 1
    assert await gauge(metrics_port, metric) == 0
    assert kib(proc_status(proc.proc.pid)["VmLck"]) == 0
    await assert_unreadable_and_undumpable(proc.proc.pid)


async def assert_refused(proc: Proc, error_prefix: str, setting: str, never: str) -> None:
    """Told to require locking without CAP_IPC_LOCK: it exits 2 naming the capability and the setting, before
    ``never`` (the line that says it serves)."""
    assert await proc.exited(60) == 2
    output = "".join(proc.lines)
    assert error_prefix + "memory cannot be locked" in output
    assert "IPC_LOCK" in output
    assert setting in output
    assert never not in output


async def test_worker_holding_a_credential_is_unreadable_undumpable_and_locked(
    system: System, system_admin: Client
) -> None:
    worker, port = await worker_holding_a_credential(system, system_admin)
    await assert_unreadable_and_undumpable(worker.proc.pid)
    assert_resident_memory_locked(worker.proc.pid)
    assert await gauge(port, "memory_locked") == 1
    assert (await introspect(port))["memory_locked"] is True
    assert await worker.stop(signal.SIGTERM) == 0
    assert not any("memory is not locked" in line for line in worker.lines)


async def test_worker_without_ipc_lock_warns_runs_unlocked_and_refuses_when_required(
    system: System, system_admin: Client
) -> None:
    worker, port = await worker_holding_a_credential(system, system_admin, launcher=WITHOUT_IPC_LOCK)
    await assert_runs_unlocked(worker, port, "memory_locked")
    assert (await introspect(port))["memory_locked"] is False
    assert await worker.stop(signal.SIGTERM) == 0

    refused = await system.spawn_worker("loc-a", "e1", "--require-mlock", launcher=WITHOUT_IPC_LOCK)
    await assert_refused(refused, "engine-worker: error: ", "--require-mlock", never="status listening")


async def test_crashing_worker_leaves_no_core_file(
    system: System, system_admin: Client, tmp_path: pathlib.Path
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    places = core_file_places(cwd)
    before = {p: set(p.iterdir()) for p in places}
    # the soft core limit raised to the hard one, so that only the worker itself can turn core dumps off
    crashing = child_setup(drop=AS_A_USER, core_unlimited=True, cwd=cwd)
    worker, _ = await worker_holding_a_credential(system, system_admin, launcher=crashing)
    assert await worker.stop(signal.SIGSEGV) == -signal.SIGSEGV
    for place in places:
        assert set(place.iterdir()) == before[place], place


async def test_vault_is_unreadable_undumpable_and_locked(system: System) -> None:
    metrics_port = free_port()
    vault = await system.start_vault(WITH_IPC_LOCK, CREDVAULT_METRICS_LISTEN=f"127.0.0.1:{metrics_port}")
    await assert_unreadable_and_undumpable(vault.proc.pid)
    assert_resident_memory_locked(vault.proc.pid)
    assert await gauge(metrics_port, "credvault_memory_locked") == 1
    assert await vault.stop(signal.SIGTERM) == 0


async def test_vault_without_ipc_lock_warns_runs_unlocked_and_refuses_when_required(system: System) -> None:
    metrics_port = free_port()
    vault = await system.start_vault(WITHOUT_IPC_LOCK, CREDVAULT_METRICS_LISTEN=f"127.0.0.1:{metrics_port}")
    await assert_runs_unlocked(vault, metrics_port, "credvault_memory_locked")
    assert await vault.stop(signal.SIGTERM) == 0

    refused = await system.spawn_vault(WITHOUT_IPC_LOCK, CREDVAULT_REQUIRE_MLOCK="true")
    await assert_refused(refused, "credvault: configuration error: ", "CREDVAULT_REQUIRE_MLOCK", never="API listening")
