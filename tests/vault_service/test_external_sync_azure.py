"""Azure Key Vault synchronization against tests/azure_key_vault_fake.py (the documented REST contract, not the real
service): values reach the stored credential (one secret for a TOKEN, two for a USERNAME_PASSWORD), unchanged
values write no version, failures keep the last good value with a secret-free status, the Entra ID token is cached
and obtained again when refused or about to expire, and no secret reaches a response, a log or the audit."""

from __future__ import annotations

import dataclasses
import logging

import grpc
import pytest
from aiohttp import web
from google.protobuf import duration_pb2
from google.protobuf.message import Message

from credvault.v1 import audit_pb2 as apb
from credvault.v1 import credentials_pb2 as cpb
from tests.azure_key_vault_fake import AzureKeyVaultFake
from tests.conftest import Client
from tests.external_sync_helpers import ca_credential, token_credential
from tests.helpers import expect_code
from tests.local_pki import LocalPki
from tests.vault_service.conftest import AZURE_REGISTRATION
from tests.vault_service.test_external_sync import TOKEN, _stored, create_synced, sync, sync_audit, until
from vault_service import validation
from vault_service.config import Settings
from vault_service.models import TokenSecret, UsernamePasswordSecret
from vault_service.server import RunningVault

REG = AZURE_REGISTRATION


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"external_sync": False})


@dataclasses.dataclass
class AzureCompanions:
    tenant: str
    client_id: str
    client_secret: str
    ca: str


async def companions(admin: Client, local_pki: LocalPki, secret: str = REG.client_secret) -> AzureCompanions:
    return AzureCompanions(
        await token_credential(admin, "tenant", REG.tenant),
        await token_credential(admin, "client id", REG.client_id),
        await token_credential(admin, "client secret", secret),
        await ca_credential(admin, local_pki),
    )


def source(fake: AzureKeyVaultFake, c: AzureCompanions, *names: str, version: str = "") -> cpb.ExternalSource:
    src = cpb.ExternalSource(
        provider=cpb.EXTERNAL_PROVIDER_AZURE_KEY_VAULT,
        address=fake.vault.address,
        ca_certificate_credential_id=c.ca,
        azure=cpb.AzureClientCredentials(
            tenant_id_credential_id=c.tenant,
            client_id_credential_id=c.client_id,
            client_secret_credential_id=c.client_secret,
            authority_host=fake.authority.address,
        ),
        sync_interval=duration_pb2.Duration(seconds=60),
        azure_secret_version=version,
    )
    if len(names) == 2:
        src.username_key, src.password_key = names
    else:
        src.token_key = names[0]
    return src


async def test_values_reach_the_credential_and_unchanged_values_write_nothing(
    admin: Client, vault: RunningVault, local_pki: LocalPki, azure: AzureKeyVaultFake
) -> None:
    user_version = azure.set_secret("shop-user", "erin")
    pass_version = azure.set_secret("shop-pass", "pw-1")
    token_version = azure.set_secret("api-token", "tok-1")
    c = await companions(admin, local_pki)
    pair = await create_synced(admin, "pair", source(azure, c, "shop-user", "shop-pass"))
    tok = await create_synced(admin, "tok", source(azure, c, "api-token"), TOKEN)
    assert pair.external_source.azure.authority_host == azure.authority.address

    synced = await sync(admin, pair.id)
    assert synced.sync_status.last_error == ""
    assert (synced.version, synced.sync_status.external_version) == (2, f"{user_version},{pass_version}")
    assert (await _stored(vault, pair.id))[1] == UsernamePasswordSecret("erin", "pw-1")
    synced_tok = await sync(admin, tok.id)
    assert (synced_tok.version, synced_tok.sync_status.external_version) == (2, token_version)
    assert (await _stored(vault, tok.id))[1] == TokenSecret("tok-1")

    # unchanged, and a new Key Vault version with the same value: no credential version
    assert (await sync(admin, pair.id)).version == 2
    azure.set_secret("shop-pass", "pw-1")
    assert (await sync(admin, pair.id)).version == 2
    # a changed password: a new version
    azure.set_secret("shop-pass", "pw-2")
    assert (await sync(admin, pair.id)).version == 3
    assert (await _stored(vault, pair.id))[1] == UsernamePasswordSecret("erin", "pw-2")
    assert [e.details["version"] for e in await sync_audit(admin, pair.id)] == ["2", "3"]

    # a pinned version stays on it whatever the latest is
    pinned = await create_synced(admin, "pinned", source(azure, c, "api-token", version=token_version), TOKEN)
    azure.set_secret("api-token", "tok-2")
    assert (await sync(admin, pinned.id)).sync_status.external_version == token_version
    assert (await _stored(vault, pinned.id))[1] == TokenSecret("tok-1")
    assert (await _stored(vault, (await sync(admin, tok.id)).id))[1] == TokenSecret("tok-2")
    assert azure.token_requests == 1  # one client, one token for all of it


