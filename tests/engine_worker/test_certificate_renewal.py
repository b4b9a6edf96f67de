"""The worker picks up a renewed client certificate by itself: it reconnects with it (keeping what it holds) once
the files are whole again, not while a renewal is half-written; its metrics show the expiry of the one in use."""

from __future__ import annotations

import asyncio
import pathlib
import time

from cryptography import x509

from credvault.v1 import monitors_pb2 as mpb
from engine_worker.tls import ClientCertificate
from tests.conftest import Client
from tests.helpers import one_monitor
from tests.local_pki import LocalPki
from tests.processes import System, eventually, introspect, scraped

CHECK_INTERVAL = 0.2


async def test_a_renewed_certificate_is_used_by_the_next_connection_without_losing_anything(
    system: System, system_admin: Client
) -> None:
    admin = system_admin
    _, m = await one_monitor(admin)
    cert_file, key_file = system.pki.engine_files("loc-a", "e1")
    first = x509.load_pem_x509_certificate(cert_file.read_bytes())
    worker, port = await system.start_worker(
        "loc-a", "e1", "--certificate-check-interval", str(CHECK_INTERVAL), "--log-level", "DEBUG"
    )

    async def holding() -> bool:
        doc = await introspect(port)
        return bool(doc["connected"]) and m.id in doc["monitors"]

    await eventually(holding)
    assert await scraped(port, "engine_certificate_expiry_seconds") == first.not_valid_after_utc.timestamp()

    renewed = system.pki.engine("loc-a", "e1", days=60)
    # half-written: the new certificate with the old key is not a renewal yet; the connection stays
    cert_file.write_bytes(renewed.chain_pem)
    checks = 0
    while checks < 5:  # five checks of the files go by: no reconnect
        await asyncio.sleep(CHECK_INTERVAL)
        checks += 1
    assert await scraped(port, "reconnects_total") == 0
    key_file.write_bytes(renewed.key_pem)

    async def on_the_renewal() -> bool:
        expiry = await scraped(port, "engine_certificate_expiry_seconds")
        return expiry == renewed.certificate.not_valid_after_utc.timestamp() and bool(
            (await introspect(port))["connected"]
        )

    await eventually(on_the_renewal)
    assert await scraped(port, "reconnects_total") == 1
    assert await scraped(port, "flushes_total") == 0
    assert m.id in (await introspect(port))["monitors"]
    assert any("connecting again: its certificate was renewed" in line for line in worker.lines)
    engines = (await admin.ListEngines(mpb.ListEnginesRequest(location_id="loc-a"))).engines
    assert [(e.engine_id, e.connected) for e in engines] == [("e1", True)]


def test_a_connection_is_renewed_for_a_new_certificate_of_the_same_engine_or_when_its_own_expired(
    local_pki: LocalPki, tmp_path: pathlib.Path
) -> None:
    cert_file, key_file = tmp_path / "engine.pem", tmp_path / "engine.key"
    first = local_pki.engine("loc-a", "e1")
    cert_file.write_bytes(first.chain_pem)
    key_file.write_bytes(first.key_pem)
    watch = ClientCertificate(cert_file, key_file, local_pki.server_ca_pem)
    assert watch.renewal_due(time.time()) is None  # no connection yet
    watch.used(first.chain_pem)
    assert watch.renewal_due(time.time()) is None
    assert watch.renewal_due(first.certificate.not_valid_after_utc.timestamp()) == (
        "the certificate of this connection has expired"
    )
    other_engine = local_pki.engine("loc-a", "e2")  # a certificate of another engine is not a renewal of this one
    cert_file.write_bytes(other_engine.chain_pem)
    key_file.write_bytes(other_engine.key_pem)
    assert watch.renewal_due(time.time()) is None
    renewed = local_pki.engine("loc-a", "e1", days=60)
    cert_file.write_bytes(renewed.chain_pem)
    key_file.write_bytes(renewed.key_pem)
    assert watch.renewal_due(time.time()) == "its certificate was renewed"
    watch.used(renewed.chain_pem)
    assert watch.renewal_due(time.time()) is None
    assert watch.not_after == renewed.certificate.not_valid_after_utc.timestamp()
