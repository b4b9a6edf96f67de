"""Envelope encryption: tampering and misplaced ciphertexts fail, rotation keeps everything readable, wrong or
missing KEKs stop the start-up with a clear error."""

from __future__ import annotations

import grpc
import pytest

from credvault.v1 import credentials_pb2 as cpb
from tests.conftest import Client
from tests.helpers import APP, create_req, expect_code, up
from tests.local_pki import LocalPki
from vault_service import keys
from vault_service.config import Settings
from vault_service.crypto import Keyring, new_keyring
from vault_service.errors import ConfigurationError, DecryptionError
from vault_service.server import RunningVault, start_vault

APP_ENGINE_ALL = cpb.AppEngineAccess(allow_contextless_access=True)


async def _readable(admin: Client, cred_id: str) -> cpb.GetCredentialDetailsResponse:
    response: cpb.GetCredentialDetailsResponse = await admin.GetCredentialDetails(
        cpb.GetCredentialDetailsRequest(id=cred_id)
    )
    return response


async def _make(admin: Client, name: str, password: str) -> str:
    req = create_req(name, up("alice", password), scopes=[APP], app_engine=APP_ENGINE_ALL)
    return str((await admin.CreateCredential(req)).credential.id)


def test_seal_open_round_trip_and_aad_binding() -> None:
    ring = new_keyring()
    sealed = ring.seal("CREDENTIALS_VAULT-0000000000000001", 1, b"secret")
    assert ring.open("CREDENTIALS_VAULT-0000000000000001", 1, sealed) == b"secret"
    with pytest.raises(DecryptionError):
        ring.open("CREDENTIALS_VAULT-0000000000000002", 1, sealed)  # another row
    with pytest.raises(DecryptionError):
        ring.open("CREDENTIALS_VAULT-0000000000000001", 2, sealed)  # another version


def test_a_fresh_data_key_per_version() -> None:
    ring = new_keyring()
    a = ring.seal("CREDENTIALS_VAULT-0000000000000001", 1, b"same")
    b = ring.seal("CREDENTIALS_VAULT-0000000000000001", 1, b"same")
    assert a.wrapped_key != b.wrapped_key
    assert a.ciphertext != b.ciphertext


def test_keyring_never_prints_keys() -> None:
    ring = new_keyring()
    assert ring.to_json().split('"kek-1": "')[1].split('"')[0] not in repr(ring)


def test_keyring_parse_errors_are_clear() -> None:
    with pytest.raises(ConfigurationError, match="base64"):
        Keyring.parse("not base64!!", source="CREDVAULT_KEYRING")
    with pytest.raises(ConfigurationError, match="32 bytes"):
        Keyring.parse("AAAA", source="CREDVAULT_KEYRING")
    with pytest.raises(ConfigurationError, match="active"):
        Keyring.parse('{"active": "x", "keys": {"y": "' + "A" * 43 + '="}}', source="f")


async def test_flipped_ciphertext_byte_fails_to_decrypt(admin: Client, vault: RunningVault) -> None:
    cred_id = await _make(admin, "a", "pw-a")
    async with vault.store.transaction() as tx:
        await tx.conn.execute(
            "UPDATE credentials SET ciphertext = overlay(ciphertext placing"
            " set_byte(substring(ciphertext from 20 for 1), 0, get_byte(ciphertext, 19) # 1) from 20 for 1)"
            " WHERE id = $1",
            cred_id,
        )
    err = await expect_code(_readable(admin, cred_id), grpc.StatusCode.DATA_LOSS)
    assert "pw-a" not in (err.details() or "")


async def test_flipped_wrapped_key_byte_fails_to_decrypt(admin: Client, vault: RunningVault) -> None:
    cred_id = await _make(admin, "a", "pw-a")
    async with vault.store.transaction() as tx:
        await tx.conn.execute(
            "UPDATE credentials SET wrapped_key = set_byte(wrapped_key, 15, get_byte(wrapped_key, 15) # 128)"
            " WHERE id = $1",
            cred_id,
        )
    await expect_code(_readable(admin, cred_id), grpc.StatusCode.DATA_LOSS)


async def test_swapped_ciphertexts_fail_to_decrypt(admin: Client, vault: RunningVault) -> None:
    a = await _make(admin, "a", "pw-a")
    b = await _make(admin, "b", "pw-b")
    async with vault.store.transaction() as tx:
        await tx.conn.execute(
            "UPDATE credentials c SET ciphertext = o.ciphertext, wrapped_key = o.wrapped_key, kek_id = o.kek_id"
            " FROM credentials o WHERE (c.id, o.id) IN (($1, $2), ($2, $1))",
            a,
            b,
        )
    await expect_code(_readable(admin, a), grpc.StatusCode.DATA_LOSS)
    await expect_code(_readable(admin, b), grpc.StatusCode.DATA_LOSS)
    # only the ciphertext swapped (each keeps its own wrapped key): still fails
    c = await _make(admin, "c", "pw-c")
    d = await _make(admin, "d", "pw-d")
    async with vault.store.transaction() as tx:
        await tx.conn.execute(
            "UPDATE credentials x SET ciphertext = y.ciphertext FROM credentials y"
            " WHERE (x.id, y.id) IN (($1, $2), ($2, $1))",
            c,
            d,
        )
    await expect_code(_readable(admin, c), grpc.StatusCode.DATA_LOSS)


