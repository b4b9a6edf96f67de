"""What the engines of one location should hold, kept current from the change log.

One ``LocationState`` per location with connected engines on this replica. It is built from a consistent snapshot
(REPEATABLE READ, with the change-log head of that snapshot) and then advanced by change rows, each turned into a
``Delta`` that every subscribed stream's outbox receives. Credentials are resolved (decrypted) here, once per
location and change, never per engine or per execution; an engine holds only the credentials its monitors use.

Every step is all-or-nothing: a step first reads what it needs from the database and only then, without awaiting
anything more, changes the state, advances its revision and hands the delta out. A read that fails leaves the state
exactly as it was, at its old revision, so the follower retries the same change. A state whose follower lost the
database cannot prove it missed nothing and is marked stale; it is rebuilt from a snapshot (and its engines sent
the difference) before it serves again. The digest of what each engine should hold is kept here as well, for the
anti-entropy check (``credvault.held_digest``).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Iterable, Mapping

from credvault.held_digest import HeldDigest
from credvault.secret_scrub import secrets_of
from credvault.v1 import engine_pb2 as epb
from credvault.v1 import monitors_pb2 as mpb
from vault_service import contents_codec
from vault_service.crypto import Keyring
from vault_service.models import ChangeKind
from vault_service.push.outbox import Delta, Item, Key, Outbox
from vault_service.storage.changes import Change
from vault_service.storage.pool import Store
from vault_service.storage.queries import Queries

log = logging.getLogger(__name__)

MONITOR = epb.RESOURCE_KIND_MONITOR
CREDENTIAL = epb.RESOURCE_KIND_CREDENTIAL
# Recent deltas whose commit time is kept for push-latency metrics: a size (a nearby one is equivalent).
DELIVERED_KEPT = 1024  # pragma: no mutate: NumberReplacer
Rejected = Mapping[str, tuple[int, str]]  # monitor id -> (rejected version, reason), per engine


def _removal(kind: int, resource_id: str, reason: int) -> tuple[Key, epb.Removal]:
    return (kind, resource_id), epb.Removal(kind=kind, id=resource_id, reason=reason)  # type: ignore[arg-type]


def removal_reason(monitor: mpb.Monitor | None, location_id: str) -> int:
    """Why an engine of ``location_id`` must no longer hold this monitor."""
    if monitor is None:
        return epb.REMOVAL_REASON_DELETED
    if not monitor.enabled:
        # CREDENTIAL_DELETED is the highest DisabledReason (2), and a small int (one object per value in CPython):
        # >= and is are == on it. Equivalent.
        if monitor.disabled_reason == mpb.DISABLED_REASON_CREDENTIAL_DELETED:  # pragma: no mutate: Eq_GtE, Eq_Is
            return epb.REMOVAL_REASON_CREDENTIAL_DELETED
        return epb.REMOVAL_REASON_DISABLED
    if location_id not in monitor.location_ids:
        return epb.REMOVAL_REASON_LOCATION_CHANGED
    return epb.REMOVAL_REASON_CREDENTIAL_DELETED  # enabled, here, but a credential is gone


class LocationState:
    def __init__(self, location_id: str, keyring: Keyring) -> None:
        self.location_id = location_id
        self._keyring = keyring
        # Revisions start at 1 and load() sets it before any change: -1 is the same. Equivalent.
        self.revision = 0  # pragma: no mutate: NumberReplacer
        # Read them; change them only through _put_*/_pop_*, which keep _users and the digest in step.
        self.monitors: dict[str, epb.MonitorResource] = {}
        self.credentials: dict[str, epb.CredentialResource] = {}
        self._users: dict[str, set[str]] = {}  # credential id -> ids of held monitors that use it
        self._digest = HeldDigest()
        # The follower lost the database: rebuild from a snapshot before serving again. (A new state is loaded, which
        # clears it, before anything reads it: True here is the same. Equivalent.)
        self.stale = False  # pragma: no mutate: ReplaceFalseWithTrue
        self.subscribers: set[Outbox] = set()
        # (revision, commit time on the monotonic clock) of the recent deltas handed to the outboxes
        self.delivered: collections.deque[tuple[int, float]] = collections.deque(maxlen=DELIVERED_KEPT)

    # --- the held set and its digest ------------------------------------------------------------------------------

    def _put_credential(self, res: epb.CredentialResource) -> None:
        old = self.credentials.get(res.id)
        if old is not None:
            self._digest.remove(CREDENTIAL, res.id, old.version)
        self.credentials[res.id] = res
        self._digest.add(CREDENTIAL, res.id, res.version)

    def _pop_credential(self, credential_id: str) -> bool:
        old = self.credentials.pop(credential_id, None)
        if old is None:
            # Unreachable while the state holds every credential of its held monitors (each caller pops one a held
            # monitor used): True here is the same. Equivalent, kept as a guard.
            return False  # pragma: no mutate: ReplaceFalseWithTrue
        self._digest.remove(CREDENTIAL, credential_id, old.version)
        return True

    def _put_monitor(self, m: mpb.Monitor) -> epb.MonitorResource:
        old = self.monitors.get(m.id)
        if old is not None:
            self._digest.remove(MONITOR, m.id, old.version)
        res = self.monitors[m.id] = epb.MonitorResource(id=m.id, version=m.revision, monitor=m)
        self._digest.add(MONITOR, m.id, m.revision)
        for cid in m.credential_ids:
            self._users.setdefault(cid, set()).add(m.id)
        return res

    def _pop_monitor(self, monitor_id: str) -> epb.MonitorResource | None:
        old = self.monitors.pop(monitor_id, None)
        if old is not None:
            self._digest.remove(MONITOR, monitor_id, old.version)
        return old

    def _unuse(self, monitor_id: str, credential_ids: Iterable[str], delta: Delta) -> None:
        """``monitor_id`` no longer uses these credentials: drop those no held monitor uses any more."""
        for cid in credential_ids:
            users = self._users.get(cid, set())
            users.discard(monitor_id)
            if not users:
                self._users.pop(cid, None)
                if self._pop_credential(cid):
                    key, removal = _removal(CREDENTIAL, cid, epb.REMOVAL_REASON_UNREFERENCED)
                    delta.removals[key] = removal

    def expected_digest(self, rejected: Rejected) -> int:
        """The digest of what an engine with these rejections should hold: everything, less each monitor whose
        held version it rejected (it keeps an older version of those, or none)."""
        skipped = [
            (MONITOR, mid, version)
            for mid, (version, _) in rejected.items()
            if (held := self.monitors.get(mid)) is not None and held.version == version
        ]
        return self._digest.without(skipped)

    # --- building -------------------------------------------------------------------------------------------------

    async def load(self, store: Store) -> None:
        """Builds the state from a snapshot (a new state has no subscribers to tell)."""
        await self.rebuild(store)
        log.info(
            "location %s: %d monitors, %d credentials at revision %d",
            self.location_id,
            len(self.monitors),
            len(self.credentials),
            self.revision,
        )

    async def rebuild(self, store: Store) -> Delta | None:
        """Replaces the state with a snapshot of the database and hands the difference to the subscribers."""
        held_ids = list(self.monitors)
        async with store.snapshot() as tx:
            revision = await tx.head_revision()
            monitors = await tx.enabled_monitors_in(self.location_id)
            needed = sorted({c for m in monitors for c in m.credential_ids})
            creds = await self._resolve(tx, needed)
            wanted = {m.id for m in monitors}
            gone = await tx.monitors_by_id([mid for mid in held_ids if mid not in wanted])
        # from here on nothing awaits: the state moves to the snapshot in one step
        delta = Delta(revision, {}, {}, {})
        runnable = {m.id: m for m in monitors if all(c in creds for c in m.credential_ids)}
        for mid in [mid for mid in self.monitors if mid not in runnable]:
            self._pop_monitor(mid)
            reason = removal_reason(gone.get(mid), self.location_id) if mid not in wanted else None
            key, removal = _removal(MONITOR, mid, reason or epb.REMOVAL_REASON_CREDENTIAL_DELETED)
            delta.removals[key] = removal
        used = {c for m in runnable.values() for c in m.credential_ids}
        for cid in used:
            old, new = self.credentials.get(cid), creds[cid]
            if old is None or old.version != new.version:
                self._put_credential(new)
                delta.credentials[cid] = new
        for m in runnable.values():
            if (old_m := self.monitors.get(m.id)) is None or old_m.version != m.revision:
                delta.monitors[m.id] = self._put_monitor(m)
        for cid in [cid for cid in self.credentials if cid not in used]:  # held, but no monitor uses it any more
            self._pop_credential(cid)
            key, removal = _removal(CREDENTIAL, cid, epb.REMOVAL_REASON_UNREFERENCED)
            delta.removals[key] = removal
        self._users = {}
        self._digest.clear()  # recomputed, not adjusted: a rebuild also repairs the digest itself
        for res in self.monitors.values():
            self._digest.add(MONITOR, res.id, res.version)
            for cid in res.monitor.credential_ids:
                self._users.setdefault(cid, set()).add(res.id)
        for cred in self.credentials.values():
            self._digest.add(CREDENTIAL, cred.id, cred.version)
        self.revision = max(self.revision, revision)
        self.stale = False
        return self._deliver(delta, None)

    async def _resolve(self, tx: Queries, credential_ids: list[str]) -> dict[str, epb.CredentialResource]:
        out = {}
        for cid, (cred, sealed, version) in (await tx.credentials_sealed(credential_ids)).items():
            if cred.sync_status is not None and cred.sync_status.last_success is None:
                # Synchronized from an external vault and never read from it yet: its stored contents are an empty
                # placeholder. Engines get it without contents, hold nothing and reject the monitors that need it
                # (shown in engines list), until the first synchronization writes a version with the values.
                out[cid] = epb.CredentialResource(id=cid, version=version, credential_version=cred.version)
                continue
            secret = contents_codec.decode(self._keyring.open(cid, cred.version, sealed))
            out[cid] = epb.CredentialResource(
                id=cid, version=version, details=contents_codec.to_details(secret), credential_version=cred.version
            )
        return out

    def _release_monitor(self, monitor_id: str, delta: Delta, reason: int) -> None:
        held = self._pop_monitor(monitor_id)
        if held is None:
            return
        key, removal = _removal(MONITOR, monitor_id, reason)
        delta.removals[key] = removal
        self._unuse(monitor_id, held.monitor.credential_ids, delta)

    # --- advancing ------------------------------------------------------------------------------------------------

    async def apply(self, store: Store, change: Change) -> Delta | None:
        """Advance by one change row; returns what the engines must be told (None if nothing). If the database read
        fails, nothing changed: the state stays at its revision and the same change can be applied again."""
        if change.revision <= self.revision:
            return None
        delta = Delta(change.revision, {}, {}, {})
        # In each case the database is read first; from its end on nothing awaits: state, revision and delta advance
        # together.
        match change.kind:
            case ChangeKind.MONITOR if self.location_id in change.location_ids:
                async with store.autocommit() as tx:
                    m, resolved = await self._read_monitor(tx, change.object_id)
                self._apply_monitor(change.object_id, m, resolved, delta)
            case ChangeKind.CREDENTIAL if (
                self.location_id in change.location_ids and change.object_id in self.credentials
            ):
                async with store.autocommit() as tx:
                    resolved = await self._resolve(tx, [change.object_id])
                self._apply_credential(change.object_id, resolved, delta)
            case _:  # not for this location, an engine's change, or a credential no held monitor uses: nothing to do
                pass
        self.revision = change.revision
        return self._deliver(delta, change.committed_at)

    def _deliver(self, delta: Delta, committed_at: float | None) -> Delta | None:
        if delta.empty():
            return None
        for outbox in self.subscribers:
            outbox.put(delta)
        if committed_at is not None:
            self.delivered.append((delta.revision, committed_at))
        return delta

    async def _read_monitor(
        self, tx: Queries, monitor_id: str
    ) -> tuple[mpb.Monitor | None, dict[str, epb.CredentialResource]]:
        """The monitor's row, and the credentials it uses that are not held yet, resolved."""
        m = (await tx.monitors_by_id([monitor_id])).get(monitor_id)
        if m is None or not m.enabled or self.location_id not in m.location_ids:
            return m, {}
        previous = self.monitors.get(monitor_id)
        # held at this revision: nothing to resolve (is for ==, false for equal large ints, only resolves what
        # _apply_monitor then ignores. Equivalent.)
        if previous is not None and previous.version == m.revision:  # pragma: no mutate: Eq_Is
            return m, {}
        return m, await self._resolve(tx, [c for c in m.credential_ids if c not in self.credentials])

    def _apply_monitor(
        self, monitor_id: str, m: mpb.Monitor | None, resolved: dict[str, epb.CredentialResource], delta: Delta
    ) -> None:
        if m is None or not m.enabled or self.location_id not in m.location_ids:
            self._release_monitor(monitor_id, delta, removal_reason(m, self.location_id))
            return
        previous = self.monitors.get(monitor_id)
        if previous is not None and previous.version == m.revision:
            return
        if any(c not in self.credentials and c not in resolved for c in m.credential_ids):
            # a credential vanished meanwhile: the monitor cannot run
            self._release_monitor(monitor_id, delta, epb.REMOVAL_REASON_CREDENTIAL_DELETED)
            return
        for res in resolved.values():
            self._put_credential(res)
        delta.credentials.update(resolved)
        delta.monitors[monitor_id] = self._put_monitor(m)
        old_refs = set(previous.monitor.credential_ids) if previous is not None else set()
        self._unuse(monitor_id, old_refs - set(m.credential_ids), delta)  # what the new version no longer uses

    def _apply_credential(self, credential_id: str, resolved: dict[str, epb.CredentialResource], delta: Delta) -> None:
        res = resolved.get(credential_id)
        if res is None or credential_id not in self.credentials:
            return  # deleted: its monitors' own changes remove it after them
        if res.version != self.credentials[credential_id].version:
            self._put_credential(res)
            delta.credentials[credential_id] = res

    # --- what one engine must be sent -----------------------------------------------------------------------------

    def gone_monitors(self, held: Iterable[epb.HeldResource]) -> list[str]:
        """The monitors an engine holds that it must no longer hold (their removal reasons need a database read)."""
        return [h.id for h in held if h.kind == MONITOR and h.id not in self.monitors]

    def diff(self, held: Iterable[epb.HeldResource], rejected: Rejected, reasons: Mapping[str, int]) -> list[Item]:
        """Exactly the difference between what an engine holds and what it should hold, never re-sending a version
        it rejected. ``reasons``: why each of its gone monitors goes (from :meth:`gone_monitors`)."""
        held_monitors: dict[str, int] = {}
        held_creds: dict[str, int] = {}
        for h in held:
            # A kind is a small int, one object per value in CPython: is for == is the same. Equivalent.
            (held_monitors if h.kind == MONITOR else held_creds)[h.id] = h.version  # pragma: no mutate: Eq_Is
        items: list[Item] = [c for cid, c in self.credentials.items() if held_creds.get(cid) != c.version]
        items += [
            m
            for mid, m in self.monitors.items()
            if held_monitors.get(mid) != m.version and rejected.get(mid, (None, ""))[0] != m.version
        ]
        items += [
            _removal(MONITOR, mid, reasons.get(mid, epb.REMOVAL_REASON_UNSPECIFIED))[1]
            for mid in held_monitors
            if mid not in self.monitors
        ]
        items += [
            _removal(CREDENTIAL, cid, epb.REMOVAL_REASON_UNREFERENCED)[1]
            for cid in held_creds
            if cid not in self.credentials
        ]
        return items

    def revocation(self) -> list[Item]:
        """Everything the location's engines hold, as removals: what a revoked engine is told before it is refused."""
        return [
            *(_removal(MONITOR, i, epb.REMOVAL_REASON_ENGINE_REVOKED)[1] for i in self.monitors),
            *(_removal(CREDENTIAL, i, epb.REMOVAL_REASON_ENGINE_REVOKED)[1] for i in self.credentials),
        ]

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
                # deltas are kept in revision order: every earlier one is acked too (continue finds none). Equivalent.
                break  # pragma: no mutate: ReplaceBreakWithContinue
            if delivered <= revision:
                self._observe(max(0.0, now - committed_at))
        self._acked = max(self._acked, revision)
