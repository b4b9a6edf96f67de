"""KEK lifecycle against the database: start-up verification, the active KEK every replica follows, two-phase
rotation (add a KEK everywhere, activate it once every live replica has it, re-wrap, retire the old one once nothing
needs it), online re-wrap.

Why two phases: a data key wrapped with a KEK that some replica has not loaded yet cannot be opened there. So the
active KEK is the database's choice, and each replica reports what it has loaded (:mod:`vault_service.keyring_keeper`):
``activate`` refuses while a live replica lacks the KEK, and ``retire`` while a live replica still wraps with it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from vault_service.bootstrap import OPERATOR
from vault_service.crypto import Keyring
from vault_service.errors import ConfigurationError
from vault_service.storage.keys import ReplicaKeys
from vault_service.storage.pool import Store

log = logging.getLogger(__name__)
REWRAP_BATCH = 200


async def follow_database(store: Store, keyring: Keyring) -> str:
    """Makes ``keyring`` wrap with the database's active KEK (seeding it with the keyring's own on first start);
    ConfigurationError when this keyring does not hold it."""
    async with store.autocommit() as tx:
        active = await tx.seed_active_kek(keyring.active_id)
    if not keyring.has(active):
        raise ConfigurationError(
            f"the active KEK {active!r} (chosen in the database by 'credvault keys activate') is not in this keyring,"
            f" which holds {keyring.ids}: give this replica the current keyring"
        )
    keyring.activate(active)
    return active


@dataclasses.dataclass(frozen=True)
class Activation:
    kek_id: str
    rewrapped: int
    replicas: list[str]  # the live replicas that wrap with it now
    not_yet: list[str]  # live replicas that had not switched when the wait ended (they do at their next check)


async def activate(store: Store, keyring: Keyring, kek_id: str, *, settle_seconds: float = 30.0) -> Activation:
    """Makes ``kek_id`` the KEK every replica wraps new data keys with, then re-wraps the others under it. Refused
    (ConfigurationError, naming them) while a live replica has not loaded ``kek_id``."""
    if not keyring.has(kek_id):
        raise ConfigurationError(f"this keyring has no key {kek_id!r}: add it first (credvault keys add)")
    await verify_keyring(store, keyring)
    async with store.transaction() as tx:
        live = [r for r in await tx.replicas() if r.live]
        lacking = sorted(r.replica_id for r in live if kek_id not in r.kek_ids)
        if lacking:
            raise ConfigurationError(
                f"not activated: the live replicas {', '.join(lacking)} have not loaded {kek_id!r} yet; give them the"
                " keyring that holds it (they reload it when the file changes, or on SIGHUP), then try again"
            )
        previous = await tx.active_kek()
        await tx.insert_kek_check(kek_id, keyring.make_check(kek_id))
        await tx.set_active_kek(kek_id)
        await tx.insert_audit(OPERATOR, None, "kek.activate", kek_id, "ok", {"previous": previous})
    switched = await _until_replicas_wrap_with(store, kek_id, settle_seconds)
    rewrapped = await rewrap_all(store, keyring.with_active(kek_id))
    return Activation(
        kek_id,
        rewrapped,
        sorted(r.replica_id for r in switched if r.active_kek == kek_id),
        sorted(r.replica_id for r in switched if r.active_kek != kek_id),
    )


async def _until_replicas_wrap_with(store: Store, kek_id: str, limit_seconds: float) -> list[ReplicaKeys]:
    """Every live replica's report, once they all wrap with ``kek_id`` or ``limit_seconds`` passed."""
    deadline = time.monotonic() + limit_seconds
    while True:
        async with store.autocommit() as tx:
            live = [r for r in await tx.replicas() if r.live]
        if all(r.active_kek == kek_id for r in live) or time.monotonic() >= deadline:
            return live
        await asyncio.sleep(0.2)


async def verify_keyring(store: Store, keyring: Keyring) -> None:
    """Fail start-up with a clear message when a needed KEK is missing or is not the key the database knows.

    Records a check value for the active KEK the first time it is used, so later starts can tell a wrong key.
    """
    async with store.transaction() as tx:
        checks = await tx.kek_checks()
        usage = await tx.kek_usage()
        missing = {k: n for k, n in usage.items() if not keyring.has(k)}
        if missing:
            listed = ", ".join(f"{k!r} ({n} credentials)" for k, n in sorted(missing.items()))
            raise ConfigurationError(f"the keyring lacks KEKs this database needs: {listed}")
        for kek_id, check in checks.items():
            if keyring.has(kek_id) and not keyring.verify_check(kek_id, check):
                raise ConfigurationError(
                    f"KEK {kek_id!r} in the keyring is not the key this database was encrypted with (wrong key?)"
                )
        if keyring.active_id not in checks:
            await tx.insert_kek_check(keyring.active_id, keyring.make_check(keyring.active_id))


async def rewrap_all(store: Store, keyring: Keyring) -> int:
    """Re-wrap every data key not under the active KEK. Online: each batch is its own short transaction, and a row
    changed meanwhile (by an overwrite, sealed fresh) is left to that change. Returns how many were re-wrapped."""
    await verify_keyring(store, keyring)
    done = 0
    after = ""
    while True:
        async with store.autocommit() as tx:
            batch = await tx.sealed_not_under(keyring.active_id, after, REWRAP_BATCH)
        if not batch:
            break
        async with store.transaction() as tx:
            for credential_id, version, sealed in batch:
                if await tx.replace_sealed(
                    credential_id, version, sealed.kek_id, keyring.rewrap(credential_id, version, sealed)
                ):
                    done += 1
        after = batch[-1][0]
    log.info("re-wrapped %d data keys under KEK %s", done, keyring.active_id)
    return done


async def retire(store: Store, keyring: Keyring, kek_id: str) -> Keyring:
    """The keyring without ``kek_id``, once nothing needs it: it is not the active KEK, no data key is wrapped with
    it, and no live replica still wraps with it."""
    smaller = keyring.without(kek_id)  # refuses the keyring's own active key and unknown ids
    async with store.transaction() as tx:
        if await tx.active_kek() == kek_id:
            raise ConfigurationError(f"KEK {kek_id!r} is the active KEK: activate another one first")
        usage = await tx.kek_usage()
        if usage.get(kek_id):
            raise ConfigurationError(
                f"KEK {kek_id!r} still wraps {usage[kek_id]} data keys; run 'credvault keys activate' for the new KEK"
                " (it re-wraps them) or re-run the re-wrap first"
            )
        wrapping = sorted(r.replica_id for r in await tx.replicas() if r.live and r.active_kek == kek_id)
        if wrapping:
            raise ConfigurationError(
                f"the live replicas {', '.join(wrapping)} still wrap new data keys with {kek_id!r}; wait for their next"
                " keyring check (or restart them), then try again"
            )
        await tx.delete_kek_check(kek_id)
        await tx.insert_audit(OPERATOR, None, "kek.retire", kek_id, "ok")
    return smaller
