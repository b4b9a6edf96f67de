"""Changing a credential's external source after creation (OverwriteCredential with external_source; CLI
`credentials update ID --external-source FILE`), against the CyberArk CCP and Azure Key Vault fakes: the same checks as
creation (more than VIEW_ENVIRONMENT, access to each companion, the fields), the contents kept until the new
source's first synchronization, which is due at once and reads the new source; a typed credential may become
synchronized this way."""

from __future__ import annotations

import asyncio
import json
import pathlib

import grpc
import pytest
from google.protobuf import json_format

from credvault.v1 import audit_pb2 as apb
from credvault.v1 import credentials_pb2 as cpb
from tests.azure_key_vault_fake import AzureKeyVaultFake
from tests.conftest import Client, Users
from tests.cyberark_ccp_fake import Account, CyberArkCcpFake
from tests.helpers import MONITORING, PD, SYN, VIEW, expect_code
from tests.local_pki import LocalPki
from tests.vault_service.test_external_sync import TOKEN, UP, _stored, create_synced, sync, until
from tests.vault_service.test_external_sync_azure import companions
from tests.vault_service.test_external_sync_azure import source as azure_source
from tests.vault_service.test_external_sync_cyberark import shop
from tests.vault_service.test_external_sync_cyberark import source as ccp_source
from vault_service.config import Settings
from vault_service.external_sync.provider import Companions, Fetched, Provider
from vault_service.models import ExternalProvider, ExternalSource, UsernamePasswordSecret
from vault_service.server import RunningVault


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"external_sync": False})


async def ccp_pair(
    admin: Client, local_pki: LocalPki, ccp: CyberArkCcpFake, **accounts: Account
) -> tuple[str, str, cpb.Credential]:
    """shop(), and a credential reading the first account."""
    client, ca = await shop(admin, local_pki, ccp, accounts)
    made = await create_synced(admin, "pair", ccp_source(ccp, ca, client, "Shop", next(iter(accounts))))
    return client, ca, made


async def change(client: Client, cred_id: str, src: cpb.ExternalSource, **kw: object) -> cpb.Credential:
    req = cpb.OverwriteCredentialRequest(id=cred_id, external_source=src, **kw)
    done: cpb.OverwriteCredentialResponse = await client.OverwriteCredential(req)
    return done.credential


async def test_a_new_source_is_read_at_once_and_the_contents_stay_until_then(
    admin: Client, vault: RunningVault, local_pki: LocalPki, ccp: CyberArkCcpFake, azure: AzureKeyVaultFake
) -> None:
    client, ca, made = await ccp_pair(
        admin, local_pki, ccp, old=Account("olga", "old-pw"), new=Account("nina", "new-pw")
    )
    assert (await sync(admin, made.id)).version == 2
    ccp.provider_down = True
    assert (await sync(admin, made.id)).sync_status.last_error  # a failure of the old source, then a new source

    changed = await change(admin, made.id, ccp_source(ccp, ca, client, "Shop", "new"), expected_version=2)
    assert changed.version == 3
    assert changed.external_source.cyberark_account.object == "new"
    assert changed.sync_status.last_error == ""  # the old source's status is gone
    assert (await _stored(vault, made.id))[1] == UsernamePasswordSecret("olga", "old-pw")  # kept until the sync
    events = await admin.ListAuditEvents(apb.ListAuditEventsRequest(target_id=made.id, page_size=100))
    audited = [e for e in events.events if e.action == "credential.change_source"]
    assert [(e.details["version"], e.details["provider"]) for e in audited] == [("3", "CYBERARK_CCP")]

    ccp.provider_down = False
    assert (await sync(admin, made.id)).version == 4
    assert (await _stored(vault, made.id))[1] == UsernamePasswordSecret("nina", "new-pw")

    # another provider altogether; the next synchronization is due at once (the schedule, not SyncCredential)
    azure.set_secret("az-user", "zoe")
    azure.set_secret("az-pass", "az-pw")
    c = await companions(admin, local_pki)
    changed = await change(admin, made.id, azure_source(azure, c, "az-user", "az-pass"))
    assert changed.external_source.provider == cpb.EXTERNAL_PROVIDER_AZURE_KEY_VAULT
    assert vault.synchronizer is not None
    from vault_service.external_sync.scheduler import SyncScheduler

    scheduler = SyncScheduler(vault.store, vault.synchronizer, 0.05)
    scheduler.start()
    try:

        async def read_from_azure() -> bool:
            return (await _stored(vault, made.id))[1] == UsernamePasswordSecret("zoe", "az-pw")

        await until(read_from_azure)
    finally:
        await scheduler.stop()


