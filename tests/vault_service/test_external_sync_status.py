"""What a synchronization reports beyond its value, against a real OpenBao: the companion credentials' access is
checked again at every synchronization (an unshared or deleted companion fails it with a secret-free "permission
denied" status and keeps the last good value), and ``credvault_sync_age_seconds`` is scraped over HTTP with the
age of the least recently synchronized credential of each provider."""

from __future__ import annotations

import asyncio
import datetime

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from credvault.v1 import credentials_pb2 as cpb
from tests.conftest import Client, Users
from tests.helpers import MONITORING
from tests.openbao import OpenBao
from tests.vault_service.test_external_sync import (
    _static_value,
    companions,
    create_synced,
    detail_of,
    source,
    sync,
    sync_audit,
)
from vault_service.config import Settings
from vault_service.server import RunningVault


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Synchronizations run when told to (SyncCredential); metrics served on a port of their own."""
    return settings.model_copy(update={"external_sync": False, "metrics_listen": "127.0.0.1:0"})


def _access(level: int, users: tuple[str, ...] = ()) -> cpb.Access:
    return cpb.Access(level=level, users=list(users))


async def test_a_companion_unshared_or_deleted_fails_the_sync_and_keeps_the_last_good_value(
    admin: Client, users: Users, vault: RunningVault, openbao: OpenBao
) -> None:
    await asyncio.to_thread(openbao.put, "secret", "lost/login", user="dora", **{"pass": "kept"})
    c = await companions(admin, openbao, "lost", ["secret/data/lost/*"])
    editor = await users.make("editor", [MONITORING])
    for cid in (c.role_cred, c.secret_cred, c.ca_cred):
        await admin.UpdateCredentialMetadata(
            cpb.UpdateCredentialMetadataRequest(id=cid, access=_access(cpb.ACCESS_LEVEL_SHARED, ("editor",)))
        )
    made = await create_synced(editor, "e", source(openbao, c, "lost/login"))
    assert (await sync(editor, made.id)).version == 2

    async def denied(expected: str) -> None:
        got = await sync(admin, made.id)
        error = got.sync_status.last_error
        assert error.startswith("permission denied:"), error
        assert expected in error, error
        assert c.secret_id not in error
        assert c.role_id not in error
        assert got.version == 2
        assert await _static_value(vault, made.id) == (2, "kept")
        last = (await sync_audit(admin, made.id))[-1]
        assert (last.outcome, last.details["outcome"]) == ("failed", "permission_denied")

    # the secret id's credential no longer shared with the synchronized credential's owner
    await admin.UpdateCredentialMetadata(
        cpb.UpdateCredentialMetadataRequest(id=c.secret_cred, access=_access(cpb.ACCESS_LEVEL_OWNER_ONLY))
    )
    await asyncio.to_thread(openbao.put, "secret", "lost/login", user="dora", **{"pass": "not-taken"})
    await denied(f"'editor' no longer has access to the companion credential {c.secret_cred}")
    assert detail_of(vault, "permission_denied") == 1

    # shared again: the next sync takes the changed value
    await admin.UpdateCredentialMetadata(
        cpb.UpdateCredentialMetadataRequest(id=c.secret_cred, access=_access(cpb.ACCESS_LEVEL_ALL))
    )
    assert (await sync(admin, made.id)).version == 3
    assert await _static_value(vault, made.id) == (3, "not-taken")

    # the CA companion deleted: denied, the value stays
    await admin.DeleteCredential(cpb.DeleteCredentialRequest(id=c.ca_cred))
    got = await sync(admin, made.id)
    assert got.sync_status.last_error.startswith("permission denied:")
    assert f"{c.ca_cred} (external_source.ca_certificate_credential_id) no longer exists" in (
        got.sync_status.last_error
    )
    assert await _static_value(vault, made.id) == (3, "not-taken")
    assert detail_of(vault, "permission_denied") == 2


async def _scraped_ages(port: int) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return {
        s.labels["provider"]: s.value
        for family in text_string_to_metric_families(text)
        if family.name == "credvault_sync_age_seconds"
        for s in family.samples
    }


async def test_the_sync_age_is_scraped_per_provider_with_the_oldest_good_sync(
    admin: Client, vault: RunningVault, openbao: OpenBao
) -> None:
    assert await _scraped_ages(vault.metrics_port) == {}  # nothing synchronized: no series
    await asyncio.to_thread(openbao.put, "secret", "age/a", user="u", **{"pass": "a"})
    await asyncio.to_thread(openbao.put, "secret", "age/b", user="u", **{"pass": "b"})
    c = await companions(admin, openbao, "age", ["secret/data/age/*"])
    a = await create_synced(admin, "a", source(openbao, c, "age/a"))
    b = await create_synced(admin, "b", source(openbao, c, "age/b"))
    async with vault.store.autocommit() as tx:  # made two hours ago, and never synchronized since
        await tx.conn.execute(
            "UPDATE credentials SET created_at = now() - interval '2 hours' WHERE id = ANY($1)", [a.id, b.id]
        )
    assert (await _scraped_ages(vault.metrics_port))["HASHICORP_VAULT"] >= 7200

    # one synchronized now: the other is still the oldest
    await sync(admin, a.id)
    assert (await _scraped_ages(vault.metrics_port))["HASHICORP_VAULT"] >= 7200
    # its last good sync an hour ago, the other's just now: the age is the hour's
    await sync(admin, b.id)
    async with vault.store.autocommit() as tx:
        await tx.conn.execute(
            "UPDATE credentials SET sync_last_success = now() - interval '1 hour' WHERE id = $1", a.id
        )
    age = (await _scraped_ages(vault.metrics_port))["HASHICORP_VAULT"]
    assert 3600 <= age < 7200
    # a failing sync does not make it younger
    await asyncio.to_thread(openbao.delete, "secret", "age/a")
    assert (await sync(admin, a.id)).sync_status.last_error
    assert (await _scraped_ages(vault.metrics_port))["HASHICORP_VAULT"] >= 3600


async def test_a_due_sync_is_next_due_one_interval_after_it_was_due_not_after_it_ran(
    admin: Client, vault: RunningVault, openbao: OpenBao
) -> None:
    """A fixed rate: the time a due credential waited for its scheduler's tick and its sync took does not add to
    the interval cycle after cycle (with 1,000 credentials, 10 s became about 13 s); one behind by more than an
    interval is due again at once."""
    await asyncio.to_thread(openbao.put, "secret", "rate/a", user="u", **{"pass": "a"})
    c = await companions(admin, openbao, "rate", ["secret/data/rate/*"])
    made = await create_synced(admin, "a", source(openbao, c, "rate/a", interval=10))
    await sync(admin, made.id)

    async def due_in_the_past(seconds: int) -> tuple[datetime.datetime, datetime.datetime, datetime.datetime]:
        """Due ``seconds`` ago, synchronized now: one interval after that due time, the next due time, the attempt."""
        async with vault.store.autocommit() as tx:
            row = await tx.conn.fetchrow(
                "UPDATE credentials SET next_sync_at = now() - make_interval(secs => $2) WHERE id = $1"
                " RETURNING next_sync_at",
                made.id,
                float(seconds),
            )
        assert row is not None
        await sync(admin, made.id)
        async with vault.store.autocommit() as tx:
            after = await tx.conn.fetchrow(
                "SELECT next_sync_at, sync_last_attempt FROM credentials WHERE id = $1", made.id
            )
        assert after is not None
        return row["next_sync_at"] + datetime.timedelta(seconds=10), after["next_sync_at"], after["sync_last_attempt"]

    one_interval_after, next_due, _ = await due_in_the_past(3)
    assert next_due == one_interval_after
    _, next_due, attempted = await due_in_the_past(3600)
    assert next_due == attempted
