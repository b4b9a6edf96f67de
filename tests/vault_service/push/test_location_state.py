"""What a location's engines should hold (vault_service.push.location_state), step by step against the real
database: credentials shared by monitors stay while one uses them, the digest follows every step, a rebuild replaces
what differs in either direction, a deleted credential's change is harmless, what an engine holds of the wrong kind
is not a monitor, and push latency counts each delta once. The change rows come from the real change log and are
fed by the test, so each step is seen alone. Found by the mutation check (scripts/mutation): each test here fails on
a mutant that every other test let through."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from credvault.held_digest import HeldDigest
from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import engine_pb2 as epb
from credvault.v1 import monitors_pb2 as mpb
from tests.conftest import Client
from tests.helpers import SYN, create_req, up
from tests.vault_service.push.test_convergence import LOCATION, create_monitor, setup_location
from vault_service.crypto import Keyring
from vault_service.models import ChangeKind
from vault_service.push.location_state import CREDENTIAL, MONITOR, LocationState, PushTimer, removal_reason
from vault_service.push.outbox import Delta
from vault_service.server import RunningVault
from vault_service.storage.changes import Change
from vault_service.storage.queries import Queries

UNREFERENCED = epb.REMOVAL_REASON_UNREFERENCED


async def loaded(vault: RunningVault, keyring: Keyring) -> LocationState:
    state = LocationState(LOCATION, keyring)
    await state.load(vault.store)
    return state


async def catch_up(state: LocationState, vault: RunningVault) -> list[Delta]:
    """Applies every change after the state's revision, one by one; returns the deltas."""
    async with vault.store.autocommit() as tx:
        changes = await tx.changes_since(state.revision, 1000)
    deltas = [await state.apply(vault.store, change) for change in changes]
    return [d for d in deltas if d is not None]


def recomputed_digest(state: LocationState) -> int:
    digest = HeldDigest()
    for m in state.monitors.values():
        digest.add(MONITOR, m.id, m.version)
    for c in state.credentials.values():
        digest.add(CREDENTIAL, c.id, c.version)
    return digest.without([])


async def pair(admin: Client, name: str = "pair") -> str:
    created: str = (await admin.CreateCredential(create_req(name, up("alice", "pw-1")))).credential.id
    return created


async def overwrite(admin: Client, credential_id: str, password: str) -> None:
    await admin.OverwriteCredential(cpb.OverwriteCredentialRequest(id=credential_id, contents=up("alice", password)))


async def test_a_credential_stays_while_a_monitor_added_by_a_change_still_uses_it(
    admin_client: Client, push_vault: RunningVault, keyring: Keyring
) -> None:
    await setup_location(admin_client)
    cred = await pair(admin_client)
    first = await create_monitor(admin_client, cred, "first")
    state = await loaded(push_vault, keyring)
    second = await create_monitor(admin_client, cred, "second")
    await catch_up(state, push_vault)  # the second monitor comes by a change, not by the load
    assert set(state.monitors) == {first.id, second.id}
    for gone, left in ((first, {cred}), (second, set())):
        await admin_client.DeleteMonitor(mpb.DeleteMonitorRequest(id=gone.id))
        (delta,) = await catch_up(state, push_vault)
        assert set(state.credentials) == left
        unreferenced = {key for key, r in delta.removals.items() if r.reason == UNREFERENCED}
        assert unreferenced == ({(CREDENTIAL, cred)} if not left else set())


async def test_a_credential_stays_while_a_monitor_held_since_a_rebuild_still_uses_it(
    admin_client: Client, push_vault: RunningVault, keyring: Keyring
) -> None:
    await setup_location(admin_client)
    cred = await pair(admin_client)
    first = await create_monitor(admin_client, cred, "first")
    await create_monitor(admin_client, cred, "second")
    state = await loaded(push_vault, keyring)  # both held since the snapshot
    await admin_client.DeleteMonitor(mpb.DeleteMonitorRequest(id=first.id))
    await catch_up(state, push_vault)
    assert set(state.credentials) == {cred}


