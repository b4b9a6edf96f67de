"""Companion credentials for the external-sync tests of every provider: TOKEN, CERTIFICATE and the CA that issued
the fakes' and OpenBao's server certificate (PUBLIC_CERTIFICATE)."""

from __future__ import annotations

from credvault.v1 import credentials_pb2 as cpb
from tests.conftest import Client
from tests.helpers import SYN, token
from tests.local_pki import LocalPki
from vault_service import pki


async def token_credential(admin: Client, name: str, value: str) -> str:
    made = await admin.CreateCredential(cpb.CreateCredentialRequest(name=name, scopes=[SYN], contents=token(value)))
    return str(made.credential.id)


async def certificate_credential(admin: Client, name: str, issued: pki.IssuedCertificate) -> str:
    upload = cpb.Certificate(data=issued.chain_pem + issued.key_pem, format=cpb.CERTIFICATE_FORMAT_PEM)
    made = await admin.CreateCredential(
        cpb.CreateCredentialRequest(name=name, scopes=[SYN], contents=cpb.CredentialContents(certificate=upload))
    )
    return str(made.credential.id)


async def ca_credential(admin: Client, local_pki: LocalPki) -> str:
    ca = cpb.CredentialContents(public_certificate=cpb.PublicCertificate(pem=local_pki.server_ca_pem.read_bytes()))
    made = await admin.CreateCredential(
        cpb.CreateCredentialRequest(name="server ca", scopes=[cpb.CREDENTIAL_SCOPE_EXTENSION_VALIDATION], contents=ca)
    )
    return str(made.credential.id)
