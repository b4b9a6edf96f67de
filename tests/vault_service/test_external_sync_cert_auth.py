"""OpenBao's TLS certificate auth (``POST /v1/auth/cert/login`` over a connection presenting a client certificate
from a CERTIFICATE credential), against the real OpenBao of tests/openbao.py: the values arrive, a certificate of
another CA is refused (auth_failed, the last good value kept), and the key never reaches a response or a log."""

from __future__ import annotations

import asyncio
import json
import logging

import grpc
import pytest
from google.protobuf import duration_pb2

from credvault.v1 import credentials_pb2 as cpb
from tests.conftest import Client
from tests.external_sync_helpers import ca_credential, certificate_credential
from tests.helpers import expect_code
from tests.local_pki import LocalPki
from tests.openbao import OpenBao
from tests.vault_service.test_external_sync import _stored, create_synced, sync, sync_audit
from vault_service import pki
from vault_service.config import Settings
from vault_service.models import UsernamePasswordSecret
from vault_service.server import RunningVault


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"external_sync": False})


def enable_cert_auth(bao: OpenBao, role: str, ca_pem: bytes, readable: list[str]) -> None:
    """The cert auth method (once), and a certificate role trusting ``ca_pem`` whose tokens may read ``readable``."""
    methods = json.loads(bao.cli("auth", "list", "-format=json"))
    if "cert/" not in methods:
        bao.cli("auth", "enable", "cert")
    rules = "".join(f'path "{p}" {{ capabilities = ["read"] }}\n' for p in readable)
    bao.cli("policy", "write", role, "-", stdin=rules)
    ca_file = bao.folder / f"{role}-ca.pem"
    ca_file.write_bytes(ca_pem)
    bao.cli("write", f"auth/cert/certs/{role}", f"certificate=@{ca_file}", f"token_policies={role}", "token_ttl=1h")


def cert_source(bao: OpenBao, ca_cred: str, client_cred: str, path: str, role: str = "") -> cpb.ExternalSource:
    return cpb.ExternalSource(
        provider=cpb.EXTERNAL_PROVIDER_HASHICORP_VAULT,
        address=bao.address,
        ca_certificate_credential_id=ca_cred,
        kv=cpb.KvLocation(mount="secret", path=path),
        username_key="user",
        password_key="pass",
        cert=cpb.CertAuth(client_certificate_credential_id=client_cred, role=role),
        sync_interval=duration_pb2.Duration(seconds=60),
    )


async def test_cert_login_reads_the_secret_and_a_certificate_of_another_ca_is_refused(
    admin: Client, vault: RunningVault, local_pki: LocalPki, openbao: OpenBao, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await asyncio.to_thread(openbao.put, "secret", "certs/login", user="dora", **{"pass": "by-certificate"})
    await asyncio.to_thread(enable_cert_auth, openbao, "certs", local_pki.engine_ca.cert_pem, ["secret/data/certs/*"])
    issued = local_pki.engine("loc-bao", "sync-client")
    client_cred = await certificate_credential(admin, "bao client", issued)
    ca_cred = await ca_credential(admin, openbao.pki)

    made = await create_synced(admin, "pair", cert_source(openbao, ca_cred, client_cred, "certs/login", role="certs"))
    assert made.external_source.WhichOneof("auth") == "cert"
    assert made.external_source.cert.mount == "cert"
    synced = await sync(admin, made.id)
    assert synced.sync_status.last_error == ""
    assert (synced.version, synced.sync_status.external_version) == (2, "1")
    assert (await _stored(vault, made.id))[1] == UsernamePasswordSecret("dora", "by-certificate")

    # the same login without a role name (any role whose CA matches)
    anyrole = await create_synced(admin, "any", cert_source(openbao, ca_cred, client_cred, "certs/login"))
    assert (await sync(admin, anyrole.id)).version == 2

    # a certificate of another CA: OpenBao refuses the login; the last good value stays
    stranger_ca = pki.create_ca("stranger CA", trust_domain="stranger.test")
    stranger = pki.issue_engine_certificate(stranger_ca, local_pki.identity("loc-bao", "stranger"))
    stranger_cred = await certificate_credential(admin, "stranger", stranger)
    await admin.DeleteCredential(cpb.DeleteCredentialRequest(id=anyrole.id))
    refused = await create_synced(admin, "refused", cert_source(openbao, ca_cred, stranger_cred, "certs/login"))
    failed = await sync(admin, refused.id)
    assert "refused the certificate login" in failed.sync_status.last_error, failed.sync_status.last_error
    assert failed.version == 1
    last = (await sync_audit(admin, refused.id))[-1]
    assert (last.outcome, last.details["outcome"]) == ("failed", "auth_failed")

    key_lines = [line for line in issued.key_pem.decode().splitlines() if "PRIVATE KEY" not in line]
    logs = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "synchronized from HASHICORP_VAULT" in logs
    for line in key_lines:
        assert line not in logs
        assert line.encode() not in synced.SerializeToString()


async def test_a_cert_source_needs_a_certificate_credential(admin: Client, openbao: OpenBao) -> None:
    ca_cred = await ca_credential(admin, openbao.pki)
    not_a_cert = cert_source(openbao, ca_cred, ca_cred, "certs/x")
    err = await expect_code(create_synced(admin, "x", not_a_cert), grpc.StatusCode.INVALID_ARGUMENT)
    assert (err.details() or "").startswith("external_source.cert.client_certificate_credential_id:")
    assert "CERTIFICATE" in (err.details() or "")
    bad_mount = cert_source(openbao, ca_cred, "CREDENTIALS_VAULT-00000000000000AA", "certs/x")
    bad_mount.cert.mount = "a/../b"
    err = await expect_code(create_synced(admin, "x", bad_mount), grpc.StatusCode.INVALID_ARGUMENT)
    assert (err.details() or "").startswith("external_source.cert.mount:")
