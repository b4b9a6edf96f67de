"""Protobuf <-> domain translation. Unknown enum numbers and missing oneofs are InvalidArgument naming the field."""

from __future__ import annotations

import datetime
import enum
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from google.protobuf import duration_pb2, timestamp_pb2

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import identity_pb2 as ipb
from credvault.v1 import monitors_pb2 as mpb
from credvault.v1 import tokens_pb2 as tpb
from vault_service.certificates import CertificateFormat, CertificateInfo
from vault_service.errors import InvalidArgument
from vault_service.models import (
    SYNC_INTERVAL_DEFAULT,
    Access,
    AccessLevel,
    AppEngineAccess,
    CertificateUpload,
    ContentsInput,
    Credential,
    CredentialScope,
    CredentialType,
    EngineStatus,
    ExternalProvider,
    ExternalSource,
    KvVersion,
    Permission,
    PublicCertificateSecret,
    SyncStatus,
    TokenInfo,
    TokenKind,
    TokenSecret,
    User,
    UsernamePasswordSecret,
)
from vault_service.token_rotation import RotationPolicy

E = TypeVar("E", bound=enum.Enum)

_TYPES = {
    cpb.CREDENTIAL_TYPE_USERNAME_PASSWORD: CredentialType.USERNAME_PASSWORD,
    cpb.CREDENTIAL_TYPE_CERTIFICATE: CredentialType.CERTIFICATE,
    cpb.CREDENTIAL_TYPE_TOKEN: CredentialType.TOKEN,
    cpb.CREDENTIAL_TYPE_PUBLIC_CERTIFICATE: CredentialType.PUBLIC_CERTIFICATE,
}
_SCOPES = {
    cpb.CREDENTIAL_SCOPE_SYNTHETIC: CredentialScope.SYNTHETIC,
    cpb.CREDENTIAL_SCOPE_EXTENSION_AUTHENTICATION: CredentialScope.EXTENSION_AUTHENTICATION,
    cpb.CREDENTIAL_SCOPE_EXTENSION_VALIDATION: CredentialScope.EXTENSION_VALIDATION,
    cpb.CREDENTIAL_SCOPE_APP_ENGINE: CredentialScope.APP_ENGINE,
}
_LEVELS = {
    cpb.ACCESS_LEVEL_OWNER_ONLY: AccessLevel.OWNER_ONLY,
    cpb.ACCESS_LEVEL_SHARED: AccessLevel.SHARED,
    cpb.ACCESS_LEVEL_ALL: AccessLevel.ALL,
}
_FORMATS = {
    cpb.CERTIFICATE_FORMAT_PKCS12: CertificateFormat.PKCS12,
    cpb.CERTIFICATE_FORMAT_PEM: CertificateFormat.PEM,
}
_PERMISSIONS = {
    ipb.PERMISSION_VIEW_ENVIRONMENT: Permission.VIEW_ENVIRONMENT,
    ipb.PERMISSION_CHANGE_MONITORING_SETTINGS: Permission.CHANGE_MONITORING_SETTINGS,
    ipb.PERMISSION_CHANGE_ENVIRONMENT_SETTINGS: Permission.CHANGE_ENVIRONMENT_SETTINGS,
}
_PROVIDERS = {
    cpb.EXTERNAL_PROVIDER_HASHICORP_VAULT: ExternalProvider.HASHICORP_VAULT,
    cpb.EXTERNAL_PROVIDER_AZURE_KEY_VAULT: ExternalProvider.AZURE_KEY_VAULT,
    cpb.EXTERNAL_PROVIDER_CYBERARK_CCP: ExternalProvider.CYBERARK_CCP,
}
# The authentication each provider takes (the ``auth`` oneof).
_AUTHS = {
    ExternalProvider.HASHICORP_VAULT: ("approle", "cert"),
    ExternalProvider.AZURE_KEY_VAULT: ("azure",),
    ExternalProvider.CYBERARK_CCP: ("cyberark",),
}
_KV_VERSIONS = {cpb.KV_VERSION_V2: KvVersion.V2, cpb.KV_VERSION_V1: KvVersion.V1}
_KINDS = {tpb.TOKEN_KIND_PERSONAL: TokenKind.PERSONAL, tpb.TOKEN_KIND_API: TokenKind.API}


