"""Run as ``python same_user_reader.py PID``: tries what another process of the same user could do to PID (read its
memory through /proc/PID/mem, attach with ptrace) and prints, as JSON, who it is (uid, effective capabilities) and
what each attempt gave: an errno name or what it got."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import sys

PTRACE_ATTACH = 16
PTRACE_DETACH = 17


def capabilities() -> int:
    """This process's effective capabilities, as a bit mask."""
    with open("/proc/self/status") as status:
        return int(next(line.split()[1] for line in status if line.startswith("CapEff:")), 16)


def read_memory(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem, open(f"/proc/{pid}/maps") as maps:
            start = next(int(line.split("-")[0], 16) for line in maps if line.split()[1].startswith("r"))
            mem.seek(start)
            return f"read {len(mem.read(4096))} bytes"
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def attach(pid: int) -> str:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(PTRACE_ATTACH, pid, None, None) != 0:
        code = ctypes.get_errno()
        return errno.errorcode.get(code, str(code))
    os.waitpid(pid, 0)  # the stop that attaching causes
    libc.ptrace(PTRACE_DETACH, pid, None, None)
    return "attached"


def main() -> None:
    pid = int(sys.argv[1])
    print(
        json.dumps({"uid": os.getuid(), "capabilities": capabilities(), "mem": read_memory(pid), "ptrace": attach(pid)})
    )


if __name__ == "__main__":
    main()
