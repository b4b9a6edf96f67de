"""One synchronization of one credential, by the replica holding its lease: log in, read the external secret, and
if its value differs from the stored one write it as a new version (with its change-log entry and audit row, so
engines get it through the push) in the transaction that records the status and releases the lease. A failure
keeps the stored contents and records why (status, audit row, metric), with exponential backoff."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from vault_service import contents_codec, policy, validation
from vault_service.credentials import CredentialService, check_id
from vault_service.crypto import Keyring
from vault_service.errors import Aborted, FailedPrecondition, InvalidArgument
from vault_service.external_sync import failure as f
from vault_service.external_sync.azure import AzureKeyVaultClient
from vault_service.external_sync.cyberark import CyberArkClient
from vault_service.external_sync.failure import SyncFailure
from vault_service.external_sync.hashicorp import HashiCorpClient, HashiCorpProvider
from vault_service.external_sync.provider import Companions, Fetched, Opened, Provider
from vault_service.models import (
    ChangeKind,
    Credential,
    CredentialType,
    ExternalProvider,
    ExternalSource,
    Principal,
    SecretContents,
    TokenSecret,
    UsernamePasswordSecret,
)
from vault_service.storage.audit import AuditEntry
from vault_service.storage.pool import Store
from vault_service.storage.queries import Queries

log = logging.getLogger(__name__)

ACTOR = "credvault:external-sync"
ACTION = "credential.sync"
CHANGED, UNCHANGED, GONE = "changed", "unchanged", "gone"


class _LeaseLost(Exception):
    """Another replica took the lease over (this one overran it), or the source changed while this run read the
    old one: roll back, write nothing."""


class Synchronizer:
    def __init__(
        self,
        store: Store,
        keyring: Keyring,
        credentials: CredentialService,
        client: HashiCorpClient,
        owner: str,
        on_outcome: Callable[[str, str], None],
        *,
        lease_seconds: float = 60.0,
        backoff_base_seconds: float = 10.0,
        providers: Mapping[ExternalProvider, Provider] | None = None,
    ) -> None:
        self._store, self._keyring, self._credentials, self._client = store, keyring, credentials, client
        self._providers: dict[ExternalProvider, Provider] = {
            ExternalProvider.HASHICORP_VAULT: HashiCorpProvider(client),
            ExternalProvider.AZURE_KEY_VAULT: AzureKeyVaultClient(),
            ExternalProvider.CYBERARK_CCP: CyberArkClient(),
        }
        self._providers.update(providers or {})
        self.owner = owner
        self._on_outcome = on_outcome
        self.lease_seconds = lease_seconds
        self._backoff = backoff_base_seconds

    def provider(self, which: ExternalProvider) -> Provider:
        return self._providers[which]

    async def close(self) -> None:
        for provider in self._providers.values():
            await provider.close()

    async def sync_now(self, principal: Principal, credential_id: str) -> Credential:
        """The SyncCredential RPC: one synchronization now, by this replica; the credential as it is after it."""
        check_id(credential_id)
        policy.require_external_sync(principal)
        async with self._store.autocommit() as tx:
            cred = await tx.get_credential(credential_id, check=principal.check)
        cred = policy.require_visible(principal, cred, credential_id)
        policy.require_overwrite(principal, cred)
        if cred.external_source is None:
            raise FailedPrecondition(f"credential {credential_id} has no external source")
        async with self._store.autocommit() as tx:
            claimed = await tx.claim_sync(credential_id, self.owner, self.lease_seconds)
        if not claimed:
            raise Aborted(f"a synchronization of credential {credential_id} is running; retry")
        await self.run(credential_id)
        async with self._store.autocommit() as tx:
            after = await tx.get_credential(credential_id)
        return policy.require_visible(principal, after, credential_id)

    async def run(self, credential_id: str) -> str:
        """Synchronize a credential whose lease this replica holds; returns the outcome."""
        async with self._store.autocommit() as tx:
            found = await tx.get_credential(credential_id)
        if found is None or found.external_source is None:
            return GONE  # deleted (or made static) since it was claimed
        source = found.external_source
        try:
            provider = self._providers.get(source.provider)
            if provider is None:
                raise SyncFailure(f.ERROR, f"this vault service cannot synchronize from {source.provider.value}")
            secret = await provider.fetch(source, await self._companions(found))
            contents = _contents(found.type, source, secret)
        except SyncFailure as failure:
            await self._failed(found, failure)
            return failure.outcome
        try:
            outcome = await self._succeeded(source, credential_id, contents, secret.version)
        except _LeaseLost:
            log.warning("credential %s: the synchronization lease was lost; nothing written", credential_id)
            return "lease_lost"
        self._on_outcome(source.provider.value, outcome)
        return outcome

    async def _companions(self, cred: Credential) -> Companions:
        """The companion credentials, opened, if the synchronized credential's owner still has access to each (the
        access rules of its configuration, checked again at every synchronization)."""
        assert cred.external_source is not None
        opened: dict[str, Opened] = {}
        async with self._store.autocommit() as tx:
            for field, cid in cred.external_source.companions().items():
                found = await tx.get_credential_sealed(cid)
                if found is None:
                    raise SyncFailure(
                        f.COMPANION_DENIED,
                        f"permission denied: the companion credential {cid} ({field}) no longer exists; point"
                        f" {field} at an existing credential",
                    )
                companion, sealed = found
                if not policy.is_usable_by(companion, cred.owner):
                    raise SyncFailure(
                        f.COMPANION_DENIED,
                        f"permission denied: the owner {cred.owner!r} no longer has access to the companion credential"
                        f" {cid} ({field}); share it with them again",
                    )
                contents = contents_codec.decode(self._keyring.open(cid, companion.version, sealed))
                opened[field] = Opened(cid, companion.version, contents)
        return Companions(opened)

    async def _succeeded(
        self, source: ExternalSource, credential_id: str, contents: SecretContents, version: str
    ) -> str:
        source_provider = ""
        async with self._store.transaction() as tx:
            found = await tx.get_credential_sealed(credential_id, for_update=True)
            if found is None or found[0].external_source is None or found[0].sync_status is None:
                return GONE
            current, sealed = found
            if current.external_source != source:
                # Changed while this run read the old one (and the lease was given again, perhaps to this very
                # replica): the old source's value must not land over the new source.
                raise _LeaseLost
            assert current.external_source is not None
            assert current.sync_status is not None
            source_provider = current.external_source.provider.value
            stored = contents_codec.decode(self._keyring.open(current.id, current.version, sealed))
            outcome = UNCHANGED if stored == contents else CHANGED
            if outcome == CHANGED:
                detail = {"version": current.version + 1, "external_version": version, "provider": source_provider}
                audit = AuditEntry(ACTOR, None, ACTION, detail)
                if await self._credentials.store_synchronized(tx, current, contents, audit) is None:
                    raise _LeaseLost  # cannot happen under the row lock; never write on a moved version
                if current.sync_status.last_success is None:
                    # The first values: engines got the credential without contents until now and rejected its
                    # monitors (location_state); a new revision of each makes them send it again.
                    for monitor_id, location_ids in await tx.renew_revisions_of_monitors_using(current.id):
                        await tx.append_change(ChangeKind.MONITOR, monitor_id, location_ids)
            elif current.sync_status.last_error:
                await tx.insert_audit(ACTOR, None, ACTION, current.id, "ok", {"changed": False, "recovered": True})
            await self._finish(tx, current, "", version)
        log.info("credential %s synchronized from %s: %s", credential_id, source_provider, outcome)
        return outcome

    async def _failed(self, cred: Credential, failure: SyncFailure) -> None:
        assert cred.external_source is not None
        log.warning("credential %s: synchronization failed: %s", cred.id, failure.message)
        try:
            async with self._store.transaction() as tx:
                now = await tx.get_credential(cred.id, for_update=True)
                if now is None or now.external_source != cred.external_source:
                    raise _LeaseLost  # gone, or a new source: the old one's failure is not its status
                await self._finish(tx, cred, failure.message, None)
                detail = {"outcome": failure.outcome, "error": failure.message}
                await tx.insert_audit(ACTOR, None, ACTION, cred.id, "failed", detail)
        except _LeaseLost:
            return
        self._on_outcome(cred.external_source.provider.value, failure.outcome)

    async def _finish(self, tx: Queries, cred: Credential, error: str, version: str | None) -> None:
        assert cred.external_source is not None
        done = await tx.finish_sync(
            cred.id,
            self.owner,
            error=error,
            external_version=version,
            interval_seconds=cred.external_source.sync_interval_seconds,
            backoff_base_seconds=min(self._backoff, cred.external_source.sync_interval_seconds),
        )
        if not done:
            raise _LeaseLost


def _field(secret: Fetched, source: ExternalSource, key: str) -> str:
    where = secret.where
    if key not in secret.data:
        raise SyncFailure(f.MISSING_KEY, f"the secret at {where} has no field {key!r}")
    value = secret.data[key]
    if not isinstance(value, str) or not value:
        raise SyncFailure(f.INVALID_VALUE, f"the field {key!r} of the secret at {where} is not a non-empty string")
    try:
        return validation.secret_field(key, value, required=True)
    except InvalidArgument:
        raise SyncFailure(
            f.INVALID_VALUE,
            f"the field {key!r} of the secret at {where} is over {validation.MAX_SECRET_FIELD} characters or holds NUL",
        ) from None


def _contents(ctype: CredentialType, source: ExternalSource, secret: Fetched) -> SecretContents:
    """The credential's contents from the secret's fields, checked as typed contents are."""
    contents: SecretContents
    if ctype is CredentialType.USERNAME_PASSWORD:
        contents = UsernamePasswordSecret(
            _field(secret, source, source.username_key), _field(secret, source, source.password_key)
        )
    else:
        contents = TokenSecret(_field(secret, source, source.token_key))
    try:
        contents_codec.validate(contents)
    except InvalidArgument as exc:
        raise SyncFailure(
            f.INVALID_VALUE, f"a field of the secret is not valid for the credential: {exc.field}"
        ) from None
    return contents
