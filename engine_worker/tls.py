"""The engine's mutual-TLS material: checking the certificate, key and CA files, and making channels to the vault.

The files are read again for every connection, so a renewed certificate is used from the next reconnect on. Key bytes
live only in local variables long enough to hand them to gRPC; no object keeps them.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from credvault.identity import EngineIdentity, identity_from_certificate

__all__ = ["KEEPALIVE_OPTIONS", "ChannelFactory", "ClientCertificate", "check_tls_files", "mtls_channel_factory"]

ChannelFactory = Callable[[], grpc.aio.Channel]
_SHA256 = hashes.SHA256()

# HTTP/2 keepalive: a ping every 20 s, the connection is dead without an answer in 10 s. (The vault's server must
# accept pings that often: grpc.http2.min_recv_ping_interval_without_data_ms <= 20000.)
KEEPALIVE_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def _read(path: pathlib.Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} file {str(path)!r}: {exc.strerror or exc}") from None


def check_tls_files(cert_file: pathlib.Path, key_file: pathlib.Path, ca_file: pathlib.Path) -> EngineIdentity:
    """The engine identity of ``cert_file``, after checking that all three files are usable and the key belongs to
    the certificate. Errors are ValueErrors that name the file and the rule, never a file's contents."""
    chain = _read(cert_file, "certificate")
    try:
        identity = identity_from_certificate(chain)
    except ValueError as exc:
        raise ValueError(f"{cert_file}: {exc}") from None
    leaf = x509.load_pem_x509_certificates(chain)[0]
    key_pem = _read(key_file, "key")
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ValueError(f"{key_file}: not an unencrypted PEM private key") from None
    if private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise ValueError(f"{key_file}: the key does not belong to the certificate {cert_file}")
    ca_pem = _read(ca_file, "CA")
    try:
        x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        raise ValueError(f"{ca_file}: not a PEM X.509 certificate (the CA of the vault's certificate)") from None
    return identity


class ClientCertificate:
    """The engine's certificate: the one its current connection presented, and whether the files now hold a renewed
    one (or the one in use has expired), so that the stream reconnects with the renewal before the old one expires.

    A renewal counts once the files are whole again (check_tls_files passes: the key belongs to the certificate) and
    name the same engine; a half-written renewal is not one yet."""

    def __init__(self, cert_file: pathlib.Path, key_file: pathlib.Path, ca_file: pathlib.Path) -> None:
        self._files = (cert_file, key_file, ca_file)
        self.in_use: x509.Certificate | None = None

    def used(self, chain: bytes) -> None:
        self.in_use = x509.load_pem_x509_certificates(chain)[0]

    @property
    def not_after(self) -> float | None:
        """When the certificate of the current connection expires (Unix time)."""
        return self.in_use.not_valid_after_utc.timestamp() if self.in_use is not None else None

    def renewal_due(self, now: float) -> str | None:
        """Why the engine should connect again now, or None."""
        if self.in_use is None:
            return None
        if self._renewed(self.in_use):
            return "its certificate was renewed"
        if now >= self.in_use.not_valid_after_utc.timestamp():
            return "the certificate of this connection has expired"
        return None

    def _renewed(self, in_use: x509.Certificate) -> bool:
        try:
            identity = check_tls_files(*self._files)
            leaf = x509.load_pem_x509_certificates(self._files[0].read_bytes())[0]
        except (ValueError, OSError):
            return False  # being renewed (or broken): keep the connection; the next check looks again
        same_engine = identity == identity_from_certificate(in_use.public_bytes(serialization.Encoding.PEM))
        return same_engine and leaf.fingerprint(_SHA256) != in_use.fingerprint(_SHA256)


def mtls_channel_factory(
    target: str,
    cert_file: pathlib.Path,
    key_file: pathlib.Path,
    ca_file: pathlib.Path,
    identity: EngineIdentity,
    options: list[tuple[str, int | str]] | None = None,
    certificate: ClientCertificate | None = None,
) -> ChannelFactory:
    """A factory of mutual-TLS channels to ``target`` (``host:port``) that re-reads the files for each channel and
    refuses a certificate that names another identity than ``identity`` (the one the engine started with).
    ``certificate`` hears which certificate each channel presents."""
    channel_options: list[tuple[str, int | str]] = [*KEEPALIVE_OPTIONS, *(options or [])]

    def factory() -> grpc.aio.Channel:
        chain = _read(cert_file, "certificate")
        if identity_from_certificate(chain) != identity:
            raise ValueError(f"{cert_file} now names another engine than {identity.spiffe_uri}: restart the engine")
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(ca_file, "CA"), private_key=_read(key_file, "key"), certificate_chain=chain
        )
        if certificate is not None:
            certificate.used(chain)
        return grpc.aio.secure_channel(target, credentials, options=channel_options)

    return factory
