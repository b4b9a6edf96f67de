"""Monitors and locations: validation, who may create and edit (the seed's restricted-credential rules), "used by",
deleting a credential deactivates its monitors, and the change log that every such change writes."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import grpc

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import monitors_pb2 as mpb
from tests.conftest import Client, Users
from tests.helpers import ALL, INVALID, MONITORING, PD, VIEW, create_req, expect_code, token, up
from vault_service.models import USED_BY_SHOWN, ChangeKind
from vault_service.server import RunningVault
from vault_service.storage.pool import Store


def http_monitor(
    cred_id: str = "",
    token_id: str = "",
    url: str = "https://shop.example/login",
    locations: tuple[str, ...] = ("loc-a",),
) -> mpb.Monitor:
    req = mpb.HttpRequest(method="GET", url=url)
    if cred_id:
        req.authentication.basic_credential_id = cred_id
    if token_id:
        req.headers.add(name="Authorization", value=f"Bearer {{{{{token_id}}}}}")
    req.validation.add().status_code_in.codes.append(200)
    return mpb.Monitor(
        name="shop login",
        frequency_minutes=5,
        location_ids=list(locations),
        enabled=True,
        http=mpb.HttpScript(requests=[req]),
    )


async def setup_location(admin: Client, *ids: str) -> None:
    for loc in ids or ("loc-a",):
        await admin.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id=loc, name=loc)))


async def cred(client: Client, name: str = "c", contents: cpb.CredentialContents | None = None, **kw: object) -> str:
    return str((await client.CreateCredential(create_req(name, contents or up(), **kw))).credential.id)


async def test_create_get_and_used_by(admin: Client) -> None:
    await setup_location(admin)
    basic = await cred(admin, "basic")
    tok = await cred(admin, "tok", token("t-1"))
    m = (await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=http_monitor(basic, tok)))).monitor
    assert m.id.startswith("SYNTHETIC_TEST-")
    assert m.type == mpb.MONITOR_TYPE_HTTP
    assert sorted(m.credential_ids) == sorted([basic, tok])
    assert m.http.requests[0].timeout_ms == 10_000
    assert (await admin.GetMonitor(mpb.GetMonitorRequest(id=m.id))).monitor == m
    got = (await admin.GetCredential(cpb.GetCredentialRequest(id=basic))).credential
    assert [(u.monitor_id, u.monitor_type) for u in got.used_by] == [(m.id, mpb.MONITOR_TYPE_HTTP)]
    assert got.used_by_count == 1
    listed = (await admin.ListCredentials(cpb.ListCredentialsRequest())).credentials
    assert {c.id: [u.monitor_id for u in c.used_by] for c in listed} == {basic: [m.id], tok: [m.id]}


async def test_used_by_names_the_first_monitors_and_counts_all(admin: Client) -> None:
    """A credential used by many monitors: Get, List and Overwrite name the first USED_BY_SHOWN by id and count all
    (a response does not grow with the monitors); ListMonitors with the credential lists every one."""
    await setup_location(admin)
    shared = await cred(admin, "shared")
    other = await cred(admin, "other")
    total = USED_BY_SHOWN + 2
    ids = sorted(
        [
            (await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=http_monitor(shared)))).monitor.id
            for _ in range(total)
        ]
    )
    got = (await admin.GetCredential(cpb.GetCredentialRequest(id=shared))).credential
    assert [u.monitor_id for u in got.used_by] == ids[:USED_BY_SHOWN]
    assert got.used_by_count == total
    listed = {c.id: c for c in (await admin.ListCredentials(cpb.ListCredentialsRequest())).credentials}
    assert (len(listed[shared].used_by), listed[shared].used_by_count) == (USED_BY_SHOWN, total)
    assert (list(listed[other].used_by), listed[other].used_by_count) == ([], 0)
    overwritten = await admin.OverwriteCredential(cpb.OverwriteCredentialRequest(id=shared, contents=up("bob", "pw2")))
    assert [u.monitor_id for u in overwritten.credential.used_by] == ids[:USED_BY_SHOWN]
    assert overwritten.credential.used_by_count == total
    every: list[str] = []
    page = ""
    while True:
        resp = await admin.ListMonitors(mpb.ListMonitorsRequest(credential_id=shared, page_size=40, page_token=page))
        every += [m.id for m in resp.monitors]
        if not (page := resp.next_page_token):
            break
    assert sorted(every) == ids


async def test_invalid_monitors(admin: Client) -> None:
    await setup_location(admin)
    basic = await cred(admin, "basic")
    tok = await cred(admin, "tok", token())
    domain_user = await cred(admin, "domain", up("CORP\\alice", "pw"))
    ext = await cred(admin, "ext", scopes=[cpb.CREDENTIAL_SCOPE_EXTENSION_AUTHENTICATION])
    cases: list[tuple[mpb.Monitor, str]] = []
    m = http_monitor(basic)
    m.frequency_minutes = 3
    cases.append((m, "monitor.frequency_minutes"))
    cases.append((http_monitor(basic, locations=("nowhere",)), "monitor.location_ids"))
    cases.append((http_monitor("CREDENTIALS_VAULT-0000000000000000"), "monitor.credentials"))
    cases.append((http_monitor(tok), "monitor.credentials"))  # a token for basic auth
    cases.append((http_monitor(ext), "monitor.credentials"))  # no SYNTHETIC scope
    cases.append((http_monitor(domain_user), "monitor.credentials"))  # DOMAIN\user on HTTP
    cases.append((http_monitor(url="ftp://x"), "monitor.http.requests[0].url"))
    cases.append((http_monitor(url="https://x/{{CREDENTIALS_VAULT-zz}}"), "monitor.http.requests[0].url"))
    m = http_monitor()
    m.http.requests[0].method = "BREW"
    cases.append((m, "monitor.http.requests[0].method"))
    cases.append((mpb.Monitor(name="x", frequency_minutes=5, location_ids=["loc-a"]), "monitor.script"))
    for monitor, field in cases:
        err = await expect_code(admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=monitor)), INVALID)
        assert (err.details() or "").startswith(field), (field, err.details())
    browser = mpb.Monitor(
        name="b",
        frequency_minutes=5,
        location_ids=["loc-a"],
        browser=mpb.BrowserScript(url="https://x", login_credential_id=domain_user),
    )
    assert (
        await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=browser))
    ).monitor.type == mpb.MONITOR_TYPE_BROWSER


def ntlm_monitor(*cred_ids: str, url: str = "https://intranet.example/") -> mpb.Monitor:
    """One request per credential, each logging in with NTLM."""
    m = http_monitor(url=url)
    del m.http.requests[:]
    for cred_id in cred_ids:
        m.http.requests.add(method="GET", url=url).authentication.ntlm_credential_id = cred_id
    return m


async def test_ntlm_monitors(admin: Client) -> None:
    """NTLM takes a username-password credential, `DOMAIN\\user` or `user`; what basic auth takes does not change."""
    await setup_location(admin)
    domain_user = await cred(admin, "domain", up("CORP\\alice", "pw"))
    plain_user = await cred(admin, "plain", up("bob", "pw"))
    m = (await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=ntlm_monitor(domain_user, plain_user)))).monitor
    assert sorted(m.credential_ids) == sorted([domain_user, plain_user])
    assert [r.authentication.ntlm_credential_id for r in m.http.requests] == [domain_user, plain_user]
    got = (await admin.GetCredential(cpb.GetCredentialRequest(id=domain_user))).credential
    assert [u.monitor_id for u in got.used_by] == [m.id]
    tok = await cred(admin, "tok", token())
    bad_forms = [await cred(admin, f"bad-{i}", up(u, "pw")) for i, u in enumerate(["\\alice", "CORP\\", "A\\B\\c"])]
    both = ntlm_monitor(domain_user)
    both.http.requests.add(
        method="GET", url="https://intranet.example/b"
    ).authentication.basic_credential_id = domain_user
    cases = [
        (ntlm_monitor(tok), "monitor.credentials", "is TOKEN, unusable for NTLM authentication"),
        (ntlm_monitor("CREDENTIALS_VAULT-0000000000000000"), "monitor.credentials", "does not exist"),
        (ntlm_monitor("not-an-id"), "monitor.http.requests[0].authentication.ntlm_credential_id", "must be"),
        (both, "monitor.credentials", "(HTTP basic: user; NTLM and browser: user or DOMAIN\\user)"),
        *((ntlm_monitor(b), "monitor.credentials", "has a form this use does not support") for b in bad_forms),
    ]
    for monitor, field, why in cases:
        err = await expect_code(admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=monitor)), INVALID)
        assert (err.details() or "").startswith(field), (field, err.details())
        assert why in (err.details() or ""), err.details()
        assert "alice" not in (err.details() or "")  # the username is not echoed


async def test_restricted_credential_edits_of_an_ntlm_monitor(admin: Client, users: Users) -> None:
    await setup_location(admin)
    alice = await users.make("alice", [VIEW, MONITORING])
    bob = await users.make("bob", [VIEW, MONITORING])
    secret = await cred(alice, "alice-only", up("CORP\\alice", "pw"))
    m = (await alice.CreateMonitor(mpb.CreateMonitorRequest(monitor=ntlm_monitor(secret)))).monitor
    assert list(m.credential_ids) == [secret]
    moved = _with_url(m, "https://evil.example/")
    await expect_code(bob.UpdateMonitor(mpb.UpdateMonitorRequest(monitor=moved)), PD)
    own = await cred(bob, "bob-own", up("CORP\\bob", "pw"))
    replaced = mpb.Monitor()
    replaced.CopyFrom(m)
    replaced.http.requests[0].authentication.ntlm_credential_id = own
    updated = (await bob.UpdateMonitor(mpb.UpdateMonitorRequest(monitor=replaced))).monitor
    assert list(updated.credential_ids) == [own]
    await expect_code(alice.UpdateMonitor(mpb.UpdateMonitorRequest(monitor=_with_url(updated, "https://x/"))), PD)


async def test_who_may_create_monitors(admin: Client, users: Users) -> None:
    await setup_location(admin)
    viewer = await users.make("viewer", [VIEW])
    zoned = await users.make("zoned", [], zones={"shop": [VIEW, MONITORING]})
    monitoring = await users.make("mon", [VIEW, MONITORING])
    denied = await expect_code(viewer.CreateMonitor(mpb.CreateMonitorRequest(monitor=http_monitor())), PD)
    assert "CHANGE_MONITORING_SETTINGS at environment level" in (denied.details() or "")  # what is missing, where
    await expect_code(zoned.CreateMonitor(mpb.CreateMonitorRequest(monitor=http_monitor())), PD)
    in_zone = http_monitor()
    in_zone.management_zone = "shop"
    assert (await zoned.CreateMonitor(mpb.CreateMonitorRequest(monitor=in_zone))).monitor.management_zone == "shop"
    other_zone = http_monitor()
    other_zone.management_zone = "billing"
    denied = await expect_code(zoned.CreateMonitor(mpb.CreateMonitorRequest(monitor=other_zone)), PD)
    assert "CHANGE_MONITORING_SETTINGS in management zone 'billing'" in (denied.details() or "")
    # a credential of someone else's, owner-only: not usable in a new monitor
    admins = await cred(admin, "admin-only")
    await expect_code(monitoring.CreateMonitor(mpb.CreateMonitorRequest(monitor=http_monitor(admins))), PD)
    public = await cred(admin, "public", access=ALL)
    assert (await monitoring.CreateMonitor(mpb.CreateMonitorRequest(monitor=http_monitor(public)))).monitor.id


async def test_restricted_credential_edits(admin: Client, users: Users) -> None:
    await setup_location(admin, "loc-a", "loc-b")
    alice = await users.make("alice", [VIEW, MONITORING])
    bob = await users.make("bob", [VIEW, MONITORING])
    secret = await cred(alice, "alice-only")
    m = (await alice.CreateMonitor(mpb.CreateMonitorRequest(monitor=http_monitor(secret)))).monitor

    async def update(edit: mpb.Monitor) -> mpb.Monitor:
        response: mpb.UpdateMonitorResponse = await bob.UpdateMonitor(mpb.UpdateMonitorRequest(monitor=edit))
        return response.monitor

    allowed = mpb.Monitor()
    allowed.CopyFrom(m)
    allowed.name = "renamed by bob"
    allowed.frequency_minutes = 15
    allowed.location_ids.append("loc-b")
    allowed.http.requests[0].validation[0].status_code_in.codes.append(302)
    m2 = await update(allowed)
    assert (m2.name, m2.frequency_minutes, list(m2.location_ids)) == ("renamed by bob", 15, ["loc-a", "loc-b"])
    changes: list[tuple[str, Callable[[mpb.Monitor], object]]] = [
        ("url", lambda x: setattr(x.http.requests[0], "url", "https://evil.example/")),
        ("method", lambda x: setattr(x.http.requests[0], "method", "POST")),
        ("header", lambda x: x.http.requests[0].headers.add(name="X-A", value="b")),
        ("body", lambda x: setattr(x.http.requests[0], "body", "{}")),
        ("redirects", lambda x: setattr(x.http.requests[0], "follow_redirects", True)),
        ("requests", lambda x: x.http.requests.add(method="GET", url="https://x/")),
    ]
    for _what, change in changes:
        edit = mpb.Monitor()
        edit.CopyFrom(m2)
        change(edit)
        await expect_code(update(edit), PD)
    assert (await bob.SetMonitorEnabled(mpb.SetMonitorEnabledRequest(id=m.id, enabled=False))).monitor.enabled is False
    # replacing all credentials with one bob can access is allowed (and irreversible)
    own = await cred(bob, "bob-own")
    edit = mpb.Monitor()
    edit.CopyFrom(m2)
    edit.http.requests[0].authentication.basic_credential_id = own
    replaced = await update(edit)
    assert list(replaced.credential_ids) == [own]
    # now bob may change anything, alice may not (she has no access to bob's credential) except the allowed fields
    edit.CopyFrom(replaced)
    edit.http.requests[0].url = "https://shop.example/v2/login"
    assert (await update(edit)).http.requests[0].url.endswith("/v2/login")
    await expect_code(alice.UpdateMonitor(mpb.UpdateMonitorRequest(monitor=_with_url(edit, "https://other/"))), PD)
    await bob.DeleteMonitor(mpb.DeleteMonitorRequest(id=m.id))
    await expect_code(bob.GetMonitor(mpb.GetMonitorRequest(id=m.id)), grpc.StatusCode.NOT_FOUND)


def _with_url(m: mpb.Monitor, url: str) -> mpb.Monitor:
    out = mpb.Monitor()
    out.CopyFrom(m)
    out.http.requests[0].url = url
    return out


async def test_deleting_a_credential_deactivates_its_monitors(admin: Client, vault: RunningVault) -> None:
    await setup_location(admin)
    basic = await cred(admin, "basic")
    m = (await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=http_monitor(basic)))).monitor
    await admin.DeleteCredential(cpb.DeleteCredentialRequest(id=basic))
    after = (await admin.GetMonitor(mpb.GetMonitorRequest(id=m.id))).monitor
    assert not after.enabled
    assert after.disabled_reason == mpb.DISABLED_REASON_CREDENTIAL_DELETED
    assert after.version != m.version
    await expect_code(
        admin.SetMonitorEnabled(mpb.SetMonitorEnabledRequest(id=m.id, enabled=True)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    async with vault.store.autocommit() as tx:
        kinds = [(c.kind, c.object_id) for c in await tx.changes_since(0, 100)]
    assert kinds == [("monitor", m.id), ("monitor", m.id)]  # created, then deactivated


async def test_a_monitor_disabled_before_its_credential_was_deleted_cannot_be_enabled(admin: Client) -> None:
    await setup_location(admin)
    basic = await cred(admin, "basic")
    m = (await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=http_monitor(basic)))).monitor
    await admin.SetMonitorEnabled(mpb.SetMonitorEnabledRequest(id=m.id, enabled=False))
    await admin.DeleteCredential(cpb.DeleteCredentialRequest(id=basic))
    refused = await expect_code(
        admin.SetMonitorEnabled(mpb.SetMonitorEnabledRequest(id=m.id, enabled=True)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    message = refused.details() or ""
    assert basic in message
    assert "update the monitor" in message
    after = (await admin.GetMonitor(mpb.GetMonitorRequest(id=m.id))).monitor
    assert not after.enabled
    assert after.disabled_reason == mpb.DISABLED_REASON_BY_USER


async def test_changes_are_logged_for_what_engines_hold(admin: Client, vault: RunningVault) -> None:
    await setup_location(admin, "loc-a", "loc-b")
    basic = await cred(admin, "basic")
    unused = await cred(admin, "unused")
    m = (await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=http_monitor(basic)))).monitor
    await admin.OverwriteCredential(cpb.OverwriteCredentialRequest(id=basic, contents=up("u", "new")))
    await admin.OverwriteCredential(cpb.OverwriteCredentialRequest(id=unused, contents=up("u", "new")))  # no engine
    moved = _with_url(m, m.http.requests[0].url)
    del moved.location_ids[:]
    moved.location_ids.append("loc-b")
    await admin.UpdateMonitor(mpb.UpdateMonitorRequest(monitor=moved))
    await admin.SetMonitorEnabled(mpb.SetMonitorEnabledRequest(id=m.id, enabled=False))
    await admin.DeleteMonitor(mpb.DeleteMonitorRequest(id=m.id))
    async with vault.store.autocommit() as tx:
        changes = await tx.changes_since(0, 100)
        head = await tx.head_revision()
    assert [(c.kind, c.object_id, c.location_ids) for c in changes] == [
        ("monitor", m.id, ("loc-a",)),
        ("credential", basic, ("loc-a",)),
        ("monitor", m.id, ("loc-a", "loc-b")),  # moved: both locations' engines are affected
        ("monitor", m.id, ("loc-b",)),
        ("monitor", m.id, ("loc-b",)),
    ]
    assert [c.revision for c in changes] == list(range(1, head + 1))


async def test_concurrent_writers_never_make_a_reader_skip_a_revision(store: Store) -> None:
    """Writers append and then hold their transaction open for a random while (late commits); a reader polling
    `changes_since(last)` must always get a gapless continuation."""
    writers, per_writer = 12, 15
    done = asyncio.Event()
    seen: list[int] = []

    async def writer(n: int) -> None:
        for i in range(per_writer):
            async with store.transaction() as tx:
                await tx.append_change(ChangeKind.MONITOR, f"w{n}-{i}", ["loc-a"])
                await asyncio.sleep(random.uniform(0, 0.004))

    async def reader() -> None:
        last = 0
        while True:
            async with store.autocommit() as tx:
                batch = await tx.changes_since(last, 1000)
            revisions = [c.revision for c in batch]
            assert revisions == list(range(last + 1, last + 1 + len(revisions))), (last, revisions)
            seen.extend(revisions)
            last = revisions[-1] if revisions else last
            if done.is_set() and not batch:
                return
            await asyncio.sleep(0)

    reading = asyncio.ensure_future(reader())
    await asyncio.gather(*(writer(n) for n in range(writers)))
    done.set()
    await reading
    assert seen == list(range(1, writers * per_writer + 1))


async def test_a_monitors_version_counts_its_own_changes_and_its_revision_is_vault_wide(admin: Client) -> None:
    """One meaning of "version" (issue 12): 1 when created, one more per change, as a credential's; the revision
    (what engines hold it at) comes from one vault-wide sequence and rises with every change of anything."""
    await setup_location(admin)
    basic = await cred(admin, "basic")
    first = (await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=http_monitor(basic)))).monitor
    second = (await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=http_monitor(basic)))).monitor
    assert (first.version, second.version) == (1, 1)
    assert 0 < first.revision < second.revision
    disabled = (await admin.SetMonitorEnabled(mpb.SetMonitorEnabledRequest(id=first.id, enabled=False))).monitor
    assert (disabled.version, disabled.revision > second.revision) == (2, True)
    renamed = mpb.Monitor()
    renamed.CopyFrom(disabled)
    renamed.name = "renamed"
    updated = (
        await admin.UpdateMonitor(mpb.UpdateMonitorRequest(monitor=renamed, expected_version=disabled.version))
    ).monitor
    assert (updated.version, updated.revision > disabled.revision) == (3, True)
    got = (await admin.GetMonitor(mpb.GetMonitorRequest(id=first.id))).monitor
    assert (got.version, got.revision) == (updated.version, updated.revision)
