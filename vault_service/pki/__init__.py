"""The vault's private PKI for mutual TLS with engine workers, built with the ``cryptography`` package.

Two certificate authorities live in one directory (see :mod:`vault_service.cli.pki` for why there are two):

* ``engine-ca``: issues engine client certificates. The engine port trusts only this CA, so holding a certificate from
  it *is* being an engine. An engine's identity is the one SAN URI of its certificate,
  ``spiffe://<trust-domain>/location/<location-id>/engine/<engine-id>`` (:class:`credvault.identity.EngineIdentity`,
  shared with the engine); the CA certificate itself carries ``spiffe://<trust-domain>`` so the trust domain is
  recorded where the identities are minted.
* ``server-ca``: issues the vault's server certificate; engines trust only this CA for the vault.

Every key is EC P-256 and every signature ECDSA with SHA-256. Files come in pairs: ``<name>.pem`` (the certificate
chain, leaf first) and ``<name>.key`` (the unencrypted PKCS#8 private key, mode 0600). Both are written atomically
(temporary file in the same directory, then :func:`os.replace`), the key file is created 0600 from the start.
"""

from vault_service.pki.files import engine_file_name, file_paths, load_ca, read_files, write_files
from vault_service.pki.issuing import (
    ENGINE_CA,
    SERVER,
    SERVER_CA,
    TRUST_DOMAIN_DEFAULT,
    IssuedCertificate,
    ca_trust_domain,
    create_ca,
    issue_engine_certificate,
    issue_server_certificate,
    validate_engine_id,
    validate_location_id,
    validate_trust_domain,
)

__all__ = [
    "ENGINE_CA",
    "SERVER",
    "SERVER_CA",
    "TRUST_DOMAIN_DEFAULT",
    "IssuedCertificate",
    "ca_trust_domain",
    "create_ca",
    "engine_file_name",
    "file_paths",
    "issue_engine_certificate",
    "issue_server_certificate",
    "load_ca",
    "read_files",
    "validate_engine_id",
    "validate_location_id",
    "validate_trust_domain",
    "write_files",
]