async def test_failures_keep_the_last_good_value_with_a_secret_free_status(
    admin: Client, vault: RunningVault, local_pki: LocalPki, azure: AzureKeyVaultFake
) -> None:
    azure.set_secret("api-token", "good")
    c = await companions(admin, local_pki)
    tok = await create_synced(admin, "tok", source(azure, c, "api-token"), TOKEN)
    assert (await sync(admin, tok.id)).version == 2

    async def fails(expected: str, outcome: str) -> None:
        got = await sync(admin, tok.id)
        assert expected in got.sync_status.last_error, got.sync_status.last_error
        assert got.version == 2
        assert (await _stored(vault, tok.id))[1] == TokenSecret("good")
        last = (await sync_audit(admin, tok.id))[-1]
        assert (last.outcome, last.details["outcome"]) == ("failed", outcome)
        for secret in ("good", REG.client_secret, REG.client_id):
            assert secret not in got.sync_status.last_error

    async def recovers() -> None:
        got = await sync(admin, tok.id)
        assert (got.sync_status.last_error, got.version) == ("", 2)

    azure.denied.add("api-token")
    await fails("denied reading the secret api-token (HTTP 403, AccessDenied)", "denied")
    azure.denied.clear()
    await recovers()

    azure.secrets["api-token-old"] = azure.secrets.pop("api-token")
    await fails("no secret api-token in the Azure key vault (HTTP 404, SecretNotFound)", "not_found")
    azure.secrets["api-token"] = azure.secrets.pop("api-token-old")
    await recovers()

    for body, expected, outcome in (
        ({"id": f"{azure.vault.address}/secrets/api-token/1"}, "has no value", "missing_key"),
        ({"value": "x"}, "is not a secret bundle", "error"),
        (
            {"value": 7, "id": f"{azure.vault.address}/secrets/api-token/2"},
            "is not a non-empty string",
            "invalid_value",
        ),
        (
            {"value": "v" * (validation.MAX_SECRET_FIELD + 1), "id": f"{azure.vault.address}/secrets/api-token/3"},
            "is over",
            "invalid_value",
        ),
    ):
        azure.answer_override = web.json_response(body)
        await fails(expected, outcome)
    azure.answer_override = web.Response(status=200, body=b"<html>not json</html>")
    await fails("is not a secret bundle", "error")
    azure.answer_override = None
    await recovers()

    # a wrong client secret: Entra ID refuses the token (once the cached one is gone)
    azure.expire_all_tokens()
    await admin.OverwriteCredential(
        cpb.OverwriteCredentialRequest(id=c.client_secret, contents=cpb.CredentialContents(token=cpb.Token(token="no")))
    )
    await fails("Entra ID refused the client-credentials token request (HTTP 401, invalid_client)", "auth_failed")
    await admin.OverwriteCredential(
        cpb.OverwriteCredentialRequest(
            id=c.client_secret, contents=cpb.CredentialContents(token=cpb.Token(token=REG.client_secret))
        )
    )
    await recovers()


async def test_the_token_is_cached_and_obtained_again_when_refused_or_about_to_expire(
    admin: Client, vault: RunningVault, local_pki: LocalPki, azure: AzureKeyVaultFake
) -> None:
    azure.set_secret("api-token", "t")
    c = await companions(admin, local_pki)
    tok = await create_synced(admin, "tok", source(azure, c, "api-token"), TOKEN)
    for _ in range(3):
        await sync(admin, tok.id)
    assert azure.token_requests == 1

    # Key Vault refuses the cached token (expired or revoked early): one new token, the sync succeeds
    azure.expire_all_tokens()
    got = await sync(admin, tok.id)
    assert got.sync_status.last_error == ""
    assert (azure.token_requests, azure.expired_uses) == (2, 1)

    # short-lived tokens: the client obtains a new one before the old one expires, without a refused request
    azure.expires_in = 3  # obtained again after 2 s, a second before it expires
    azure.expire_all_tokens()
    await sync(admin, tok.id)
    assert azure.token_requests == 3
    uses_before = azure.expired_uses

    async def renewed() -> bool:
        got = await sync(admin, tok.id)
        assert got.sync_status.last_error == ""
        return azure.token_requests > 3

    await until(renewed)
    assert azure.expired_uses == uses_before
    assert azure.left_at_request[-1] > 0  # asked for before the old one expired


