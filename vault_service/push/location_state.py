"""What the engines of one location should hold, kept current from the change log.

One ``LocationState`` per location with connected engines on this replica. It is built from a consistent snapshot
(REPEATABLE READ, with the change-log head of that snapshot) and then advanced by change rows, each turned into a
``Delta`` that every subscribed stream's outbox receives. Credentials are resolved (decrypted) here, once per
location and change, never per engine or per execution; an engine holds only the credentials its monitors use.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable

from credvault.secret_scrub import secrets_of
from credvault.v1 import engine_pb2 as epb
from credvault.v1 import monitors_pb2 as mpb
from vault_service import contents as contents_codec
from vault_service.api import convert
from vault_service.crypto import Keyring
from vault_service.push.outbox import Delta, Key, Outbox
from vault_service.storage.monitor_queries import Change
from vault_service.storage.store import Store, Tx

log = logging.getLogger(__name__)

MONITOR = epb.RESOURCE_KIND_MONITOR
CREDENTIAL = epb.RESOURCE_KIND_CREDENTIAL
DELIVERED_KEPT = 1024  # recent deltas whose commit time is kept for push-latency metrics


def _removal(kind: int, resource_id: str, reason: int) -> tuple[Key, epb.Removal]:
    return (kind, resource_id), epb.Removal(kind=kind, id=resource_id, reason=reason)  # type: ignore[arg-type]


def removal_reason(monitor: mpb.Monitor | None, location_id: str) -> int:
    """Why an engine of ``location_id`` must no longer hold this monitor."""
    if monitor is None:
        return epb.REMOVAL_REASON_DELETED
    if not monitor.enabled:
        if monitor.disabled_reason == mpb.DISABLED_REASON_CREDENTIAL_DELETED:
            return epb.REMOVAL_REASON_CREDENTIAL_DELETED
        return epb.REMOVAL_REASON_DISABLED
    if location_id not in monitor.location_ids:
        return epb.REMOVAL_REASON_LOCATION_CHANGED
    return epb.REMOVAL_REASON_CREDENTIAL_DELETED  # enabled, here, but a credential is gone


class LocationState:
    def __init__(self, location_id: str, keyring: Keyring) -> None:
        self.location_id = location_id
        self._keyring = keyring
        self.revision = 0
        self.monitors: dict[str, epb.MonitorResource] = {}
        self.credentials: dict[str, epb.CredentialResource] = {}
        self._users: dict[str, set[str]] = {}  # credential id -> ids of held monitors that use it
        self.subscribers: set[Outbox] = set()
        # (revision, commit time on the monotonic clock) of the recent deltas handed to the outboxes
        self.delivered: collections.deque[tuple[int, float]] = collections.deque(maxlen=DELIVERED_KEPT)

    # --- building -------------------------------------------------------------------------------------------------

    async def load(self, store: Store) -> None:
        async with store.snapshot() as tx:
            self.revision = await tx.head_revision()
            monitors = await tx.enabled_monitors_in(self.location_id)
            needed = sorted({c for m in monitors for c in m.credential_ids})
            creds = await self._resolve(tx, needed)
        self.credentials = creds
        for m in monitors:
            if all(c in creds for c in m.credential_ids):
                self._hold_monitor(m)
        log.info(
            "location %s: %d monitors, %d credentials at revision %d",
            self.location_id,
            len(self.monitors),
            len(self.credentials),
            self.revision,
        )

    async def _resolve(self, tx: Tx, credential_ids: list[str]) -> dict[str, epb.CredentialResource]:
        out = {}
        for cid, (cred, sealed, version) in (await tx.credentials_sealed(credential_ids)).items():
            secret = contents_codec.decode(self._keyring.open(cid, cred.version, sealed))
            out[cid] = epb.CredentialResource(id=cid, version=version, details=convert.details(secret))
        return out

    def _hold_monitor(self, m: mpb.Monitor) -> None:
        self.monitors[m.id] = epb.MonitorResource(id=m.id, version=m.version, monitor=m)
        for cid in m.credential_ids:
            self._users.setdefault(cid, set()).add(m.id)

    def _release_monitor(self, monitor_id: str, delta: Delta, reason: int) -> None:
        held = self.monitors.pop(monitor_id, None)
        if held is None:
            return
        key, removal = _removal(MONITOR, monitor_id, reason)
        delta.removals[key] = removal
        for cid in held.monitor.credential_ids:
            users = self._users.get(cid, set())
            users.discard(monitor_id)
            if not users:
                self._users.pop(cid, None)
                if self.credentials.pop(cid, None) is not None:
                    ckey, cremoval = _removal(CREDENTIAL, cid, epb.REMOVAL_REASON_UNREFERENCED)
                    delta.removals[ckey] = cremoval

    # --- advancing ------------------------------------------------------------------------------------------------

    async def apply(self, store: Store, change: Change) -> Delta | None:
        """Advance by one change row; returns what the engines must be told (None if nothing)."""
        if change.revision <= self.revision:
            return None
        self.revision = change.revision
        if self.location_id not in change.location_ids:
            return None
        if change.kind == "credential" and change.object_id not in self.credentials:
            return None  # no held monitor uses it: nothing to read or resolve
        delta = Delta(change.revision, {}, {}, {})
        async with store.read() as tx:
            if change.kind == "monitor":
                await self._apply_monitor(tx, change.object_id, delta)
            elif change.kind == "credential":
                await self._apply_credential(tx, change.object_id, delta)
        if delta.empty():
            return None
        for outbox in self.subscribers:
            outbox.put(delta)
        if change.committed_at is not None:
            self.delivered.append((change.revision, change.committed_at))
        return delta

    async def _apply_monitor(self, tx: Tx, monitor_id: str, delta: Delta) -> None:
        m = (await tx.monitors_by_id([monitor_id])).get(monitor_id)
        if m is None or not m.enabled or self.location_id not in m.location_ids:
            self._release_monitor(monitor_id, delta, removal_reason(m, self.location_id))
            return
        previous = self.monitors.get(monitor_id)
        if previous is not None and previous.version == m.version:
            return
        missing = [c for c in m.credential_ids if c not in self.credentials]
        resolved = await self._resolve(tx, missing)
        if len(resolved) != len(missing):  # a credential vanished meanwhile: the monitor cannot run
            self._release_monitor(monitor_id, delta, epb.REMOVAL_REASON_CREDENTIAL_DELETED)
            return
        self.credentials.update(resolved)
        delta.credentials.update(resolved)
        old_refs = set(previous.monitor.credential_ids) if previous is not None else set()
        for cid in old_refs - set(m.credential_ids):  # credentials the new version no longer uses
            users = self._users.get(cid, set())
            users.discard(monitor_id)
            if not users:
                self._users.pop(cid, None)
                self.credentials.pop(cid, None)
                key, removal = _removal(CREDENTIAL, cid, epb.REMOVAL_REASON_UNREFERENCED)
                delta.removals[key] = removal
        self._hold_monitor(m)
        delta.monitors[monitor_id] = self.monitors[monitor_id]

    async def _apply_credential(self, tx: Tx, credential_id: str, delta: Delta) -> None:
        resolved = await self._resolve(tx, [credential_id])
        res = resolved.get(credential_id)
        if res is None:
            return  # deleted: its monitors' own changes remove it after them
        if res.version != self.credentials[credential_id].version:
            self.credentials[credential_id] = res
            delta.credentials[credential_id] = res

    def secret_values(self, monitor_id: str) -> dict[str, str]:
        """The secret values resolved for a held monitor's credentials, each with the placeholder to show instead
        (to scrub its results with; empty for a monitor not held)."""
        held = self.monitors.get(monitor_id)
        values: dict[str, str] = {}
        for cid in held.monitor.credential_ids if held is not None else ():
            if (cred := self.credentials.get(cid)) is not None:
                values.update(secrets_of(cid, cred.details))
        return values


class PushTimer:
    """For one engine stream: when the engine ACKs a revision, how long ago each delta the ACK newly covers was
    committed. Only deltas after the initial sync count (a resync is not a push)."""

    def __init__(self, state: LocationState, synced_revision: int, observe: Callable[[float], None]) -> None:
        self._state = state
        self._acked = synced_revision
        self._observe = observe

    def acked(self, revision: int) -> None:
        now = time.monotonic()
        for delivered, committed_at in reversed(self._state.delivered):
            if delivered <= self._acked:
                break
            if delivered <= revision:
                self._observe(max(0.0, now - committed_at))
        self._acked = max(self._acked, revision)
