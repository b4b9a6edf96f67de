"""Certificates rotate without restarts: the vault serves renewed files from the next handshake on, keeps open
streams, verifies engines against a CA bundle it re-reads, keeps the previous set while a renewal is half-written, and
reports each certificate's expiry."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import pathlib
import re
import shutil
from collections.abc import AsyncIterator

import grpc
import pytest
from cryptography import x509

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import monitors_pb2 as mpb
from tests.conftest import Client, admin_of, with_engine_port
from tests.helpers import one_monitor, up
from tests.local_pki import TRUST_DOMAIN, LocalPki
from tests.processes import System, eventually, introspect, scraped
from tests.push_helpers import EngineClient
from vault_service import pki
from vault_service.config import Settings
from vault_service.crypto import Keyring
from vault_service.errors import ConfigurationError
from vault_service.server import RunningVault, start_vault

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not on PATH")


async def served_certificate(port: int, client: tuple[pathlib.Path, pathlib.Path] | None = None) -> x509.Certificate:
    """The certificate a new connection to ``port`` is shown, as `openssl s_client` sees it."""
    extra = ["-cert", str(client[0]), "-key", str(client[1])] if client else []
    proc = await asyncio.create_subprocess_exec(
        *("openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost", "-alpn", "h2"),
        *extra,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    found = re.search(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n", out, re.S)
    assert found, f"no certificate from port {port}: {err.decode(errors='replace')[-500:]}"
    return x509.load_pem_x509_certificate(found.group(0))


def renew_server_certificate(local: LocalPki) -> pki.IssuedCertificate:
    """What cert-manager does: a new key and certificate from the same CA, each file replaced atomically."""
    renewed = pki.issue_server_certificate(local.server_ca, ["localhost", "127.0.0.1"])
    local.write(pki.SERVER, renewed)
    return renewed


async def test_renewed_certificates_are_served_without_dropping_a_stream_or_a_call(
    system: System, system_admin: Client
) -> None:
    admin = system_admin
    pair, _ = await one_monitor(admin)
    _, status_port = await system.start_worker("loc-a", "e1")

    async def holding() -> bool:
        doc = await introspect(status_port)
        return bool(doc["connected"]) and pair in doc["credentials"]

    await eventually(holding)
    engine_files = system.pki.engine_files("loc-a", "e1")
    before_api = await served_certificate(system.api_port)
    before_engine = await served_certificate(system.engine_port, engine_files)
    assert before_api.serial_number == before_engine.serial_number  # both ports serve the same files

    calls = 0
    failures: list[BaseException] = []
    stop = asyncio.Event()

    async def keep_calling() -> None:  # API calls on one channel throughout: none may fail
        nonlocal calls
        while not stop.is_set():
            try:
                await admin.GetCredential(cpb.GetCredentialRequest(id=pair))
                calls += 1
            except grpc.aio.AioRpcError as exc:
                failures.append(exc)
            await asyncio.sleep(0.01)

    caller = asyncio.create_task(keep_calling())
    try:
        renewed = renew_server_certificate(system.pki)

        async def api_renewed() -> bool:
            return (await served_certificate(system.api_port)).serial_number == renewed.certificate.serial_number

        await eventually(api_renewed)
        after_engine = await served_certificate(system.engine_port, engine_files)
        assert after_engine.serial_number == renewed.certificate.serial_number
        # the engine's stream, opened before, still carries changes
        old = (await introspect(status_port))["credentials"][pair]
        await admin.OverwriteCredential(cpb.OverwriteCredentialRequest(id=pair, contents=up("alice", "pw-2")))

        async def newer() -> bool:
            return bool((await introspect(status_port))["credentials"].get(pair, old) != old)

        await eventually(newer)
    finally:
        stop.set()
        await caller
    assert failures == []
    assert calls > 0
    reconnects = await scraped(status_port, "reconnects_total")
    assert reconnects == 0, "the worker's stream was dropped by the reload"
    assert not any(" ERROR " in line or "Traceback" in line for line in system.procs[0].lines)
    assert any("TLS files reloaded" in line for line in system.procs[0].lines)


@dataclasses.dataclass
class OwnFiles:
    """A vault's TLS files in a directory of the test's (the session PKI's files stay untouched)."""

    local: LocalPki
    settings: Settings


@pytest.fixture
def own_files(tmp_path: pathlib.Path, settings: Settings) -> OwnFiles:
    local = LocalPki.make(tmp_path / "pki")
    configured = with_engine_port(settings, local).model_copy(
        update={
            "tls_cert_file": local.server_pem,
            "tls_key_file": local.server_key,
            "metrics_listen": "127.0.0.1:0",
        }
    )
    return OwnFiles(local, configured)


@contextlib.asynccontextmanager
async def vault_on(files: OwnFiles, keyring: Keyring) -> AsyncIterator[RunningVault]:
    running = await start_vault(files.settings, keyring=keyring)
    try:
        yield running
    finally:
        await running.stop(0)


async def test_engines_of_a_new_ca_are_admitted_once_the_bundle_has_it(own_files: OwnFiles, keyring: Keyring) -> None:
    local = own_files.local
    async with vault_on(own_files, keyring) as vault, admin_of(vault, local) as admin:
        await admin.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id="loc-a")))
        await admin.AddEngine(mpb.AddEngineRequest(location_id="loc-a", engine_id="e1"))
        new_ca = pki.create_ca("the next engine CA", trust_domain=TRUST_DOMAIN)
        from_new_ca = pki.issue_engine_certificate(new_ca, local.identity("loc-a", "e1"))

        async def stream_with(cert: pki.IssuedCertificate) -> EngineClient:
            client = EngineClient(vault.engine_port, local.server_ca.cert_pem, cert)
            client.start("loc-a", "e1")
            await client.wait_until(lambda: client.synced.is_set() or client.error is not None)
            await client.close()
            return client

        refused = await stream_with(from_new_ca)
        assert refused.error is not None
        assert not refused.synced.is_set()
        # the CA bundle gains the new CA (the old one stays: its engines keep working meanwhile)
        bundle = local.engine_ca.cert_pem + new_ca.cert_pem
        tmp = local.engine_ca_pem.with_suffix(".tmp")
        tmp.write_bytes(bundle)
        tmp.replace(local.engine_ca_pem)

        async def admitted() -> bool:
            return (await stream_with(from_new_ca)).synced.is_set()

        await eventually(admitted)
        assert (await stream_with(local.engine("loc-a", "e1"))).synced.is_set()
        expiry = await scraped(
            vault.metrics_port, "credvault_certificate_expiry_seconds", port="engine", role="client_ca"
        )
        earliest = min(local.engine_ca.certificate.not_valid_after_utc, new_ca.certificate.not_valid_after_utc)
        assert expiry == earliest.timestamp()


