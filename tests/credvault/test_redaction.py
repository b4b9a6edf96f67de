"""Every type that carries a secret has a redacted repr; the list of secret-bearing fields is pinned so a new one
cannot slip through unnoticed."""

from __future__ import annotations

import dataclasses
import datetime
import inspect

from vault_service import models, tokens
from vault_service.certificates import CertificateFormat, CertificateInfo, ClientCertificate

SECRET = "pinned-secret-value-123"

# The pinned list. Adding a secret-bearing field means adding it here AND redacting it in __repr__.
EXPECTED = {
    "UsernamePasswordSecret": {"password"},
    "CertificateUpload": {"data", "password"},
    "CertificateSecret": {"private_key_pem"},
    "TokenSecret": {"token"},
}
SECRETISH = ("password", "secret", "token", "private_key", "data", "key")


def test_secret_bearing_fields_are_pinned() -> None:
    declared = {cls.__name__: set(fields) for cls, fields in models.SECRET_BEARING_TYPES.items()}
    assert declared == EXPECTED
    for name, cls in inspect.getmembers(models, inspect.isclass):
        if not dataclasses.is_dataclass(cls) or cls.__module__ != models.__name__:
            continue
        secretish = {f.name for f in dataclasses.fields(cls) if any(s in f.name for s in SECRETISH)}
        public = (
            "TokenInfo",
            "Principal",
            "AuthCheck",
            "PublicCertificateSecret",
            "Page",
            "AuditEvent",
            "ExternalSource",
        )
        if name in public:
            # ids and public data only: token ids, scopes, page tokens; a public certificate is public; an external
            # source names the KV fields to read (username_key, ...) and the credentials that hold its secrets by id
            continue
        assert secretish <= EXPECTED.get(name, set()), f"{name} has unpinned secret-looking fields {secretish}"


def _instance(cls: type) -> object:
    """An instance whose secret fields hold SECRET and whose other fields hold harmless values."""
    secret_fields = models.SECRET_BEARING_TYPES[cls]
    values: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        value = SECRET if f.name in secret_fields else "public"
        if f.name == "format":
            values[f.name] = CertificateFormat.PEM
        else:
            values[f.name] = value.encode() if f.type == "bytes" else value
    return cls(**values)


def test_reprs_redact_every_secret() -> None:
    for cls in models.SECRET_BEARING_TYPES:
        obj = _instance(cls)
        assert SECRET not in repr(obj), cls.__name__
        assert SECRET not in str(obj), cls.__name__
        assert SECRET.encode().hex() not in repr(obj)


def test_issued_token_and_client_certificate_reprs() -> None:
    now = datetime.datetime.now(datetime.UTC)
    info = models.TokenInfo("cv0c01.X", "n", "o", frozenset(), models.TokenKind.API, now, None, None, None)
    assert SECRET not in repr(tokens.IssuedToken(info, SECRET))
    cert = ClientCertificate(b"chain", SECRET.encode(), CertificateInfo("s", "i", now, "f"))
    assert SECRET not in repr(cert)
