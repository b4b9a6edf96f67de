"""Validation of certificate uploads and extraction of their non-secret metadata.

Two kinds of upload are handled:

* client certificates (:func:`parse_client_certificate`): a private key plus its certificate (and optionally the rest
  of the chain), uploaded as a PKCS#12/PFX file or as PEM text. The result is normalised to a PEM chain (leaf first)
  and an unencrypted PKCS#8 PEM private key, ready to be stored encrypted by the vault.
* public certificates (:func:`parse_public_certificate`): one or more X.509 certificates in PEM, without a key.

Every problem is reported as :class:`~vault_service.errors.InvalidArgument` naming the offending field. Messages are
fixed strings written here: they never contain the password, key material, or the text of a library exception (which
could quote parts of the input), and the original exception is suppressed (``raise ... from None``).
"""

from __future__ import annotations

import binascii
import dataclasses
import datetime
import enum
import re

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12

from vault_service.errors import InvalidArgument

__all__ = [
    "MAX_CERTIFICATE_BYTES",
    "CertificateFormat",
    "CertificateInfo",
    "ClientCertificate",
    "parse_client_certificate",
    "parse_public_certificate",
]

MAX_CERTIFICATE_BYTES = 64 * 1024

_DATA_FIELD = "certificate.data"
_PASSWORD_FIELD = "certificate.password"
_PUBLIC_FIELD = "public_certificate.pem"

_SUPPORTED_KEY_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)
_SUPPORTED_KEY_NAMES = "RSA, EC, Ed25519 or Ed448"

