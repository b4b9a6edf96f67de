"""Token rotation with write-back to an external vault (seed 003): a token may carry a rotation policy; every
``interval`` (or on demand, RotateToken) credvault issues its successor (same name, scopes, kind, owner, expiry and
policy), writes the successor's secret to a KV v2 field of an OpenBao / HashiCorp Vault with check-and-set on the
version it read, and only then schedules the predecessor's revocation after the grace period.

One rotation of a token runs at a time (a lease in PostgreSQL, as for synchronizations: a second RotateToken gets
ABORTED). Check-and-set guards the rest: another writer of the path, or two rotations that both read version n (a
lease taken over from a replica that overran it) both write with cas=n; one write wins, the loser's fails and it
revokes its own successor. Any failure to write leaves the predecessor valid and the successor revoked,
with an audit row and the outcome in ``credvault_token_rotation_total{outcome}``. The secret is never returned by a
rotation with write-back, never logged, audited or counted; the KV field is its only copy."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from vault_service import contents_codec, policy, tokens
from vault_service.crypto import Keyring
from vault_service.errors import Aborted, FailedPrecondition, InvalidArgument, Unavailable
from vault_service.external_sync import failure as f
from vault_service.external_sync import hashicorp
from vault_service.external_sync import source as sync_source
from vault_service.external_sync.failure import SyncFailure
from vault_service.external_sync.hashicorp import HashiCorpClient
from vault_service.external_sync.provider import CA_FIELD, Companions, Opened
from vault_service.models import (
    SYNC_INTERVAL_MIN,
    CredentialType,
    ExternalProvider,
    ExternalSource,
    KvVersion,
    Principal,
    TokenInfo,
    TokenKind,
)
from vault_service.storage.pool import Store
from vault_service.storage.queries import Queries

log = logging.getLogger(__name__)

ACTOR = "credvault:token-rotation"
ACTION = "token.rotate"
ROTATED = "rotated"
# The outcome of a rotation refused because the successor would exceed the owner's personal-token limit.
PERSONAL_LIMIT = "personal_limit"
MAX_INTERVAL = datetime.timedelta(days=366)


@dataclasses.dataclass(frozen=True)
class RotationPolicy:
    """Where a token's successor's secret goes (a HashiCorp Vault source: address, CA, auth, KV v2 mount and path; its
    ``token_key`` is the field), how often it rotates (zero: on demand only) and the predecessor's grace."""

    target: ExternalSource
    interval: datetime.timedelta
    grace: datetime.timedelta

    @property
    def where(self) -> str:
        return f"{self.target.kv_mount}/{self.target.kv_path}#{self.target.token_key}"

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target.to_json(),
            "interval_seconds": self.interval.total_seconds(),
            "grace_seconds": self.grace.total_seconds(),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RotationPolicy:
        return cls(
            ExternalSource.from_json(doc["target"]),
            datetime.timedelta(seconds=doc["interval_seconds"]),
            datetime.timedelta(seconds=doc["grace_seconds"]),
        )


@dataclasses.dataclass(frozen=True)
class RotationResult:
    """A rotation with write-back: the successor's metadata (never its secret), the predecessor's, and the KV
    version the secret was written as."""

    info: TokenInfo
    previous: TokenInfo
    kv_version: int


def checked_policy(rotation: RotationPolicy, min_interval: datetime.timedelta) -> RotationPolicy:
    target = rotation.target
    if target.provider is not ExternalProvider.HASHICORP_VAULT:
        raise InvalidArgument("rotation.target.provider", "must be HASHICORP_VAULT (OpenBao or HashiCorp Vault)")
    if target.kv_version is not KvVersion.V2:
        raise InvalidArgument("rotation.target.kv.version", "must be KV_VERSION_V2 (check-and-set needs versions)")
    if target.username_key or target.password_key:
        raise InvalidArgument("rotation.target.username_key", "leave empty: the token goes to token_key")
    # The sync interval means nothing for a write target: any valid one passes the shared checks.
    target = sync_source.checked(
        dataclasses.replace(target, sync_interval_seconds=SYNC_INTERVAL_MIN), CredentialType.TOKEN
    )
    if rotation.interval and not min_interval <= rotation.interval <= MAX_INTERVAL:
        raise InvalidArgument(
            "rotation.interval", f"must be zero (on demand) or {min_interval} to {MAX_INTERVAL.days} days"
        )
    if rotation.interval < datetime.timedelta(0):
        raise InvalidArgument("rotation.interval", "must not be negative")
    if not datetime.timedelta(0) <= rotation.grace <= tokens.MAX_GRACE:
        raise InvalidArgument("rotation.grace_period", f"must be between 0 and {tokens.MAX_GRACE.days} days")
    return RotationPolicy(target, rotation.interval, rotation.grace)


