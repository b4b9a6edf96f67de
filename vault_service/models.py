"""Domain types of the vault: credentials, users, tokens, the filters callers list them by, engines' status and the
change log's kinds. Independent of protobuf and of SQL. Monitors, locations and results have no types here on purpose:
they stay protobuf messages from the API down to storage (their schema is large; mirroring it would duplicate it).

Types that carry a secret have reprs that redact it (see ``SECRET_BEARING_TYPES``).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from typing import Any, Generic, TypeVar

from vault_service.certificates import CertificateFormat, CertificateInfo


class CredentialType(enum.Enum):
    USERNAME_PASSWORD = "USERNAME_PASSWORD"
    CERTIFICATE = "CERTIFICATE"
    TOKEN = "TOKEN"
    PUBLIC_CERTIFICATE = "PUBLIC_CERTIFICATE"


class CredentialScope(enum.Enum):
    SYNTHETIC = "SYNTHETIC"
    EXTENSION_AUTHENTICATION = "EXTENSION_AUTHENTICATION"
    EXTENSION_VALIDATION = "EXTENSION_VALIDATION"
    APP_ENGINE = "APP_ENGINE"


# The seed's table: which scopes each credential type may carry.
ALLOWED_SCOPES: dict[CredentialType, frozenset[CredentialScope]] = {
    CredentialType.USERNAME_PASSWORD: frozenset(
        {CredentialScope.SYNTHETIC, CredentialScope.EXTENSION_AUTHENTICATION, CredentialScope.APP_ENGINE}
    ),
    CredentialType.CERTIFICATE: frozenset({CredentialScope.SYNTHETIC, CredentialScope.APP_ENGINE}),
    CredentialType.TOKEN: frozenset({CredentialScope.SYNTHETIC, CredentialScope.APP_ENGINE}),
    CredentialType.PUBLIC_CERTIFICATE: frozenset({CredentialScope.EXTENSION_VALIDATION, CredentialScope.APP_ENGINE}),
}


class AccessLevel(enum.Enum):
    OWNER_ONLY = "OWNER_ONLY"
    SHARED = "SHARED"
    ALL = "ALL"


class Permission(enum.Enum):
    VIEW_ENVIRONMENT = "VIEW_ENVIRONMENT"
    CHANGE_MONITORING_SETTINGS = "CHANGE_MONITORING_SETTINGS"
    CHANGE_ENVIRONMENT_SETTINGS = "CHANGE_ENVIRONMENT_SETTINGS"


ZONE_PERMISSIONS = frozenset({Permission.VIEW_ENVIRONMENT, Permission.CHANGE_MONITORING_SETTINGS})


class TokenScope(enum.Enum):
    CREDENTIAL_VAULT_READ = "credentialVault.read"
    CREDENTIAL_VAULT_WRITE = "credentialVault.write"
    SYNTHETIC_MONITORS_READ = "syntheticMonitors.read"
    SYNTHETIC_MONITORS_WRITE = "syntheticMonitors.write"
    API_TOKENS_READ = "apiTokens.read"
    API_TOKENS_WRITE = "apiTokens.write"
    USERS_READ = "users.read"
    USERS_WRITE = "users.write"
    AUDIT_LOGS_READ = "auditLogs.read"


class TokenKind(enum.Enum):
    PERSONAL = "PERSONAL"
    API = "API"


_REDACTED = "<redacted>"


# --- secret contents -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, repr=False)
class UsernamePasswordSecret:
    username: str
    password: str

    def __repr__(self) -> str:
        return f"UsernamePasswordSecret(username={self.username!r}, password={_REDACTED})"


@dataclasses.dataclass(frozen=True, repr=False)
class CertificateUpload:
    """A certificate as uploaded: file, its password and format. Validated into a CertificateSecret."""

    data: bytes
    password: str
    format: CertificateFormat

    def __repr__(self) -> str:
        return f"CertificateUpload(format={self.format.value}, data={_REDACTED}, password={_REDACTED})"


@dataclasses.dataclass(frozen=True, repr=False)
class CertificateSecret:
    """A validated client certificate, normalized to PEM (what is stored and what engines get)."""

    certificate_chain_pem: bytes
    private_key_pem: bytes

    def __repr__(self) -> str:
        chain = f"<{len(self.certificate_chain_pem)} bytes>"
        return f"CertificateSecret(certificate_chain_pem={chain}, private_key_pem={_REDACTED})"


@dataclasses.dataclass(frozen=True, repr=False)
class TokenSecret:
    token: str

    def __repr__(self) -> str:
        return f"TokenSecret(token={_REDACTED})"


@dataclasses.dataclass(frozen=True)
class PublicCertificateSecret:
    """Not secret, but stored encrypted like every credential's contents."""

    pem: bytes


