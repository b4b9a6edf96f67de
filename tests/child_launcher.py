"""Runs a command with capabilities dropped or other limits: ``python child_launcher.py [--drop N]... [--memlock BYTES]
[--core-unlimited] [--cwd DIR] [--user UID:GID [--capability N]... [--bounding-only]] [--no-new-privs] -- COMMAND
ARGS...`` sets them up in this fresh process and execs the command.

The memory tests start their processes through it instead of with a ``preexec_fn``: Python code between fork and
exec in a process with gRPC threads (the test process) is unsafe, and crashed the child now and then ("epoll_wait
error: Bad file descriptor" from gRPC's fork handlers). Capabilities are dropped from the bounding set (prctl
PR_CAPBSET_DROP; root may): a process of uid 0 gets its bounding set as its capabilities at exec.

``--user`` starts the command as a container runtime starts a container's process (runc's finalizeNamespace, with the
sets containerd and CRI-O put in the OCI spec for `capabilities: {drop: [ALL], add: [...]}`): the bounding set
reduced to the ``--capability`` list, the user switched with those capabilities kept, then the permitted and effective
sets exactly that list (empty with ``--bounding-only``, a runtime that would pass them in the bounding set alone), the
inheritable and ambient sets empty; ``--no-new-privs`` is allowPrivilegeEscalation: false."""

from __future__ import annotations

import argparse
import ctypes
import os
import pathlib
import resource

PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _prctl(libc: ctypes.CDLL, option: int, arg: int, what: str) -> None:
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), what)


def _become_container_user(libc: ctypes.CDLL, uid: int, gid: int, keep: set[int], bounding_only: bool) -> None:
    last = int(pathlib.Path("/proc/sys/kernel/cap_last_cap").read_text())
    for capability in set(range(last + 1)) - keep:
        _prctl(libc, PR_CAPBSET_DROP, capability, f"cannot drop capability {capability}")
    _prctl(libc, PR_SET_KEEPCAPS, 1, "cannot keep capabilities")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    _prctl(libc, PR_SET_KEEPCAPS, 0, "cannot clear keep-capabilities")
    mask = 0 if bounding_only else sum(1 << c for c in keep)
    data = (_Data * 2)(_Data(mask & 0xFFFFFFFF, mask & 0xFFFFFFFF, 0), _Data(mask >> 32, mask >> 32, 0))
    if libc.capset(ctypes.byref(_Header(_LINUX_CAPABILITY_VERSION_3, 0)), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--drop", type=int, action="append", default=[])
    parser.add_argument("--memlock", type=int)
    parser.add_argument("--core-unlimited", action="store_true")
    parser.add_argument("--cwd")
    parser.add_argument("--user")
    parser.add_argument("--capability", type=int, action="append", default=[])
    parser.add_argument("--bounding-only", action="store_true")
    parser.add_argument("--no-new-privs", action="store_true")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    ns = parser.parse_args()
    command = ns.command[1:] if ns.command[:1] == ["--"] else ns.command
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in ns.drop:
        _prctl(libc, PR_CAPBSET_DROP, capability, f"cannot drop capability {capability}")
    if ns.memlock is not None:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (ns.memlock, ns.memlock))
    if ns.core_unlimited:
        hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
        resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
    if ns.cwd is not None:
        os.chdir(ns.cwd)
    if ns.user is not None:
        uid, gid = (int(part) for part in ns.user.split(":"))
        _become_container_user(libc, uid, gid, set(ns.capability), ns.bounding_only)
    if ns.no_new_privs:
        _prctl(libc, PR_SET_NO_NEW_PRIVS, 1, "cannot set no_new_privs")
    os.execvp(command[0], command)  # noqa: S606 - the command the test asked for


if __name__ == "__main__":
    main()
