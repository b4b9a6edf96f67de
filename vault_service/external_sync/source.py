"""An external source as a caller configures it: every field checked (InvalidArgument naming its path), and the
access rules of its companion credentials (policy decides, this gathers what it decides on)."""

from __future__ import annotations

import dataclasses
import re
import urllib.parse

from credvault.formats import CREDENTIAL_ID
from vault_service import policy, validation
from vault_service.errors import InvalidArgument
from vault_service.models import (
    SYNC_INTERVAL_MIN,
    CredentialType,
    ExternalProvider,
    ExternalSource,
    KvVersion,
    Principal,
    SecretContents,
    TokenSecret,
    UsernamePasswordSecret,
)
from vault_service.storage.pool import Store
from vault_service.storage.queries import Queries

SYNC_INTERVAL_MAX = 7 * 24 * 3600
SYNCABLE_TYPES = frozenset({CredentialType.USERNAME_PASSWORD, CredentialType.TOKEN})

# Mount and path segments: what Vault/OpenBao accept in a URL without escaping, no empty, "." or ".." segment.
_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9._-]*"
_MOUNT = re.compile(rf"^{_SEGMENT}(/{_SEGMENT})*$")
_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_MAX_PATH = 512

# The companions' required types, by the field that names them.
_COMPANION_TYPES = {
    "external_source.ca_certificate_credential_id": CredentialType.PUBLIC_CERTIFICATE,
    "external_source.approle.role_id_credential_id": CredentialType.TOKEN,
    "external_source.approle.secret_id_credential_id": CredentialType.TOKEN,
    "external_source.cert.client_certificate_credential_id": CredentialType.CERTIFICATE,
    "external_source.cyberark.client_certificate_credential_id": CredentialType.CERTIFICATE,
    "external_source.azure.tenant_id_credential_id": CredentialType.TOKEN,
    "external_source.azure.client_id_credential_id": CredentialType.TOKEN,
    "external_source.azure.client_secret_credential_id": CredentialType.TOKEN,
}
# Key Vault object names and versions; CyberArk CCP's fixed answer fields.
_AZURE_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")
_AZURE_VERSION = re.compile(r"^[0-9A-Za-z]{1,64}$")
AZURE_AUTHORITY = "https://login.microsoftonline.com"
CYBERARK_USERNAME, CYBERARK_PASSWORD = "UserName", "Content"


def _segments(field: str, value: str, max_len: int) -> str:
    if not value or len(value) > max_len or not _MOUNT.match(value) or any(s in ("..", ".") for s in value.split("/")):
        raise InvalidArgument(
            field, f"must be 1-{max_len} characters: '/'-separated segments of letters, digits and . _ -"
        )
    return value


def _key(field: str, value: str, *, wanted: bool) -> str:
    if not wanted:
        if value:
            raise InvalidArgument(field, "is not used by this credential type; leave it empty")
        return ""
    if not _KEY.match(value):
        raise InvalidArgument(field, "must be 1-128 characters of letters, digits and . _ -")
    return value


def _address(value: str, field: str = "external_source.address") -> str:
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port
    except ValueError:
        raise InvalidArgument(field, "is not a URL") from None
    if parts.scheme != "https" or not parts.hostname:
        raise InvalidArgument(field, "must be an https:// URL (TLS is required)")
    if parts.username or parts.password or parts.query or parts.fragment or parts.path not in ("", "/"):
        raise InvalidArgument(field, "must be https://host[:port] only, without user, path, query or fragment")
    if port == 0:
        raise InvalidArgument(field, "has port 0")
    return f"https://{parts.netloc}"