SecretContents = UsernamePasswordSecret | CertificateSecret | TokenSecret | PublicCertificateSecret
ContentsInput = UsernamePasswordSecret | CertificateUpload | TokenSecret | PublicCertificateSecret

SECRET_BEARING_TYPES: dict[type, frozenset[str]] = {
    UsernamePasswordSecret: frozenset({"password"}),
    CertificateUpload: frozenset({"data", "password"}),
    CertificateSecret: frozenset({"private_key_pem"}),
    TokenSecret: frozenset({"token"}),
}


def credential_type_of(contents: ContentsInput | SecretContents) -> CredentialType:
    if isinstance(contents, UsernamePasswordSecret):
        return CredentialType.USERNAME_PASSWORD
    if isinstance(contents, CertificateUpload | CertificateSecret):
        return CredentialType.CERTIFICATE
    if isinstance(contents, TokenSecret):
        return CredentialType.TOKEN
    return CredentialType.PUBLIC_CERTIFICATE


# --- metadata --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Access:
    level: AccessLevel
    users: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class AppEngineAccess:
    allowed_apps: tuple[str, ...] = ()
    allow_contextless_access: bool = False


# --- external synchronization ----------------------------------------------------------------------------------


class ExternalProvider(enum.Enum):
    HASHICORP_VAULT = "HASHICORP_VAULT"  # and OpenBao: the same API
    AZURE_KEY_VAULT = "AZURE_KEY_VAULT"
    CYBERARK_CCP = "CYBERARK_CCP"  # CyberArk Central Credential Provider


class KvVersion(enum.Enum):
    V2 = "KV_V2"
    V1 = "KV_V1"


SYNC_INTERVAL_DEFAULT = 3600
SYNC_INTERVAL_MIN = 10