class Gated:
    """The real provider, held after it has read the secret (or failed to) until the test opens the gate."""

    def __init__(self, real: Provider) -> None:
        self.real = real
        self.read = asyncio.Event()
        self.gate = asyncio.Event()

    async def fetch(self, source: ExternalSource, companions: Companions) -> Fetched:
        try:
            return await self.real.fetch(source, companions)
        finally:  # a value or a failure: either is held
            self.read.set()
            await self.gate.wait()

    async def close(self) -> None:
        await self.real.close()


@pytest.mark.parametrize("old_source_fails", [False, True])
async def test_a_run_that_read_the_old_source_writes_nothing_over_the_new_one(
    admin: Client,
    vault: RunningVault,
    local_pki: LocalPki,
    ccp: CyberArkCcpFake,
    monkeypatch: pytest.MonkeyPatch,
    old_source_fails: bool,
) -> None:
    client, ca, made = await ccp_pair(
        admin, local_pki, ccp, old=Account("olga", "old-pw"), new=Account("nina", "new-pw")
    )
    assert (await sync(admin, made.id)).version == 2
    synchronizer = vault.synchronizer
    assert synchronizer is not None
    gated = Gated(synchronizer.provider(ExternalProvider.CYBERARK_CCP))
    monkeypatch.setitem(synchronizer._providers, ExternalProvider.CYBERARK_CCP, gated)
    if old_source_fails:
        ccp.provider_down = True  # the old run fails: its failure must not become the new source's status
    else:
        ccp.set_account("Shop", "old", Account("olga", "stale-pw"))  # the old run read a value to write
    async with vault.store.autocommit() as tx:
        assert await tx.claim_sync(made.id, synchronizer.owner, 60)
    old_run = asyncio.create_task(synchronizer.run(made.id))
    await asyncio.wait_for(gated.read.wait(), 30)
    assert (await change(admin, made.id, ccp_source(ccp, ca, client, "Shop", "new"))).version == 3
    async with vault.store.autocommit() as tx:  # the same replica takes the new source's lease at once
        assert await tx.claim_sync(made.id, synchronizer.owner, 60)
    gated.gate.set()
    await old_run
    after = await admin.GetCredential(cpb.GetCredentialRequest(id=made.id))
    assert (after.credential.version, after.credential.sync_status.last_error) == (3, "")
    assert (await _stored(vault, made.id))[1] == UsernamePasswordSecret("olga", "old-pw")
    ccp.provider_down = False
    assert await synchronizer.run(made.id) == "changed"  # the new source's run, under the lease taken above
    assert (await _stored(vault, made.id))[1] == UsernamePasswordSecret("nina", "new-pw")


