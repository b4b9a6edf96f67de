"""`credvault keys ...`: two-phase KEK rotation on the database and the keyring file (see vault_service.keys).

credvault keys add             a new KEK in the keyring file, not active yet: give it to every replica
credvault keys activate KEK    once every live replica has it: replicas wrap with it, data keys are re-wrapped
credvault keys retire KEK      once nothing needs it: removed from the keyring file
credvault keys status          the active KEK, data keys per KEK, and what each replica has loaded
credvault keys rotate          add and activate in one (a single replica, or none running)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import pathlib
from collections.abc import Awaitable, Callable

from vault_service import keys
from vault_service.cli.admin import operator_settings, server_flags, with_store
from vault_service.cli.session import add_group
from vault_service.crypto import Keyring, load_keyring_file, write_keyring_file
from vault_service.errors import ConfigurationError
from vault_service.storage.pool import Store


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    flags = server_flags
    k = add_group(sub, "keys", "key-encryption keys: add, activate, retire, status (two-phase rotation), rotate")
    p = k.add_parser("add", help="add a new KEK to the keyring file, not active yet")
    flags(p)
    p.set_defaults(func=cmd_keys_add)
    p = k.add_parser("activate", help="make a KEK active once every live replica has it, and re-wrap data keys")
    flags(p)
    p.add_argument("kek_id")
    p.add_argument("--wait", type=float, default=30.0, help="seconds to wait for replicas to switch (default 30)")
    p.set_defaults(func=cmd_keys_activate)
    p = k.add_parser("retire", help="remove a KEK nothing needs any more from the keyring file")
    flags(p)
    p.add_argument("kek_id")
    p.set_defaults(func=cmd_keys_retire)
    p = k.add_parser("status", help="the active KEK, data keys per KEK, and what each replica has loaded")
    flags(p)
    p.set_defaults(func=cmd_keys_status)
    p = k.add_parser("rotate", help="add a KEK and activate it at once (one replica, or none running)")
    flags(p)
    p.add_argument("--output", type=pathlib.Path, help="write the new keyring here (default: in place)")
    p.set_defaults(func=cmd_keys_rotate)


def _keyring_file(ns: argparse.Namespace) -> tuple[pathlib.Path, Keyring]:
    settings = operator_settings(ns, allow_plaintext=True)
    if settings.keyring_file is None:
        raise ConfigurationError("the keys commands read and write a keyring file: set CREDVAULT_KEYRING_FILE")
    return settings.keyring_file, load_keyring_file(settings.keyring_file)


def _run(ns: argparse.Namespace, work: Callable[[Store], Awaitable[None]]) -> None:
    asyncio.run(with_store(operator_settings(ns, allow_plaintext=True), work))


def cmd_keys_add(ns: argparse.Namespace) -> None:
    path, keyring = _keyring_file(ns)

    async def work(store: Store) -> None:
        await keys.verify_keyring(store, keyring)
        added = keyring.with_new_key()
        write_keyring_file(path, added)
        print(f"added KEK {added.newest_id!r} (not active) to {path}")
        print(f"give this keyring to every replica, then: credvault keys activate {added.newest_id}")

    _run(ns, work)


def cmd_keys_activate(ns: argparse.Namespace) -> None:
    path, keyring = _keyring_file(ns)

    async def work(store: Store) -> None:
        done = await keys.activate(store, keyring, ns.kek_id, settle_seconds=ns.wait)
        write_keyring_file(path, keyring.with_active(ns.kek_id))
        print(f"active KEK is now {ns.kek_id!r}; re-wrapped {done.rewrapped} data keys")
        if done.not_yet:
            print(f"replicas still switching (at their next keyring check): {', '.join(done.not_yet)}")
        print("once no replica wraps with the old KEK (credvault keys status): credvault keys retire <old KEK>")

    _run(ns, work)


def cmd_keys_retire(ns: argparse.Namespace) -> None:
    path, keyring = _keyring_file(ns)

    async def work(store: Store) -> None:
        smaller = await keys.retire(store, keyring, ns.kek_id)
        write_keyring_file(path, smaller)
        print(f"retired KEK {ns.kek_id!r}; keyring now holds {smaller.ids}: give it to every replica")

    _run(ns, work)


def cmd_keys_rotate(ns: argparse.Namespace) -> None:
    path, keyring = _keyring_file(ns)
    out: pathlib.Path = ns.output or path

    async def work(store: Store) -> None:
        await keys.verify_keyring(store, keyring)
        added = keyring.with_new_key()
        write_keyring_file(out, added)  # first the key is safe on disk, then data keys move to it
        done = await keys.activate(store, added, added.newest_id)
        write_keyring_file(out, added.with_active(added.newest_id))
        print(f"active KEK is now {added.newest_id!r}; re-wrapped {done.rewrapped} data keys; keyring written to {out}")
        print(f"once every replica runs with this keyring: credvault keys retire {keyring.active_id}")

    _run(ns, work)


def cmd_keys_status(ns: argparse.Namespace) -> None:
    keyring = operator_settings(ns, allow_plaintext=True).load_keyring()

    async def work(store: Store) -> None:
        await keys.verify_keyring(store, keyring)
        async with store.autocommit() as tx:
            usage = await tx.kek_usage()
            active = await tx.active_kek()
            replicas = await tx.replicas()
        print(f"active KEK: {active or keyring.active_id}")
        for kek_id in sorted(set(keyring.ids) | set(usage)):
            missing = "" if keyring.has(kek_id) else " (MISSING from this keyring)"
            print(f"  {kek_id}: {usage.get(kek_id, 0)} data keys{missing}")
        now = datetime.datetime.now(datetime.UTC)
        print("replicas:" if replicas else "replicas: none reporting")
        for r in replicas:
            state = "live" if r.live else "gone"
            ago = (now - r.seen_at).total_seconds()
            print(
                f"  {r.replica_id}: {state}, seen {ago:.0f} s ago, wraps with {r.active_kek}, loaded {list(r.kek_ids)}"
            )

    _run(ns, work)
