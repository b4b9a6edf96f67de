"""Monitors, locations and engines: the domain rules between the Monitors servicer and storage.

Every change that alters what an engine should hold appends to the change log in the same transaction.
"""

from __future__ import annotations

import secrets

from credvault.formats import MONITOR_ID, MONITOR_ID_PREFIX, SLUG
from credvault.v1 import monitors_pb2 as mpb
from vault_service import contents_codec, monitor_rules, policy, validation
from vault_service.crypto import Keyring
from vault_service.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from vault_service.models import (
    ChangeKind,
    CredentialScope,
    EngineStatus,
    Page,
    Principal,
    TokenScope,
    UsernamePasswordSecret,
)
from vault_service.pagination import decode_page_token, encode_page_token, page_size
from vault_service.storage.pool import Store
from vault_service.storage.queries import Queries


def new_monitor_id() -> str:
    return MONITOR_ID_PREFIX + secrets.token_hex(8).upper()


def _check_monitor_id(monitor_id: str) -> str:
    if not MONITOR_ID.match(monitor_id):
        raise InvalidArgument("id", "must be SYNTHETIC_TEST- followed by 16 upper-case hex digits")
    return monitor_id


async def _locked_for_edit(tx: Queries, principal: Principal, monitor_id: str) -> mpb.Monitor:
    """The monitor, locked for the rest of the transaction, once the principal may edit it where it is now."""
    current = await tx.get_monitor(monitor_id, for_update=True)
    if current is None:
        raise NotFound(f"monitor {monitor_id} not found")
    policy.require_monitor_edit(principal, current.management_zone)
    return current


def check_slug(field: str, value: str) -> str:
    if not SLUG.match(value):
        raise InvalidArgument(field, "must be 1-63 lower-case letters, digits and '-', not starting or ending in '-'")
    return value


