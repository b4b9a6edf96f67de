"""`credvault keys add / activate / retire / status` against a running replica that follows its keyring file."""

from __future__ import annotations

import asyncio
import pathlib

from tests.cli_helpers import assert_contains, base_env, run
from vault_service.config import Settings
from vault_service.crypto import Keyring, load_keyring_file, write_keyring_file
from vault_service.server import start_vault


async def test_a_rotation_through_the_cli_while_a_replica_serves(
    settings: Settings, keyring: Keyring, database_url: str, tmp_path: pathlib.Path
) -> None:
    served = tmp_path / "replica-keyring.json"  # the replica's mounted Secret
    operator = tmp_path / "operator-keyring.json"  # the operator's copy the commands edit
    for f in (served, operator):
        write_keyring_file(f, keyring)
    env = base_env() | {"CREDVAULT_DATABASE_URL": database_url, "CREDVAULT_KEYRING_FILE": str(operator)}
    replica = await start_vault(
        settings.model_copy(update={"keyring_file": served, "replica_id": "r1", "keyring_check_seconds": 0.2})
    )
    try:
        status = await run(env, "keys", "status")
        assert status.rc == 0, status.err
        assert_contains(status.out, "active KEK: kek-1", "kek-1: 0 data keys", "r1: live", "wraps with kek-1")

        added = await run(env, "keys", "add")
        assert added.rc == 0, added.err
        assert_contains(added.out, "added KEK 'kek-2' (not active)", "credvault keys activate kek-2")
        assert load_keyring_file(operator).ids == ["kek-1", "kek-2"]

        refused = await run(env, "keys", "activate", "kek-2")  # the replica does not have it yet
        assert refused.rc != 0
        assert_contains(refused.err, "r1 have not loaded 'kek-2'")

        served.write_bytes(operator.read_bytes())  # the Secret is updated; the replica reloads it
        async with asyncio.timeout(15):
            while "kek-2" not in replica.keyring.ids:  # noqa: ASYNC110 - the replica's keeper reloads on its own
                await asyncio.sleep(0.05)
        activated = await run(env, "keys", "activate", "kek-2", "--wait", "10")
        assert activated.rc == 0, activated.err
        assert_contains(activated.out, "active KEK is now 'kek-2'")
        assert replica.keyring.active_id == "kek-2"

        early = await run(env, "keys", "retire", "kek-2")
        assert early.rc != 0
        assert_contains(early.err, "active", "kek-2")
        retired = await run(env, "keys", "retire", "kek-1")
        assert retired.rc == 0, retired.err
        assert load_keyring_file(operator).ids == ["kek-2"]
        status = await run(env, "keys", "status")
        assert_contains(status.out, "active KEK: kek-2", "wraps with kek-2")
        assert b"kek-1" not in operator.read_bytes()
    finally:
        await replica.stop(0)
