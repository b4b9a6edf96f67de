"""CyberArk Central Credential Provider synchronization against tests/cyberark_ccp_fake.py (CCP's documented REST
contract over mutual TLS, not the real service): UserName and Content reach a USERNAME_PASSWORD credential and a real
engine, an unchanged value writes no version (CCP has no version: the value is compared), a client certificate of
another CA or one the application does not allow is refused, each CCP error keeps the last good value with a
secret-free status and audit, a TOKEN credential cannot name CyberArk, and the password never reaches a response, a
log, the audit or a pg_dump."""

from __future__ import annotations

import asyncio
import logging
import ssl
import subprocess
from collections.abc import Callable

import aiohttp
import grpc
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from google.protobuf import duration_pb2
from google.protobuf.message import Message

from credvault.v1 import audit_pb2 as apb
from credvault.v1 import credentials_pb2 as cpb
from tests.conftest import Client
from tests.cyberark_ccp_fake import Account, CyberArkCcpFake, error
from tests.external_sync_helpers import ca_credential, certificate_credential
from tests.helpers import expect_code
from tests.local_pki import LocalPki
from tests.real_engine import real_engine
from tests.vault_service.test_external_sync import (
    TOKEN,
    _stored,
    create_synced,
    held_password,
    monitor_at_loc_a,
    sync,
    sync_audit,
)
from vault_service import pki
from vault_service.config import Settings
from vault_service.models import UsernamePasswordSecret
from vault_service.server import RunningVault

APP = "credvault.sync"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"external_sync": False})


def der(issued: pki.IssuedCertificate) -> bytes:
    return x509.load_pem_x509_certificate(issued.cert_pem).public_bytes(Encoding.DER)


async def allowed_client(admin: Client, local_pki: LocalPki, ccp: CyberArkCcpFake, *safes: str) -> str:
    """A client certificate of the CA the CCP trusts, allowed for APP on ``safes``, as a CERTIFICATE credential."""
    issued = local_pki.engine("loc-ccp", "sync-client")
    ccp.allow(APP, der(issued), *safes)
    return await certificate_credential(admin, "ccp client", issued)


async def shop(
    admin: Client, local_pki: LocalPki, ccp: CyberArkCcpFake, accounts: dict[str, Account]
) -> tuple[str, str]:
    """The accounts in safe Shop; the client certificate allowed to read it and the CA, as credentials."""
    for name, account in accounts.items():
        ccp.set_account("Shop", name, account)
    return await allowed_client(admin, local_pki, ccp, "Shop"), await ca_credential(admin, local_pki)


def source(ccp: CyberArkCcpFake, ca: str, client: str, safe: str, name: str, folder: str = "") -> cpb.ExternalSource:
    return cpb.ExternalSource(
        provider=cpb.EXTERNAL_PROVIDER_CYBERARK_CCP,
        address=ccp.address,
        ca_certificate_credential_id=ca,
        cyberark=cpb.CyberArkCcpAuth(app_id=APP, client_certificate_credential_id=client),
        cyberark_account=cpb.CyberArkAccount(safe=safe, folder=folder, object=name),
        sync_interval=duration_pb2.Duration(seconds=60),
    )


async def test_values_reach_the_credential_and_unchanged_values_write_nothing(
    admin: Client, vault: RunningVault, local_pki: LocalPki, ccp: CyberArkCcpFake
) -> None:
    ccp.set_account("Shop", "db-admin", Account("erin", "pw-1"))
    ccp.set_account("Shop", "in-folder", Account("frank", "pw-f"), folder="Root\\Apps")
    client = await allowed_client(admin, local_pki, ccp, "Shop")
    ca = await ca_credential(admin, local_pki)
    made = await create_synced(admin, "pair", source(ccp, ca, client, "Shop", "db-admin"))
    assert (made.external_source.username_key, made.external_source.password_key) == ("UserName", "Content")

    synced = await sync(admin, made.id)
    assert synced.sync_status.last_error == ""
    assert (synced.version, synced.sync_status.external_version) == (2, "")  # CCP has no version
    assert (await _stored(vault, made.id))[1] == UsernamePasswordSecret("erin", "pw-1")
    assert any(b"AppID=credvault.sync&Safe=Shop&Object=db-admin" in r for r in ccp.received)

    # unchanged: no version; a changed password, then a changed user name: a version each
    assert (await sync(admin, made.id)).version == 2
    ccp.set_account("Shop", "db-admin", Account("erin", "pw-2"))
    assert (await sync(admin, made.id)).version == 3
    ccp.set_account("Shop", "db-admin", Account("erin2", "pw-2"))
    assert (await sync(admin, made.id)).version == 4
    assert (await sync(admin, made.id)).version == 4
    assert (await _stored(vault, made.id))[1] == UsernamePasswordSecret("erin2", "pw-2")
    assert [e.details["version"] for e in await sync_audit(admin, made.id)] == ["2", "3", "4"]

    # a folder is sent when named (CCP's default is Root)
    foldered = await create_synced(admin, "f", source(ccp, ca, client, "Shop", "in-folder", folder="Root\\Apps"))
    assert (await sync(admin, foldered.id)).sync_status.last_error == ""
    assert (await _stored(vault, foldered.id))[1] == UsernamePasswordSecret("frank", "pw-f")


