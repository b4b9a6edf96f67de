"""Credential contents: validation of what callers send, the byte encoding that gets encrypted, and the protocol's
CredentialDetails built from them."""

from __future__ import annotations

import base64
import json

from credvault.v1 import credentials_pb2 as cpb
from vault_service import validation
from vault_service.certificates import CertificateInfo, parse_client_certificate, parse_public_certificate
from vault_service.errors import DecryptionError
from vault_service.models import (
    CertificateSecret,
    CertificateUpload,
    ContentsInput,
    PublicCertificateSecret,
    SecretContents,
    TokenSecret,
    UsernamePasswordSecret,
)


def validate(contents: ContentsInput) -> tuple[SecretContents, CertificateInfo | None]:
    """What will be stored, and the certificate facts to keep as metadata."""
    if isinstance(contents, UsernamePasswordSecret):
        validation.text(
            "username_password.username", contents.username, max_len=validation.MAX_USERNAME * 2, required=True
        )
        # An empty password is refused: it is almost always a file or a pipe that held nothing.
        validation.secret_field("username_password.password", contents.password, required=True)
        return contents, None
    if isinstance(contents, TokenSecret):
        validation.secret_field("token.token", contents.token, required=True)
        return contents, None
    if isinstance(contents, CertificateUpload):
        parsed = parse_client_certificate(contents.data, contents.password, contents.format)
        return CertificateSecret(parsed.certificate_chain_pem, parsed.private_key_pem), parsed.info
    pem, info = parse_public_certificate(contents.pem)
    return PublicCertificateSecret(pem), info


def encode(contents: SecretContents) -> bytes:
    doc: dict[str, str]
    if isinstance(contents, UsernamePasswordSecret):
        doc = {"t": "username_password", "username": contents.username, "password": contents.password}
    elif isinstance(contents, TokenSecret):
        doc = {"t": "token", "token": contents.token}
    elif isinstance(contents, CertificateSecret):
        doc = {
            "t": "certificate",
            "chain": base64.b64encode(contents.certificate_chain_pem).decode(),
            "key": base64.b64encode(contents.private_key_pem).decode(),
        }
    else:
        doc = {"t": "public_certificate", "pem": base64.b64encode(contents.pem).decode()}
    return json.dumps(doc, separators=(",", ":")).encode()


def decode(data: bytes) -> SecretContents:
    try:
        doc = json.loads(data)
        kind = doc["t"]
        if kind == "username_password":
            return UsernamePasswordSecret(doc["username"], doc["password"])
        if kind == "token":
            return TokenSecret(doc["token"])
        if kind == "certificate":
            return CertificateSecret(base64.b64decode(doc["chain"]), base64.b64decode(doc["key"]))
        if kind == "public_certificate":
            return PublicCertificateSecret(base64.b64decode(doc["pem"]))
    except (ValueError, KeyError, TypeError):
        pass
    raise DecryptionError("decrypted contents are not in a known encoding")


def to_details(secret: SecretContents) -> cpb.CredentialDetails:
    """The contents as the protocol carries them (to a caller allowed to read them, and to engines)."""
    if isinstance(secret, UsernamePasswordSecret):
        return cpb.CredentialDetails(
            username_password=cpb.UsernamePassword(username=secret.username, password=secret.password)
        )
    if isinstance(secret, TokenSecret):
        return cpb.CredentialDetails(token=cpb.Token(token=secret.token))
    if isinstance(secret, CertificateSecret):
        return cpb.CredentialDetails(
            certificate=cpb.CertificateDetails(
                certificate_chain_pem=secret.certificate_chain_pem, private_key_pem=secret.private_key_pem
            )
        )
    return cpb.CredentialDetails(public_certificate=cpb.PublicCertificate(pem=secret.pem))