class TokenRotation:
    def __init__(
        self,
        store: Store,
        keyring: Keyring,
        token_service: tokens.TokenService,
        owner: str,
        on_outcome: Callable[[str], None],
        *,
        min_interval: datetime.timedelta = datetime.timedelta(days=1),
        retry_seconds: float = 300.0,
        lease_seconds: float = 60.0,
    ) -> None:
        self._store, self._keyring, self._tokens = store, keyring, token_service
        self._client = HashiCorpClient()
        self.owner = owner
        self._on_outcome = on_outcome
        self.min_interval = min_interval
        self.retry_seconds = retry_seconds
        self.lease_seconds = lease_seconds
        self._inflight: set[asyncio.Future[RotationResult]] = set()

    async def close(self) -> None:
        """Wait for rotations under way (a successor issued but not yet written or revoked must not be left live),
        then end the sessions."""
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        await self._client.close()

    async def _shielded(self, run: Coroutine[Any, Any, RotationResult]) -> RotationResult:
        """``run`` goes on if its caller is cancelled (an RPC cut by a shutdown, the scheduler stopped): a rotation
        ends written and the predecessor revoked, or failed and its successor revoked, never half-way."""
        task = asyncio.ensure_future(run)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return await asyncio.shield(task)

    async def set_policy(
        self, principal: Principal, token_id: str, rotation: RotationPolicy | None
    ) -> tuple[RotationPolicy | None, datetime.datetime | None]:
        """Set (or with None, clear) a token's rotation policy; the policy and when it is next due."""
        if rotation is not None:
            policy.require_external_sync(principal)
            rotation = checked_policy(rotation, self.min_interval)
        async with self._store.transaction() as tx:
            info = await self._tokens.accessible(tx, principal, token_id)
            if info.revoked_at is not None:
                raise FailedPrecondition(f"token {token_id} is revoked or being rotated; set the policy on a live one")
            if rotation is not None:
                await sync_source.require_companions(tx, principal, rotation.target)
            next_at = (
                datetime.datetime.now(datetime.UTC) + rotation.interval if rotation and rotation.interval else None
            )
            await tx.set_rotation(token_id, rotation.to_json() if rotation else None, next_at)
            detail = {"where": rotation.where} if rotation else {"cleared": True}
            await tx.insert_audit(principal.username, principal.token_id, "token.set_rotation", token_id, "ok", detail)
        return rotation, next_at

    async def get_policy(self, tx: Queries, token_id: str) -> RotationPolicy | None:
        doc = await tx.get_rotation(token_id)
        return RotationPolicy.from_json(doc) if doc is not None else None

    async def rotate(self, principal: Principal, token_id: str) -> RotationResult | None:
        """RotateToken of a token with a rotation policy (None: it has none, rotate it the plain way)."""
        async with self._store.transaction() as tx:
            info = await self._tokens.accessible(tx, principal, token_id)
            rotation = await self.get_policy(tx, token_id)
        if rotation is None:
            return None
        if info.revoked_at is not None:
            raise FailedPrecondition(f"token {token_id} is revoked or rotated already; rotate its successor")
        policy.require_external_sync(principal)
        # One rotation of a token at a time (the scheduler's lease): a second one would read the version the first
        # just wrote and win its own check-and-set before the first revoked the predecessor.
        async with self._store.autocommit() as tx:
            claimed = await tx.claim_rotation(token_id, self.owner, self.lease_seconds)
        if not claimed:
            raise Aborted(f"a rotation of token {token_id} is running; retry")
        try:
            return await self._shielded(self._run(token_id, rotation, principal.username, principal.token_id))
        finally:
            async with self._store.autocommit() as tx:
                await tx.finish_rotation(token_id, self.owner, None)

    async def run_scheduled(self, token_id: str) -> str:
        """A due rotation whose lease this replica holds; its outcome. After a failure the next try is later."""
        outcome = ROTATED
        try:
            async with self._store.autocommit() as tx:
                rotation = await self.get_policy(tx, token_id)
            if rotation is not None:
                await self._shielded(self._run(token_id, rotation, ACTOR, None))
        except (SyncFailure, FailedPrecondition, Aborted, Unavailable) as exc:
            outcome = exc.outcome if isinstance(exc, SyncFailure) else "failed"
        finally:
            async with self._store.autocommit() as tx:
                await tx.finish_rotation(token_id, self.owner, None if outcome == ROTATED else self.retry_seconds)
        return outcome

    async def _run(
        self, token_id: str, rotation: RotationPolicy, actor: str, actor_token: str | None
    ) -> RotationResult:
        target = rotation.target
        try:
            companions = await self._companions(token_id, target)
            login = hashicorp.login_of(target, companions)
            ca_pem = companions.ca_pem(CA_FIELD)
            where = (target.address, ca_pem, login, target.kv_mount, target.kv_path)
            cas = await hashicorp.kv2_current_version(self._client, *where)
            fields: dict[str, Any] = {}
            if cas:
                try:  # the secret's other fields are kept
                    fields = dict((await self._client.read(*where, KvVersion.V2)).data)
                except SyncFailure as failure:
                    if failure.outcome != f.NOT_FOUND:
                        raise  # else its current version is deleted: write the field alone
            successor = await self._issue(token_id, rotation)  # committed: valid before its secret is anywhere
        except SyncFailure as failure:
            await self._audit_failure(token_id, actor, actor_token, None, failure)
            raise _error(failure) from None
        try:
            fields[target.token_key] = successor.token
            version = await hashicorp.write_kv2(self._client, *where, fields, cas)
        except SyncFailure as failure:
            async with self._store.transaction() as tx:
                await tx.revoke_token(successor.info.id, None)
            await self._audit_failure(token_id, actor, actor_token, successor.info.id, failure)
            raise _error(failure) from None
        finally:
            fields.clear()
        async with self._store.transaction() as tx:
            now = datetime.datetime.now(datetime.UTC)
            previous = await tx.revoke_token(token_id, now + rotation.grace if rotation.grace else None)
            await tx.set_rotation(token_id, rotation.to_json(), None)  # kept: a later rotation of it is refused
            detail = {"new": successor.info.id, "where": rotation.where, "kv_version": version}
            await tx.insert_audit(actor, actor_token, ACTION, token_id, "ok", detail)
            info = await tx.get_token(successor.info.id)
        self._on_outcome(ROTATED)
        log.info(
            "token %s rotated to %s (written to %s version %d)", token_id, successor.info.id, rotation.where, version
        )
        assert previous is not None
        assert info is not None
        return RotationResult(info, previous, version)

    async def _issue(self, token_id: str, rotation: RotationPolicy) -> tokens.IssuedToken:
        """The successor, committed (valid before its secret is anywhere), with the predecessor's policy."""
        async with self._store.transaction() as tx:
            old = await tx.get_token(token_id)
            if await tx.get_rotation(token_id, for_update=True) is None or old is None:
                raise Aborted(f"the rotation policy of token {token_id} was removed meanwhile; nothing done")
            now = datetime.datetime.now(datetime.UTC)
            if old.revoked_at is not None or (old.expires_at is not None and old.expires_at <= now):
                raise FailedPrecondition(f"token {token_id} is revoked, expired or rotated already")
            if old.kind is TokenKind.PERSONAL and rotation.grace:
                # During the grace both are live: that must fit under the personal-token limit (as RotateToken).
                await tx.lock_user_tokens(old.owner)
                if await tx.count_live_tokens(old.owner, TokenKind.PERSONAL) >= tokens.MAX_PERSONAL_TOKENS:
                    raise SyncFailure(
                        PERSONAL_LIMIT,
                        f"user {old.owner!r} has {tokens.MAX_PERSONAL_TOKENS} live personal access tokens, the most"
                        " allowed; set a grace period of zero, or revoke one",
                    )
            issued = await tokens.issue_token(tx, old.owner, old.name, old.scopes, old.kind, old.expires_at)
            next_at = now + rotation.interval if rotation.interval else None
            await tx.set_rotation(issued.info.id, rotation.to_json(), next_at)
        return issued

    async def _audit_failure(
        self, token_id: str, actor: str, actor_token: str | None, successor: str | None, failure: SyncFailure
    ) -> None:
        detail: dict[str, object] = {"reason": failure.outcome, "error": failure.message}
        if successor is not None:
            detail["new_revoked"] = successor
        async with self._store.autocommit() as tx:
            await tx.insert_audit(actor, actor_token, ACTION, token_id, "failed", detail)
        self._on_outcome(failure.outcome)
        log.warning("rotation of token %s failed (%s): %s", token_id, failure.outcome, failure.message)

    async def _companions(self, token_id: str, target: ExternalSource) -> Companions:
        """The target's companion credentials, opened, if the token's owner has access to each (checked again at
        every rotation, as at configuration)."""
        opened: dict[str, Opened] = {}
        async with self._store.autocommit() as tx:
            info = await tx.get_token(token_id)
            owner = info.owner if info else ""
            for field, cid in target.companions().items():
                found = await tx.get_credential_sealed(cid)
                if found is None or not policy.is_usable_by(found[0], owner):
                    raise SyncFailure(f.COMPANION, f"the companion credential {cid} ({field}) is gone or not usable")
                companion, sealed = found
                contents = contents_codec.decode(self._keyring.open(cid, companion.version, sealed))
                opened[field] = Opened(cid, companion.version, contents)
        return Companions(opened)