async def test_the_digest_follows_every_step(admin_client: Client, push_vault: RunningVault, keyring: Keyring) -> None:
    """Each step adjusts the digest (a new revision of a held monitor or credential takes the old one out); it must
    equal the digest computed from scratch, which is what an engine holding exactly this computes."""
    await setup_location(admin_client)
    cred = await pair(admin_client)
    state = await loaded(push_vault, keyring)
    monitor = await create_monitor(admin_client, cred)
    await catch_up(state, push_vault)
    assert state.expected_digest({}) == recomputed_digest(state)
    changed = mpb.Monitor()
    changed.CopyFrom(monitor)
    changed.name = "renamed"
    await admin_client.UpdateMonitor(mpb.UpdateMonitorRequest(monitor=changed))
    await overwrite(admin_client, cred, "pw-2")
    assert len(await catch_up(state, push_vault)) == 2
    assert state.expected_digest({}) == recomputed_digest(state)
    await admin_client.DeleteMonitor(mpb.DeleteMonitorRequest(id=monitor.id))  # a removal takes it out too
    assert len(await catch_up(state, push_vault)) == 1
    assert not state.monitors
    assert state.expected_digest({}) == recomputed_digest(state)


async def test_only_a_rejection_of_the_held_revision_leaves_a_monitor_out_of_the_digest(
    admin_client: Client, push_vault: RunningVault, keyring: Keyring
) -> None:
    await setup_location(admin_client)
    monitor = await create_monitor(admin_client, await pair(admin_client))
    state = await loaded(push_vault, keyring)
    held = state.monitors[monitor.id].version
    everything = state.expected_digest({})
    assert state.expected_digest({monitor.id: (held - 1, "an older one")}) == everything
    assert state.expected_digest({monitor.id: (held + 1, "a newer one")}) == everything
    assert state.expected_digest({monitor.id: (held, "this one")}) != everything


async def test_a_rebuild_replaces_every_revision_that_differs_either_way(
    admin_client: Client, push_vault: RunningVault, keyring: Keyring
) -> None:
    """Held revisions newer than the database's (as after a restore) and older ones (a change the state missed)
    are both replaced by the snapshot's, and sent."""
    await setup_location(admin_client)
    cred = await pair(admin_client)
    monitor = await create_monitor(admin_client, cred)
    state = await loaded(push_vault, keyring)
    ahead = epb.CredentialResource()
    ahead.CopyFrom(state.credentials[cred])
    ahead.version += 1000
    state.credentials[cred] = ahead
    changed = mpb.Monitor()
    changed.CopyFrom(monitor)
    changed.name = "missed"
    await admin_client.UpdateMonitor(mpb.UpdateMonitorRequest(monitor=changed))  # not applied: missed
    delta = await state.rebuild(push_vault.store)
    assert delta is not None
    assert set(delta.credentials) == {cred}
    assert delta.credentials[cred].version == ahead.version - 1000
    assert set(delta.monitors) == {monitor.id}
    assert delta.monitors[monitor.id].monitor.name == "missed"
    assert state.expected_digest({}) == recomputed_digest(state)


async def test_a_held_monitor_ahead_of_the_database_is_read_with_its_credentials(
    admin_client: Client, push_vault: RunningVault, keyring: Keyring
) -> None:
    """A change to a monitor whose held revision is newer than the database's (a restore) is applied as any other:
    the credential it now uses is resolved and sent with it."""
    await setup_location(admin_client)
    first, second = await pair(admin_client, "first"), await pair(admin_client, "second")
    monitor = await create_monitor(admin_client, first)
    state = await loaded(push_vault, keyring)
    state.monitors[monitor.id].version += 1000
    moved = mpb.Monitor()
    moved.CopyFrom(monitor)
    moved.http.requests[0].authentication.basic_credential_id = second
    await admin_client.UpdateMonitor(mpb.UpdateMonitorRequest(monitor=moved))
    (delta,) = await catch_up(state, push_vault)
    assert set(delta.monitors) == {monitor.id}
    assert set(delta.credentials) == {second}
    assert set(state.credentials) == {second}