# PEM labels of private keys cryptography can load; any other label ending in "PRIVATE KEY" is reported as unsupported.
_LOADABLE_KEY_LABELS = frozenset({b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY", b"ENCRYPTED PRIVATE KEY"})
_CERTIFICATE_LABEL = b"CERTIFICATE"

_PEM_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
_PEM_END = re.compile(rb"-----END ([A-Z0-9 ]+)-----")
_PROC_TYPE_ENCRYPTED = re.compile(rb"^Proc-Type:\s*4\s*,\s*ENCRYPTED\s*$", re.MULTILINE)

# DER prefix of a PFX (RFC 7292): SEQUENCE { version INTEGER 3, authSafe ContentInfo { contentType OID pkcs7-data
# (1.2.840.113549.1.7.1) or pkcs7-signedData (...7.2), ... }, ... }.
_PKCS7_OID_PREFIX = bytes.fromhex("06092a864886f70d0107")
_PKCS7_DATA_OR_SIGNED = (1, 2)


class CertificateFormat(enum.Enum):
    """How a client certificate upload is encoded."""

    PKCS12 = "PKCS12"  # .p12 / .pfx
    PEM = "PEM"


@dataclasses.dataclass(frozen=True)
class CertificateInfo:
    """Non-secret metadata of a (leaf) certificate."""

    subject: str  # RFC 4514 string
    issuer: str  # RFC 4514 string
    not_after: datetime.datetime  # timezone-aware UTC
    sha256_fingerprint: str  # lower-case hex, 64 chars, of the DER leaf certificate


@dataclasses.dataclass(frozen=True, repr=False)
class ClientCertificate:
    """A validated client certificate: the chain (leaf first) and the matching private key, both PEM."""

    certificate_chain_pem: bytes  # leaf first, then any additional certs, PEM
    private_key_pem: bytes  # unencrypted PKCS#8 PEM
    info: CertificateInfo

    def __repr__(self) -> str:
        return (
            f"ClientCertificate(certificate_chain_pem=<{len(self.certificate_chain_pem)} bytes>, "
            f"private_key_pem=<redacted>, info={self.info!r})"
        )


@dataclasses.dataclass(frozen=True)
class _PemBlock:
    label: bytes
    text: bytes  # the whole block, BEGIN and END lines included


# --------------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------------


def parse_client_certificate(data: bytes, password: str, fmt: CertificateFormat) -> ClientCertificate:
    """Validate a client certificate upload and normalise it.

    ``password`` decrypts the PKCS#12 file or the encrypted PEM private key; ``""`` means "no password".
    Raises :class:`InvalidArgument` (field ``certificate.data`` or ``certificate.password``) on any problem.
    """
    _check_size(data, _DATA_FIELD)
    if fmt is CertificateFormat.PKCS12:
        key, certificates = _load_pkcs12(data, password)
    elif fmt is CertificateFormat.PEM:
        key, certificates = _load_client_pem(data, password)
    else:  # pragma: no cover - exhaustive over the enum
        raise InvalidArgument("certificate.format", "is not a supported certificate format")

    if not isinstance(key, _SUPPORTED_KEY_TYPES):
        raise InvalidArgument(_DATA_FIELD, f"private key type is not supported (use {_SUPPORTED_KEY_NAMES})")
    chain = _order_chain(key, certificates)
    leaf = chain[0]
    return ClientCertificate(
        certificate_chain_pem=_certificates_pem(chain),
        private_key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        info=_certificate_info(leaf),
    )


def parse_public_certificate(pem: bytes) -> tuple[bytes, CertificateInfo]:
    """Validate a public certificate upload (PEM, one or more certificates, no private key).

    Returns the normalised PEM of all certificates (in upload order) and the info of the first one, which is taken to
    be the leaf. Raises :class:`InvalidArgument` (field ``public_certificate.pem``) on any problem.
    """
    _check_size(pem, _PUBLIC_FIELD)
    blocks = _pem_blocks(pem, _PUBLIC_FIELD)
    if any(_is_private_key_label(block.label) for block in blocks):
        raise InvalidArgument(
            _PUBLIC_FIELD, "contains a private key; a public certificate credential holds only certificates"
        )
    certificates = _load_certificate_blocks(blocks, _PUBLIC_FIELD)
    return _certificates_pem(certificates), _certificate_info(certificates[0])


# --------------------------------------------------------------------------------------------------------------------
# Common checks
# --------------------------------------------------------------------------------------------------------------------


def _check_size(data: bytes, field: str) -> None:
    if not isinstance(data, bytes):
        raise InvalidArgument(field, "must be bytes")
    if not data:
        raise InvalidArgument(field, "is empty; upload the certificate file")
    if len(data) > MAX_CERTIFICATE_BYTES:
        raise InvalidArgument(field, f"is {len(data)} bytes; the limit is {MAX_CERTIFICATE_BYTES} bytes")


def _certificate_info(certificate: x509.Certificate) -> CertificateInfo:
    return CertificateInfo(
        subject=certificate.subject.rfc4514_string(),
        issuer=certificate.issuer.rfc4514_string(),
        not_after=certificate.not_valid_after_utc,
        sha256_fingerprint=certificate.fingerprint(hashes.SHA256()).hex(),
    )


def _certificates_pem(certificates: list[x509.Certificate]) -> bytes:
    return b"".join(certificate.public_bytes(serialization.Encoding.PEM) for certificate in certificates)


def _public_key_der(key_or_cert: PrivateKeyTypes | x509.Certificate) -> bytes | None:
    """SubjectPublicKeyInfo DER of a private key or certificate, or None if it cannot be determined."""
    try:
        public_key = key_or_cert.public_key()
        return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None


def _order_chain(key: PrivateKeyTypes, certificates: list[x509.Certificate]) -> list[x509.Certificate]:
    """Put the certificate matching ``key`` first; keep the others in their order; drop exact duplicates."""
    unique: list[x509.Certificate] = []
    seen: set[bytes] = set()
    for certificate in certificates:
        der = certificate.public_bytes(serialization.Encoding.DER)
        if der not in seen:
            seen.add(der)
            unique.append(certificate)

    key_der = _public_key_der(key)
    for index, certificate in enumerate(unique):
        if key_der is not None and _public_key_der(certificate) == key_der:
            return [certificate, *unique[:index], *unique[index + 1 :]]
    raise InvalidArgument(_DATA_FIELD, "private key does not match the certificate")


# --------------------------------------------------------------------------------------------------------------------
# PKCS#12
# --------------------------------------------------------------------------------------------------------------------


def _load_pkcs12(data: bytes, password: str) -> tuple[PrivateKeyTypes, list[x509.Certificate]]:
    password_bytes = password.encode("utf-8") if password else None
    try:
        key, certificate, additional = pkcs12.load_key_and_certificates(data, password_bytes)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # cryptography raises ValueError both for undecodable files and for a wrong password. Decide by looking at
        # the structure ourselves; the library's "could not deserialize" wording is only a secondary hint.
        malformed_hint = isinstance(exc, ValueError) and "deserialize" in str(exc).lower()
        if malformed_hint or not _looks_like_pfx(data):
            raise InvalidArgument(_DATA_FIELD, "is not a valid PKCS#12/PFX file") from None
        if isinstance(exc, UnsupportedAlgorithm):
            raise InvalidArgument(
                _DATA_FIELD, "uses an encryption algorithm that is not supported; re-export the PKCS#12 file"
            ) from None
        if password_bytes is None:
            raise InvalidArgument(_PASSWORD_FIELD, "is required: the PKCS#12 file is password-protected") from None
        if _opens_without_password(data):
            raise InvalidArgument(
                _PASSWORD_FIELD, "was given but the PKCS#12 file is not password-protected; leave it empty"
            ) from None
        raise InvalidArgument(_PASSWORD_FIELD, "does not decrypt the PKCS#12 file (wrong password?)") from None

    if key is None and certificate is None and not additional:
        raise InvalidArgument(_DATA_FIELD, "PKCS#12 file contains neither a private key nor a certificate")
    if key is None:
        raise InvalidArgument(_DATA_FIELD, "PKCS#12 file contains no private key")
    certificates = ([certificate] if certificate is not None else []) + list(additional)
    if not certificates:
        raise InvalidArgument(_DATA_FIELD, "PKCS#12 file contains no certificate")
    return key, certificates


def _opens_without_password(data: bytes) -> bool:
    try:
        pkcs12.load_key_and_certificates(data, None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _looks_like_pfx(data: bytes) -> bool:
    """Whether ``data`` starts like a DER/BER PFX structure (and, for a definite length, is not truncated/padded)."""
    if len(data) < 2 or data[0] != 0x30:
        return False
    pos = 1
    first = data[pos]
    pos += 1
    if first == 0x80:  # BER indefinite length: the total size cannot be checked cheaply
        expected_end = None
    elif first < 0x80:
        expected_end = pos + first
    else:
        count = first & 0x7F
        if count > 4 or pos + count > len(data):
            return False
        expected_end = pos + count + int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if expected_end is not None and expected_end != len(data):
        return False
    # version INTEGER 3
    if data[pos : pos + 3] != b"\x02\x01\x03":
        return False
    pos += 3
    # authSafe ContentInfo SEQUENCE: skip its tag and length, then expect the PKCS#7 content type OID
    if pos >= len(data) or data[pos] != 0x30:
        return False
    pos += 1
    if pos >= len(data):
        return False
    length_byte = data[pos]
    pos += 1 + (length_byte & 0x7F if length_byte > 0x80 else 0)
    oid = data[pos : pos + len(_PKCS7_OID_PREFIX) + 1]
    return oid[:-1] == _PKCS7_OID_PREFIX and len(oid) == len(_PKCS7_OID_PREFIX) + 1 and oid[-1] in _PKCS7_DATA_OR_SIGNED


# --------------------------------------------------------------------------------------------------------------------
# PEM
# --------------------------------------------------------------------------------------------------------------------


def _is_private_key_label(label: bytes) -> bool:
    return label.endswith(b"PRIVATE KEY")


def _pem_blocks(data: bytes, field: str) -> list[_PemBlock]:
    """Split PEM text into its BEGIN/END blocks; text between blocks is ignored, unbalanced framing is an error."""
    blocks: list[_PemBlock] = []
    pos = 0
    while True:
        begin = _PEM_BEGIN.search(data, pos)
        if begin is None:
            break
        end = _PEM_END.search(data, begin.end())
        if end is None:
            raise InvalidArgument(field, f"is malformed PEM: a '{_label(begin.group(1))}' block has no END line")
        if end.group(1) != begin.group(1):
            raise InvalidArgument(
                field,
                f"is malformed PEM: a '{_label(begin.group(1))}' block ends with END '{_label(end.group(1))}'",
            )
        next_begin = _PEM_BEGIN.search(data, begin.end(), end.start())
        if next_begin is not None:
            raise InvalidArgument(field, f"is malformed PEM: a '{_label(begin.group(1))}' block has no END line")
        blocks.append(_PemBlock(label=begin.group(1), text=data[begin.start() : end.end()] + b"\n"))
        pos = end.end()
    if _PEM_END.search(data, pos) is not None:
        raise InvalidArgument(field, "is malformed PEM: an END line has no BEGIN line")
    if not blocks:
        raise InvalidArgument(field, "is not PEM: no '-----BEGIN CERTIFICATE-----' block found")
    return blocks


def _label(raw: bytes) -> str:
    # The labels matched by the regex are ASCII upper-case letters, digits and spaces: safe to echo back.
    return raw.decode("ascii")


def _load_certificate_blocks(blocks: list[_PemBlock], field: str) -> list[x509.Certificate]:
    certificate_blocks = [block for block in blocks if block.label == _CERTIFICATE_LABEL]
    if not certificate_blocks:
        raise InvalidArgument(field, "contains no '-----BEGIN CERTIFICATE-----' block")
    certificates: list[x509.Certificate] = []
    for number, block in enumerate(certificate_blocks, start=1):
        try:
            certificates.append(x509.load_pem_x509_certificate(block.text))
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise InvalidArgument(
                field, f"certificate block {number} of {len(certificate_blocks)} is not a valid X.509 certificate"
            ) from None
    return certificates


def _load_client_pem(data: bytes, password: str) -> tuple[PrivateKeyTypes, list[x509.Certificate]]:
    blocks = _pem_blocks(data, _DATA_FIELD)
    key_blocks = [block for block in blocks if _is_private_key_label(block.label)]
    if not key_blocks:
        raise InvalidArgument(_DATA_FIELD, "contains no private key block (for example '-----BEGIN PRIVATE KEY-----')")
    if len(key_blocks) > 1:
        raise InvalidArgument(_DATA_FIELD, f"contains {len(key_blocks)} private key blocks; exactly one is required")
    certificates = _load_certificate_blocks(blocks, _DATA_FIELD)
    key = _load_pem_key(key_blocks[0], password)
    return key, certificates


def _load_pem_key(block: _PemBlock, password: str) -> PrivateKeyTypes:
    if block.label not in _LOADABLE_KEY_LABELS:
        raise InvalidArgument(
            _DATA_FIELD,
            f"private key block '{_label(block.label)}' is not supported "
            "(use 'PRIVATE KEY', 'RSA PRIVATE KEY', 'EC PRIVATE KEY' or 'ENCRYPTED PRIVATE KEY')",
        )
    encrypted = block.label == b"ENCRYPTED PRIVATE KEY" or _PROC_TYPE_ENCRYPTED.search(block.text) is not None
    if encrypted and not password:
        raise InvalidArgument(_PASSWORD_FIELD, "is required: the private key is encrypted")
    if not encrypted and password:
        raise InvalidArgument(_PASSWORD_FIELD, "was given but the private key is not encrypted; leave it empty")

    try:
        return serialization.load_pem_private_key(block.text, password.encode("utf-8") if encrypted else None)
    except UnsupportedAlgorithm:
        raise InvalidArgument(
            _DATA_FIELD, "private key uses a key type or encryption algorithm that is not supported"
        ) from None
    except (ValueError, TypeError):
        pass  # classified below, outside the except block so no exception context is kept
    if encrypted and _encrypted_key_is_well_formed(block):
        raise InvalidArgument(_PASSWORD_FIELD, "does not decrypt the private key")
    raise InvalidArgument(_DATA_FIELD, "private key block is malformed")


def _encrypted_key_is_well_formed(block: _PemBlock) -> bool:
    """Whether an encrypted key block looks intact, so that a failure to load it means a wrong password.

    The body must be valid base64; for PKCS#8 ('ENCRYPTED PRIVATE KEY') it must also be a DER SEQUENCE. For the
    traditional OpenSSL format (a 'Proc-Type: 4,ENCRYPTED' header) the body is raw ciphertext and must be non-empty.
    """
    lines = block.text.splitlines()[1:-1]
    body = b"".join(line.strip() for line in lines if line.strip() and b":" not in line)
    try:
        der = binascii.a2b_base64(body, strict_mode=True)
    except (binascii.Error, ValueError):
        return False
    if block.label == b"ENCRYPTED PRIVATE KEY":
        return len(der) > 2 and der[0] == 0x30
    return len(der) > 0
