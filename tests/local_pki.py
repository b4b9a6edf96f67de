"""The one PKI of the tests and the benches, made by the vault's own issuing code (:mod:`vault_service.pki`, the code
that makes a deployment's): an engine CA, a server CA and a server certificate for ``localhost`` and 127.0.0.1, written
where the vault reads them. The API port and the engine port present the same server certificate; engines get
certificates of their identity on demand. ``odd_leaf`` makes the certificates that the vault's code refuses to issue
(several SAN URIs, none), for the tests of the checks that reject them.

Files in ``directory``: ``server.pem``/``server.key``, ``server-ca.pem``, ``engine-ca.pem``/``engine-ca.key`` and one
pair per engine, named as ``credvault pki issue-engine`` names them."""

from __future__ import annotations

import dataclasses
import datetime
import pathlib
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from credvault.identity import EngineIdentity
from vault_service import pki

TRUST_DOMAIN = "credvault.test"


@dataclasses.dataclass(frozen=True)
class LocalPki:
    directory: pathlib.Path
    trust_domain: str
    engine_ca: pki.IssuedCertificate
    server_ca: pki.IssuedCertificate
    server: pki.IssuedCertificate

    @classmethod
    def make(cls, directory: pathlib.Path, trust_domain: str = TRUST_DOMAIN) -> LocalPki:
        engine_ca = pki.create_ca("test engine CA", trust_domain=trust_domain)
        server_ca = pki.create_ca("test server CA")
        server = pki.issue_server_certificate(server_ca, ["localhost", "127.0.0.1"])
        made = cls(directory, trust_domain, engine_ca, server_ca, server)
        made.write(pki.ENGINE_CA, engine_ca)
        made.write(pki.SERVER, server)
        made.server_ca_pem.write_bytes(server_ca.cert_pem)
        return made

    @property
    def server_pem(self) -> pathlib.Path:
        return self.directory / f"{pki.SERVER}.pem"

    @property
    def server_key(self) -> pathlib.Path:
        return self.directory / f"{pki.SERVER}.key"

    @property
    def server_ca_pem(self) -> pathlib.Path:
        """What a client of either port trusts."""
        return self.directory / "server-ca.pem"

    @property
    def engine_ca_pem(self) -> pathlib.Path:
        """What the engine port trusts."""
        return self.directory / f"{pki.ENGINE_CA}.pem"

    def identity(self, location: str, engine: str) -> EngineIdentity:
        return EngineIdentity(self.trust_domain, location, engine)

    def engine(self, location: str, engine: str, **kw: Any) -> pki.IssuedCertificate:
        """A new certificate of the engine ``location``/``engine`` (``kw``: validity, as issue_engine_certificate)."""
        return pki.issue_engine_certificate(self.engine_ca, self.identity(location, engine), **kw)

    def engine_files(self, location: str, engine: str) -> tuple[pathlib.Path, pathlib.Path]:
        """The engine's certificate and key files, issued on first use."""
        name = pki.engine_file_name(self.identity(location, engine))
        pem, key = pki.file_paths(self.directory, name)
        if not pem.exists():
            self.write(name, self.engine(location, engine))
        return pem, key

    def expired_engine(self, location: str, engine: str) -> pki.IssuedCertificate:
        now = datetime.datetime.now(datetime.UTC)
        day = datetime.timedelta(days=1)
        return self.engine(location, engine, not_before=now - 2 * day, not_after=now - day)

    def write(self, name: str, issued: pki.IssuedCertificate) -> tuple[pathlib.Path, pathlib.Path]:
        return pki.write_files(self.directory, name, issued)

    def channel(self, port: int) -> grpc.aio.Channel:
        """A channel to a port of a vault on this machine that presents this PKI's server certificate."""
        return grpc.aio.secure_channel(f"localhost:{port}", self.channel_credentials())

    def channel_credentials(self, client: pki.IssuedCertificate | None = None) -> grpc.ChannelCredentials:
        """Trusting the server CA; with ``client``, presenting it (an engine's mutual TLS)."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.server_ca.cert_pem,
            private_key=client.key_pem if client else None,
            certificate_chain=client.chain_pem if client else None,
        )


def odd_leaf(names: list[x509.GeneralName] | None, *, ca: bool | None = False) -> bytes:
    """The PEM of a self-signed certificate with exactly these SANs (``None``: no SAN extension at all): the shapes
    the vault's issuing code refuses (several URIs, none, a CA with an engine's URI), which the identity checks of
    both sides must reject. ``ca=None``: no basicConstraints at all (a leaf, as X.509 reads it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