class MonitorService:
    def __init__(self, store: Store, keyring: Keyring, *, engine_lease_seconds: float) -> None:
        """``engine_lease_seconds``: an engine shows connected while the replica holding its stream renews this
        lease (any replica's, so also on one without an engine port)."""
        self._store = store
        self._keyring = keyring
        self._engine_lease = engine_lease_seconds

    # --- locations and engines -----------------------------------------------------------------------------------

    async def create_location(self, principal: Principal, location_id: str, name: str) -> mpb.Location:
        policy.require_locations_admin(principal)
        check_slug("location.id", location_id)
        name = validation.text("location.name", name or location_id, max_len=validation.MAX_NAME, required=True)
        async with self._store.transaction() as tx:
            created = await tx.insert_location(location_id, name)
            await tx.insert_audit(principal.username, principal.token_id, "location.create", location_id, "ok")
        out = mpb.Location(id=location_id, name=name)
        out.create_time.FromDatetime(created)
        return out

    async def list_locations(self, principal: Principal) -> list[mpb.Location]:
        policy.require_scope(principal, TokenScope.SYNTHETIC_MONITORS_READ)
        async with self._store.autocommit() as tx:
            rows = await tx.list_locations()
        out = []
        for loc_id, name, created in rows:
            loc = mpb.Location(id=loc_id, name=name)
            loc.create_time.FromDatetime(created)
            out.append(loc)
        return out

    async def delete_location(self, principal: Principal, location_id: str) -> None:
        policy.require_locations_admin(principal)
        check_slug("id", location_id)
        async with self._store.transaction() as tx:
            if await tx.count_monitors_in(location_id):
                raise FailedPrecondition(f"location {location_id!r} still has monitors; move or delete them first")
            if not await tx.delete_location(location_id):
                raise NotFound(f"location {location_id!r} not found")
            await tx.append_change(ChangeKind.ENGINE, f"{location_id}/*", [location_id])
            await tx.insert_audit(principal.username, principal.token_id, "location.delete", location_id, "ok")

    async def add_engine(self, principal: Principal, location_id: str, engine_id: str) -> EngineStatus:
        policy.require_locations_admin(principal)
        check_slug("location_id", location_id)
        check_slug("engine_id", engine_id)
        async with self._store.transaction() as tx:
            if not await tx.existing_locations([location_id]):
                raise NotFound(f"location {location_id!r} not found")
            await tx.insert_engine(location_id, engine_id)
            await tx.insert_audit(
                principal.username, principal.token_id, "engine.add", f"{location_id}/{engine_id}", "ok"
            )
            return (await tx.list_engines(location_id, engine_id, lease_seconds=self._engine_lease))[0]

    async def list_engines(self, principal: Principal, location_id: str) -> list[tuple[EngineStatus, int]]:
        """The engines, each with the head revision of its location (the last change that concerned it)."""
        policy.require_scope(principal, TokenScope.SYNTHETIC_MONITORS_READ)
        if location_id:
            check_slug("location_id", location_id)
        async with self._store.autocommit() as tx:
            rows = await tx.list_engines(location_id or None, lease_seconds=self._engine_lease)
            heads = {loc: await tx.location_head(loc) for loc in {r.location_id for r in rows}}
        return [(r, heads[r.location_id]) for r in rows]

    async def revoke_engine(self, principal: Principal, location_id: str, engine_id: str) -> EngineStatus:
        policy.require_locations_admin(principal)
        check_slug("location_id", location_id)
        check_slug("engine_id", engine_id)
        async with self._store.transaction() as tx:
            if not await tx.revoke_engine(location_id, engine_id):
                raise NotFound(f"engine {engine_id!r} of location {location_id!r} not found")
            await tx.append_change(ChangeKind.ENGINE, f"{location_id}/{engine_id}", [location_id])
            await tx.insert_audit(
                principal.username, principal.token_id, "engine.revoke", f"{location_id}/{engine_id}", "ok"
            )
            return (await tx.list_engines(location_id, engine_id, lease_seconds=self._engine_lease))[0]

    # --- monitors ------------------------------------------------------------------------------------------------

    async def _check_credentials(
        self, tx: Queries, principal: Principal, monitor: mpb.Monitor, *, must_access: set[str]
    ) -> None:
        """Every referenced credential exists, is SYNTHETIC-scoped, of a type its use allows, and has a username
        the monitor type supports; those in ``must_access`` must be usable by the editor."""
        for cred_id, uses in sorted(monitor_rules.credential_uses(monitor).items()):
            found = await tx.get_credential_sealed(cred_id)
            if found is None or not policy.can_see(principal.user, found[0]):
                raise InvalidArgument("monitor.credentials", f"credential {cred_id} does not exist")
            cred, sealed = found
            if cred_id in must_access and not policy.is_usable_by(cred, principal.username):
                raise PermissionDenied(
                    f"you have no access to credential {cred_id}: use credentials you own, that are shared with you,"
                    " or that are public"
                )
            if CredentialScope.SYNTHETIC not in cred.scopes:
                raise InvalidArgument("monitor.credentials", f"credential {cred_id} lacks the SYNTHETIC scope")
            for use in uses:
                if cred.type not in monitor_rules.ALLOWED_TYPES[use]:
                    raise InvalidArgument(
                        "monitor.credentials", f"credential {cred_id} is {cred.type.value}, unusable for {use.value}"
                    )
            if uses & monitor_rules.USERNAME_USES:
                secret = contents_codec.decode(self._keyring.open(cred.id, cred.version, sealed))
                assert isinstance(secret, UsernamePasswordSecret)
                monitor_rules.check_username_format(monitor.type, uses, secret.username, cred_id)

    async def create(self, principal: Principal, monitor: mpb.Monitor) -> mpb.Monitor:
        m = monitor_rules.validate(monitor)
        policy.require_monitor_edit(principal, m.management_zone)
        m.id = new_monitor_id()
        m.disabled_reason = mpb.DISABLED_REASON_UNSPECIFIED if m.enabled else mpb.DISABLED_REASON_BY_USER
        async with self._store.transaction() as tx:
            await self._check_locations(tx, list(m.location_ids))
            await self._check_credentials(tx, principal, m, must_access=set(m.credential_ids))
            stored = await tx.insert_monitor(m, principal.username)
            if stored.enabled:
                await tx.append_change(ChangeKind.MONITOR, stored.id, list(stored.location_ids))
            await tx.insert_audit(principal.username, principal.token_id, "monitor.create", stored.id, "ok")
        return stored

    @staticmethod
    async def _check_locations(tx: Queries, location_ids: list[str]) -> None:
        missing = set(location_ids) - await tx.existing_locations(location_ids)
        if missing:
            raise InvalidArgument("monitor.location_ids", f"unknown locations: {', '.join(sorted(missing))}")

    async def get(self, principal: Principal, monitor_id: str) -> mpb.Monitor:
        _check_monitor_id(monitor_id)
        policy.require_scope(principal, TokenScope.SYNTHETIC_MONITORS_READ)
        async with self._store.autocommit() as tx:
            m = await tx.get_monitor(monitor_id)
        zones = policy.monitor_zones_visible(principal.user)
        if m is None or (zones is not None and m.management_zone not in zones):
            raise NotFound(f"monitor {monitor_id} not found")
        return m

    async def list(
        self, principal: Principal, location_id: str, credential_id: str, size: int, page_token: str
    ) -> Page[mpb.Monitor]:
        policy.require_scope(principal, TokenScope.SYNTHETIC_MONITORS_READ)
        if location_id:
            check_slug("location_id", location_id)
        if credential_id:
            monitor_rules.check_credential_id("credential_id", credential_id)
        limit = page_size(size)
        zones = policy.monitor_zones_visible(principal.user)
        query = ("monitors", principal.username, location_id, credential_id)
        after = decode_page_token(page_token, query, 1)[0] if page_token else ""
        items: list[mpb.Monitor] = []
        async with self._store.autocommit() as tx:
            while len(items) <= limit:
                batch = await tx.list_monitors(location_id or None, credential_id or None, after, limit + 1)
                items += [m for m in batch if zones is None or m.management_zone in zones]
                if len(batch) <= limit:
                    break
                after = batch[-1].id
        more = len(items) > limit
        items = items[:limit]
        return Page(items, encode_page_token(query, items[-1].id) if more else "", len(items))

    async def update(self, principal: Principal, monitor: mpb.Monitor, expected_version: int) -> mpb.Monitor:
        monitor_id = _check_monitor_id(monitor.id)
        new = monitor_rules.validate(monitor)
        async with self._store.transaction() as tx:
            current = await tx.get_monitor(monitor_id, for_update=True)
            if current is None:
                raise NotFound(f"monitor {monitor_id} not found")
            policy.require_monitor_edit(principal, current.management_zone, new.management_zone)
            if expected_version and expected_version != current.version:
                raise Aborted(f"monitor {monitor_id} is at version {current.version}, not {expected_version}")
            await self._check_restricted_edit(tx, principal, current, new)
            await self._check_locations(tx, list(new.location_ids))
            old_refs, new_refs = set(current.credential_ids), set(new.credential_ids)
            await self._check_credentials(tx, principal, new, must_access=new_refs if new_refs != old_refs else set())
            if new.enabled:
                new.disabled_reason = mpb.DISABLED_REASON_UNSPECIFIED
            elif not current.enabled:
                new.disabled_reason = current.disabled_reason
            else:
                new.disabled_reason = mpb.DISABLED_REASON_BY_USER
            stored = await tx.update_monitor(new, current.version)
            assert stored is not None  # the row is locked
            await tx.append_change(ChangeKind.MONITOR, monitor_id, [*current.location_ids, *stored.location_ids])
            await tx.insert_audit(principal.username, principal.token_id, "monitor.update", monitor_id, "ok")
        return stored

    async def _check_restricted_edit(
        self, tx: Queries, principal: Principal, current: mpb.Monitor, new: mpb.Monitor
    ) -> None:
        """With a credential the editor cannot access, only name, frequency, locations, validation and the enabled
        flag may change, and credentials only by replacing all of them with accessible ones."""
        inaccessible = []
        for cred_id in current.credential_ids:
            cred = await tx.get_credential(cred_id)
            if cred is not None and not policy.is_usable_by(cred, principal.username):
                inaccessible.append(cred_id)
        if not inaccessible:
            return
        if monitor_rules.protected_part(current) != monitor_rules.protected_part(new):
            raise PermissionDenied(
                f"this monitor uses credentials you have no access to ({', '.join(inaccessible)}): you may change its"
                " name, frequency, locations, validation and enabled flag, or replace all its credentials, but not"
                " its URL, method, headers, body, events or management zone"
            )
        new_refs = set(new.credential_ids)
        if new_refs != set(current.credential_ids) and new_refs & set(inaccessible):
            raise PermissionDenied("replace all credentials you have no access to, or none")

    async def set_enabled(self, principal: Principal, monitor_id: str, enabled: bool) -> mpb.Monitor:
        _check_monitor_id(monitor_id)
        async with self._store.transaction() as tx:
            current = await _locked_for_edit(tx, principal, monitor_id)
            if current.enabled == enabled:
                return current
            if enabled:  # however it was disabled: a credential may have been deleted meanwhile
                for cred_id in current.credential_ids:
                    if await tx.get_credential(cred_id) is None:
                        raise FailedPrecondition(
                            f"credential {cred_id} was deleted: update the monitor to use an existing credential first"
                        )
            current.enabled = enabled
            current.disabled_reason = mpb.DISABLED_REASON_UNSPECIFIED if enabled else mpb.DISABLED_REASON_BY_USER
            stored = await tx.update_monitor(current, current.version)
            assert stored is not None
            await tx.append_change(ChangeKind.MONITOR, monitor_id, list(stored.location_ids))
            action = "monitor.enable" if enabled else "monitor.disable"
            await tx.insert_audit(principal.username, principal.token_id, action, monitor_id, "ok")
        return stored

    async def delete(self, principal: Principal, monitor_id: str) -> None:
        _check_monitor_id(monitor_id)
        async with self._store.transaction() as tx:
            current = await _locked_for_edit(tx, principal, monitor_id)
            await tx.delete_monitor(monitor_id)
            await tx.append_change(ChangeKind.MONITOR, monitor_id, list(current.location_ids))
            await tx.insert_audit(principal.username, principal.token_id, "monitor.delete", monitor_id, "ok")
