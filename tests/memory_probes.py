"""What the memory tests look at from outside a process: /proc/<pid>/status and limits, a reader of the same user and
the same capabilities (tests/same_user_reader.py), and children started without capabilities or with other limits.

Children are started through tests/child_launcher.py, which drops capabilities from its bounding set (prctl
PR_CAPBSET_DROP; root may) and sets limits before it execs the program: a process of uid 0 gets its bounding set as
its capabilities at exec, so the program runs without them. No capsh needed, and nothing to quote through a shell."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import pathlib
import sys
from typing import Any

import pytest

CAP_IPC_LOCK = 14
CAP_SYS_PTRACE = 19
PR_CAPBSET_DROP = 24
READER = pathlib.Path(__file__).with_name("same_user_reader.py")
LAUNCHER = pathlib.Path(__file__).with_name("child_launcher.py")


@dataclasses.dataclass(frozen=True)
class ContainerUser:
    """How a container runtime starts a container's process (tests/child_launcher.py --user): this uid and gid, the
    bounding set reduced to ``capabilities`` and the permitted and effective sets exactly those (none with
    ``bounding_only``), no_new_privs unless privilege escalation is allowed."""

    uid: int
    gid: int
    capabilities: tuple[int, ...]
    no_new_privs: bool
    bounding_only: bool = False

    def arguments(self) -> list[str]:
        out = ["--user", f"{self.uid}:{self.gid}"]
        for capability in self.capabilities:
            out += ["--capability", str(capability)]
        return out + ["--bounding-only"] * self.bounding_only + ["--no-new-privs"] * self.no_new_privs


def child_setup(
    drop: tuple[int, ...] = (),
    memlock_bytes: int | None = None,
    core_unlimited: bool = False,
    cwd: pathlib.Path | None = None,
    user: ContainerUser | None = None,
) -> list[str]:
    """The launcher to start a child through (tests/child_launcher.py): drop capabilities, lower RLIMIT_MEMLOCK,
    allow core files, change directory, become a container's user; then it execs the child's command."""
    launcher = [sys.executable, str(LAUNCHER)]
    for capability in drop:
        launcher += ["--drop", str(capability)]
    if memlock_bytes is not None:
        launcher += ["--memlock", str(memlock_bytes)]
    if core_unlimited:
        launcher.append("--core-unlimited")
    if cwd is not None:
        launcher += ["--cwd", str(cwd)]
    if user is not None:
        launcher += user.arguments()
    return [*launcher, "--"]


def core_file_places(cwd: pathlib.Path) -> set[pathlib.Path]:
    """Where a process running in cwd would write a core file: cwd, and the directory of the kernel's core_pattern
    (relative to cwd unless absolute). Skips the test when the pattern pipes cores to a program instead."""
    pattern = pathlib.Path("/proc/sys/kernel/core_pattern").read_text().strip()
    if pattern.startswith("|"):
        pytest.skip(f"core_pattern pipes cores to a program ({pattern.split()[0]}): no file to look for")
    parts = (cwd / pattern).parent.parts  # an absolute pattern replaces cwd
    fixed = itertools.takewhile(lambda part: "%" not in part, parts)  # the directories before any %e, %p, ...
    return {place for place in (cwd, pathlib.Path(*fixed)) if place.is_dir()}


def proc_status(pid: int) -> dict[str, str]:
    lines = pathlib.Path(f"/proc/{pid}/status").read_text().splitlines()
    return {name: value.strip() for name, _, value in (line.partition(":") for line in lines)}


def kib(value: str) -> int:
    """``123 kB`` (as in /proc/<pid>/status) as 123."""
    number, unit = value.split()
    assert unit == "kB", value
    return int(number)


def core_limit(pid: int) -> tuple[str, str]:
    """(soft, hard) of "Max core file size" in /proc/<pid>/limits."""
    line = next(x for x in pathlib.Path(f"/proc/{pid}/limits").read_text().splitlines() if x.startswith("Max core"))
    soft, hard = line.split()[4:6]
    return soft, hard


def capabilities(pid: int) -> int:
    """The permitted capabilities of pid, as a bit mask."""
    return int(proc_status(pid)["CapPrm"], 16)


def capabilities_besides(mask: int) -> tuple[int, ...]:
    """Every capability the kernel knows that is not in mask."""
    last = int(pathlib.Path("/proc/sys/kernel/cap_last_cap").read_text())
    return tuple(cap for cap in range(last + 1) if not mask >> cap & 1)


async def read_as_same_user(pid: int) -> dict[str, Any]:
    """What another process of pid's user with pid's own capabilities (none besides) gets when it reads pid's memory
    and attaches to it (tests/same_user_reader.py). With fewer capabilities than its target a process may not do
    either whatever the target does, and with CAP_SYS_PTRACE it may do both: so pid must run without that one."""
    proc = await asyncio.create_subprocess_exec(
        *child_setup(drop=capabilities_besides(capabilities(pid))),
        sys.executable,
        str(READER),
        str(pid),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out
    report: dict[str, Any] = json.loads(out)
    return report
