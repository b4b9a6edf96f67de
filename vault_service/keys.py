"""KEK lifecycle against the database: start-up verification, online re-wrap after rotation, retirement."""

from __future__ import annotations

import logging

from vault_service.crypto import Keyring
from vault_service.errors import ConfigurationError
from vault_service.storage.pool import Store

log = logging.getLogger(__name__)
REWRAP_BATCH = 200


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
    """The keyring without ``kek_id``, once no credential needs it."""
    smaller = keyring.without(kek_id)  # refuses the active key and unknown ids
    async with store.transaction() as tx:
        usage = await tx.kek_usage()
        if usage.get(kek_id):
            raise ConfigurationError(
                f"KEK {kek_id!r} still wraps {usage[kek_id]} data keys; run 'credvault keys rotate' (or re-run the"
                " re-wrap) first"
            )
        await tx.delete_kek_check(kek_id)
    return smaller
