"""The embedded PostgreSQL (pgserver) for `credvault dev` and for tests on machines without a server."""

from __future__ import annotations

import pathlib
from typing import Any


def start(pgdata: pathlib.Path) -> tuple[str, Any]:
    """Start (or reuse) a PostgreSQL in ``pgdata``; returns its URL and a handle whose cleanup() stops it."""
    import pgserver  # imported late: it is only needed here

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
    return server.get_uri(), server
