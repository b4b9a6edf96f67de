"""Tests of certificate upload validation (vault_service.certificates)."""

from __future__ import annotations

import dataclasses
import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from vault_service.certificates import (
    MAX_CERTIFICATE_BYTES,
    CertificateFormat,
    CertificateInfo,
    ClientCertificate,
    parse_client_certificate,
    parse_public_certificate,
)
from vault_service.errors import InvalidArgument

PASSWORD = "s3cret-Pa55word!"
WRONG_PASSWORD = "not-the-Pa55word?"
PEM = serialization.Encoding.PEM


@dataclasses.dataclass(frozen=True)
class Pki:
    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey
    leaf_cert: x509.Certificate
    other_key: ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example, Inc."),
        ]
    )


def _certificate(
    subject: str,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey,
    issuer: str,
    issuer_key: CertificateIssuerPrivateKeyTypes,
    *,
    ca: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    algorithm = None if isinstance(issuer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, algorithm)
    )


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate("Test CA", ca_key.public_key(), "Test CA", ca_key, ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = _certificate("client.example", leaf_key.public_key(), "Test CA", ca_key)
    return Pki(ca_key, ca_cert, leaf_key, leaf_cert, ec.generate_private_key(ec.SECP256R1()))


def _key_pem(key: ec.EllipticCurvePrivateKey, password: str = "", fmt: str = "pkcs8") -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption()
    )
    private_format = (
        serialization.PrivateFormat.PKCS8 if fmt == "pkcs8" else serialization.PrivateFormat.TraditionalOpenSSL
    )
    return key.private_bytes(PEM, private_format, encryption)


def _p12(pki: Pki, password: str, *, cas: list[x509.Certificate] | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption()
    )
    return pkcs12.serialize_key_and_certificates(b"client", pki.leaf_key, pki.leaf_cert, cas, encryption)


def _rejects(data: bytes, password: str, fmt: CertificateFormat, field: str, *secrets: str) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        parse_client_certificate(data, password, fmt)
    assert info.value.field == field
    _assert_no_secrets(info.value, password, *secrets)
    return info.value


def _assert_no_secrets(error: InvalidArgument, *secrets: str) -> None:
    text = str(error)
    for secret in (PASSWORD, WRONG_PASSWORD, *secrets):
        if secret:
            assert secret not in text
    assert "-----END" not in text  # no PEM block is echoed back
    # No library exception (whose text might quote input) is chained to the error.
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


def _assert_leaf(result: ClientCertificate, pki: Pki) -> None:
    chain = x509.load_pem_x509_certificates(result.certificate_chain_pem)
    assert chain[0] == pki.leaf_cert
    key = serialization.load_pem_private_key(result.private_key_pem, None)
    assert result.private_key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert key.public_key() == pki.leaf_key.public_key()


# --------------------------------------------------------------------------------------------------------------------
# PKCS#12
# --------------------------------------------------------------------------------------------------------------------


def test_p12_with_password(pki: Pki) -> None:
    result = parse_client_certificate(_p12(pki, PASSWORD, cas=[pki.ca_cert]), PASSWORD, CertificateFormat.PKCS12)
    _assert_leaf(result, pki)
    assert x509.load_pem_x509_certificates(result.certificate_chain_pem) == [pki.leaf_cert, pki.ca_cert]


def test_p12_without_password(pki: Pki) -> None:
    result = parse_client_certificate(_p12(pki, ""), "", CertificateFormat.PKCS12)
    _assert_leaf(result, pki)
    assert x509.load_pem_x509_certificates(result.certificate_chain_pem) == [pki.leaf_cert]


def test_p12_wrong_password(pki: Pki) -> None:
    error = _rejects(_p12(pki, PASSWORD), WRONG_PASSWORD, CertificateFormat.PKCS12, "certificate.password")
    assert "wrong password" in error.message


def test_p12_encrypted_without_password(pki: Pki) -> None:
    _rejects(_p12(pki, PASSWORD), "", CertificateFormat.PKCS12, "certificate.password")


def test_p12_unencrypted_with_password(pki: Pki) -> None:
    error = _rejects(_p12(pki, ""), PASSWORD, CertificateFormat.PKCS12, "certificate.password")
    assert "not password-protected" in error.message