async def test_a_typed_credential_becomes_synchronized(
    admin: Client, vault: RunningVault, local_pki: LocalPki, ccp: CyberArkCcpFake
) -> None:
    client, ca = await shop(admin, local_pki, ccp, {"db": Account("erin", "from-ccp")})
    typed = cpb.CredentialContents(username_password=cpb.UsernamePassword(username="erin", password="typed"))
    made = (
        await admin.CreateCredential(cpb.CreateCredentialRequest(name="t", scopes=[SYN], contents=typed))
    ).credential
    changed = await change(admin, made.id, ccp_source(ccp, ca, client, "Shop", "db"))
    assert (changed.version, changed.HasField("external_source")) == (2, True)
    assert (await _stored(vault, made.id))[1] == UsernamePasswordSecret("erin", "typed")
    assert (await sync(admin, made.id)).version == 3
    assert (await _stored(vault, made.id))[1] == UsernamePasswordSecret("erin", "from-ccp")
    # and from now on its contents are not typed by hand
    await expect_code(
        admin.OverwriteCredential(cpb.OverwriteCredentialRequest(id=made.id, contents=typed)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


async def test_the_rules_of_creation_apply(
    admin: Client, users: Users, local_pki: LocalPki, ccp: CyberArkCcpFake
) -> None:
    client, ca = await shop(admin, local_pki, ccp, {"db": Account("erin", "pw")})
    src = ccp_source(ccp, ca, client, "Shop", "db")
    viewer = await users.make("viewer", [VIEW])
    editor = await users.make("editor", [MONITORING])
    typed = cpb.CredentialContents(username_password=cpb.UsernamePassword(username="v", password="p"))
    own = (
        await viewer.CreateCredential(cpb.CreateCredentialRequest(name="v", scopes=[SYN], contents=typed))
    ).credential

    # VIEW_ENVIRONMENT may not configure synchronization, even on its own credential
    await expect_code(change(viewer, own.id, src), PD)
    # the companions are the admin's, owner only: the editor has no access to them
    await expect_code(change(editor, own.id, src), PD)
    for cid in (client, ca):
        await admin.UpdateCredentialMetadata(
            cpb.UpdateCredentialMetadataRequest(id=cid, access=cpb.Access(level=cpb.ACCESS_LEVEL_ALL))
        )
    # a stale expected version, contents with a source, a bad field, a type CyberArk does not synchronize
    await expect_code(change(editor, own.id, src, expected_version=7), grpc.StatusCode.ABORTED)
    err = await expect_code(change(editor, own.id, src, contents=typed), grpc.StatusCode.INVALID_ARGUMENT)
    assert (err.details() or "").startswith("contents:")
    bad = ccp_source(ccp, ca, client, "Shop", "")
    err = await expect_code(change(editor, own.id, bad), grpc.StatusCode.INVALID_ARGUMENT)
    assert (err.details() or "").startswith("external_source.cyberark_account.object:"), err.details()
    tok = (
        await admin.CreateCredential(
            cpb.CreateCredentialRequest(
                name="tok", scopes=[SYN], contents=cpb.CredentialContents(token=cpb.Token(token="t"))
            )
        )
    ).credential
    assert tok.type == TOKEN
    err = await expect_code(change(admin, tok.id, src), grpc.StatusCode.INVALID_ARGUMENT)
    assert "USERNAME_PASSWORD" in (err.details() or "")
    await expect_code(change(admin, ca, src), grpc.StatusCode.INVALID_ARGUMENT)  # a PUBLIC_CERTIFICATE
    await expect_code(change(admin, "CREDENTIALS_VAULT-00000000000000AA", src), grpc.StatusCode.NOT_FOUND)

    # with access to the companions: done, and the editor owns it now (its access is what syncs check)
    changed = await change(editor, own.id, src)
    assert (changed.owner, changed.type) == ("editor", UP)
    assert (await sync(editor, own.id)).sync_status.last_error == ""


async def test_cli_update_external_source(
    admin: Client, vault: RunningVault, local_pki: LocalPki, ccp: CyberArkCcpFake, tmp_path: pathlib.Path
) -> None:
    from tests.cli_helpers import cli_env, run

    client, ca, made = await ccp_pair(admin, local_pki, ccp, a=Account("ann", "pw-a"), b=Account("bob", "pw-b"))
    (tmp_path / "source.json").write_text(json_format.MessageToJson(ccp_source(ccp, ca, client, "Shop", "b")))
    env = cli_env(vault, local_pki, admin, tmp_path)
    updated = await run(env, "credentials", "update", made.id, "--external-source", str(tmp_path / "source.json"))
    assert updated.rc == 0, updated.err
    assert "pw-b" not in updated.out
    mixed = await run(
        env, "credentials", "update", made.id, "--name", "x", "--external-source", str(tmp_path / "source.json")
    )
    assert mixed.rc != 0
    assert "--external-source" in mixed.err
    synced = await run(env, "credentials", "sync", made.id, "--json")
    assert synced.rc == 0, synced.err
    assert json.loads(synced.out)["credential"]["external_source"]["cyberark_account"]["object"] == "b"
    assert (await _stored(vault, made.id))[1] == UsernamePasswordSecret("bob", "pw-b")
