"""Certificate authorities and the certificates they issue (see :mod:`vault_service.pki`)."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import re

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from credvault.formats import SLUG_RULE
from credvault.identity import (
    TRUST_DOMAIN_RULE,
    EngineIdentity,
    is_ca_certificate,
    is_valid_id,
    is_valid_trust_domain,
)
from vault_service.errors import InvalidArgument

__all__ = [
    "ENGINE_CA",
    "SERVER",
    "SERVER_CA",
    "TRUST_DOMAIN_DEFAULT",
    "IssuedCertificate",
    "ca_parts",
    "ca_trust_domain",
    "cert_pem",
    "create_ca",
    "issue_engine_certificate",
    "issue_server_certificate",
    "validate_engine_id",
    "validate_location_id",
    "validate_trust_domain",
]

TRUST_DOMAIN_DEFAULT = "credvault.local"

# File names (without suffix) inside a PKI directory.
ENGINE_CA = "engine-ca"
SERVER_CA = "server-ca"
SERVER = "server"

_SPIFFE_ROOT = re.compile(r"spiffe://([^/]*)")
_HOSTNAME_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")

_CLOCK_SKEW = datetime.timedelta(minutes=5)  # leaf certificates are valid from a little before "now"
_HASH = hashes.SHA256()


# --- identities --------------------------------------------------------------------------------------------------


def _check_id(field: str, value: str) -> str:
    if not is_valid_id(value):
        raise InvalidArgument(field, f"{value!r} is not a valid id: {SLUG_RULE}")
    return value


def validate_location_id(value: str) -> str:
    """``value`` if it is a valid location id, else :class:`InvalidArgument` naming ``location_id``."""
    return _check_id("location_id", value)


def validate_engine_id(value: str) -> str:
    """``value`` if it is a valid engine id, else :class:`InvalidArgument` naming ``engine_id``."""
    return _check_id("engine_id", value)


def validate_trust_domain(value: str) -> str:
    """``value`` if it is a valid SPIFFE trust domain name (lower case, no port, no user info)."""
    if not is_valid_trust_domain(value):
        raise InvalidArgument("trust_domain", f"{value!r} is not a valid trust domain: {TRUST_DOMAIN_RULE}")
    return value


# --- issuing -----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, repr=False)
class IssuedCertificate:
    """A certificate with its private key. ``chain_pem`` is the leaf followed by its issuer (for a CA: itself)."""

    cert_pem: bytes
    key_pem: bytes
    chain_pem: bytes

    def __repr__(self) -> str:
        try:
            cert = x509.load_pem_x509_certificate(self.cert_pem)
            about = f"subject={cert.subject.rfc4514_string()!r}, not_after={cert.not_valid_after_utc.isoformat()}"
        except ValueError:
            about = f"cert_pem=<{len(self.cert_pem)} bytes>"
        return f"IssuedCertificate({about}, key_pem=<redacted>)"

    __str__ = __repr__

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _check_days(days: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise InvalidArgument("days", f"must be a whole number of days >= 1, got {days!r}")


def create_ca(
    common_name: str, *, days: int = 3650, trust_domain: str | None = None, organization: str = "credvault"
) -> IssuedCertificate:
    """A self-signed CA that may sign leaf certificates only (pathlen 0).

    With ``trust_domain`` the CA certificate carries the SAN URI ``spiffe://<trust_domain>`` (a SPIFFE signing
    certificate may name its trust domain), which :func:`ca_trust_domain` reads back.
    """
    _check_days(days)
    if not common_name or len(common_name) > 64:
        raise InvalidArgument("common_name", "must be 1-64 characters")
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    if trust_domain is not None:
        validate_trust_domain(trust_domain)
        san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")])
        builder = builder.add_extension(san, critical=False)
    cert = builder.sign(key, _HASH)
    pem = cert_pem(cert)
    return IssuedCertificate(cert_pem=pem, key_pem=_key_pem(key), chain_pem=pem)


def ca_trust_domain(ca: IssuedCertificate) -> str | None:
    """The trust domain a CA made by :func:`create_ca` records in its ``spiffe://<trust-domain>`` SAN, if any."""
    try:
        san = ca.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        match = _SPIFFE_ROOT.fullmatch(uri)
        if match is not None:
            return match.group(1)
    return None