@pytest.mark.parametrize(
    "data",
    [b"this is not a PKCS#12 file at all", b"\x30\x03\x02\x01\x03", b"\x00" * 100],
    ids=["text", "tiny-der", "zeros"],
)
def test_p12_garbage(data: bytes) -> None:
    error = _rejects(data, PASSWORD, CertificateFormat.PKCS12, "certificate.data")
    assert "not a valid PKCS#12/PFX file" in error.message


def test_p12_truncated(pki: Pki) -> None:
    _rejects(_p12(pki, PASSWORD)[:-20], PASSWORD, CertificateFormat.PKCS12, "certificate.data")


def test_p12_without_key(pki: Pki) -> None:
    data = pkcs12.serialize_key_and_certificates(
        b"x", None, None, [pki.leaf_cert], serialization.BestAvailableEncryption(PASSWORD.encode())
    )
    error = _rejects(data, PASSWORD, CertificateFormat.PKCS12, "certificate.data")
    assert "no private key" in error.message


def test_p12_without_certificate(pki: Pki) -> None:
    data = pkcs12.serialize_key_and_certificates(
        b"x", pki.leaf_key, None, None, serialization.BestAvailableEncryption(PASSWORD.encode())
    )
    error = _rejects(data, PASSWORD, CertificateFormat.PKCS12, "certificate.data")
    assert "no certificate" in error.message


def test_p12_rsa() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = _certificate("rsa.example", key.public_key(), "rsa.example", key)
    data = pkcs12.serialize_key_and_certificates(
        b"rsa", key, cert, None, serialization.BestAvailableEncryption(PASSWORD.encode())
    )
    result = parse_client_certificate(data, PASSWORD, CertificateFormat.PKCS12)
    assert x509.load_pem_x509_certificates(result.certificate_chain_pem) == [cert]
    assert serialization.load_pem_private_key(result.private_key_pem, None).public_key() == key.public_key()


# --------------------------------------------------------------------------------------------------------------------
# PEM client certificates
# --------------------------------------------------------------------------------------------------------------------


def test_pem_unencrypted_key(pki: Pki) -> None:
    data = pki.leaf_cert.public_bytes(PEM) + _key_pem(pki.leaf_key)
    result = parse_client_certificate(data, "", CertificateFormat.PEM)
    _assert_leaf(result, pki)


def test_pem_traditional_unencrypted_key(pki: Pki) -> None:
    data = _key_pem(pki.leaf_key, fmt="traditional") + pki.leaf_cert.public_bytes(PEM)
    assert b"BEGIN EC PRIVATE KEY" in data
    _assert_leaf(parse_client_certificate(data, "", CertificateFormat.PEM), pki)


@pytest.mark.parametrize("fmt", ["pkcs8", "traditional"])
def test_pem_encrypted_key_right_password(pki: Pki, fmt: str) -> None:
    data = pki.leaf_cert.public_bytes(PEM) + _key_pem(pki.leaf_key, PASSWORD, fmt)
    result = parse_client_certificate(data, PASSWORD, CertificateFormat.PEM)
    _assert_leaf(result, pki)
    assert b"ENCRYPTED" not in result.private_key_pem


@pytest.mark.parametrize("fmt", ["pkcs8", "traditional"])
def test_pem_encrypted_key_wrong_password(pki: Pki, fmt: str) -> None:
    data = pki.leaf_cert.public_bytes(PEM) + _key_pem(pki.leaf_key, PASSWORD, fmt)
    error = _rejects(data, WRONG_PASSWORD, CertificateFormat.PEM, "certificate.password")
    assert error.message == "certificate.password: does not decrypt the private key"


def test_pem_encrypted_key_no_password(pki: Pki) -> None:
    data = pki.leaf_cert.public_bytes(PEM) + _key_pem(pki.leaf_key, PASSWORD)
    error = _rejects(data, "", CertificateFormat.PEM, "certificate.password")
    assert "is required" in error.message


def test_pem_unencrypted_key_with_password(pki: Pki) -> None:
    data = pki.leaf_cert.public_bytes(PEM) + _key_pem(pki.leaf_key)
    error = _rejects(data, PASSWORD, CertificateFormat.PEM, "certificate.password")
    assert "not encrypted" in error.message