async def test_canary_companions_values_and_access_tokens_never_leak(
    admin: Client, vault: RunningVault, local_pki: LocalPki, azure: AzureKeyVaultFake, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.vault_service.test_canary import _no_canary

    caplog.set_level(logging.DEBUG)
    user, password = "CANARY-az-user-1d2e", "CANARY-az-pass-77c1"
    azure.set_secret("u", user)
    azure.set_secret("p", password)
    c = await companions(admin, local_pki)
    pair = await create_synced(admin, "pair", source(azure, c, "u", "p"))
    responses: list[Message] = [await admin.SyncCredential(cpb.SyncCredentialRequest(id=pair.id))]
    azure.denied.add("p")
    responses.append(await admin.SyncCredential(cpb.SyncCredentialRequest(id=pair.id)))
    responses.append(await admin.GetCredential(cpb.GetCredentialRequest(id=pair.id)))
    responses.append(await admin.ListAuditEvents(apb.ListAuditEventsRequest(page_size=500)))
    access_tokens = [t.encode() for t in azure.issued]
    assert access_tokens
    canaries = [s.encode() for s in (user, password, REG.client_id, REG.client_secret)] + access_tokens
    for r in responses:
        _no_canary(f"response {type(r).__name__}", r.SerializeToString(), canaries)
    logs = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records).encode()
    assert b"synchronization failed" in logs
    _no_canary("logs", logs, canaries)
    # the checks are not vacuous: the client secret did travel to the authority, the value arrived
    assert any(REG.client_secret.encode() in r for r in azure.received)
    assert (await _stored(vault, pair.id))[1] == UsernamePasswordSecret(user, password)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda s: setattr(s, "token_key", "bad_name"), "external_source.token_key"),
        (lambda s: setattr(s.azure, "tenant_id_credential_id", ""), "external_source.azure.tenant_id_credential_id"),
        (lambda s: setattr(s.azure, "authority_host", "http://login.example"), "external_source.azure.authority_host"),
        (lambda s: setattr(s, "azure_secret_version", "not/a/version"), "external_source.azure_secret_version"),
        (lambda s: setattr(s.kv, "path", "x"), "external_source.kv"),
        (lambda s: s.approle.SetInParent(), "external_source.auth"),
    ],
)
async def test_every_field_is_checked(
    admin: Client, local_pki: LocalPki, azure: AzureKeyVaultFake, change: object, field: str
) -> None:
    ids = "CREDENTIALS_VAULT-00000000000000A"
    c = AzureCompanions(ids + "1", ids + "2", ids + "3", "")
    src = source(azure, c, "api-token")
    change(src)  # type: ignore[operator]
    err = await expect_code(create_synced(admin, "x", src, TOKEN), grpc.StatusCode.INVALID_ARGUMENT)
    assert (err.details() or "").startswith(f"{field}:"), err.details()


async def test_the_schedule_reads_azure_too(
    admin: Client, vault: RunningVault, local_pki: LocalPki, azure: AzureKeyVaultFake
) -> None:
    """The schedule (not only SyncCredential) reads Azure: a new synchronized credential's first run is due at once."""
    azure.set_secret("api-token", "scheduled")
    c = await companions(admin, local_pki)
    tok = await create_synced(admin, "tok", source(azure, c, "api-token"), TOKEN)
    assert vault.synchronizer is not None
    from vault_service.external_sync.scheduler import SyncScheduler

    scheduler = SyncScheduler(vault.store, vault.synchronizer, 0.05)
    scheduler.start()
    try:

        async def synced() -> bool:
            got = await admin.GetCredential(cpb.GetCredentialRequest(id=tok.id))
            return bool(got.credential.version == 2)

        await until(synced)
    finally:
        await scheduler.stop()
    assert (await _stored(vault, tok.id))[1] == TokenSecret("scheduled")
