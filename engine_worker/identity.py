"""The engine's own identity, read from its client certificate's one SAN URI.

``spiffe://<trust-domain>/location/<location-id>/engine/<engine-id>``, parsed strictly: no normalisation, so upper
case, percent-encoding, a port, user info, a query, a fragment, empty or extra path segments and a trailing slash are
all rejected. (The vault has its own parser; the engine never imports the vault, they share only the protocol.)
"""

from __future__ import annotations

import dataclasses
import re

from cryptography import x509

__all__ = ["EngineIdentity", "identity_from_certificate", "parse_spiffe_id"]

_ID = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_TRUST_DOMAIN = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
_MAX_TRUST_DOMAIN = 255
_SPIFFE_ENGINE = re.compile(r"spiffe://([^/]*)/location/([^/]*)/engine/([^/]*)")


@dataclasses.dataclass(frozen=True)
class EngineIdentity:
    """Who this engine is: the location it serves and its id there."""

    trust_domain: str
    location_id: str
    engine_id: str

    def __post_init__(self) -> None:
        if len(self.trust_domain) > _MAX_TRUST_DOMAIN or not _TRUST_DOMAIN.fullmatch(self.trust_domain):
            raise ValueError(f"{self.trust_domain!r} is not a valid trust domain")
        for what, value in (("location id", self.location_id), ("engine id", self.engine_id)):
            if not _ID.fullmatch(value):
                raise ValueError(f"{value!r} is not a valid {what}: 1-63 characters a-z, 0-9 and '-'")

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://{self.trust_domain}/location/{self.location_id}/engine/{self.engine_id}"


def parse_spiffe_id(uri: str) -> EngineIdentity:
    """The identity in exactly the form :attr:`EngineIdentity.spiffe_id` produces; anything else is a ValueError."""
    match = _SPIFFE_ENGINE.fullmatch(uri)
    if match is None:
        raise ValueError(f"{uri!r} is not an engine SPIFFE ID spiffe://<trust-domain>/location/<id>/engine/<id>")
    return EngineIdentity(*match.groups())


def identity_from_certificate(pem: bytes) -> EngineIdentity:
    """The identity of the leaf (first) certificate of a PEM chain: a non-CA certificate with exactly one URI SAN."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ValueError("the certificate file is not a PEM X.509 certificate (chain)") from None
    cert = certs[0]
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise ValueError("the certificate is a CA certificate, not an engine certificate")
    except x509.ExtensionNotFound:
        pass
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise ValueError("the certificate has no subjectAltName, so no engine SPIFFE ID") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise ValueError(f"the certificate has {len(uris)} URI subjectAltNames; exactly one SPIFFE ID is required")
    return parse_spiffe_id(uris[0])
