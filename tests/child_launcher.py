"""Runs a command with capabilities dropped or other limits: ``python child_launcher.py [--drop N]... [--memlock BYTES]
[--core-unlimited] [--cwd DIR] -- COMMAND ARGS...`` sets them up in this fresh process and execs the command.

The memory tests start their processes through it instead of with a ``preexec_fn``: Python code between fork and
exec in a process with gRPC threads (the test process) is unsafe, and crashed the child now and then ("epoll_wait
error: Bad file descriptor" from gRPC's fork handlers). Capabilities are dropped from the bounding set (prctl
PR_CAPBSET_DROP; root may): a process of uid 0 gets its bounding set as its capabilities at exec."""

from __future__ import annotations

import argparse
import ctypes
import os
import resource

PR_CAPBSET_DROP = 24


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--drop", type=int, action="append", default=[])
    parser.add_argument("--memlock", type=int)
    parser.add_argument("--core-unlimited", action="store_true")
    parser.add_argument("--cwd")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    ns = parser.parse_args()
    command = ns.command[1:] if ns.command[:1] == ["--"] else ns.command
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in ns.drop:
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"cannot drop capability {capability}")
    if ns.memlock is not None:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (ns.memlock, ns.memlock))
    if ns.core_unlimited:
        hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
        resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
    if ns.cwd is not None:
        os.chdir(ns.cwd)
    os.execvp(command[0], command)  # noqa: S606 - the command the test asked for


if __name__ == "__main__":
    main()
