"""The one interface between the synchronizer and each provider's module (hashicorp, azure, cyberark): a provider
gets the source and its opened companion credentials and returns the secret's fields and version, or raises a
SyncFailure. The synchronizer maps the fields to the credential's contents by the source's key names."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from vault_service.external_sync import failure as f
from vault_service.external_sync.failure import SyncFailure
from vault_service.external_sync.http import ClientCertificate
from vault_service.models import (
    CertificateSecret,
    ExternalSource,
    PublicCertificateSecret,
    SecretContents,
    TokenSecret,
)

CA_FIELD = "external_source.ca_certificate_credential_id"


@dataclasses.dataclass(frozen=True, repr=False)
class Fetched:
    """A secret's fields as read (by the source's key names), its version ("" when the provider has none: changes
    are then detected by value), and where it was read (configuration only, for messages)."""

    data: dict[str, Any]
    version: str
    where: str

    def __repr__(self) -> str:
        return f"Fetched(fields={sorted(self.data)!r}, version={self.version!r}, where={self.where!r})"


@dataclasses.dataclass(frozen=True, repr=False)
class Opened:
    """A companion credential's contents, its id and version (which name caches: no secret in a key)."""

    credential_id: str
    version: int
    contents: SecretContents

    def __repr__(self) -> str:
        return f"Opened({self.credential_id!r}, version={self.version})"


class Companions:
    """The opened companion credentials of a source, by field path, read as the types they must have."""

    def __init__(self, opened: dict[str, Opened]) -> None:
        self._opened = opened

    def __repr__(self) -> str:
        return f"Companions({sorted(self._opened)!r})"

    def _get(self, field: str) -> Opened:
        found = self._opened.get(field)
        if found is None:
            raise SyncFailure(f.COMPANION, f"the source names no companion credential in {field}")
        return found

    def key(self, field: str) -> tuple[str, int]:
        found = self._get(field)
        return found.credential_id, found.version

    def token(self, field: str) -> str:
        contents = self._get(field).contents
        if not isinstance(contents, TokenSecret):
            raise SyncFailure(f.COMPANION, f"the companion credential of {field} must be a TOKEN credential")
        return contents.token

    def client_certificate(self, field: str) -> ClientCertificate:
        found = self._get(field)
        if not isinstance(found.contents, CertificateSecret):
            raise SyncFailure(f.COMPANION, f"the companion credential of {field} must be a CERTIFICATE credential")
        return ClientCertificate(
            found.contents.certificate_chain_pem, found.contents.private_key_pem, (found.credential_id, found.version)
        )

    def ca_pem(self, field: str) -> bytes | None:
        """The CA certificates to trust (None: the system's trust store)."""
        found = self._opened.get(field)
        if found is None:
            return None
        if not isinstance(found.contents, PublicCertificateSecret):
            raise SyncFailure(f.COMPANION, "the CA companion credential must be a PUBLIC_CERTIFICATE credential")
        return found.contents.pem


class Provider(Protocol):
    async def fetch(self, source: ExternalSource, companions: Companions) -> Fetched: ...

    async def close(self) -> None: ...