async def test_rotation_keeps_every_credential_readable_then_old_kek_retires(
    admin: Client, vault: RunningVault, keyring: Keyring, settings: Settings, local_pki: LocalPki
) -> None:
    ids = {await _make(admin, f"c{i}", f"pw-{i}"): f"pw-{i}" for i in range(5)}
    old_kek = keyring.active_id
    added = keyring.with_new_key()
    new_kek = added.newest_id
    vault.keyring.adopt(added)  # the replica has the new KEK (as after reloading its keyring file)
    assert vault.keyring_keeper is not None
    await vault.keyring_keeper.check()
    done = await keys.activate(vault.store, added, new_kek)
    assert (done.rewrapped, done.not_yet) == (5, [])
    async with vault.store.autocommit() as tx:
        assert await tx.kek_usage() == {new_kek: 5}
    rotated = added.with_active(new_kek)
    with pytest.raises(ConfigurationError, match="active"):
        await keys.retire(vault.store, rotated, new_kek)
    retired = await keys.retire(vault.store, rotated, old_kek)
    assert retired.ids == [new_kek]
    await vault.stop(0)
    # a new server process with only the new KEK reads everything
    running = await start_vault(settings, keyring=retired)
    try:
        async with local_pki.channel(running.port) as ch:
            client = Client(ch, admin.token)
            for cred_id, password in ids.items():
                got = await _readable(client, cred_id)
                assert got.details.username_password.password == password
    finally:
        await running.stop(0)


async def test_a_retired_kek_still_in_use_is_refused(admin: Client, vault: RunningVault, keyring: Keyring) -> None:
    await _make(admin, "a", "pw")
    added = keyring.with_new_key()
    async with vault.store.autocommit() as tx:
        await tx.set_active_kek(added.newest_id)  # activated, not yet re-wrapped
    with pytest.raises(ConfigurationError, match="still wraps 1"):
        await keys.retire(vault.store, added.with_active(added.newest_id), "kek-1")


async def test_wrong_kek_is_a_clear_startup_error(admin: Client, vault: RunningVault, settings: Settings) -> None:
    await _make(admin, "a", "pw")
    await vault.stop(0)
    wrong = new_keyring()  # same id kek-1, other key
    with pytest.raises(ConfigurationError, match="not the key this database was encrypted with"):
        await start_vault(settings, keyring=wrong)


async def test_missing_kek_is_a_clear_startup_error(admin: Client, vault: RunningVault, settings: Settings) -> None:
    await _make(admin, "a", "pw")
    await vault.stop(0)
    other = Keyring({"kek-9": b"\x01" * 32}, "kek-9")
    with pytest.raises(ConfigurationError, match=r"lacks KEKs this database needs: 'kek-1' \(1 credentials\)"):
        await start_vault(settings, keyring=other)


async def test_missing_keyring_configuration(database_url: str) -> None:
    settings = Settings(database_url=database_url, allow_plaintext=True)
    with pytest.raises(ConfigurationError, match="CREDVAULT_KEYRING"):
        settings.load_keyring()


async def test_rewrap_leaves_concurrently_overwritten_rows_alone(
    admin: Client, vault: RunningVault, keyring: Keyring
) -> None:
    """replace_sealed is conditional on (version, old kek): a row overwritten meanwhile is not clobbered."""
    cred_id = await _make(admin, "a", "pw-1")
    async with vault.store.autocommit() as tx:
        _, sealed_v1 = await tx.get_credential_sealed(cred_id) or (None, None)
    assert sealed_v1 is not None
    rotated = keyring.with_new_active_key()
    rewrapped_v1 = rotated.rewrap(cred_id, 1, sealed_v1)
    await admin.OverwriteCredential(cpb.OverwriteCredentialRequest(id=cred_id, contents=up("alice", "pw-2")))
    async with vault.store.transaction() as tx:  # the re-wrap read version 1; the row is at version 2 now
        assert not await tx.replace_sealed(cred_id, 1, keyring.active_id, rewrapped_v1)
    got = await _readable(admin, cred_id)
    assert got.details.username_password.password == "pw-2"
    async with vault.store.autocommit() as tx:
        _, sealed_v2 = await tx.get_credential_sealed(cred_id) or (None, None)
    assert sealed_v2 is not None
    async with vault.store.transaction() as tx:  # at the current version it applies
        assert await tx.replace_sealed(cred_id, 2, keyring.active_id, rotated.rewrap(cred_id, 2, sealed_v2))
