"""The embedded PostgreSQL (pgserver) for `credvault dev` and for tests on machines without a server."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pathlib
import time
import warnings
from collections.abc import Iterator
from typing import Any

_PR_SET_CHILD_SUBREAPER = 36
_REAP_WAIT_SECONDS = 10.0  # pg_ctl stop -w returned: the postmaster is exiting


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """pgserver's noise: platformdirs warns about an unset XDG_RUNTIME_DIR (pgserver falls back to /tmp, which is
    fine), and pgserver logs every command it runs, with its output, at INFO."""
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        yield


def start(pgdata: pathlib.Path) -> tuple[str, Any]:
    """Start (or reuse) a PostgreSQL in ``pgdata``; returns its URL and a handle whose cleanup() stops it."""
    with _quiet():
        import pgserver  # imported late: it is only needed here

        pgdata.parent.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
    return server.get_uri(), server


def adopt_orphans() -> None:
    """Makes this process the parent of the processes its children leave behind (Linux's child subreaper), so that
    the postmaster ``pg_ctl`` starts (and orphans) is reaped by :func:`stop_and_reap`, not left ``<defunct>``
    until PID 1 reaps it (a container's PID 1 may never do). Call it before :func:`start`."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def stop_and_reap(server: Any) -> None:
    """Stops the server started by :func:`start` and, if it was adopted (:func:`adopt_orphans`), reaps it."""
    info = getattr(server, "_postmaster_info", None)
    postmaster = getattr(info, "pid", None)
    with _quiet():
        server.cleanup()
    if not isinstance(postmaster, int):
        return
    deadline = time.monotonic() + _REAP_WAIT_SECONDS
    while time.monotonic() < deadline:
        try:
            if os.waitpid(postmaster, os.WNOHANG)[0]:
                return
        except ChildProcessError:  # not our child: reused, or this process did not adopt it
            return
        time.sleep(0.05)
