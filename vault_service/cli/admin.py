"""`credvault serve`, `migrate` and `admin ...`: run and operate the vault on its database; the toolkit of the commands
that work on the database itself (cli/keys.py too)."""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import sys
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from credvault.log_redaction import register_secret
from credvault.logs import configure_logging
from credvault.memory_guard import MemoryLockUnavailable, protect_memory
from vault_service.bootstrap import grant_scope, migrate_and_bootstrap
from vault_service.config import Settings, load_settings
from vault_service.errors import ConfigurationError
from vault_service.storage.migrate import migrate
from vault_service.storage.pool import Store


def setup_logging(settings: Settings) -> None:
    """Logging as the settings say, with the database password registered so that no log line shows it."""
    configure_logging(settings.log_level, settings.log_format)
    if settings.database_url is not None:  # never in a log line, whatever prints the URL
        register_secret(urlsplit(settings.database_url.get_secret_value()).password)


def server_flags(p: argparse.ArgumentParser) -> None:
    """The flags of every command that works on the database itself (serve, migrate, keys, admin)."""
    p.add_argument("--database-url", help="PostgreSQL URL (env CREDVAULT_DATABASE_URL)")
    p.add_argument("--keyring-file", type=pathlib.Path, help="KEK keyring file (env CREDVAULT_KEYRING_FILE)")


def operator_settings(ns: argparse.Namespace, **extra: Any) -> Settings:
    """The settings from the environment and the command's flags."""
    flags = {
        "database_url": getattr(ns, "database_url", None),
        "keyring_file": getattr(ns, "keyring_file", None),
        "listen": getattr(ns, "listen", None),
        "tls_cert_file": getattr(ns, "tls_cert", None),
        "tls_key_file": getattr(ns, "tls_key", None),
        "allow_plaintext": True if getattr(ns, "allow_plaintext", False) else None,
        "log_level": getattr(ns, "log_level", None),
        "log_format": getattr(ns, "log_format", None),
        **extra,
    }
    return load_settings(**flags)


async def with_store(settings: Settings, work: Callable[[Store], Awaitable[None]]) -> None:
    store = await Store.connect(settings.require_database_url(), min_size=1, max_size=4)
    try:
        await work(store)
    finally:
        await store.close()


def cmd_serve(ns: argparse.Namespace) -> None:
    from credvault import runtime
    from vault_service.server import serve
    from vault_service.tls13 import restart_unless_tls13_only

    restart_unless_tls13_only()  # first: exec resets what protect_memory sets
    settings = operator_settings(ns)
    setup_logging(settings)
    try:
        protect_memory(require_lock=settings.require_mlock, setting="CREDVAULT_REQUIRE_MLOCK")
    except MemoryLockUnavailable as exc:
        raise ConfigurationError(str(exc)) from None
    runtime.run(serve(settings), settings.event_loop)


def cmd_migrate(ns: argparse.Namespace) -> None:
    settings = operator_settings(ns, allow_plaintext=True)
    setup_logging(settings)

    async def work(store: Store) -> None:
        async with store.pool.acquire() as conn:
            applied = await migrate(conn)
        print(f"applied migrations: {applied or 'none (up to date)'}")

    asyncio.run(with_store(settings, work))


def cmd_admin_bootstrap(ns: argparse.Namespace) -> None:
    settings = operator_settings(ns, allow_plaintext=True)

    issued = asyncio.run(migrate_and_bootstrap(settings.require_database_url(), ns.username))
    print(f"created administrator {ns.username!r}. Its API token (shown once, store it now):", file=sys.stderr)
    print(issued.token)


def cmd_admin_grant_scope(ns: argparse.Namespace) -> None:
    settings = operator_settings(ns, allow_plaintext=True)

    async def work(store: Store) -> None:
        changed = await grant_scope(store, ns.scope, username=ns.user, token_id=ns.token)
        who = f"user {ns.user!r}" if ns.user else f"token {ns.token}"
        if changed:
            print(f"granted {ns.scope} to {len(changed)} token(s) of {who}: {', '.join(changed)}")
        else:
            print(f"no live token of {who} lacked {ns.scope}")

    asyncio.run(with_store(settings, work))