def test_pem_mismatched_key(pki: Pki) -> None:
    data = pki.leaf_cert.public_bytes(PEM) + _key_pem(pki.other_key)
    error = _rejects(data, "", CertificateFormat.PEM, "certificate.data")
    assert error.message == "certificate.data: private key does not match the certificate"


def test_pem_without_key(pki: Pki) -> None:
    error = _rejects(pki.leaf_cert.public_bytes(PEM), "", CertificateFormat.PEM, "certificate.data")
    assert "no private key" in error.message


def test_pem_without_certificate(pki: Pki) -> None:
    error = _rejects(_key_pem(pki.leaf_key), "", CertificateFormat.PEM, "certificate.data")
    assert "CERTIFICATE" in error.message


def test_pem_two_keys(pki: Pki) -> None:
    data = pki.leaf_cert.public_bytes(PEM) + _key_pem(pki.leaf_key) + _key_pem(pki.other_key)
    error = _rejects(data, "", CertificateFormat.PEM, "certificate.data")
    assert "exactly one" in error.message


@pytest.mark.parametrize("leaf_first", [True, False])
def test_pem_chain_puts_leaf_first(pki: Pki, leaf_first: bool) -> None:
    certs = [pki.leaf_cert, pki.ca_cert] if leaf_first else [pki.ca_cert, pki.leaf_cert]
    data = _key_pem(pki.leaf_key) + b"".join(cert.public_bytes(PEM) for cert in certs)
    result = parse_client_certificate(data, "", CertificateFormat.PEM)
    assert x509.load_pem_x509_certificates(result.certificate_chain_pem) == [pki.leaf_cert, pki.ca_cert]
    assert result.info.subject == pki.leaf_cert.subject.rfc4514_string()


def test_pem_malformed_certificate(pki: Pki) -> None:
    broken = b"-----BEGIN CERTIFICATE-----\nTUlJQm9ndXM=\n-----END CERTIFICATE-----\n"
    data = pki.leaf_cert.public_bytes(PEM) + broken + _key_pem(pki.leaf_key)
    error = _rejects(data, "", CertificateFormat.PEM, "certificate.data")
    assert "certificate block 2 of 2" in error.message


def test_pem_malformed_key(pki: Pki) -> None:
    key_pem = _key_pem(pki.leaf_key)
    lines = key_pem.splitlines(keepends=True)
    broken = lines[0] + b"!!!!" + lines[1][4:] + b"".join(lines[2:])
    error = _rejects(pki.leaf_cert.public_bytes(PEM) + broken, "", CertificateFormat.PEM, "certificate.data")
    assert "private key block is malformed" in error.message


def test_pem_unbalanced_framing(pki: Pki) -> None:
    data = pki.leaf_cert.public_bytes(PEM) + _key_pem(pki.leaf_key).replace(b"-----END PRIVATE KEY-----", b"")
    error = _rejects(data, "", CertificateFormat.PEM, "certificate.data")
    assert "malformed PEM" in error.message


def test_pem_not_pem(pki: Pki) -> None:
    error = _rejects(_p12(pki, PASSWORD), PASSWORD, CertificateFormat.PEM, "certificate.data")
    assert "not PEM" in error.message


def test_pem_ed25519() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    cert = _certificate("ed.example", key.public_key(), "ed.example", key)
    key_pem = key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    result = parse_client_certificate(cert.public_bytes(PEM) + key_pem, "", CertificateFormat.PEM)
    assert result.private_key_pem == key_pem
    assert x509.load_pem_x509_certificates(result.certificate_chain_pem) == [cert]


# --------------------------------------------------------------------------------------------------------------------
# Info, repr, sizes
# --------------------------------------------------------------------------------------------------------------------


