"""Sync lease takeover (issue 13): a replica that took a credential's sync lease and died leaves it held until it
expires; then the schedulers of the other replicas take it over, exactly one of them synchronizes, and the dead
holder's late finish is refused. Real OpenBao, real PostgreSQL, real vault replicas on one database."""

from __future__ import annotations

import asyncio
import datetime

import grpc
import pytest

from credvault.v1 import credentials_pb2 as cpb
from tests.conftest import Client, admin_of
from tests.local_pki import LocalPki
from tests.openbao import OpenBao
from tests.vault_service.test_external_sync import (
    companions,
    create_synced,
    detail_of,
    replica,
    source,
    sync_audit,
    until,
)
from vault_service.config import Settings
from vault_service.crypto import Keyring
from vault_service.server import RunningVault

DEAD_LEASE_SECONDS = 3.0


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"external_sync": False})


async def lease_of(vault: RunningVault, cred_id: str) -> tuple[str | None, datetime.datetime | None]:
    async with vault.store.autocommit() as tx:
        row = await tx.conn.fetchrow("SELECT sync_owner, sync_lease_until FROM credentials WHERE id = $1", cred_id)
    assert row is not None
    return row["sync_owner"], row["sync_lease_until"]


async def test_a_dead_holders_lease_is_taken_over_after_it_expires_and_synced_once(
    settings: Settings, keyring: Keyring, local_pki: LocalPki, openbao: OpenBao
) -> None:
    await asyncio.to_thread(openbao.put, "secret", "takeover/login", user="dora", **{"pass": "fresh"})
    async with replica(settings, keyring, "dies") as dying, admin_of(dying, local_pki) as admin:
        c = await companions(admin, openbao, "takeover", ["secret/data/takeover/*"])
        cred = await create_synced(admin, "pair", source(openbao, c, "takeover/login"))
        assert cred.version == 1  # not synchronized yet: due at once
        # the replica takes the lease (as its scheduler does) and dies before synchronizing: it stops without its
        # scheduler, so nothing hands the lease back
        assert dying.synchronizer is not None
        dead_owner = dying.synchronizer.owner
        async with dying.store.autocommit() as tx:
            assert await tx.claim_sync(cred.id, dead_owner, DEAD_LEASE_SECONDS)
        held_by, held_until = await lease_of(dying, cred.id)
        assert held_by == dead_owner
        assert held_until is not None
        token = admin.token

    fast = {"external_sync": True, "external_sync_tick_seconds": 0.05}
    async with (
        replica(settings, keyring, "b", **fast) as b,
        replica(settings, keyring, "c", **fast) as c_vault,
        local_pki.channel(b.port) as channel,
    ):
        admin_b = Client(channel, token, "admin")

        async def version() -> int:
            got: cpb.GetCredentialResponse = await admin_b.GetCredential(cpb.GetCredentialRequest(id=cred.id))
            return got.credential.version

        # while the dead holder's lease runs, an on-demand sync is refused (if it has not expired already)
        owner_now, _ = await lease_of(b, cred.id)
        if owner_now == dead_owner:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await admin_b.SyncCredential(cpb.SyncCredentialRequest(id=cred.id))
            assert refused.value.code() == grpc.StatusCode.ABORTED

        async def synced() -> bool:
            return await version() >= 2

        await until(synced, within=60)
        got = (await admin_b.GetCredential(cpb.GetCredentialRequest(id=cred.id))).credential
        # taken over only once the lease had expired, by one of the two live replicas, once
        assert got.sync_status.last_attempt.ToDatetime(datetime.UTC) >= held_until
        assert got.version == 2
        assert detail_of(b, "changed") + detail_of(c_vault, "changed") == 1
        changes = [e for e in await sync_audit(admin_b, cred.id) if e.outcome == "ok" and "version" in e.details]
        assert [e.details["version"] for e in changes] == ["2"]
        assert (await lease_of(b, cred.id))[0] is None  # released by the replica that synchronized

        # the dead holder, come back late, cannot record its attempt: it lost the lease
        async with b.store.autocommit() as tx:
            assert not await tx.finish_sync(
                cred.id, dead_owner, error="", external_version="9", interval_seconds=10, backoff_base_seconds=1
            )
        # a change in OpenBao is synchronized by the schedulers once more: one version more, never two
        await asyncio.to_thread(openbao.put, "secret", "takeover/login", user="dora", **{"pass": "fresher"})

        async def resynced() -> bool:
            return await version() >= 3

        await until(resynced, within=60)  # due after the source's 10 s interval
        assert await version() == 3
        assert detail_of(b, "changed") + detail_of(c_vault, "changed") == 2
