"""Pieces the bench scripts share: ports, child environments, tools beside this interpreter, throwaway databases."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import socket
import sys
from urllib.parse import urlsplit, urlunsplit

import asyncpg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def child_env(**extra: str) -> dict[str, str]:
    """This environment without settings of the systems under test, plus ``extra``."""
    prefixes = ("CREDVAULT_", "ENGINE_", "BAO_", "VAULT_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(extra)
    return env


def venv_bin(name: str) -> str | None:
    beside = pathlib.Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


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
