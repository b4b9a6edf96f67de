"""`credvault serve`, `migrate`, `keys ...` and `admin bootstrap`: run and operate the vault on its database."""

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
from vault_service import keys
from vault_service.bootstrap import migrate_and_bootstrap
from vault_service.config import Settings, load_settings
from vault_service.crypto import load_keyring_file, write_keyring_file
from vault_service.errors import ConfigurationError
from vault_service.storage.migrate import migrate
from vault_service.storage.pool import Store


def setup_logging(settings: Settings) -> None:
    """Logging as the settings say, with the database password registered so that no log line shows it."""
    configure_logging(settings.log_level, settings.log_format)
    if settings.database_url is not None:  # never in a log line, whatever prints the URL
        register_secret(urlsplit(settings.database_url.get_secret_value()).password)


def _settings(ns: argparse.Namespace, **extra: Any) -> Settings:
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


async def _with_store(settings: Settings, work: Callable[[Store], Awaitable[None]]) -> None:
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
    settings = _settings(ns)
    setup_logging(settings)
    try:
        protect_memory(require_lock=settings.require_mlock, setting="CREDVAULT_REQUIRE_MLOCK")
    except MemoryLockUnavailable as exc:
        raise ConfigurationError(str(exc)) from None
    runtime.run(serve(settings), settings.event_loop)


def cmd_migrate(ns: argparse.Namespace) -> None:
    settings = _settings(ns, allow_plaintext=True)
    setup_logging(settings)

    async def work(store: Store) -> None:
        async with store.pool.acquire() as conn:
            applied = await migrate(conn)
        print(f"applied migrations: {applied or 'none (up to date)'}")

    asyncio.run(_with_store(settings, work))


def _settings_with_keyring_file(ns: argparse.Namespace, missing: str) -> tuple[Settings, pathlib.Path]:
    """The settings of a keys command, which writes the keyring file: ``missing`` says so when none is set."""
    settings = _settings(ns, allow_plaintext=True)
    if settings.keyring_file is None:
        raise ConfigurationError(missing)
    return settings, settings.keyring_file


def cmd_keys_rotate(ns: argparse.Namespace) -> None:
    settings, keyring_file = _settings_with_keyring_file(
        ns, "key rotation writes a keyring file: set CREDVAULT_KEYRING_FILE (or --keyring-file)"
    )
    old = load_keyring_file(keyring_file)
    new = old.with_new_active_key()
    out: pathlib.Path = ns.output or keyring_file

    async def work(store: Store) -> None:
        await keys.verify_keyring(store, old)
        write_keyring_file(out, new)  # first the key is safe on disk, then data keys move to it
        count = await keys.rewrap_all(store, new)
        print(f"active KEK is now {new.active_id!r}; re-wrapped {count} data keys; keyring written to {out}")
        print(f"once every replica runs with this keyring: credvault keys retire {old.active_id}")

    asyncio.run(_with_store(settings, work))


def cmd_keys_retire(ns: argparse.Namespace) -> None:
    settings, keyring_file = _settings_with_keyring_file(
        ns, "retiring a key rewrites the keyring file: set CREDVAULT_KEYRING_FILE"
    )
    keyring = load_keyring_file(keyring_file)

    async def work(store: Store) -> None:
        smaller = await keys.retire(store, keyring, ns.kek_id)
        write_keyring_file(keyring_file, smaller)
        print(f"retired KEK {ns.kek_id!r}; keyring now holds {smaller.ids}")

    asyncio.run(_with_store(settings, work))


def cmd_keys_status(ns: argparse.Namespace) -> None:
    settings = _settings(ns, allow_plaintext=True)
    keyring = settings.load_keyring()

    async def work(store: Store) -> None:
        await keys.verify_keyring(store, keyring)
        async with store.autocommit() as tx:
            usage = await tx.kek_usage()
        print(f"active KEK: {keyring.active_id}")
        for kek_id in sorted(set(keyring.ids) | set(usage)):
            print(f"  {kek_id}: {usage.get(kek_id, 0)} data keys{'' if keyring.has(kek_id) else ' (MISSING)'}")

    asyncio.run(_with_store(settings, work))


def cmd_admin_bootstrap(ns: argparse.Namespace) -> None:
    settings = _settings(ns, allow_plaintext=True)

    issued = asyncio.run(migrate_and_bootstrap(settings.require_database_url(), ns.username))
    print(f"created administrator {ns.username!r}. Its API token (shown once, store it now):", file=sys.stderr)
    print(issued.token)