def test_info_fields(pki: Pki) -> None:
    data = pki.leaf_cert.public_bytes(PEM) + _key_pem(pki.leaf_key)
    info = parse_client_certificate(data, "", CertificateFormat.PEM).info
    assert info == CertificateInfo(
        subject="O=Example\\, Inc.,CN=client.example",
        issuer="O=Example\\, Inc.,CN=Test CA",
        not_after=pki.leaf_cert.not_valid_after_utc,
        sha256_fingerprint=pki.leaf_cert.fingerprint(hashes.SHA256()).hex(),
    )
    assert info.subject == pki.leaf_cert.subject.rfc4514_string()
    assert info.not_after.tzinfo is not None
    assert info.not_after.utcoffset() == datetime.timedelta(0)
    assert len(info.sha256_fingerprint) == 64
    assert info.sha256_fingerprint == info.sha256_fingerprint.lower()


def test_repr_hides_private_key(pki: Pki) -> None:
    result = parse_client_certificate(_p12(pki, PASSWORD), PASSWORD, CertificateFormat.PKCS12)
    text = repr(result)
    assert "<redacted>" in text
    assert "PRIVATE KEY" not in text
    assert result.private_key_pem.decode() not in text
    body_line = result.private_key_pem.splitlines()[1].decode()
    assert body_line not in text
    assert PASSWORD not in text
    assert "client.example" in text  # the info is shown
    assert str(result) == text


@pytest.mark.parametrize("fmt", list(CertificateFormat))
def test_empty_rejected(fmt: CertificateFormat) -> None:
    error = _rejects(b"", PASSWORD, fmt, "certificate.data")
    assert "is empty" in error.message


@pytest.mark.parametrize("fmt", list(CertificateFormat))
def test_oversized_rejected(pki: Pki, fmt: CertificateFormat) -> None:
    data = pki.leaf_cert.public_bytes(PEM) + _key_pem(pki.leaf_key)
    data += b"\n" * (MAX_CERTIFICATE_BYTES + 1 - len(data))
    error = _rejects(data, PASSWORD, fmt, "certificate.data")
    assert str(MAX_CERTIFICATE_BYTES) in error.message


def test_at_size_limit_accepted(pki: Pki) -> None:
    data = pki.leaf_cert.public_bytes(PEM) + _key_pem(pki.leaf_key)
    data += b"\n" * (MAX_CERTIFICATE_BYTES - len(data))
    assert len(data) == MAX_CERTIFICATE_BYTES
    _assert_leaf(parse_client_certificate(data, "", CertificateFormat.PEM), pki)


# --------------------------------------------------------------------------------------------------------------------
# Public certificates
# --------------------------------------------------------------------------------------------------------------------


def test_public_certificate(pki: Pki) -> None:
    data = (
        b"leading comment\n" + pki.leaf_cert.public_bytes(PEM).replace(b"\n", b"\r\n") + pki.ca_cert.public_bytes(PEM)
    )
    pem, info = parse_public_certificate(data)
    assert pem == pki.leaf_cert.public_bytes(PEM) + pki.ca_cert.public_bytes(PEM)
    assert info.subject == pki.leaf_cert.subject.rfc4514_string()
    assert info.issuer == pki.ca_cert.subject.rfc4514_string()
    assert info.not_after == pki.leaf_cert.not_valid_after_utc
    assert info.sha256_fingerprint == pki.leaf_cert.fingerprint(hashes.SHA256()).hex()


@pytest.mark.parametrize("password", ["", PASSWORD])
def test_public_certificate_with_private_key(pki: Pki, password: str) -> None:
    data = pki.leaf_cert.public_bytes(PEM) + _key_pem(pki.leaf_key, password)
    with pytest.raises(InvalidArgument) as info:
        parse_public_certificate(data)
    assert info.value.field == "public_certificate.pem"
    assert info.value.message == (
        "public_certificate.pem: contains a private key; a public certificate credential holds only certificates"
    )
    _assert_no_secrets(info.value)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "is empty"),
        (b"x" * (MAX_CERTIFICATE_BYTES + 1), str(MAX_CERTIFICATE_BYTES)),
        (b"not pem", "not PEM"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a valid X.509 certificate"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "no '-----BEGIN CERTIFICATE-----' block"),
    ],
    ids=["empty", "oversized", "not-pem", "malformed", "no-certificate"],
)
def test_public_certificate_rejected(data: bytes, expected: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_public_certificate(data)
    assert info.value.field == "public_certificate.pem"
    assert expected in info.value.message
    _assert_no_secrets(info.value)
