"""Keeping a process's memory off disk and out of other processes' reach: the engine worker holds resolved
credentials "in Synthetic engine memory (with no persistence layers involved)" (seed 000), and the vault holds
decrypted secrets while it answers a call or pushes a configuration.

:func:`protect_memory`, called once at start before any secret is in memory, does three things (Linux):

- RLIMIT_CORE 0, soft and hard: a crash writes no core file, and nothing in the process can raise the limit again;
- ``prctl(PR_SET_DUMPABLE, 0)``: no core dump either, not even through a core_pattern pipe (unless the node sets
  fs.suid_dumpable=2), and processes of the same user can no longer attach with ptrace or read ``/proc/<pid>/mem``
  (only CAP_SYS_PTRACE can);
- ``mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)``: every page the process has or will have stays in RAM, never
  in swap. MCL_ONFAULT locks pages as they are first touched instead of touching every reserved page at once: Python
  threads reserve 8 MiB stacks and glibc 64 MiB malloc arenas they mostly never use, and locking those up front
  would commit hundreds of MiB; pages never touched hold nothing.

Locking needs CAP_IPC_LOCK or an RLIMIT_MEMLOCK above the process's whole size. CAP_IPC_LOCK may arrive only in the
permitted set: the image gives its interpreter the file capability ``cap_ipc_lock+p`` (permitted, not effective, so
that the interpreter still runs where the container's bounding set lacks it), and a capability-aware program raises
it into its effective set itself, which :func:`protect_memory` does before ``mlockall`` (and keeps: MCL_FUTURE checks
it again at every new mapping). Without either, the process says so
once (a warning naming both), runs unlocked, and :func:`memory_locked` (the ``memory_locked`` metric) is False; with
``require_lock`` that is a :class:`MemoryLockUnavailable` instead. The other two steps need no privilege.

Both are reset by ``execve``: a process that starts over (``credvault serve`` does, for TLS 1.3) calls this after.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import resource
import sys
from dataclasses import dataclass

__all__ = ["MemoryLockUnavailable", "MemoryProtection", "memory_locked", "protect_memory"]

log = logging.getLogger(__name__)

PR_SET_DUMPABLE = 4
# <asm-generic/mman-common.h> (x86, arm, riscv, s390; alpha, powerpc and sparc number them otherwise: not supported)
MCL_CURRENT = 1
MCL_FUTURE = 2
MCL_ONFAULT = 4
CAPABILITY = "IPC_LOCK"
CAP_IPC_LOCK = 14
# <linux/capability.h>: capget/capset with version 3 take two 32-bit words per set
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_UNLOCKED = (
    "memory is not locked (mlockall: {reason}), so secrets in it may be swapped to disk: grant the capability "
    "{capability} (CAP_{capability}) or raise RLIMIT_MEMLOCK (now {limit}) above the process's size; {setting} "
    "makes this a start-up error"
)
_REFUSED = (
    "memory cannot be locked (mlockall: {reason}) and {setting} requires it: grant the capability {capability} "
    "(CAP_{capability}) or raise RLIMIT_MEMLOCK (now {limit}) above the process's size"
)


class MemoryLockUnavailable(Exception):
    """Locking was required (``require_lock``) and the process may not lock its memory."""


@dataclass(frozen=True)
class MemoryProtection:
    """What :func:`protect_memory` achieved: core dumps and same-user reads are always off on Linux."""

    locked: bool
    unlocked_reason: str = ""  # an errno name (EPERM, ENOMEM) or "not Linux" when not locked


_state = MemoryProtection(locked=False, unlocked_reason="not protected (protect_memory was not called)")


def memory_locked() -> bool:
    """Whether this process's memory is locked (False until :func:`protect_memory` locked it)."""
    return _state.locked


def protect_memory(*, require_lock: bool, setting: str) -> MemoryProtection:
    """No core dumps, not dumpable, and memory locked where permitted. ``setting`` names the flag or variable that
    makes locking required (for the messages). Raises :class:`MemoryLockUnavailable` if ``require_lock`` and the
    memory cannot be locked; otherwise logs one warning and returns."""
    global _state
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if not sys.platform.startswith("linux"):
        result = MemoryProtection(locked=False, unlocked_reason=f"not Linux ({sys.platform})")
    else:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
        _raise_permitted_capability(libc, CAP_IPC_LOCK)
        if libc.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) == 0:
            result = MemoryProtection(locked=True)
        else:
            code = ctypes.get_errno()
            result = MemoryProtection(locked=False, unlocked_reason=errno.errorcode.get(code, str(code)))
    _state = result
    if not result.locked:
        fields = {"reason": result.unlocked_reason, "capability": CAPABILITY, "limit": _memlock_limit()}
        if require_lock:
            raise MemoryLockUnavailable(_REFUSED.format(setting=setting, **fields))
        log.warning(_UNLOCKED.format(setting=setting, **fields))
    else:
        log.info("memory locked (mlockall), core dumps off, not dumpable")
    return result


def _memlock_limit() -> str:
    soft = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    return "unlimited" if soft == resource.RLIM_INFINITY else f"{soft // 1024} KiB"


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _raise_permitted_capability(libc: ctypes.CDLL, capability: int) -> None:
    """Adds ``capability`` to this thread's effective set if it is in the permitted set and not effective yet (a file
    capability without the effective bit). Nothing otherwise: no capability is ever gained that was not permitted.
    Called before any other thread starts, so that the threads created later inherit it."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    word, bit = divmod(capability, 32)
    mask = 1 << bit
    if not data[word].permitted & mask or data[word].effective & mask:
        return
    data[word].effective |= mask
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), f"capset (raising capability {capability} into the effective set) failed")