def _enum_in(field: str, value: int, table: Mapping[Any, E], *, optional: bool = False) -> E | None:
    if value == 0 and optional:
        return None
    try:
        return table[value]
    except KeyError:
        allowed = ", ".join(str(k) for k in table)
        raise InvalidArgument(field, f"unknown or unspecified value {value} (allowed: {allowed})") from None


def _enum_req(field: str, value: int, table: Mapping[Any, E]) -> E:
    out = _enum_in(field, value, table)
    assert out is not None
    return out


def _enum_out(value: E, table: Mapping[Any, E]) -> Any:
    for k, v in table.items():
        if v is value:
            return k
    raise AssertionError(value)


def _reverse(table: Mapping[Any, E]) -> dict[E, Any]:
    return {v: k for k, v in table.items()}


# --- time ---

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def ts(value: datetime.datetime | None) -> timestamp_pb2.Timestamp | None:
    """An aware datetime as a Timestamp (what Timestamp.FromDatetime does, without its pure-Python checks)."""
    if value is None:
        return None
    if value.tzinfo is None:
        out = timestamp_pb2.Timestamp()
        out.FromDatetime(value)
        return out
    delta = value - _EPOCH
    return timestamp_pb2.Timestamp(seconds=delta.days * 86400 + delta.seconds, nanos=delta.microseconds * 1000)