def checked(source: ExternalSource, ctype: CredentialType) -> ExternalSource:
    """The source with every field checked and normalized, for a credential of type ``ctype``."""
    if ctype not in SYNCABLE_TYPES:
        raise InvalidArgument("type", "only USERNAME_PASSWORD and TOKEN credentials can be synchronized")
    for field, cid in source.companions().items():
        if not CREDENTIAL_ID.match(cid):
            raise InvalidArgument(field, "must be a credential id (CREDENTIALS_VAULT- and 16 upper-case hex digits)")
    interval = source.sync_interval_seconds
    if not SYNC_INTERVAL_MIN <= interval <= SYNC_INTERVAL_MAX:
        raise InvalidArgument(
            "external_source.sync_interval", f"must be {SYNC_INTERVAL_MIN} s to {SYNC_INTERVAL_MAX} s (whole seconds)"
        )
    common = ExternalSource(
        provider=source.provider,
        address=_address(source.address),
        ca_certificate_credential_id=source.ca_certificate_credential_id,
        kv_mount="",
        kv_path="",
        kv_version=KvVersion.V2,
        username_key="",
        password_key="",
        token_key="",
        approle_role_id_credential_id="",
        approle_secret_id_credential_id="",
        approle_mount="",
        sync_interval_seconds=interval,
    )
    up = ctype is CredentialType.USERNAME_PASSWORD
    if source.provider is ExternalProvider.HASHICORP_VAULT:
        _unused(source, "cyberark_account", source.cyberark_safe, source.cyberark_folder, source.cyberark_object)
        _unused(source, "azure_secret_version", source.azure_secret_version)
        return _hashicorp(source, up, common)
    _unused(source, "kv", source.kv_mount, source.kv_path)
    if source.provider is ExternalProvider.AZURE_KEY_VAULT:
        _unused(source, "cyberark_account", source.cyberark_safe, source.cyberark_folder, source.cyberark_object)
        return _azure(source, up, common)
    _unused(source, "azure_secret_version", source.azure_secret_version)
    return _cyberark(source, up, common)


def _unused(source: ExternalSource, field: str, *values: str) -> None:
    if any(values):
        raise InvalidArgument(f"external_source.{field}", f"is not used with {source.provider.value}; leave it empty")


def _hashicorp(source: ExternalSource, up: bool, common: ExternalSource) -> ExternalSource:
    validation.text("external_source.kv.path", source.kv_path, max_len=_MAX_PATH, required=True)
    located = dataclasses.replace(
        common,
        kv_mount=_segments("external_source.kv.mount", source.kv_mount.strip("/"), 128),
        kv_path=_segments("external_source.kv.path", source.kv_path.strip("/"), _MAX_PATH),
        kv_version=source.kv_version,
        username_key=_key("external_source.username_key", source.username_key, wanted=up),
        password_key=_key("external_source.password_key", source.password_key, wanted=up),
        token_key=_key("external_source.token_key", source.token_key, wanted=not up),
    )
    if source.approle_role_id_credential_id or source.approle_secret_id_credential_id:
        if not source.approle_role_id_credential_id or not source.approle_secret_id_credential_id:
            raise InvalidArgument("external_source.approle", "must name the role id and secret id credentials")
        return dataclasses.replace(
            located,
            approle_role_id_credential_id=source.approle_role_id_credential_id,
            approle_secret_id_credential_id=source.approle_secret_id_credential_id,
            approle_mount=_segments("external_source.approle.mount", source.approle_mount or "approle", 128),
        )
    if not source.cert_credential_id:
        raise InvalidArgument("external_source.auth", "must be set: approle (role id and secret id) or cert")
    return dataclasses.replace(
        located,
        cert_credential_id=source.cert_credential_id,
        cert_mount=_segments("external_source.cert.mount", source.cert_mount or "cert", 128),
        cert_role=_key("external_source.cert.role", source.cert_role, wanted=True) if source.cert_role else "",
    )


def _azure_name(field: str, value: str, *, wanted: bool) -> str:
    if not wanted:
        if value:
            raise InvalidArgument(field, "is not used by this credential type; leave it empty")
        return ""
    if not _AZURE_NAME.match(value):
        raise InvalidArgument(field, "must name a Key Vault secret: 1-127 letters, digits and dashes")
    return value


