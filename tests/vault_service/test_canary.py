"""A canary secret written through every credential type never comes back: not in any RPC response (except the
allowed details read), not in DEBUG logs, not in error messages, not in a pg_dump of the database."""

from __future__ import annotations

import asyncio
import base64
import logging
import pathlib
import shutil
import subprocess

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from google.protobuf.message import Message

from credvault.v1 import audit_pb2 as apb
from credvault.v1 import credentials_pb2 as cpb
from tests.conftest import Client
from tests.helpers import APP, SYN, create_req, up
from tests.local_pki import LocalPki

CANARY = "CANARY-7f3a9c1e-do-not-leak"


def _pg_dump() -> str:
    try:
        import pgserver

        bundled = pathlib.Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_dump"
        if bundled.exists():
            return str(bundled)  # the newest pg_dump dumps older servers too
    except ImportError:
        pass
    found = shutil.which("pg_dump")
    assert found, "pg_dump is needed for this test"
    return found


@pytest.fixture
def key_and_cert(local_pki: LocalPki) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A client certificate with its key, as a user would upload one (the tests' PKI issues it)."""
    issued = local_pki.engine("canary", "client")
    key = serialization.load_pem_private_key(issued.key_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key, issued.certificate


def _no_canary(where: str, blob: bytes, extra: list[bytes]) -> None:
    for needle in [CANARY.encode(), CANARY.encode().hex().encode(), base64.b64encode(CANARY.encode()), *extra]:
        assert needle not in blob, f"secret found in {where}"


async def test_canary_never_leaks(
    admin: Client,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
    key_and_cert: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    caplog.set_level(logging.DEBUG)
    key, cert = key_and_cert
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_body = b"".join(key_pem.splitlines()[1:-1])[:40]  # a piece of the key's base64, as it would be stored
    p12 = pkcs12.serialize_key_and_certificates(
        b"c", key, cert, None, serialization.BestAvailableEncryption(CANARY.encode())
    )
    enc_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(CANARY.encode()),
    ) + cert.public_bytes(serialization.Encoding.PEM)
    contents = {
        "up": up("canary-user", CANARY),
        "token": cpb.CredentialContents(token=cpb.Token(token=CANARY)),
        "p12": cpb.CredentialContents(
            certificate=cpb.Certificate(data=p12, password=CANARY, format=cpb.CERTIFICATE_FORMAT_PKCS12)
        ),
        "pem": cpb.CredentialContents(
            certificate=cpb.Certificate(data=enc_pem, password=CANARY, format=cpb.CERTIFICATE_FORMAT_PEM)
        ),
    }
    responses: list[Message] = []
    errors: list[str] = []
    ids = []
    for name, c in contents.items():
        created = await admin.CreateCredential(create_req(name, c, scopes=[SYN, APP]))
        responses.append(created)
        ids.append(created.credential.id)
        responses.append(await admin.GetCredential(cpb.GetCredentialRequest(id=created.credential.id)))
        responses.append(
            await admin.OverwriteCredential(cpb.OverwriteCredentialRequest(id=created.credential.id, contents=c))
        )
        responses.append(
            await admin.UpdateCredentialMetadata(
                cpb.UpdateCredentialMetadataRequest(id=created.credential.id, description="still secret")
            )
        )
    responses.append(await admin.ListCredentials(cpb.ListCredentialsRequest()))
    responses.append(await admin.ListAuditEvents(apb.ListAuditEventsRequest(page_size=500)))

    # failing calls that carry the canary in a secret field: messages must not echo it
    bad_calls = [
        admin.CreateCredential(create_req("", up("u", CANARY))),  # empty name
        admin.CreateCredential(
            create_req(
                "x",
                cpb.CredentialContents(token=cpb.Token(token=CANARY)),
                scopes=[cpb.CREDENTIAL_SCOPE_EXTENSION_VALIDATION],
            )
        ),
        admin.CreateCredential(
            create_req(
                "x",
                cpb.CredentialContents(
                    certificate=cpb.Certificate(data=p12, password=CANARY + "x", format=cpb.CERTIFICATE_FORMAT_PKCS12)
                ),
            )
        ),
        admin.CreateCredential(
            create_req(
                "x",
                cpb.CredentialContents(
                    certificate=cpb.Certificate(data=CANARY.encode(), password="", format=cpb.CERTIFICATE_FORMAT_PEM)
                ),
            )
        ),
        admin.OverwriteCredential(cpb.OverwriteCredentialRequest(id=ids[0], contents=contents["token"])),
        admin.CreateCredential(create_req("x", up("u", CANARY * 1000))),
    ]
    for call in bad_calls:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        errors.append(f"{info.value.details()} {info.value.debug_error_string()}")

    for r in responses:
        _no_canary(f"response {type(r).__name__}", r.SerializeToString(), [key_body])
    _no_canary("error messages", "\n".join(errors).encode(), [])
    _no_canary("logs", "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records).encode(), [key_body])

    # the one allowed read returns it (so the check above is not vacuous)
    details = await admin.GetCredentialDetails(cpb.GetCredentialDetailsRequest(id=ids[0], app_id="some.app"))
    assert details.details.username_password.password == CANARY  # APP_ENGINE scoped, allowed for all apps
    audit = await admin.ListAuditEvents(apb.ListAuditEventsRequest(page_size=500))
    assert "credential.read_details" in {e.action for e in audit.events}
    _no_canary("audit log", audit.SerializeToString(), [key_body])

    dump = await asyncio.to_thread(
        subprocess.run, [_pg_dump(), "--no-owner", "--dbname", database_url], capture_output=True, check=True
    )
    assert b"COPY public.credentials" in dump.stdout
    _no_canary("pg_dump", dump.stdout, [key_body])