def from_ts(field: str, value: timestamp_pb2.Timestamp) -> datetime.datetime:
    try:
        return value.ToDatetime(tzinfo=datetime.UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(field, "is not a valid timestamp") from None


# --- credentials in ---


def credential_type(field: str, value: int) -> CredentialType | None:
    return _enum_in(field, value, _TYPES, optional=True)


def access_level(field: str, value: int) -> AccessLevel | None:
    return _enum_in(field, value, _LEVELS, optional=True)


def scope(field: str, value: int) -> CredentialScope | None:
    return _enum_in(field, value, _SCOPES, optional=True)


def scopes(field: str, values: Iterable[int]) -> frozenset[CredentialScope]:
    return frozenset(_enum_req(field, v, _SCOPES) for v in values)


def access(field: str, msg: cpb.Access, present: bool) -> Access | None:
    if not present:
        return None
    level = _enum_req(f"{field}.level", msg.level, _LEVELS)
    return Access(level, tuple(msg.users))


def app_engine(msg: cpb.AppEngineAccess, present: bool) -> AppEngineAccess | None:
    if not present:
        return None
    return AppEngineAccess(tuple(msg.allowed_apps), msg.allow_contextless_access)


def contents(field: str, msg: cpb.CredentialContents, present: bool) -> ContentsInput:
    which = msg.WhichOneof("contents") if present else None
    if which == "username_password":
        return UsernamePasswordSecret(msg.username_password.username, msg.username_password.password)
    if which == "certificate":
        c = msg.certificate
        fmt = _enum_req("certificate.format", c.format, _FORMATS)
        return CertificateUpload(bytes(c.data), c.password, fmt)
    if which == "token":
        return TokenSecret(msg.token.token)
    if which == "public_certificate":
        return PublicCertificateSecret(bytes(msg.public_certificate.pem))
    raise InvalidArgument(field, "must be set: username_password, certificate, token or public_certificate")


def external_source(msg: cpb.ExternalSource, present: bool) -> ExternalSource | None:
    """The source as sent (enums and oneofs checked here; the domain checks the values)."""
    if not present:
        return None
    provider = _enum_req("external_source.provider", msg.provider, _PROVIDERS)
    kv_version = KvVersion.V2
    if msg.kv.version:
        kv_version = _enum_req("external_source.kv.version", msg.kv.version, _KV_VERSIONS)
    auth = msg.WhichOneof("auth")
    if auth not in _AUTHS[provider]:
        raise InvalidArgument("external_source.auth", f"must be set for this provider: {' or '.join(_AUTHS[provider])}")
    interval = SYNC_INTERVAL_DEFAULT
    if msg.HasField("sync_interval"):
        if msg.sync_interval.nanos:
            raise InvalidArgument("external_source.sync_interval", "must be whole seconds")
        interval = msg.sync_interval.seconds
    return ExternalSource(
        provider=provider,
        address=msg.address,
        ca_certificate_credential_id=msg.ca_certificate_credential_id,
        kv_mount=msg.kv.mount,
        kv_path=msg.kv.path,
        kv_version=kv_version,
        username_key=msg.username_key,
        password_key=msg.password_key,
        token_key=msg.token_key,
        approle_role_id_credential_id=msg.approle.role_id_credential_id,
        approle_secret_id_credential_id=msg.approle.secret_id_credential_id,
        approle_mount=msg.approle.mount,
        sync_interval_seconds=interval,
        cert_credential_id=msg.cert.client_certificate_credential_id or msg.cyberark.client_certificate_credential_id,
        cert_mount=msg.cert.mount,
        cert_role=msg.cert.role,
        azure_tenant_id_credential_id=msg.azure.tenant_id_credential_id,
        azure_client_id_credential_id=msg.azure.client_id_credential_id,
        azure_client_secret_credential_id=msg.azure.client_secret_credential_id,
        azure_authority_host=msg.azure.authority_host,
        azure_secret_version=msg.azure_secret_version,
        cyberark_app_id=msg.cyberark.app_id,
        cyberark_safe=msg.cyberark_account.safe,
        cyberark_folder=msg.cyberark_account.folder,
        cyberark_object=msg.cyberark_account.object,
    )


# --- credentials out ---


_TYPES_OUT = _reverse(_TYPES)
_SCOPES_OUT = _reverse(_SCOPES)
_LEVELS_OUT = _reverse(_LEVELS)


def credential(cred: Credential) -> cpb.Credential:
    out = cpb.Credential(
        id=cred.id,
        name=cred.name,
        description=cred.description,
        type=_TYPES_OUT[cred.type],
        scopes=sorted(_SCOPES_OUT[s] for s in cred.scopes),
        access=cpb.Access(level=_LEVELS_OUT[cred.access.level], users=cred.access.users),
        owner=cred.owner,
        version=cred.version,
        create_time=ts(cred.created_at),
        update_time=ts(cred.updated_at),
    )
    if cred.app_engine is not None:
        out.app_engine.CopyFrom(
            cpb.AppEngineAccess(
                allowed_apps=list(cred.app_engine.allowed_apps),
                allow_contextless_access=cred.app_engine.allow_contextless_access,
            )
        )
    if cred.certificate_info is not None:
        out.certificate_info.CopyFrom(certificate_info(cred.certificate_info))
    if cred.used_by:
        out.used_by.extend(
            cpb.CredentialUsage(monitor_id=mid, monitor_type=mtype)  # type: ignore[arg-type]
            for mid, mtype in cred.used_by
        )
    out.used_by_count = cred.used_by_count
    if cred.external_source is not None:
        out.external_source.CopyFrom(_external_source_out(cred.external_source))
    if cred.sync_status is not None:
        out.sync_status.CopyFrom(_sync_status_out(cred.sync_status))
    return out


_PROVIDERS_OUT = _reverse(_PROVIDERS)
_KV_VERSIONS_OUT = _reverse(_KV_VERSIONS)


def _external_source_out(source: ExternalSource) -> cpb.ExternalSource:
    out = cpb.ExternalSource(
        provider=_PROVIDERS_OUT[source.provider],
        address=source.address,
        ca_certificate_credential_id=source.ca_certificate_credential_id,
        username_key=source.username_key,
        password_key=source.password_key,
        token_key=source.token_key,
        sync_interval=duration_pb2.Duration(seconds=source.sync_interval_seconds),
        azure_secret_version=source.azure_secret_version,
    )
    if source.provider is ExternalProvider.HASHICORP_VAULT:
        out.kv.CopyFrom(
            cpb.KvLocation(mount=source.kv_mount, path=source.kv_path, version=_KV_VERSIONS_OUT[source.kv_version])
        )
    if source.approle_role_id_credential_id:
        out.approle.CopyFrom(
            cpb.AppRoleAuth(
                role_id_credential_id=source.approle_role_id_credential_id,
                secret_id_credential_id=source.approle_secret_id_credential_id,
                mount=source.approle_mount,
            )
        )
    elif source.provider is ExternalProvider.HASHICORP_VAULT:
        out.cert.CopyFrom(
            cpb.CertAuth(
                client_certificate_credential_id=source.cert_credential_id,
                mount=source.cert_mount,
                role=source.cert_role,
            )
        )
    elif source.provider is ExternalProvider.AZURE_KEY_VAULT:
        out.azure.CopyFrom(
            cpb.AzureClientCredentials(
                tenant_id_credential_id=source.azure_tenant_id_credential_id,
                client_id_credential_id=source.azure_client_id_credential_id,
                client_secret_credential_id=source.azure_client_secret_credential_id,
                authority_host=source.azure_authority_host,
            )
        )
    else:
        out.cyberark.CopyFrom(
            cpb.CyberArkCcpAuth(
                app_id=source.cyberark_app_id, client_certificate_credential_id=source.cert_credential_id
            )
        )
        out.cyberark_account.CopyFrom(
            cpb.CyberArkAccount(safe=source.cyberark_safe, folder=source.cyberark_folder, object=source.cyberark_object)
        )
    return out


def _sync_status_out(status: SyncStatus) -> cpb.SyncStatus:
    return cpb.SyncStatus(
        last_attempt=ts(status.last_attempt),
        last_success=ts(status.last_success),
        last_error=status.last_error,
        external_version=status.external_version,
        next_run=ts(status.next_run),
    )


def certificate_info(info: CertificateInfo) -> cpb.CertificateInfo:
    return cpb.CertificateInfo(
        subject=info.subject,
        issuer=info.issuer,
        not_after=ts(info.not_after),
        sha256_fingerprint=info.sha256_fingerprint,
    )


# --- identity ---


def permissions(field: str, values: Iterable[int]) -> frozenset[Permission]:
    return frozenset(_enum_req(field, v, _PERMISSIONS) for v in values)


def zone_permissions(field: str, values: Iterable[ipb.ZonePermissions]) -> dict[str, frozenset[Permission]]:
    out: dict[str, frozenset[Permission]] = {}
    for z in values:
        if z.management_zone in out:
            raise InvalidArgument(f"{field}.management_zone", f"zone {z.management_zone!r} is listed twice")
        out[z.management_zone] = permissions(f"{field}.permissions", z.permissions)
    return out


def user(u: User) -> ipb.User:
    return ipb.User(
        username=u.username,
        permissions=sorted(_enum_out(p, _PERMISSIONS) for p in u.permissions),
        zone_permissions=[
            ipb.ZonePermissions(
                management_zone=z,
                permissions=sorted(_enum_out(p, _PERMISSIONS) for p in ps),
            )
            for z, ps in sorted(u.zone_permissions.items())
        ],
        create_time=ts(u.created_at),
        update_time=ts(u.updated_at),
    )


# --- tokens ---


def token_kind(field: str, value: int) -> TokenKind:
    return _enum_req(field, value, _KINDS)


def token_info(t: TokenInfo) -> tpb.TokenInfo:
    return tpb.TokenInfo(
        id=t.id,
        name=t.name,
        owner=t.owner,
        scopes=sorted(s.value for s in t.scopes),
        kind=_enum_out(t.kind, _KINDS),
        create_time=ts(t.created_at),
        expire_time=ts(t.expires_at),
        last_used_time=ts(t.last_used_at),
        revoke_time=ts(t.revoked_at),
    )


# --- engines ---


def engine(row: EngineStatus, head_revision: int | None) -> mpb.Engine:
    out = mpb.Engine(
        location_id=row.location_id,
        engine_id=row.engine_id,
        revoked=row.revoked_at is not None,
        connected=row.connected_since is not None,
        applied_revision=row.applied_revision,
        rejected_monitors=[
            mpb.RejectedMonitor(monitor_id=r["monitor_id"], revision=r["version"], reason=r["reason"])
            for r in row.rejected
        ],
    )
    if row.connected_since is not None:
        out.connected_since.FromDatetime(row.connected_since)
    if head_revision is not None:
        out.lag = max(0, head_revision - row.applied_revision)
    return out


def duration(value: duration_pb2.Duration) -> datetime.timedelta:
    return datetime.timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)


def token_rotation(msg: tpb.TokenRotation, present: bool) -> RotationPolicy | None:
    """A rotation policy as sent (the domain checks the values)."""
    if not present:
        return None
    target = external_source(msg.target, msg.HasField("target"))
    if target is None:
        raise InvalidArgument("rotation.target", "must be set: where the new token is written")
    return RotationPolicy(target, duration(msg.interval), duration(msg.grace_period))


def token_rotation_out(rotation: RotationPolicy) -> tpb.TokenRotation:
    target = _external_source_out(rotation.target)
    target.ClearField("sync_interval")
    return tpb.TokenRotation(
        target=target,
        interval=duration_pb2.Duration(seconds=int(rotation.interval.total_seconds())),
        grace_period=duration_pb2.Duration(seconds=int(rotation.grace.total_seconds())),
    )