def _azure(source: ExternalSource, up: bool, common: ExternalSource) -> ExternalSource:
    for field, cid in (
        ("tenant_id_credential_id", source.azure_tenant_id_credential_id),
        ("client_id_credential_id", source.azure_client_id_credential_id),
        ("client_secret_credential_id", source.azure_client_secret_credential_id),
    ):
        if not cid:
            raise InvalidArgument(f"external_source.azure.{field}", "must name a TOKEN credential")
    version = source.azure_secret_version
    if version and (up or not _AZURE_VERSION.match(version)):
        raise InvalidArgument(
            "external_source.azure_secret_version", "must be 1-64 letters and digits, and only with a TOKEN credential"
        )
    host = _address(source.azure_authority_host or AZURE_AUTHORITY, "external_source.azure.authority_host")
    return dataclasses.replace(
        common,
        username_key=_azure_name("external_source.username_key", source.username_key, wanted=up),
        password_key=_azure_name("external_source.password_key", source.password_key, wanted=up),
        token_key=_azure_name("external_source.token_key", source.token_key, wanted=not up),
        azure_tenant_id_credential_id=source.azure_tenant_id_credential_id,
        azure_client_id_credential_id=source.azure_client_id_credential_id,
        azure_client_secret_credential_id=source.azure_client_secret_credential_id,
        azure_authority_host=host,
        azure_secret_version=version,
    )


def _cyberark(source: ExternalSource, up: bool, common: ExternalSource) -> ExternalSource:
    if not up:
        raise InvalidArgument("type", "CyberArk CCP synchronizes USERNAME_PASSWORD credentials only")
    if source.username_key not in ("", CYBERARK_USERNAME) or source.password_key not in ("", CYBERARK_PASSWORD):
        raise InvalidArgument("external_source.username_key", "is not used with CyberArk (UserName and Content)")
    _unused(source, "token_key", source.token_key)
    if not source.cert_credential_id:
        raise InvalidArgument(
            "external_source.cyberark.client_certificate_credential_id", "must name a CERTIFICATE credential"
        )
    return dataclasses.replace(
        common,
        username_key=CYBERARK_USERNAME,
        password_key=CYBERARK_PASSWORD,
        cert_credential_id=source.cert_credential_id,
        cyberark_app_id=validation.text(
            "external_source.cyberark.app_id", source.cyberark_app_id, max_len=128, required=True
        ),
        cyberark_safe=validation.text(
            "external_source.cyberark_account.safe", source.cyberark_safe, max_len=128, required=True
        ),
        cyberark_folder=validation.text(
            "external_source.cyberark_account.folder", source.cyberark_folder, max_len=256, required=False
        ),
        cyberark_object=validation.text(
            "external_source.cyberark_account.object", source.cyberark_object, max_len=256, required=True
        ),
    )


async def require_companions(tx: Queries, principal: Principal, source: ExternalSource) -> None:
    """Each companion credential exists, is of its type, and the caller has access to it (owner, shared, ALL)."""
    for field, cid in source.companions().items():
        companion = await tx.get_credential(cid, check=principal.check)
        companion = policy.require_companion_access(principal, field, companion, cid)
        wanted = _COMPANION_TYPES[field]
        if companion.type is not wanted:
            raise InvalidArgument(field, f"names a {companion.type.value} credential; a {wanted.value} is needed")
        if companion.external_source is not None:
            raise InvalidArgument(field, "names a synchronized credential; companions must hold their own value")


async def prepare(
    store: Store,
    principal: Principal,
    contents_given: bool,
    source: ExternalSource,
    ctype: CredentialType | None,
) -> tuple[SecretContents, ExternalSource]:
    """A new synchronized credential: its checked source, and the empty contents of its type it holds until its
    first synchronization (due at once)."""
    if contents_given:
        raise InvalidArgument("contents", "must be empty with external_source: the values come from there")
    if ctype is None:
        raise InvalidArgument("type", "must be USERNAME_PASSWORD or TOKEN with external_source")
    policy.require_external_sync(principal)
    source = checked(source, ctype)
    async with store.autocommit() as tx:
        await require_companions(tx, principal, source)
    empty: SecretContents = (
        UsernamePasswordSecret("", "") if ctype is CredentialType.USERNAME_PASSWORD else TokenSecret("")
    )
    return empty, source