async def test_the_change_of_a_credential_deleted_since_changes_nothing(
    admin_client: Client, push_vault: RunningVault, keyring: Keyring
) -> None:
    """An overwrite's row read after the credential was deleted (its monitor still held: the monitor's row comes
    later): nothing to resolve, nothing sent; the monitor's change then removes both."""
    await setup_location(admin_client)
    cred = await pair(admin_client)
    monitor = await create_monitor(admin_client, cred)
    state = await loaded(push_vault, keyring)
    await overwrite(admin_client, cred, "pw-2")
    await admin_client.DeleteCredential(cpb.DeleteCredentialRequest(id=cred))
    async with push_vault.store.autocommit() as tx:
        changes = await tx.changes_since(state.revision, 1000)
    (overwritten,) = [c for c in changes if c.kind is ChangeKind.CREDENTIAL and c.object_id == cred]
    assert await state.apply(push_vault.store, overwritten) is None
    assert set(state.credentials) == {cred}
    assert state.revision == overwritten.revision
    assert await catch_up(state, push_vault)
    assert monitor.id not in state.monitors
    assert not state.credentials


async def test_changes_of_other_locations_and_kinds_advance_and_send_nothing_without_a_read(
    admin_client: Client, push_vault: RunningVault, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every replica sees every change: those of other locations, and engines' own, cost no database read."""
    await setup_location(admin_client)
    cred = await pair(admin_client)
    monitor = await create_monitor(admin_client, cred)
    state = await loaded(push_vault, keyring)
    head = state.revision

    async def no_read(*args: object) -> object:
        raise AssertionError("read the database for a change that is not this location's")

    monkeypatch.setattr(Queries, "monitors_by_id", no_read)
    monkeypatch.setattr(Queries, "credentials_sealed", no_read)
    for revision, kind, object_id, locations in (
        (head + 1, ChangeKind.MONITOR, monitor.id, ("loc-elsewhere",)),
        (head + 2, ChangeKind.CREDENTIAL, cred, ("loc-elsewhere",)),
        (head + 3, ChangeKind.ENGINE, "e1", (LOCATION,)),
    ):
        assert await state.apply(push_vault.store, Change(revision, kind, object_id, locations)) is None
        assert state.revision == revision
    assert set(state.monitors) == {monitor.id}
    assert set(state.credentials) == {cred}


async def test_only_held_monitors_not_wanted_any_more_are_gone(keyring: Keyring) -> None:
    state = LocationState(LOCATION, keyring)
    state.monitors["SYNTHETIC_TEST-00000000000000A1"] = epb.MonitorResource(id="SYNTHETIC_TEST-00000000000000A1")
    held = [
        epb.HeldResource(kind=MONITOR, id="SYNTHETIC_TEST-00000000000000A1", version=1),  # wanted
        epb.HeldResource(kind=MONITOR, id="SYNTHETIC_TEST-00000000000000A2", version=1),  # gone
        epb.HeldResource(kind=CREDENTIAL, id="CREDENTIALS_VAULT-00000000000000C1", version=1),  # not a monitor
        epb.HeldResource(kind=epb.RESOURCE_KIND_UNSPECIFIED, id="X", version=1),  # not a monitor
    ]
    assert state.gone_monitors(held) == ["SYNTHETIC_TEST-00000000000000A2"]


async def test_push_latency_counts_each_delta_once_from_its_commit(keyring: Keyring) -> None:
    """An ACK covers the deltas after the last one acked up to its revision, each measured from its commit (times on
    the monotonic clock, bracketed by readings before and after the ACK: no threshold)."""
    state = LocationState(LOCATION, keyring)
    committed = {2: 1.0, 3: 2.0, 5: 4.0}  # revision: commit time (monotonic, long ago)
    state.delivered.extend([(0, 0.25), *committed.items()])  # 0: before the initial sync (1), never counted
    observed: list[float] = []
    timer = PushTimer(state, synced_revision=1, observe=observed.append)

    def acked(revision: int) -> tuple[float, float]:
        before = time.monotonic()
        timer.acked(revision)
        return before, time.monotonic()

    before, after = acked(3)
    assert len(observed) == 2
    for revision, value in zip((3, 2), observed, strict=True):  # newest first
        assert before - committed[revision] <= value <= after - committed[revision]
    acked(2)  # an older ACK: nothing new
    acked(3)
    assert len(observed) == 2
    before, after = acked(5)
    assert len(observed) == 3
    assert before - committed[5] <= observed[2] <= after - committed[5]


async def test_only_applied_changes_are_timed(admin_client: Client, push_vault: RunningVault, keyring: Keyring) -> None:
    """A rebuild's delta has no commit time and is not timed; an applied change's is."""
    await setup_location(admin_client)
    cred = await pair(admin_client)
    await create_monitor(admin_client, cred, "first")
    state = await loaded(push_vault, keyring)
    await create_monitor(admin_client, cred, "second")
    assert await state.rebuild(push_vault.store) is not None
    assert not state.delivered
    await create_monitor(admin_client, cred, "third")
    (delta,) = await catch_up(state, push_vault)
    assert [revision for revision, _ in state.delivered] == [delta.revision]


async def test_a_commit_time_ahead_of_the_clock_counts_as_no_time(keyring: Keyring) -> None:
    state = LocationState(LOCATION, keyring)
    state.delivered.append((2, time.monotonic() + 3600))
    observed: list[float] = []
    PushTimer(state, synced_revision=1, observe=observed.append).acked(2)
    assert observed == [0.0]


def test_why_an_engine_no_longer_holds_a_monitor() -> None:
    here = mpb.Monitor(enabled=True, location_ids=[LOCATION])
    moved = mpb.Monitor(enabled=True, location_ids=["loc-b"])
    disabled = mpb.Monitor(enabled=False, location_ids=[LOCATION])
    orphaned = mpb.Monitor(
        enabled=False, disabled_reason=mpb.DISABLED_REASON_CREDENTIAL_DELETED, location_ids=[LOCATION]
    )
    assert removal_reason(None, LOCATION) == epb.REMOVAL_REASON_DELETED
    assert removal_reason(moved, LOCATION) == epb.REMOVAL_REASON_LOCATION_CHANGED
    assert removal_reason(disabled, LOCATION) == epb.REMOVAL_REASON_DISABLED
    assert removal_reason(orphaned, LOCATION) == epb.REMOVAL_REASON_CREDENTIAL_DELETED
    assert removal_reason(here, LOCATION) == epb.REMOVAL_REASON_CREDENTIAL_DELETED  # here, but a credential is gone


async def test_a_rebuild_with_nothing_changed_sends_nothing(
    admin_client: Client, push_vault: RunningVault, keyring: Keyring
) -> None:
    await setup_location(admin_client)
    await create_monitor(admin_client, await pair(admin_client))
    state = await loaded(push_vault, keyring)
    assert await state.rebuild(push_vault.store) is None


async def test_the_secret_values_of_a_held_monitor_only(
    admin_client: Client, push_vault: RunningVault, keyring: Keyring
) -> None:
    """What the vault scrubs a monitor's results with: the values of the credentials it uses, as held."""
    await setup_location(admin_client)
    cred = await pair(admin_client)
    monitor = await create_monitor(admin_client, cred)
    state = await loaded(push_vault, keyring)
    values = state.secret_values(monitor.id)
    assert values["pw-1"] == f"{{{{{cred}.password}}}}"
    assert values["alice"] == f"{{{{{cred}.username}}}}"
    assert state.secret_values("SYNTHETIC_TEST-FFFFFFFFFFFFFFFF") == {}


async def test_a_credential_change_replaces_a_held_version_ahead_of_the_database(
    admin_client: Client, push_vault: RunningVault, keyring: Keyring
) -> None:
    """After a restore the state may hold a credential at a revision the database no longer has: the next change
    of it sends the database's, lower or not."""
    await setup_location(admin_client)
    cred = await pair(admin_client)
    await create_monitor(admin_client, cred)
    state = await loaded(push_vault, keyring)
    state.credentials[cred].version += 1000  # held ahead (digest aside: only what is sent counts here)
    await overwrite(admin_client, cred, "pw-2")
    (delta,) = await catch_up(state, push_vault)
    async with push_vault.store.autocommit() as tx:
        (_, _, version) = (await tx.credentials_sealed([cred]))[cred]
    assert set(delta.credentials) == {cred}
    assert state.credentials[cred].version == delta.credentials[cred].version == version


async def test_an_engine_holding_every_revision_is_sent_nothing_even_past_small_ints(
    admin_client: Client, push_vault: RunningVault, keyring: Keyring
) -> None:
    """Revisions are compared by value: beyond CPython's cache of small ints, equal revisions are distinct
    objects, and an identity comparison would re-send everything an engine already holds."""
    async with push_vault.store.autocommit() as tx:
        await tx.conn.execute("SELECT setval('resource_versions', 100000)")
    await setup_location(admin_client)
    cred = await pair(admin_client)
    monitor = await create_monitor(admin_client, cred)
    state = await loaded(push_vault, keyring)
    assert state.monitors[monitor.id].version > 100000
    held = [
        epb.HeldResource(kind=MONITOR, id=monitor.id, version=int(str(state.monitors[monitor.id].version))),
        epb.HeldResource(kind=CREDENTIAL, id=cred, version=int(str(state.credentials[cred].version))),
    ]
    assert state.diff(held, {}, {}) == []
    assert len(state.diff(held[:1], {}, {})) == 1  # and what it lacks is sent
    version = state.monitors[monitor.id].version
    rejected = {monitor.id: (int(str(version)), "the engine rejected it")}
    assert state.diff(held[1:], rejected, {}) == []  # a rejected revision is not sent again
    assert state.expected_digest(rejected) != state.expected_digest({})  # and is left out of the digest


async def test_a_rebuild_sends_a_credential_overwritten_while_the_state_was_stale(
    admin_client: Client, push_vault: RunningVault, keyring: Keyring
) -> None:
    await setup_location(admin_client)
    cred = await pair(admin_client)
    await create_monitor(admin_client, cred)
    state = await loaded(push_vault, keyring)
    before = state.credentials[cred].version
    await overwrite(admin_client, cred, "pw-2")  # not applied: missed
    delta = await state.rebuild(push_vault.store)
    assert delta is not None
    assert set(delta.credentials) == {cred}
    assert delta.credentials[cred].version > before
    assert delta.credentials[cred].details.username_password.password == "pw-2"


async def test_a_diff_removes_what_an_engine_holds_and_should_not(keyring: Keyring) -> None:
    state = LocationState(LOCATION, keyring)
    kept, gone, cred = (
        "SYNTHETIC_TEST-00000000000000A1",
        "SYNTHETIC_TEST-00000000000000A2",
        "CREDENTIALS_VAULT-00000000000000C1",
    )
    state.monitors[kept] = epb.MonitorResource(id=kept, version=5)
    held = [
        epb.HeldResource(kind=MONITOR, id=kept, version=5),
        epb.HeldResource(kind=MONITOR, id=gone, version=1),
        epb.HeldResource(kind=CREDENTIAL, id=cred, version=1),  # no held monitor uses it any more
    ]
    assert state.diff(held, {}, {gone: epb.REMOVAL_REASON_DISABLED}) == [
        epb.Removal(kind=MONITOR, id=gone, reason=epb.REMOVAL_REASON_DISABLED),
        epb.Removal(kind=CREDENTIAL, id=cred, reason=epb.REMOVAL_REASON_UNREFERENCED),
    ]
    odd = epb.HeldResource(kind=epb.RESOURCE_KIND_UNSPECIFIED, id="X", version=1)  # of no kind: not a monitor
    monitor_removals = [
        i.id for i in state.diff([*held, odd], {}, {}) if isinstance(i, epb.Removal) and i.kind == MONITOR
    ]
    assert monitor_removals == [gone]


async def test_a_second_change_of_a_monitor_already_read_at_its_revision_sends_nothing_past_small_ints(
    admin_client: Client, push_vault: RunningVault, keyring: Keyring
) -> None:
    """Two updates, then their changes: the first read already gets the second revision, so the second change
    finds it held and sends nothing (compared by value: large revisions are distinct objects)."""
    async with push_vault.store.autocommit() as tx:
        await tx.conn.execute("SELECT setval('resource_versions', 100000)")
    await setup_location(admin_client)
    cred = await pair(admin_client)
    monitor = await create_monitor(admin_client, cred)
    state = await loaded(push_vault, keyring)
    for name in ("renamed", "renamed again"):
        changed = mpb.Monitor()
        changed.CopyFrom(monitor)
        changed.name = name
        monitor = (await admin_client.UpdateMonitor(mpb.UpdateMonitorRequest(monitor=changed))).monitor
    deltas = await catch_up(state, push_vault)
    assert [set(d.monitors) for d in deltas] == [{monitor.id}]
    assert state.monitors[monitor.id].monitor.name == "renamed again"


async def test_a_change_already_applied_is_passed_over_without_a_read(
    admin_client: Client, push_vault: RunningVault, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change at or below the state's revision (the snapshot had it, or it was applied) costs nothing."""
    await setup_location(admin_client)
    cred = await pair(admin_client)
    state = await loaded(push_vault, keyring)
    monitor = await create_monitor(admin_client, cred)
    (applied,) = await catch_up(state, push_vault)
    assert set(applied.monitors) == {monitor.id}

    async def no_read(*args: object) -> object:
        raise AssertionError("read the database for a change already applied")

    monkeypatch.setattr(Queries, "monitors_by_id", no_read)
    monkeypatch.setattr(Queries, "credentials_sealed", no_read)
    at = state.revision
    assert await state.apply(push_vault.store, Change(at, ChangeKind.MONITOR, monitor.id, (LOCATION,))) is None
    assert await state.apply(push_vault.store, Change(at - 1, ChangeKind.CREDENTIAL, cred, (LOCATION,))) is None
    assert state.revision == at


async def update(admin: Client, monitor: mpb.Monitor, change: Callable[[mpb.Monitor], None]) -> mpb.Monitor:
    changed = mpb.Monitor()
    changed.CopyFrom(monitor)
    change(changed)
    updated: mpb.Monitor = (await admin.UpdateMonitor(mpb.UpdateMonitorRequest(monitor=changed))).monitor
    return updated


async def test_a_rebuild_says_why_each_held_monitor_goes(
    admin_client: Client, push_vault: RunningVault, keyring: Keyring
) -> None:
    await setup_location(admin_client)
    cred = await pair(admin_client)
    disabled = await create_monitor(admin_client, cred, "disabled")
    state = await loaded(push_vault, keyring)
    await update(admin_client, disabled, lambda m: setattr(m, "enabled", False))  # missed
    delta = await state.rebuild(push_vault.store)
    assert delta is not None
    assert {k: r.reason for k, r in delta.removals.items()} == {
        (MONITOR, disabled.id): epb.REMOVAL_REASON_DISABLED,
        (CREDENTIAL, cred): epb.REMOVAL_REASON_UNREFERENCED,
    }


async def test_a_rebuild_replaces_a_held_monitor_ahead_of_the_database(
    admin_client: Client, push_vault: RunningVault, keyring: Keyring
) -> None:
    await setup_location(admin_client)
    monitor = await create_monitor(admin_client, await pair(admin_client))
    state = await loaded(push_vault, keyring)
    state.monitors[monitor.id].version += 1000  # as after a restore
    delta = await state.rebuild(push_vault.store)
    assert delta is not None
    assert set(delta.monitors) == {monitor.id}
    assert state.monitors[monitor.id].version == monitor.revision


async def test_a_monitor_moved_to_another_location_goes_and_one_given_a_new_credential_takes_it(
    admin_client: Client, push_vault: RunningVault, keyring: Keyring
) -> None:
    await setup_location(admin_client)
    await admin_client.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id="loc-b")))
    old_cred, new_cred = await pair(admin_client, "old"), await pair(admin_client, "new")
    moved = await create_monitor(admin_client, old_cred, "moved")
    switched = await create_monitor(admin_client, old_cred, "switched")
    state = await loaded(push_vault, keyring)

    def use_new(m: mpb.Monitor) -> None:
        m.http.requests[0].authentication.basic_credential_id = new_cred

    await update(admin_client, switched, use_new)
    (delta,) = await catch_up(state, push_vault)
    assert set(delta.credentials) == {new_cred}
    assert set(state.monitors) == {moved.id, switched.id}
    assert set(state.credentials) == {old_cred, new_cred}
    await update(admin_client, moved, lambda m: m.location_ids.__setitem__(0, "loc-b"))
    (delta,) = await catch_up(state, push_vault)
    assert {k: r.reason for k, r in delta.removals.items()} == {
        (MONITOR, moved.id): epb.REMOVAL_REASON_LOCATION_CHANGED,
        (CREDENTIAL, old_cred): epb.REMOVAL_REASON_UNREFERENCED,
    }
    assert set(state.monitors) == {switched.id}


