"""An engine's identity: the one SAN URI of its client certificate,
``spiffe://<trust-domain>/location/<location-id>/engine/<engine-id>``.

The vault mints it (engine certificates) and reads it (the engine port); the engine reads its own. Both use this one
parser, so an identity the vault accepts is one the engine accepts. Parsing is strict: no normalisation, so upper
case, percent-encoding, a port, user info, a query, a fragment, empty or extra path segments and a trailing slash are
all rejected. Every error is a :class:`ValueError` whose message says which rule failed.
"""

from __future__ import annotations

import dataclasses
import re

from cryptography import x509

from credvault.formats import SLUG, SLUG_RULE

__all__ = [
    "MAX_TRUST_DOMAIN",
    "TRUST_DOMAIN_RULE",
    "EngineIdentity",
    "identity_from_certificate",
    "is_ca_certificate",
    "is_valid_id",
    "is_valid_trust_domain",
]

# SPIFFE trust domain names: lower-case letters, digits, '.', '-', '_' (here: dot-separated non-empty labels).
_TRUST_DOMAIN = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
MAX_TRUST_DOMAIN = 255
TRUST_DOMAIN_RULE = f"dot-separated labels of a-z, 0-9, '-' and '_', at most {MAX_TRUST_DOMAIN} characters"
_SPIFFE_ENGINE = re.compile(r"spiffe://([^/]*)/location/([^/]*)/engine/([^/]*)")


def is_valid_id(value: object) -> bool:
    """Whether ``value`` is a valid location or engine id."""
    return isinstance(value, str) and SLUG.fullmatch(value) is not None


def is_valid_trust_domain(value: object) -> bool:
    """Whether ``value`` is a valid SPIFFE trust domain name (lower case, no port, no user info)."""
    return isinstance(value, str) and len(value) <= MAX_TRUST_DOMAIN and _TRUST_DOMAIN.fullmatch(value) is not None


@dataclasses.dataclass(frozen=True)
class EngineIdentity:
    """Who an engine is: ``spiffe://<trust_domain>/location/<location_id>/engine/<engine_id>``."""

    trust_domain: str
    location_id: str
    engine_id: str

    def __post_init__(self) -> None:
        if not is_valid_trust_domain(self.trust_domain):
            raise ValueError(f"trust_domain: {self.trust_domain!r} is not a valid trust domain: {TRUST_DOMAIN_RULE}")
        for field, value in (("location_id", self.location_id), ("engine_id", self.engine_id)):
            if not is_valid_id(value):
                raise ValueError(f"{field}: {value!r} is not a valid id: {SLUG_RULE}")

    @property
    def spiffe_uri(self) -> str:
        return f"spiffe://{self.trust_domain}/location/{self.location_id}/engine/{self.engine_id}"

    @classmethod
    def from_uri(cls, uri: str) -> EngineIdentity:
        """Parses exactly the form :attr:`spiffe_uri` produces; anything else is a :class:`ValueError`."""
        if not isinstance(uri, str):
            raise ValueError("an engine SPIFFE ID must be a string")
        match = _SPIFFE_ENGINE.fullmatch(uri)
        if match is None:
            raise ValueError(
                f"{uri!r} is not an engine SPIFFE ID of the form spiffe://<trust-domain>/location/<id>/engine/<id>"
            )
        try:
            return cls(*match.groups())
        except ValueError as exc:
            raise ValueError(f"{uri!r} is not a valid engine SPIFFE ID: {exc}") from None


def identity_from_certificate(cert_der_or_pem: bytes, trust_domain: str | None = None) -> EngineIdentity:
    """The engine identity of a (leaf) certificate, DER or PEM; for a PEM chain the first certificate is used.

    The certificate must not be a CA certificate, must carry exactly one URI SAN, that URI must be an engine SPIFFE ID
    (:meth:`EngineIdentity.from_uri`), and, when ``trust_domain`` is given, its trust domain must be that one. This
    does not verify the signature or validity period: that is the TLS handshake's job.
    """
    cert = _load_certificate(cert_der_or_pem)
    if is_ca_certificate(cert):
        raise ValueError("the certificate is a CA certificate, not an engine certificate")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise ValueError("the certificate has no subjectAltName extension, so no SPIFFE ID") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise ValueError(f"the certificate has {len(uris)} URI subjectAltNames; exactly one SPIFFE ID is required")
    (uri,) = uris
    identity = EngineIdentity.from_uri(uri)
    if trust_domain is not None and identity.trust_domain != trust_domain:
        raise ValueError(
            f"the certificate's SPIFFE ID is in trust domain {identity.trust_domain!r}, expected {trust_domain!r}"
        )
    return identity


def is_ca_certificate(cert: x509.Certificate) -> bool:
    """Whether the certificate's basicConstraints say it is a CA."""
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _load_certificate(data: bytes) -> x509.Certificate:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError("a certificate must be given as bytes (DER or PEM)")
    data = bytes(data)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificates(data)[0]
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise ValueError("the data is not an X.509 certificate in DER or PEM") from None
