"""One `credvault dev` per data directory: an exclusive lock on ``<data dir>/dev.lock`` that holds its PID.

The lock is the kernel's (flock): it goes with the process, however that ends, so a stale file never blocks a start.
"""

from __future__ import annotations

import fcntl
import os
import pathlib

from vault_service.errors import UsageError

LOCK_FILE = "dev.lock"


def lock_data_dir(data_dir: pathlib.Path) -> int:
    """Locks ``data_dir`` for this process and returns the lock's descriptor (keep it open while running).

    Raises UsageError naming the PID of the `credvault dev` that holds it already."""
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise UsageError(
            f"another credvault dev (PID {holder}) is running on {data_dir}: stop it first, or pass another --data-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
