"""Pieces the bench scripts share: ports and child environments (the tests'), tools beside this interpreter,
throwaway databases, the commit under test."""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import subprocess
import sys
from typing import Any

import asyncpg

# The benches start the vault and workers as the tests do, on the tests' PKI (tests/local_pki.py, tests/processes.py).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from tests.conftest import with_database
from tests.processes import child_environment as child_env
from tests.processes import free_port

__all__ = ["Database", "child_env", "free_port", "source_info", "venv_bin", "with_database"]

REPOSITORY = pathlib.Path(__file__).resolve().parent.parent


def venv_bin(name: str) -> str | None:
    beside = pathlib.Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def source_info() -> dict[str, Any]:
    """The commit of the code under test, and whether the work tree differs from it (read-only git calls)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPOSITORY, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPOSITORY,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None}
    return {"commit": commit, "uncommitted_changes": bool(changes.strip())}


@dataclasses.dataclass
class Database:
    admin_url: str
    name: str
    dropped: bool = False

    @property
    def url(self) -> str:
        return with_database(self.admin_url, self.name)

    async def create(self) -> None:
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await conn.close()

    async def drop(self) -> None:
        if self.dropped:
            return
        conn = await asyncpg.connect(self.admin_url, timeout=10)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            self.dropped = True
        finally:
            await conn.close()