@dataclasses.dataclass(frozen=True)
class ExternalSource:
    """Where a synchronized credential's contents live and how to log in there. No secret: the companion secrets
    (AppRole role id and secret id, the CA certificate) are credentials of the vault, named by id."""

    provider: ExternalProvider
    address: str
    ca_certificate_credential_id: str
    kv_mount: str
    kv_path: str
    kv_version: KvVersion
    username_key: str
    password_key: str
    token_key: str
    approle_role_id_credential_id: str
    approle_secret_id_credential_id: str
    approle_mount: str = "approle"
    sync_interval_seconds: int = SYNC_INTERVAL_DEFAULT
    # A client CERTIFICATE credential: HashiCorp/OpenBao TLS certificate auth, or CyberArk CCP's mutual TLS.
    cert_credential_id: str = ""
    cert_mount: str = ""  # HashiCorp/OpenBao cert auth method's mount ("cert")
    cert_role: str = ""  # and the certificate role to log in as (empty: any matching role)
    # Azure Key Vault: client credentials (TOKEN credentials), the Entra ID authority and a pinned secret version.
    azure_tenant_id_credential_id: str = ""
    azure_client_id_credential_id: str = ""
    azure_client_secret_credential_id: str = ""
    azure_authority_host: str = ""
    azure_secret_version: str = ""
    # CyberArk CCP: the application id and the account's safe, folder and object.
    cyberark_app_id: str = ""
    cyberark_safe: str = ""
    cyberark_folder: str = ""
    cyberark_object: str = ""

    def companions(self) -> dict[str, str]:
        """Field path -> id of each companion credential it names."""
        cert_field = (
            "external_source.cyberark.client_certificate_credential_id"
            if self.provider is ExternalProvider.CYBERARK_CCP
            else "external_source.cert.client_certificate_credential_id"
        )
        named = {
            "external_source.ca_certificate_credential_id": self.ca_certificate_credential_id,
            "external_source.approle.role_id_credential_id": self.approle_role_id_credential_id,
            "external_source.approle.secret_id_credential_id": self.approle_secret_id_credential_id,
            cert_field: self.cert_credential_id,
            "external_source.azure.tenant_id_credential_id": self.azure_tenant_id_credential_id,
            "external_source.azure.client_id_credential_id": self.azure_client_id_credential_id,
            "external_source.azure.client_secret_credential_id": self.azure_client_secret_credential_id,
        }
        return {path: cid for path, cid in named.items() if cid}

    def to_json(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["provider"], doc["kv_version"] = self.provider.value, self.kv_version.value
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ExternalSource:
        return cls(
            **{
                **doc,
                "provider": ExternalProvider(doc["provider"]),
                "kv_version": KvVersion(doc["kv_version"]),
            }
        )


@dataclasses.dataclass(frozen=True)
class SyncStatus:
    """How a credential's synchronization went; ``last_error`` is built from a fixed template (no secret)."""

    last_attempt: datetime.datetime | None = None
    last_success: datetime.datetime | None = None
    last_error: str = ""
    external_version: str = ""
    next_run: datetime.datetime | None = None


# A credential's "used by" names at most this many of the monitors that use it (the first by id); used_by_count
# counts all of them. The API documents the number (credentials.proto).
USED_BY_SHOWN = 100


@dataclasses.dataclass(frozen=True)
class Credential:
    """Metadata of a credential: everything but its contents."""

    id: str
    name: str
    description: str
    type: CredentialType
    scopes: frozenset[CredentialScope]
    access: Access
    owner: str
    app_engine: AppEngineAccess | None
    certificate_info: CertificateInfo | None
    version: int
    created_at: datetime.datetime
    updated_at: datetime.datetime
    # (monitor id, monitor type) of the first USED_BY_SHOWN monitors (by id) that reference it, and how many do in
    # all; filled in by Get, List and the writes that return a credential.
    used_by: tuple[tuple[str, int], ...] = ()
    used_by_count: int = 0
    # Set when the contents are synchronized from an external vault, with the synchronization's status.
    external_source: ExternalSource | None = None
    sync_status: SyncStatus | None = None


@dataclasses.dataclass(frozen=True)
class User:
    username: str
    permissions: frozenset[Permission]
    zone_permissions: dict[str, frozenset[Permission]]
    created_at: datetime.datetime
    updated_at: datetime.datetime


@dataclasses.dataclass(frozen=True)
class TokenInfo:
    id: str
    name: str
    owner: str
    scopes: frozenset[TokenScope]
    kind: TokenKind
    created_at: datetime.datetime
    expires_at: datetime.datetime | None
    last_used_at: datetime.datetime | None
    revoked_at: datetime.datetime | None


@dataclasses.dataclass(frozen=True)
class AuthCheck:
    """How a statement re-checks a remembered authentication: the token's id, and the values of its token and user
    rows when it was looked up (what storage compares them to; ids, names, scopes, permissions, times: no secret)."""

    token_id: str
    state: tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who is calling: the token's user as it is now, and the token's scopes. ``check`` is set when the principal
    was remembered rather than looked up during this call: then the call's statements must re-check it."""

    user: User
    token_id: str
    token_scopes: frozenset[TokenScope]
    check: AuthCheck | None = None

    @property
    def username(self) -> str:
        return self.user.username


@dataclasses.dataclass(frozen=True)
class AuditEvent:
    """One row of the audit log: ids, names and versions only, never a secret value."""

    id: int
    at: datetime.datetime
    actor: str
    token_id: str | None  # the token's public id (cv0c01.<public id>)
    action: str
    target: str | None
    outcome: str
    detail: dict[str, str]


class Visibility(enum.Enum):
    """Which credentials a caller may see; decided by the policy module, translated to SQL by storage."""

    EVERYTHING = "EVERYTHING"
    PUBLIC_OWN_AND_SHARED = "PUBLIC_OWN_AND_SHARED"
    PUBLIC_ONLY = "PUBLIC_ONLY"
    NOTHING = "NOTHING"


@dataclasses.dataclass(frozen=True)
class CredentialFilter:
    type: CredentialType | None = None
    name_contains: str | None = None
    access_level: AccessLevel | None = None
    owner: str | None = None
    scope: CredentialScope | None = None


@dataclasses.dataclass(frozen=True)
class AuditFilter:
    """Which audit events to list; every set field must match (times: since <= at < until)."""

    actor: str | None = None
    action: str | None = None
    target: str | None = None
    since: datetime.datetime | None = None
    until: datetime.datetime | None = None


@dataclasses.dataclass(frozen=True)
class EngineStatus:
    """An engine of a location as the vault knows it: revoked or not, connected or not, and what it applied."""

    location_id: str
    engine_id: str
    revoked_at: datetime.datetime | None
    connected_since: datetime.datetime | None
    applied_revision: int
    rejected: list[dict[str, Any]]


class ChangeKind(enum.StrEnum):
    """What a change-log entry is about (its ``kind`` column)."""

    MONITOR = "monitor"
    CREDENTIAL = "credential"
    ENGINE = "engine"


T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str
    total_size: int