async def test_a_half_written_renewal_keeps_the_previous_set_and_the_metrics_follow(
    own_files: OwnFiles, keyring: Keyring
) -> None:
    local = own_files.local
    async with vault_on(own_files, keyring) as vault:
        original = local.server.certificate
        assert (
            await scraped(vault.metrics_port, "credvault_certificate_expiry_seconds", port="api", role="server")
            == original.not_valid_after_utc.timestamp()
        )
        renewed = pki.issue_server_certificate(local.server_ca, ["localhost", "127.0.0.1"], days=30)
        # the certificate is replaced, its key not yet: the pair does not match, the previous set is served
        local.server_pem.write_bytes(renewed.chain_pem)
        for _ in range(3):
            assert (await served_certificate(vault.port)).serial_number == original.serial_number
        assert await scraped(vault.metrics_port, "credvault_certificate_reloads_total", port="api") is None
        # the key arrives: the next handshake gets the renewed certificate
        local.server_key.write_bytes(renewed.key_pem)
        assert (await served_certificate(vault.port)).serial_number == renewed.certificate.serial_number
        assert await scraped(vault.metrics_port, "credvault_certificate_reloads_total", port="api") == 1.0
        assert (
            await scraped(vault.metrics_port, "credvault_certificate_expiry_seconds", port="api", role="server")
            == renewed.certificate.not_valid_after_utc.timestamp()
        )


async def test_unusable_tls_files_at_start_are_a_configuration_error_naming_the_port_and_file(
    own_files: OwnFiles, keyring: Keyring
) -> None:
    local = own_files.local
    other = pki.issue_server_certificate(local.server_ca, ["localhost"])
    local.server_key.write_bytes(other.key_pem)  # a key of another certificate
    with pytest.raises(ConfigurationError, match=rf"api port: {local.server_key}: the key does not belong"):
        await start_vault(own_files.settings, keyring=keyring)