async def test_a_changed_password_reaches_a_real_engine(
    admin_client: Client, push_vault: RunningVault, local_pki: LocalPki, ccp: CyberArkCcpFake
) -> None:
    admin = admin_client
    client, ca = await shop(admin, local_pki, ccp, {"db-admin": Account("erin", "first")})
    made = await create_synced(admin, "pair", source(ccp, ca, client, "Shop", "db-admin"))
    await sync(admin, made.id)
    await monitor_at_loc_a(admin, made.id)

    async with real_engine(push_vault.engine_port, local_pki, "loc-a", "e1") as engine:
        await engine.wait_until(lambda: held_password(engine, made.id) == "first")
        ccp.set_account("Shop", "db-admin", Account("erin", "second"))
        assert (await sync(admin, made.id)).version == 3
        await engine.wait_until(lambda: held_password(engine, made.id) == "second")


async def test_a_certificate_the_ccp_does_not_accept_is_refused(
    admin: Client, vault: RunningVault, local_pki: LocalPki, ccp: CyberArkCcpFake
) -> None:
    ccp.set_account("Shop", "db-admin", Account("erin", "pw-1"))
    await allowed_client(admin, local_pki, ccp, "Shop")
    ca = await ca_credential(admin, local_pki)

    # the CCP requires a client certificate: a connection without one fails the handshake
    context = ssl.create_default_context(cadata=local_pki.server_ca_pem.read_text())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as plain:
        with pytest.raises(aiohttp.ClientError):
            async with plain.get(f"{ccp.address}/AIMWebService/api/Accounts?AppID={APP}&Safe=Shop&Object=db-admin"):
                pass

    # a certificate of another CA: refused at the handshake
    stranger_ca = pki.create_ca("stranger CA", trust_domain="stranger.test")
    stranger = pki.issue_engine_certificate(stranger_ca, local_pki.identity("loc-ccp", "stranger"))
    stranger_cred = await certificate_credential(admin, "stranger", stranger)
    refused = await create_synced(admin, "stranger", source(ccp, ca, stranger_cred, "Shop", "db-admin"))
    got = await sync(admin, refused.id)
    assert "unreachable (connection, TLS or timeout)" in got.sync_status.last_error, got.sync_status.last_error
    assert got.version == 1
    assert (await sync_audit(admin, refused.id))[-1].details["outcome"] == "unreachable"

    # a certificate of the trusted CA that the application does not allow: APPAP306E
    other = await certificate_credential(admin, "other", local_pki.engine("loc-ccp", "other"))
    denied = await create_synced(admin, "other", source(ccp, ca, other, "Shop", "db-admin"))
    got = await sync(admin, denied.id)
    assert "denied the application reading safe 'Shop', object 'db-admin' (HTTP 403, APPAP306E)" in (
        got.sync_status.last_error
    ), got.sync_status.last_error
    assert got.version == 1
    assert (await sync_audit(admin, denied.id))[-1].details["outcome"] == "denied"


async def test_errors_keep_the_last_good_value_with_a_secret_free_status(
    admin: Client, vault: RunningVault, local_pki: LocalPki, ccp: CyberArkCcpFake
) -> None:
    client, ca = await shop(admin, local_pki, ccp, {"db-admin": Account("erin", "good-pw")})
    made = await create_synced(admin, "pair", source(ccp, ca, client, "Shop", "db-admin"))
    assert (await sync(admin, made.id)).version == 2

    async def fails(expected: str, outcome: str) -> None:
        got = await sync(admin, made.id)
        assert expected in got.sync_status.last_error, got.sync_status.last_error
        assert got.version == 2
        assert (await _stored(vault, made.id))[1] == UsernamePasswordSecret("erin", "good-pw")
        last = (await sync_audit(admin, made.id))[-1]
        assert (last.outcome, last.details["outcome"]) == ("failed", outcome)
        assert "good-pw" not in got.sync_status.last_error
        assert "good-pw" not in last.details["error"]

    async def recovers() -> None:
        got = await sync(admin, made.id)
        assert (got.sync_status.last_error, got.version) == ("", 2)

    ccp.accounts[("Shop", "Root", "renamed")] = ccp.accounts.pop(("Shop", "Root", "db-admin"))
    await fails("found no account safe 'Shop', object 'db-admin' (HTTP 404, APPAP004E)", "not_found")
    ccp.accounts[("Shop", "Root", "db-admin")] = ccp.accounts.pop(("Shop", "Root", "renamed"))
    await recovers()

    ccp.readable[APP].clear()  # the application lost its safe permissions: CCP says "not found" too
    await fails("(HTTP 404, APPAP004E)", "not_found")
    ccp.readable[APP].add("Shop")
    await recovers()

    ccp.provider_down = True
    await fails("CyberArk CCP is not available (HTTP 500, APPAP282E)", "sealed")
    ccp.provider_down = False
    ccp.vault_unreachable = True
    await fails("CyberArk CCP cannot reach its Vault (HTTP 400, APPAP007E)", "unreachable")
    ccp.vault_unreachable = False
    await recovers()

    for answer, expected, outcome in (
        (error(400, "AIMWS031E", "Invalid query format"), "as invalid (HTTP 400, AIMWS031E)", "error"),
        (error(400, "CASVL010E", "Invalid characters in Object"), "as invalid (HTTP 400, CASVL010E)", "error"),
        (error(400, "NOT A CODE", "good-pw"), "as invalid (HTTP 400)", "error"),
        (web.json_response({"UserName": "erin"}), "has no field 'Content'", "missing_key"),
        (web.json_response({"UserName": "erin", "Content": 7}), "is not a non-empty string", "invalid_value"),
        (web.json_response(["not", "an", "account"]), "is not an account", "error"),
        (web.Response(status=200, body=b"<html>IIS</html>"), "is not an account", "error"),
    ):
        ccp.answer_override = answer
        await fails(expected, outcome)
    ccp.answer_override = None
    await recovers()