async def test_every_credential_after_a_not_yet_synchronized_one_is_resolved(
    admin_client: Client, push_vault: RunningVault, keyring: Keyring
) -> None:
    """A synchronized credential never read from its vault resolves to a resource without contents; the ones after
    it in the same read still resolve with theirs."""
    role, secret = [
        (await admin_client.CreateCredential(create_req(f"c{i}", token_contents(f"companion-{i}")))).credential.id
        for i in range(2)
    ]
    src = cpb.ExternalSource(
        provider=cpb.EXTERNAL_PROVIDER_HASHICORP_VAULT,
        address="https://127.0.0.1:1",  # never reached: it stays a placeholder
        kv=cpb.KvLocation(mount="secret", path="p", version=cpb.KV_VERSION_V2),
        username_key="user",
        password_key="pass",
        approle=cpb.AppRoleAuth(role_id_credential_id=role, secret_id_credential_id=secret),
    )
    req = cpb.CreateCredentialRequest(
        name="synced", scopes=[SYN], external_source=src, type=cpb.CREDENTIAL_TYPE_USERNAME_PASSWORD
    )
    synced = (await admin_client.CreateCredential(req)).credential.id
    typed = [await pair(admin_client, f"typed-{i}") for i in range(2)]  # made after it: read after it
    state = LocationState(LOCATION, keyring)
    async with push_vault.store.autocommit() as tx:
        resolved = await state._resolve(tx, [synced, *typed])
    assert list(resolved) == [synced, *typed]
    assert not resolved[synced].HasField("details")
    assert all(resolved[c].details.username_password.username == "alice" for c in typed)


async def test_a_credential_change_finding_the_held_revision_sends_nothing_past_small_ints(
    admin_client: Client, push_vault: RunningVault, keyring: Keyring
) -> None:
    async with push_vault.store.autocommit() as tx:
        await tx.conn.execute("SELECT setval('resource_versions', 100000)")
    await setup_location(admin_client)
    cred = await pair(admin_client)
    await create_monitor(admin_client, cred)
    state = await loaded(push_vault, keyring)
    again = Change(state.revision + 1, ChangeKind.CREDENTIAL, cred, (LOCATION,))  # the row read is the one held
    assert await state.apply(push_vault.store, again) is None


def token_contents(value: str) -> cpb.CredentialContents:
    return cpb.CredentialContents(token=cpb.Token(token=value))


async def test_a_rebuild_with_nothing_changed_sends_nothing_past_small_ints(
    admin_client: Client, push_vault: RunningVault, keyring: Keyring
) -> None:
    async with push_vault.store.autocommit() as tx:
        await tx.conn.execute("SELECT setval('resource_versions', 100000)")
    await setup_location(admin_client)
    await create_monitor(admin_client, await pair(admin_client))
    state = await loaded(push_vault, keyring)
    assert await state.rebuild(push_vault.store) is None