def _error(failure: SyncFailure) -> Exception:
    """The RPC error of a failed write-back (the message is configuration only)."""
    if failure.outcome == hashicorp.CAS_CONFLICT:
        return Aborted(f"rotation not done, the old token stays valid: {failure.message} by another writer; retry")
    if failure.outcome in (f.UNREACHABLE, f.SEALED):
        return Unavailable(f"rotation not done, the old token stays valid: {failure.message}")
    return FailedPrecondition(f"rotation not done, the old token stays valid: {failure.message}")


class RotationScheduler:
    """Scheduled rotations, run by every replica: each tick it takes the lease of due tokens (a row update only one
    replica can win per token, see storage/rotation.py) and rotates them one at a time. Check-and-set on the KV
    version still decides if a lease lapses while a rotation runs."""

    def __init__(self, store: Store, rotation: TokenRotation, tick_seconds: float, *, batch: int = 16) -> None:
        self._store, self._rotation = store, rotation
        self._tick, self._batch = tick_seconds, batch
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="token-rotation")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            async with self._store.autocommit() as tx:
                await tx.release_rotations(self._rotation.owner)

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_due()
            except Exception as exc:  # the database may be away: try again next tick
                log.warning("token rotation: looking for due rotations failed (%s)", type(exc).__name__)
            await asyncio.sleep(self._tick)

    async def run_due(self) -> int:
        async with self._store.autocommit() as tx:
            claimed = await tx.claim_due_rotations(self._rotation.owner, self._rotation.lease_seconds, self._batch)
        for token_id in claimed:
            try:
                await self._rotation.run_scheduled(token_id)
            except Exception as exc:  # its lease expires; a later tick tries again
                log.warning("scheduled rotation of %s failed unexpectedly (%s)", token_id, type(exc).__name__)
        return len(claimed)