def ca_parts(ca: IssuedCertificate) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA's certificate and key, after checking that they belong together and that it is a CA."""
    try:
        cert = x509.load_pem_x509_certificate(ca.cert_pem)
    except ValueError:
        raise ValueError("the CA certificate is not a PEM X.509 certificate") from None
    try:
        key = serialization.load_pem_private_key(ca.key_pem, password=None)
    except (ValueError, TypeError):
        raise ValueError("the CA private key is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA private key is not an EC key")
    if key.public_key().public_numbers() != _ec_public(cert).public_numbers():
        raise ValueError("the CA private key does not belong to the CA certificate")
    if not is_ca_certificate(cert):
        raise ValueError("the CA certificate is not a CA certificate (basicConstraints CA is not true)")
    return cert, key


def _ec_public(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise ValueError("the certificate's key is not an EC key")
    return public


def _aware(field: str, value: datetime.datetime) -> datetime.datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{field} must be timezone-aware")
    return value.astimezone(datetime.UTC)


def _issue(
    ca: IssuedCertificate,
    subject: x509.Name,
    san: x509.SubjectAlternativeName,
    usage: x509.ObjectIdentifier,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> IssuedCertificate:
    ca_cert, ca_key = ca_parts(ca)
    not_before = _aware("not_before", not_before)
    not_after = _aware("not_after", not_after)
    if not_after <= not_before:
        raise ValueError("not_after must be later than not_before")
    if not_after > ca_cert.not_valid_after_utc:
        raise ValueError(
            f"the certificate would outlive its CA (valid until {ca_cert.not_valid_after_utc.isoformat()}): "
            "issue it for fewer days or renew the CA"
        )
    key = _new_key()
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(_ec_public(ca_cert))
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(san, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca_key, _HASH)
    )
    pem = cert_pem(cert)
    return IssuedCertificate(cert_pem=pem, key_pem=_key_pem(key), chain_pem=pem + cert_pem(ca_cert))


def _general_name(hostname: str) -> x509.GeneralName:
    if not isinstance(hostname, str):
        raise InvalidArgument("hostname", "must be a string")
    try:
        return x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        pass
    labels = hostname.split(".")
    if labels[0] == "*" and len(labels) > 2:  # a wildcard for one label, never for a whole domain like *.com
        labels = labels[1:]
    if len(hostname) > 253 or not all(_HOSTNAME_LABEL.fullmatch(label) for label in labels):
        raise InvalidArgument(
            "hostname", f"{hostname!r} is neither an IP address nor a lower-case DNS name (a-z, 0-9, '-', '.')"
        )
    return x509.DNSName(hostname)


def issue_server_certificate(ca: IssuedCertificate, hostnames: list[str], *, days: int = 397) -> IssuedCertificate:
    """A TLS server certificate (serverAuth) for ``hostnames``: DNS names and IP addresses (as IP SANs)."""
    _check_days(days)
    if isinstance(hostnames, str) or not hostnames:
        raise InvalidArgument("hostname", "at least one host name or IP address is required")
    names: list[x509.GeneralName] = []
    for hostname in hostnames:
        name = _general_name(hostname)
        if name not in names:
            names.append(name)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0][:64])])
    now = _now()
    return _issue(
        ca,
        subject,
        x509.SubjectAlternativeName(names),
        ExtendedKeyUsageOID.SERVER_AUTH,
        now - _CLOCK_SKEW,
        now + datetime.timedelta(days=days),
    )


def issue_engine_certificate(
    ca: IssuedCertificate,
    identity: EngineIdentity,
    *,
    days: int = 30,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> IssuedCertificate:
    """An engine client certificate (clientAuth): CN = engine id, the SPIFFE URI as its only SAN.

    The validity is ``now - 5 minutes`` to ``now + days`` unless ``not_before``/``not_after`` say otherwise (tests
    use them to make an expired certificate).
    """
    if not isinstance(identity, EngineIdentity):
        raise TypeError("identity must be an EngineIdentity")
    _check_days(days)
    now = _now()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.engine_id)])
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.spiffe_uri)])
    return _issue(
        ca,
        subject,
        san,
        ExtendedKeyUsageOID.CLIENT_AUTH,
        not_before if not_before is not None else now - _CLOCK_SKEW,
        not_after if not_after is not None else now + datetime.timedelta(days=days),
    )
