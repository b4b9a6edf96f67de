"""Credential operations: the domain rules between the gRPC servicer and storage.

Contents go in (validated, encrypted) and never come out, except through ``get_details`` under the AppEngine rules,
which audits the read before the secret leaves (no audit row, no secret).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import secrets
from collections.abc import Mapping

from credvault.formats import CREDENTIAL_ID, CREDENTIAL_ID_PREFIX
from credvault.v1 import monitors_pb2 as mpb
from vault_service import contents_codec, policy, validation
from vault_service.certificates import CertificateInfo
from vault_service.crypto import Keyring, SealedContents
from vault_service.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from vault_service.external_sync import source as sync_source
from vault_service.models import (
    ALLOWED_SCOPES,
    Access,
    AccessLevel,
    AppEngineAccess,
    ChangeKind,
    ContentsInput,
    Credential,
    CredentialFilter,
    CredentialScope,
    CredentialType,
    ExternalSource,
    Page,
    Principal,
    SecretContents,
    TokenScope,
    credential_type_of,
)
from vault_service.pagination import decode_page_token, encode_page_token, page_size
from vault_service.storage.audit import AuditEntry
from vault_service.storage.pool import Store
from vault_service.storage.queries import Queries

log = logging.getLogger(__name__)

_ID_ATTEMPTS = 5


def new_credential_id() -> str:
    return CREDENTIAL_ID_PREFIX + secrets.token_hex(8).upper()


def check_id(credential_id: str) -> str:
    if not CREDENTIAL_ID.match(credential_id):
        raise InvalidArgument("id", "must be CREDENTIALS_VAULT- followed by 16 upper-case hex digits")
    return credential_id


def _check_access(access: Access | None, owner: str) -> Access:
    if access is None:
        return Access(AccessLevel.OWNER_ONLY)
    users = tuple(dict.fromkeys(validation.username("access.users", u.strip()) for u in access.users))
    if access.level is AccessLevel.SHARED:
        if not users:
            raise InvalidArgument("access.users", "must list at least one user for ACCESS_LEVEL_SHARED")
        if len(users) > validation.MAX_SHARED_USERS:
            raise InvalidArgument("access.users", f"lists {len(users)} users; at most {validation.MAX_SHARED_USERS}")
        return Access(AccessLevel.SHARED, users)
    if users:
        raise InvalidArgument("access.users", f"must be empty unless the level is ACCESS_LEVEL_SHARED (owner {owner})")
    return Access(access.level)


def _check_scopes(
    scopes: frozenset[CredentialScope], ctype: CredentialType, app_engine: AppEngineAccess | None
) -> AppEngineAccess | None:
    if not scopes:
        raise InvalidArgument("scopes", "must name at least one scope")
    wrong = scopes - ALLOWED_SCOPES[ctype]
    if wrong:
        allowed = ", ".join(sorted(s.value for s in ALLOWED_SCOPES[ctype]))
        raise InvalidArgument(
            "scopes",
            f"{', '.join(sorted(s.value for s in wrong))} not allowed for type {ctype.value} (allowed: {allowed})",
        )
    if CredentialScope.APP_ENGINE not in scopes:
        if app_engine is not None and (app_engine.allowed_apps or app_engine.allow_contextless_access):
            raise InvalidArgument("app_engine", "is only allowed with the APP_ENGINE scope")
        return None
    app_engine = app_engine or AppEngineAccess()
    apps = tuple(dict.fromkeys(validation.app_id("app_engine.allowed_apps", a) for a in app_engine.allowed_apps))
    if len(apps) > validation.MAX_APPS:
        raise InvalidArgument("app_engine.allowed_apps", f"lists {len(apps)} apps; at most {validation.MAX_APPS}")
    return AppEngineAccess(apps, app_engine.allow_contextless_access)


@dataclasses.dataclass(frozen=True, repr=False)
class _Overwrite:
    """An overwrite as asked for, validated and encoded (``plaintext`` holds the secret: no repr)."""

    principal: Principal
    credential_id: str
    contents: ContentsInput
    access: Access | None
    expected_version: int
    certificate_info: CertificateInfo | None
    plaintext: bytes


class CredentialService:
    def __init__(self, store: Store, keyring: Keyring) -> None:
        self._store = store
        self._keyring = keyring

    async def create(
        self,
        principal: Principal,
        *,
        name: str,
        description: str,
        scopes: frozenset[CredentialScope],
        contents: ContentsInput | None,
        access: Access | None,
        app_engine: AppEngineAccess | None,
        external_source: ExternalSource | None = None,
        credential_type: CredentialType | None = None,
    ) -> Credential:
        """With ``external_source`` (and ``credential_type``) instead of ``contents``: a synchronized credential,
        stored empty until its first synchronization (which is due at once)."""
        policy.require_create(principal)
        name = validation.text("name", name, max_len=validation.MAX_NAME, required=True)
        description = validation.text(
            "description", description, max_len=validation.MAX_DESCRIPTION, required=False, multiline=True
        )
        checked_access = _check_access(access, principal.username)
        typed = credential_type_of(contents) if contents is not None else None
        ctype = credential_type if external_source is not None else typed
        app = _check_scopes(scopes, ctype, app_engine) if ctype is not None else None
        secret, cert_info, source = await self._new_contents(principal, contents, external_source, credential_type)
        ctype = credential_type_of(secret)
        plaintext = contents_codec.encode(secret)
        now = datetime.datetime.now(datetime.UTC)
        for _ in range(_ID_ATTEMPTS):
            cred = Credential(
                id=new_credential_id(),
                name=name,
                description=description,
                type=ctype,
                scopes=scopes,
                access=checked_access,
                owner=principal.username,
                app_engine=app,
                certificate_info=cert_info,
                version=1,
                created_at=now,
                updated_at=now,
                external_source=source,
            )
            sealed = self._keyring.seal(cred.id, cred.version, plaintext)
            audit = AuditEntry(principal.username, principal.token_id, "credential.create", {"version": 1})
            try:
                async with self._store.write() as tx:  # one statement: the row and its audit row
                    return await tx.insert_credential(cred, sealed, audit, principal.check)
            except AlreadyExists:  # an id collision (2**-64): draw another
                continue
        raise Aborted("could not allocate a credential id; retry")

    async def _new_contents(
        self,
        principal: Principal,
        contents: ContentsInput | None,
        external_source: ExternalSource | None,
        credential_type: CredentialType | None,
    ) -> tuple[SecretContents, CertificateInfo | None, ExternalSource | None]:
        """Typed contents, or for a synchronized credential its checked source and empty contents of its type."""
        if external_source is None:
            if contents is None:
                raise InvalidArgument("contents", "must be set (or external_source)")
            secret, cert_info = contents_codec.validate(contents)
            if credential_type is not None and credential_type is not credential_type_of(secret):
                raise InvalidArgument("type", "does not match the type of the contents; leave it unspecified")
            return secret, cert_info, None
        empty, source = await sync_source.prepare(
            self._store, principal, contents is not None, external_source, credential_type
        )
        return empty, None, source

    async def get(self, principal: Principal, credential_id: str) -> Credential:
        policy.require_vault_view(principal)
        check_id(credential_id)
        async with self._store.autocommit() as tx:
            cred = await tx.get_credential(credential_id, check=principal.check)
        return policy.require_visible(principal, cred, credential_id)

    async def list(self, principal: Principal, flt: CredentialFilter, size: int, page_token: str) -> Page[Credential]:
        policy.require_vault_view(principal)
        limit = page_size(size)
        if flt.name_contains:
            validation.text("name_contains", flt.name_contains, max_len=validation.MAX_NAME, required=False)
        if flt.owner:
            validation.username("owner", flt.owner)
        visibility = policy.credential_visibility(principal.user)
        query = ("credentials", principal.username, visibility.value, dataclasses.astuple(flt))
        after = None
        if page_token:
            name, cid = decode_page_token(page_token, query, 2)
            after = (name, cid)
        async with self._store.autocommit() as tx:
            items, total = await tx.list_credentials(
                visibility, principal.username, flt, after, limit + 1, principal.check
            )
        more = len(items) > limit
        items = items[:limit]
        nxt = encode_page_token(query, items[-1].name, items[-1].id) if more else ""
        return Page(items, nxt, total)

    async def overwrite(
        self,
        principal: Principal,
        credential_id: str,
        contents: ContentsInput,
        access: Access | None,
        expected_version: int,
    ) -> Credential:
        """Full replacement of the contents. A non-owner allowed to overwrite becomes the owner.

        Optimistic first: read, decide, and write if the version has not moved (one statement with its audit row
        and change-log entry). If another overwrite came between and the caller named no version, again under
        the row's lock, so that concurrent overwrites each succeed, one version each."""
        check_id(credential_id)
        policy.require_scope(principal, TokenScope.CREDENTIAL_VAULT_WRITE)
        secret, cert_info = contents_codec.validate(contents)
        plaintext = contents_codec.encode(secret)
        change = _Overwrite(principal, credential_id, contents, access, expected_version, cert_info, plaintext)
        async with self._store.write() as tx:
            current = await tx.get_credential(credential_id, check=principal.check)
            written = await self._overwrite(tx, change, current)
        if written is None and not expected_version:
            async with self._store.transaction() as tx:
                current = await tx.get_credential(credential_id, for_update=True, check=principal.check)
                written = await self._overwrite(tx, change, current)
        if written is None:
            raise Aborted(f"credential {credential_id} changed concurrently; retry")
        return written

    async def _overwrite(self, tx: Queries, change: _Overwrite, current: Credential | None) -> Credential | None:
        """The overwrite decided on ``current`` and written if the row is still at its version (else None)."""
        principal = change.principal
        current = policy.require_visible(principal, current, change.credential_id)
        policy.require_overwrite(principal, current)
        if current.external_source is not None:
            raise FailedPrecondition(
                f"credential {current.id} is synchronized from an external vault: its contents come from there"
                " (give a new external_source to change where)"
            )
        if credential_type_of(change.contents) is not current.type:
            raise InvalidArgument(
                "contents",
                f"is of type {credential_type_of(change.contents).value}; the credential is {current.type.value}",
            )
        self._check_expected(current, change.expected_version)
        access = change.access
        new_access = _check_access(access, principal.username) if access is not None else current.access
        updated = dataclasses.replace(
            current, owner=principal.username, access=new_access, certificate_info=change.certificate_info
        )
        sealed = self._keyring.seal(current.id, current.version + 1, change.plaintext)
        audit = AuditEntry(
            principal.username,
            principal.token_id,
            "credential.overwrite",
            {"version": current.version + 1, "previous_owner": current.owner},
        )
        written = await tx.update_credential(
            updated, sealed, current.version, new_contents=True, audit=audit, check=principal.check
        )
        return written[0] if written is not None else None

    async def change_source(
        self,
        principal: Principal,
        credential_id: str,
        source: ExternalSource,
        access: Access | None,
        expected_version: int,
    ) -> Credential:
        """A new external source for a USERNAME_PASSWORD or TOKEN credential (synchronized already, or typed until
        now), checked as at creation; written like an overwrite (a non-owner allowed to overwrite becomes the owner,
        whose access to the companions every synchronization checks again) but the contents stay as they are until
        the new source's first synchronization, which is due at once."""
        check_id(credential_id)
        policy.require_external_sync(principal)
        new_access = _check_access(access, principal.username) if access is not None else None
        async with self._store.transaction() as tx:
            current, sealed = await self._locked(tx, principal, credential_id)
            policy.require_overwrite(principal, current)
            if current.type not in (CredentialType.USERNAME_PASSWORD, CredentialType.TOKEN):
                raise InvalidArgument(
                    "external_source",
                    f"only USERNAME_PASSWORD and TOKEN credentials are synchronized, not {current.type.value}",
                )
            checked = sync_source.checked(source, current.type)
            await sync_source.require_companions(tx, principal, checked)
            self._check_expected(current, expected_version)
            updated = dataclasses.replace(
                current, owner=principal.username, access=new_access or current.access, external_source=checked
            )
            detail = {
                "version": current.version + 1,
                "previous_owner": current.owner,
                "provider": checked.provider.value,
                "was_synchronized": current.external_source is not None,
            }
            audit = AuditEntry(principal.username, principal.token_id, "credential.change_source", detail)
            written = await tx.update_credential(
                updated,
                self._resealed(current, sealed),
                current.version,
                new_contents=False,
                audit=audit,
                check=principal.check,
            )
            if written is None:
                raise Aborted(f"credential {credential_id} changed concurrently; retry")
            await tx.restart_sync(credential_id)
            after = await tx.get_credential(credential_id)
        return policy.require_visible(principal, after, credential_id)

    @staticmethod
    async def _locked(tx: Queries, principal: Principal, credential_id: str) -> tuple[Credential, SealedContents]:
        """The credential and its sealed contents, the row locked, if the caller may see it."""
        found = await tx.get_credential_sealed(credential_id, for_update=True)
        current = policy.require_visible(principal, found[0] if found else None, credential_id)
        assert found is not None
        return current, found[1]

    def _resealed(self, current: Credential, sealed: SealedContents) -> SealedContents:
        """The same contents for the next version: every version has its own data key, bound to (id, version)."""
        plaintext = self._keyring.open(current.id, current.version, sealed)
        return self._keyring.seal(current.id, current.version + 1, plaintext)

    async def store_synchronized(
        self, tx: Queries, current: Credential, secret: SecretContents, audit: AuditEntry
    ) -> Credential | None:
        """New contents read from the credential's external source, written like an overwrite (a new version, its
        change-log entry and audit row in the statement, so engines get it through the push) if ``current`` is
        still the stored version; else None."""
        sealed = self._keyring.seal(current.id, current.version + 1, contents_codec.encode(secret))
        written = await tx.update_credential(current, sealed, current.version, new_contents=True, audit=audit)
        return written[0] if written is not None else None

    async def update_metadata(
        self,
        principal: Principal,
        credential_id: str,
        *,
        name: str | None,
        description: str | None,
        access: Access | None,
        expected_version: int,
    ) -> Credential:
        check_id(credential_id)
        policy.require_scope(principal, TokenScope.CREDENTIAL_VAULT_WRITE)
        if name is not None:
            name = validation.text("name", name, max_len=validation.MAX_NAME, required=True)
        if description is not None:
            description = validation.text(
                "description", description, max_len=validation.MAX_DESCRIPTION, required=False, multiline=True
            )
        async with self._store.transaction() as tx:
            current, found_sealed = await self._locked(tx, principal, credential_id)
            policy.require_update_metadata(principal, current)
            self._check_expected(current, expected_version)
            sealed = self._resealed(current, found_sealed)
            updated = dataclasses.replace(
                current,
                name=current.name if name is None else name,
                description=current.description if description is None else description,
                access=current.access if access is None else _check_access(access, principal.username),
            )
            written = await tx.update_credential(updated, sealed, current.version, new_contents=False)
            if written is None:
                raise Aborted(f"credential {credential_id} changed concurrently; retry")
            stored = written[0]
            await self._audit(
                tx, principal, "credential.update_metadata", credential_id, {"version": current.version + 1}
            )
        return stored

    async def delete(self, principal: Principal, credential_id: str) -> tuple[str, ...]:
        """Deletes the credential; returns the ids of the monitors that used it and were enabled (now disabled)."""
        check_id(credential_id)
        policy.require_scope(principal, TokenScope.CREDENTIAL_VAULT_WRITE)
        async with self._store.transaction() as tx:
            current = policy.require_visible(
                principal, await tx.get_credential(credential_id, for_update=True), credential_id
            )
            policy.require_delete(principal, current)
            await tx.delete_credential(credential_id)
            disabled = await self._deactivate_users(tx, credential_id)
            await self._audit(
                tx, principal, "credential.delete", credential_id, {"owner": current.owner, "disabled": disabled}
            )
        return disabled

    @staticmethod
    async def _deactivate_users(tx: Queries, credential_id: str) -> tuple[str, ...]:
        """Monitors that used a deleted credential become inactive (seed 000), in the deleting transaction."""
        disabled = []
        for monitor in await tx.monitors_using(credential_id, for_update=True):
            if not monitor.enabled:
                continue
            monitor.enabled = False
            monitor.disabled_reason = mpb.DISABLED_REASON_CREDENTIAL_DELETED
            stored = await tx.update_monitor(monitor, monitor.version)
            assert stored is not None  # locked above
            await tx.append_change(ChangeKind.MONITOR, monitor.id, list(monitor.location_ids))
            disabled.append(monitor.id)
        return tuple(disabled)

    async def get_details(
        self, principal: Principal, credential_id: str, app_id: str
    ) -> tuple[Credential, SecretContents]:
        """The contents, for AppEngine apps only. The read is audited (committed) before the secret is returned."""
        check_id(credential_id)
        if app_id:
            validation.app_id("app_id", app_id)
        async with self._store.autocommit() as tx:
            found = await tx.get_credential_sealed(credential_id)
        if found is None:
            raise NotFound(f"credential {credential_id} not found")
        cred, sealed = found
        cred = policy.require_visible(principal, cred, credential_id)
        detail = {"app_id": app_id or None, "version": cred.version}
        try:
            policy.require_details_read(principal, cred, app_id)
        except PermissionDenied as denied:
            async with self._store.transaction() as tx:
                await self._audit(tx, principal, "credential.read_details", credential_id, detail, outcome="denied")
            denied.audited = True
            raise
        secret = contents_codec.decode(self._keyring.open(cred.id, cred.version, sealed))
        async with self._store.transaction() as tx:
            await self._audit(tx, principal, "credential.read_details", credential_id, detail)
        return cred, secret

    @staticmethod
    def _check_expected(current: Credential, expected_version: int) -> None:
        if expected_version < 0:
            raise InvalidArgument("expected_version", "must not be negative")
        if expected_version and expected_version != current.version:
            raise Aborted(
                f"credential {current.id} is at version {current.version}, not {expected_version}; re-read and retry"
            )

    @staticmethod
    async def _audit(
        tx: Queries,
        principal: Principal,
        action: str,
        target: str,
        detail: Mapping[str, object],
        outcome: str = "ok",
    ) -> None:
        await tx.insert_audit(principal.username, principal.token_id, action, target, outcome, detail)