async def test_cyberark_is_username_password_only_and_needs_its_fields(
    admin: Client, local_pki: LocalPki, ccp: CyberArkCcpFake
) -> None:
    ids = "CREDENTIALS_VAULT-00000000000000A"
    token_source = source(ccp, "", ids + "1", "Shop", "db-admin")
    err = await expect_code(create_synced(admin, "t", token_source, TOKEN), grpc.StatusCode.INVALID_ARGUMENT)
    assert "USERNAME_PASSWORD" in (err.details() or ""), err.details()
    changes: list[tuple[Callable[[cpb.ExternalSource], object], str]] = [
        (lambda s: s.cyberark.ClearField("client_certificate_credential_id"), "cyberark.client_certificate"),
        (lambda s: s.cyberark.ClearField("app_id"), "cyberark.app_id"),
        (lambda s: s.cyberark_account.ClearField("safe"), "cyberark_account.safe"),
        (lambda s: s.cyberark_account.ClearField("object"), "cyberark_account.object"),
        (lambda s: setattr(s, "token_key", "x"), "token_key"),
        (lambda s: setattr(s.kv, "path", "x"), "kv"),
    ]
    for change, field in changes:
        src = source(ccp, "", ids + "1", "Shop", "db-admin")
        change(src)
        err = await expect_code(create_synced(admin, "x", src), grpc.StatusCode.INVALID_ARGUMENT)
        assert (err.details() or "").startswith(f"external_source.{field}"), err.details()


async def test_canary_the_password_never_leaks(
    admin: Client,
    vault: RunningVault,
    local_pki: LocalPki,
    ccp: CyberArkCcpFake,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tests.vault_service.test_canary import _no_canary, _pg_dump

    caplog.set_level(logging.DEBUG)
    password = "CANARY-ccp-pass-4b9e"
    client, ca = await shop(admin, local_pki, ccp, {"db-admin": Account("CANARY-ccp-user-0a17", password)})
    made = await create_synced(admin, "pair", source(ccp, ca, client, "Shop", "db-admin"))
    responses: list[Message] = [await admin.SyncCredential(cpb.SyncCredentialRequest(id=made.id))]
    ccp.set_account("Shop", "db-admin", Account("CANARY-ccp-user-0a17", password + "-2"))
    responses.append(await admin.SyncCredential(cpb.SyncCredentialRequest(id=made.id)))
    ccp.answer_override = error(404, "APPAP004E", f"Password object {password} was not found")
    responses.append(await admin.SyncCredential(cpb.SyncCredentialRequest(id=made.id)))
    responses.append(await admin.GetCredential(cpb.GetCredentialRequest(id=made.id)))
    responses.append(await admin.ListAuditEvents(apb.ListAuditEventsRequest(page_size=500)))
    canaries = [password.encode(), b"CANARY-ccp-pass"]
    for r in responses:
        _no_canary(f"response {type(r).__name__}", r.SerializeToString(), canaries)
    logs = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records).encode()
    assert b"synchronization failed" in logs
    assert b"synchronized from CYBERARK_CCP: changed" in logs
    _no_canary("logs", logs, canaries)
    dump = await asyncio.to_thread(
        subprocess.run, [_pg_dump(), "--no-owner", "--dbname", database_url], capture_output=True, check=True
    )
    assert b"COPY public.credentials" in dump.stdout
    _no_canary("pg_dump", dump.stdout, canaries)
    # not vacuous: the password did arrive
    assert (await _stored(vault, made.id))[1] == UsernamePasswordSecret("CANARY-ccp-user-0a17", password + "-2")
