"""Every access rule of the vault, exercised through the gRPC API (real PostgreSQL, real TLS server).

Seed 000: "Access to the credential vault", "Owner-only, shared, and public credentials", "Who can edit or overwrite
a credential", "Credential vault API"; the AppEngine exception of GetCredentialDetails.

Conventions: a credential the caller may not see is NOT_FOUND (its existence is not leaked); a visible credential
the caller may not change is PERMISSION_DENIED.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import identity_pb2 as ipb
from credvault.v1 import tokens_pb2 as tpb
from tests.conftest import ALL_SCOPES, Client, Users
from tests.helpers import (
    ALL,
    APP,
    ENVIRONMENT,
    INVALID,
    MONITORING,
    NF,
    OK,
    OWNER_ONLY,
    PD,
    SYN,
    VIEW,
    create_req,
    expect_code,
    shared,
    token,
    up,
)
from vault_service.server import RunningVault


async def result(call: Awaitable[Any]) -> tuple[grpc.StatusCode, Any, str]:
    """(status code, response or None, error details)."""
    try:
        resp = await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), None, exc.details() or ""
    return OK, resp, ""


async def outcome(call: Awaitable[Any]) -> grpc.StatusCode:
    """OK, or the status code the call failed with."""
    return (await result(call))[0]


async def create(client: Client, name: str = "cred", access: cpb.Access | None = None, **kw: Any) -> cpb.Credential:
    resp: cpb.CreateCredentialResponse = await client.CreateCredential(create_req(name, access=access, **kw))
    return resp.credential


async def get(client: Client, cred_id: str) -> cpb.Credential:
    resp: cpb.GetCredentialResponse = await client.GetCredential(cpb.GetCredentialRequest(id=cred_id))
    return resp.credential


async def listed_ids(client: Client, **filters: Any) -> list[str]:
    """All ids the caller sees (one page of 500 is enough for these tests)."""
    resp = await client.ListCredentials(cpb.ListCredentialsRequest(page_size=500, **filters))
    assert resp.next_page_token == ""
    assert resp.total_size == len(resp.credentials)
    return [c.id for c in resp.credentials]


def overwrite_req(cred_id: str, access: cpb.Access | None = None, password: str = "new-pw") -> Any:
    req = cpb.OverwriteCredentialRequest(id=cred_id, contents=up("new-user", password))
    if access is not None:
        req.access.CopyFrom(access)
    return req


def access_of(level: str) -> cpb.Access:
    return {"OWNER_ONLY": OWNER_ONLY, "SHARED": shared("bob"), "ALL": ALL}[level]


# --- access levels x callers -----------------------------------------------------------------------------------

# alice (VIEW_ENVIRONMENT) owns a credential of the given level; SHARED lists bob. bob and carol have
# VIEW_ENVIRONMENT; admin has every permission. For OWNER_ONLY and ALL, "listed" bob is just another user.
#    level          caller    Get  List?  Overwrite UpdateMetadata Delete
ACCESS_MATRIX = [
    ("OWNER_ONLY", "owner", OK, True, OK, OK, OK),
    ("OWNER_ONLY", "listed", NF, False, NF, NF, NF),
    ("OWNER_ONLY", "other", NF, False, NF, NF, NF),
    ("OWNER_ONLY", "admin", OK, True, OK, PD, OK),
    ("SHARED", "owner", OK, True, OK, OK, OK),
    ("SHARED", "listed", OK, True, PD, PD, PD),
    ("SHARED", "other", NF, False, NF, NF, NF),
    ("SHARED", "admin", OK, True, OK, PD, OK),
    ("ALL", "owner", OK, True, OK, OK, OK),
    ("ALL", "listed", OK, True, PD, PD, PD),
    ("ALL", "other", OK, True, PD, PD, PD),
    ("ALL", "admin", OK, True, OK, PD, OK),
]


@pytest.mark.parametrize(
    ("level", "role", "get_code", "in_list", "overwrite_code", "update_code", "delete_code"),
    [pytest.param(*row, id=f"{row[0]}-{row[1]}") for row in ACCESS_MATRIX],
)
async def test_access_level_against_caller(
    admin: Client,
    users: Users,
    level: str,
    role: str,
    get_code: grpc.StatusCode,
    in_list: bool,
    overwrite_code: grpc.StatusCode,
    update_code: grpc.StatusCode,
    delete_code: grpc.StatusCode,
) -> None:
    alice = await users.make("alice", [VIEW])
    caller = {"owner": alice, "admin": admin}.get(role) or await users.make(
        {"listed": "bob", "other": "carol"}[role], [VIEW]
    )
    access = access_of(level)

    # Get and List
    cred = await create(alice, "subject", access)
    assert await outcome(caller.GetCredential(cpb.GetCredentialRequest(id=cred.id))) == get_code
    if get_code == OK:
        assert await get(caller, cred.id) == cred
    assert (cred.id in await listed_ids(caller)) is in_list

    # Overwrite (a fresh credential per operation, so that one change does not influence the next)
    cred = await create(alice, "overwrite-me", access)
    assert await outcome(caller.OverwriteCredential(overwrite_req(cred.id))) == overwrite_code
    after = await get(admin, cred.id)
    if overwrite_code == OK:
        assert (after.owner, after.version) == (caller.username, 2)
        assert after.access == cred.access  # no access given: kept
    else:
        assert after == cred

    # UpdateCredentialMetadata
    cred = await create(alice, "rename-me", access)
    req = cpb.UpdateCredentialMetadataRequest(id=cred.id, name="renamed")
    assert await outcome(caller.UpdateCredentialMetadata(req)) == update_code
    after = await get(admin, cred.id)
    if update_code == OK:
        assert (after.name, after.owner, after.version) == ("renamed", "alice", 2)
    else:
        assert after == cred

    # Delete
    cred = await create(alice, "delete-me", access)
    assert await outcome(caller.DeleteCredential(cpb.DeleteCredentialRequest(id=cred.id))) == delete_code
    still_there = await outcome(admin.GetCredential(cpb.GetCredentialRequest(id=cred.id)))
    assert still_there == (NF if delete_code == OK else OK)


async def test_the_owner_is_the_user_of_that_name_not_one_whose_name_sorts_near_it(users: Users) -> None:
    """A public credential is visible to every VIEW_ENVIRONMENT user, and changed by its owner only: callers whose
    names sort before and after the owner's are both refused."""
    mallory = await users.make("mallory", [VIEW])
    for name in ("adam", "zoe"):
        caller = await users.make(name, [VIEW])
        cred = await create(mallory, f"public, {name} tries", ALL)
        await expect_code(caller.OverwriteCredential(overwrite_req(cred.id)), PD)
        rename = cpb.UpdateCredentialMetadataRequest(id=cred.id, name="renamed")
        await expect_code(caller.UpdateCredentialMetadata(rename), PD)
        await expect_code(caller.DeleteCredential(cpb.DeleteCredentialRequest(id=cred.id)), PD)
        assert await get(mallory, cred.id) == cred


# --- environment / management-zone permissions against another user's credential -----------------------------

CALLERS: dict[str, tuple[list[int], dict[str, list[int]] | None]] = {
    "env-view": ([VIEW], None),
    "env-monitoring": ([MONITORING], None),
    "env-environment": ([ENVIRONMENT], None),
    "env-environment+monitoring": ([ENVIRONMENT, MONITORING], None),
    "zone-view": ([], {"zoneA": [VIEW]}),
    "zone-monitoring": ([], {"zoneA": [MONITORING]}),
    "zone-view+monitoring": ([], {"zoneA": [VIEW, MONITORING], "zoneB": [VIEW]}),
}

# alice (VIEW_ENVIRONMENT) owns the credential; "SHARED" lists the caller.
#    caller                        alice's credential  Get  List?  Overwrite Delete
OTHERS_CREDENTIAL = [
    ("env-view", "OWNER_ONLY", NF, False, NF, NF),
    ("env-view", "SHARED", OK, True, PD, PD),
    ("env-view", "ALL", OK, True, PD, PD),
    ("env-monitoring", "OWNER_ONLY", OK, True, OK, OK),
    ("env-monitoring", "SHARED", OK, True, OK, OK),
    ("env-monitoring", "ALL", OK, True, OK, OK),
    ("env-environment", "OWNER_ONLY", OK, True, PD, OK),
    ("env-environment", "SHARED", OK, True, PD, OK),
    ("env-environment", "ALL", OK, True, PD, OK),
    ("env-environment+monitoring", "OWNER_ONLY", OK, True, OK, OK),
    ("env-environment+monitoring", "ALL", OK, True, OK, OK),
    ("zone-view", "OWNER_ONLY", NF, False, NF, NF),
    ("zone-view", "SHARED", NF, False, NF, NF),
    ("zone-view", "ALL", OK, True, PD, PD),
    ("zone-monitoring", "OWNER_ONLY", NF, False, NF, NF),
    ("zone-monitoring", "SHARED", NF, False, NF, NF),
    ("zone-monitoring", "ALL", OK, True, PD, PD),
    ("zone-view+monitoring", "SHARED", NF, False, NF, NF),
    ("zone-view+monitoring", "ALL", OK, True, PD, PD),
]


@pytest.mark.parametrize(
    ("caller_kind", "level", "get_code", "in_list", "overwrite_code", "delete_code"),
    [pytest.param(*row, id=f"{row[0]}-{row[1]}") for row in OTHERS_CREDENTIAL],
)
async def test_permission_against_others_credential(
    admin: Client,
    users: Users,
    caller_kind: str,
    level: str,
    get_code: grpc.StatusCode,
    in_list: bool,
    overwrite_code: grpc.StatusCode,
    delete_code: grpc.StatusCode,
) -> None:
    alice = await users.make("alice", [VIEW])
    perms, zones = CALLERS[caller_kind]
    caller = await users.make("dave", perms, zones=zones)
    access = {"OWNER_ONLY": OWNER_ONLY, "SHARED": shared("dave"), "ALL": ALL}[level]

    cred = await create(alice, "seen", access)
    assert await outcome(caller.GetCredential(cpb.GetCredentialRequest(id=cred.id))) == get_code
    assert (cred.id in await listed_ids(caller)) is in_list
    # UpdateCredentialMetadata is for the owner only, whatever the permissions.
    req = cpb.UpdateCredentialMetadataRequest(id=cred.id, description="x")
    assert await outcome(caller.UpdateCredentialMetadata(req)) == (NF if get_code == NF else PD)

    cred = await create(alice, "overwritten", access)
    assert await outcome(caller.OverwriteCredential(overwrite_req(cred.id))) == overwrite_code
    after = await get(admin, cred.id)
    assert after.owner == ("dave" if overwrite_code == OK else "alice")

    cred = await create(alice, "deleted", access)
    assert await outcome(caller.DeleteCredential(cpb.DeleteCredentialRequest(id=cred.id))) == delete_code
    assert await outcome(admin.GetCredential(cpb.GetCredentialRequest(id=cred.id))) == (NF if delete_code == OK else OK)


@pytest.mark.parametrize(
    ("caller_kind", "create_code"),
    [
        ("env-view", OK),
        ("env-monitoring", OK),
        ("env-environment", OK),
        ("zone-view", PD),
        ("zone-monitoring", PD),
        ("zone-view+monitoring", PD),
    ],
)
async def test_who_may_create(users: Users, caller_kind: str, create_code: grpc.StatusCode) -> None:
    perms, zones = CALLERS[caller_kind]
    caller = await users.make("dave", perms, zones=zones)
    assert await outcome(caller.CreateCredential(create_req("mine"))) == create_code
    if create_code == OK:
        (cred,) = (await caller.ListCredentials(cpb.ListCredentialsRequest())).credentials
        assert (cred.name, cred.owner, cred.access.level) == ("mine", "dave", cpb.ACCESS_LEVEL_OWNER_ONLY)


@pytest.mark.parametrize("caller_kind", ["env-view", "env-environment", "env-monitoring"])
async def test_environment_users_overwrite_update_and_delete_own_credentials(users: Users, caller_kind: str) -> None:
    """Any environment permission includes viewing the environment, so its holder owns what it creates: a
    CHANGE_ENVIRONMENT_SETTINGS user (who may not overwrite others' credentials) overwrites its own."""
    alice = await users.make("alice", CALLERS[caller_kind][0])
    for access in (OWNER_ONLY, shared("bob"), ALL):
        cred = await create(alice, "own", access)
        new = (await alice.OverwriteCredential(overwrite_req(cred.id))).credential
        assert (new.owner, new.version, new.access) == ("alice", 2, cred.access)
        req = cpb.UpdateCredentialMetadataRequest(id=cred.id, description="renewed")
        assert (await alice.UpdateCredentialMetadata(req)).credential.description == "renewed"
        await alice.DeleteCredential(cpb.DeleteCredentialRequest(id=cred.id))
        await expect_code(alice.GetCredential(cpb.GetCredentialRequest(id=cred.id)), NF)


async def test_user_without_any_permission_cannot_view_the_vault(admin: Client, users: Users) -> None:
    nobody = await users.make("nobody", [])
    public = await create(admin, "public", ALL)
    await expect_code(nobody.ListCredentials(cpb.ListCredentialsRequest()), PD)
    # Not even a public credential: the vault itself is closed (PERMISSION_DENIED, no existence check).
    await expect_code(nobody.GetCredential(cpb.GetCredentialRequest(id=public.id)), PD)
    await expect_code(nobody.CreateCredential(create_req("x")), PD)


async def test_unknown_and_invisible_credentials_look_the_same(admin: Client, users: Users) -> None:
    carol = await users.make("carol", [VIEW])
    hidden = await create(admin, "hidden", OWNER_ONLY)
    unknown_id = "CREDENTIALS_VAULT-0123456789ABCDEF"
    for cred_id in (hidden.id, unknown_id):
        for call in (
            carol.GetCredential(cpb.GetCredentialRequest(id=cred_id)),
            carol.OverwriteCredential(overwrite_req(cred_id)),
            carol.UpdateCredentialMetadata(cpb.UpdateCredentialMetadataRequest(id=cred_id, name="n")),
            carol.DeleteCredential(cpb.DeleteCredentialRequest(id=cred_id)),
            carol.GetCredentialDetails(cpb.GetCredentialDetailsRequest(id=cred_id, app_id="app.a")),
        ):
            err = await expect_code(call, NF)
            assert err.details() == f"credential {cred_id} not found"


# --- taking ownership by overwriting ---------------------------------------------------------------------------


async def test_monitoring_user_overwrite_takes_ownership_and_keeps_access(admin: Client, users: Users) -> None:
    alice = await users.make("alice", [VIEW])
    bob = await users.make("bob", [VIEW])
    mon = await users.make("mon", [MONITORING])
    cred = await create(alice, "takeover", shared("bob"))

    # Before: mon sees it but may not change its metadata (not the owner).
    await expect_code(mon.UpdateCredentialMetadata(cpb.UpdateCredentialMetadataRequest(id=cred.id, name="x")), PD)

    new = (await mon.OverwriteCredential(overwrite_req(cred.id))).credential
    assert new.owner == "mon"
    assert new.version == 2
    assert new.access == cpb.Access(level=cpb.ACCESS_LEVEL_SHARED, users=["bob"])
    assert (new.id, new.name, list(new.scopes)) == (cred.id, cred.name, list(cred.scopes))

    # alice is no longer owner nor listed: the credential disappeared for her; bob still has it.
    await expect_code(alice.GetCredential(cpb.GetCredentialRequest(id=cred.id)), NF)
    await expect_code(alice.OverwriteCredential(overwrite_req(cred.id)), NF)
    assert cred.id not in await listed_ids(alice)
    assert (await get(bob, cred.id)).owner == "mon"

    # Now the owner, mon may change the metadata and the access level.
    upd = cpb.UpdateCredentialMetadataRequest(id=cred.id, name="mine now", access=OWNER_ONLY)
    new = (await mon.UpdateCredentialMetadata(upd)).credential
    assert (new.name, new.access.level, new.version) == ("mine now", cpb.ACCESS_LEVEL_OWNER_ONLY, 3)
    await expect_code(bob.GetCredential(cpb.GetCredentialRequest(id=cred.id)), NF)
    assert (await get(admin, cred.id)).owner == "mon"


async def test_monitoring_user_overwrite_may_set_a_new_access_level(users: Users) -> None:
    alice = await users.make("alice", [VIEW])
    carol = await users.make("carol", [VIEW])
    mon = await users.make("mon", [MONITORING])
    cred = await create(alice, "takeover", OWNER_ONLY)

    new = (await mon.OverwriteCredential(overwrite_req(cred.id, access=ALL))).credential
    assert (new.owner, new.access.level, list(new.access.users)) == ("mon", cpb.ACCESS_LEVEL_ALL, [])
    assert (await get(carol, cred.id)).owner == "mon"

    new = (await mon.OverwriteCredential(overwrite_req(cred.id, access=shared("alice")))).credential
    assert (new.access.level, list(new.access.users), new.version) == (cpb.ACCESS_LEVEL_SHARED, ["alice"], 3)
    assert (await get(alice, cred.id)).owner == "mon"
    await expect_code(carol.GetCredential(cpb.GetCredentialRequest(id=cred.id)), NF)


async def test_environment_settings_alone_deletes_but_does_not_overwrite(admin: Client, users: Users) -> None:
    alice = await users.make("alice", [VIEW])
    env = await users.make("env", [ENVIRONMENT])
    cred = await create(alice, "victim", OWNER_ONLY)
    await expect_code(env.OverwriteCredential(overwrite_req(cred.id)), PD)
    assert (await get(admin, cred.id)).owner == "alice"

    await admin.SetUserPermissions(ipb.SetUserPermissionsRequest(username="env", permissions=[ENVIRONMENT, MONITORING]))
    assert (await env.OverwriteCredential(overwrite_req(cred.id))).credential.owner == "env"

    other = await create(alice, "victim 2", ALL)
    await env.DeleteCredential(cpb.DeleteCredentialRequest(id=other.id))
    await expect_code(admin.GetCredential(cpb.GetCredentialRequest(id=other.id)), NF)


# --- lists, counts and page tokens ------------------------------------------------------------------------------


async def _mixed_vault(admin: Client, users: Users) -> tuple[dict[str, Client], dict[str, str]]:
    """7 credentials of mixed owners and access levels; returns callers and name -> id."""
    callers = {
        "admin": admin,
        "alice": await users.make("alice", [VIEW]),
        "bob": await users.make("bob", [VIEW]),
        "carol": await users.make("carol", [VIEW]),
        "zoe": await users.make("zoe", [], zones={"zoneA": [VIEW, MONITORING]}),
    }
    specs = [
        ("alice", "a-owner-only", OWNER_ONLY, {}),
        ("alice", "a-shared-bob", shared("bob"), {"contents": token("t1")}),
        ("alice", "a-all", ALL, {"scopes": [SYN, APP]}),
        ("bob", "b-owner-only", OWNER_ONLY, {}),
        ("bob", "b-shared-carol-alice", shared("carol", "alice"), {"scopes": [APP]}),
        ("carol", "c-all", ALL, {"contents": token("t2")}),
        ("admin", "z-admin-owner-only", OWNER_ONLY, {"scopes": [APP]}),
    ]
    ids = {}
    for owner, name, access, kw in specs:
        ids[name] = (await create(callers[owner], name, access, **kw)).id
    return callers, ids


VISIBLE = {
    "admin": {
        "a-owner-only",
        "a-shared-bob",
        "a-all",
        "b-owner-only",
        "b-shared-carol-alice",
        "c-all",
        "z-admin-owner-only",
    },
    "alice": {"a-owner-only", "a-shared-bob", "a-all", "b-shared-carol-alice", "c-all"},
    "bob": {"a-shared-bob", "a-all", "b-owner-only", "b-shared-carol-alice", "c-all"},
    "carol": {"a-all", "b-shared-carol-alice", "c-all"},
    "zoe": {"a-all", "c-all"},
}


async def test_paging_reveals_exactly_the_visible_set(admin: Client, users: Users) -> None:
    callers, ids = await _mixed_vault(admin, users)
    for who, client in callers.items():
        seen: list[str] = []
        page_token = ""
        pages = 0
        while True:
            resp = await client.ListCredentials(cpb.ListCredentialsRequest(page_size=2, page_token=page_token))
            assert len(resp.credentials) <= 2
            assert resp.total_size == len(VISIBLE[who]), who
            seen += [c.id for c in resp.credentials]
            pages += 1
            page_token = resp.next_page_token
            if not page_token:
                break
            assert pages < 10
        assert len(seen) == len(set(seen)), f"duplicates for {who}"
        assert set(seen) == {ids[n] for n in VISIBLE[who]}, who
        assert pages == -(-len(VISIBLE[who]) // 2)


# caller, filters, names expected (always within what the caller may see)
FILTER_CASES = [
    ("alice", {"owner": "bob"}, {"b-shared-carol-alice"}),
    ("alice", {"owner": "admin"}, set()),
    ("admin", {"owner": "bob"}, {"b-owner-only", "b-shared-carol-alice"}),
    ("alice", {"access_level": cpb.ACCESS_LEVEL_OWNER_ONLY}, {"a-owner-only"}),
    ("admin", {"access_level": cpb.ACCESS_LEVEL_OWNER_ONLY}, {"a-owner-only", "b-owner-only", "z-admin-owner-only"}),
    ("bob", {"access_level": cpb.ACCESS_LEVEL_SHARED}, {"a-shared-bob", "b-shared-carol-alice"}),
    ("carol", {"access_level": cpb.ACCESS_LEVEL_SHARED}, {"b-shared-carol-alice"}),
    ("carol", {"type": cpb.CREDENTIAL_TYPE_TOKEN}, {"c-all"}),
    ("bob", {"type": cpb.CREDENTIAL_TYPE_TOKEN}, {"a-shared-bob", "c-all"}),
    ("bob", {"type": cpb.CREDENTIAL_TYPE_USERNAME_PASSWORD}, {"a-all", "b-owner-only", "b-shared-carol-alice"}),
    ("zoe", {"type": cpb.CREDENTIAL_TYPE_USERNAME_PASSWORD}, {"a-all"}),
    ("alice", {"scope": cpb.CREDENTIAL_SCOPE_APP_ENGINE}, {"a-all", "b-shared-carol-alice"}),
    ("zoe", {"scope": cpb.CREDENTIAL_SCOPE_APP_ENGINE}, {"a-all"}),
    ("carol", {"name_contains": "OWNER"}, set()),
    ("bob", {"name_contains": "OWNER"}, {"b-owner-only"}),
    ("admin", {"name_contains": "Owner-Only"}, {"a-owner-only", "b-owner-only", "z-admin-owner-only"}),
    ("zoe", {"name_contains": "-"}, {"a-all", "c-all"}),
    ("alice", {"owner": "alice", "access_level": cpb.ACCESS_LEVEL_SHARED}, {"a-shared-bob"}),
]


async def test_filters_intersect_with_visibility(admin: Client, users: Users) -> None:
    callers, ids = await _mixed_vault(admin, users)
    for who, filters, expected in FILTER_CASES:
        resp = await callers[who].ListCredentials(cpb.ListCredentialsRequest(**filters))
        assert {c.id for c in resp.credentials} == {ids[n] for n in expected}, (who, filters)
        assert resp.total_size == len(expected), (who, filters)


async def test_name_contains_is_a_literal_substring(admin: Client) -> None:
    for name in ("a_b", "axb", "100%", "1000"):
        await create(admin, name)
    for needle, expected in (("_", ["a_b"]), ("%", ["100%"]), ("A_B", ["a_b"]), ("x", ["axb"])):
        resp = await admin.ListCredentials(cpb.ListCredentialsRequest(name_contains=needle))
        assert [c.name for c in resp.credentials] == expected, needle


async def test_page_token_is_bound_to_filters_and_caller(admin: Client, users: Users) -> None:
    callers, _ = await _mixed_vault(admin, users)
    alice, bob = callers["alice"], callers["bob"]
    first = await alice.ListCredentials(cpb.ListCredentialsRequest(page_size=2))
    assert first.next_page_token
    tok = first.next_page_token
    for other_filter in (
        {"owner": "alice"},
        {"name_contains": "a"},
        {"type": cpb.CREDENTIAL_TYPE_TOKEN},
        {"access_level": cpb.ACCESS_LEVEL_ALL},
        {"scope": cpb.CREDENTIAL_SCOPE_SYNTHETIC},
    ):
        req = cpb.ListCredentialsRequest(page_size=2, page_token=tok, **other_filter)
        await expect_code(alice.ListCredentials(req), INVALID)
    # Another caller (another visible set) cannot reuse it either, nor can anybody use garbage.
    await expect_code(bob.ListCredentials(cpb.ListCredentialsRequest(page_size=2, page_token=tok)), INVALID)
    await expect_code(admin.ListCredentials(cpb.ListCredentialsRequest(page_size=2, page_token=tok)), INVALID)
    await expect_code(alice.ListCredentials(cpb.ListCredentialsRequest(page_token="garbage")), INVALID)
    # The same filters (and another page size) accept it.
    nxt = await alice.ListCredentials(cpb.ListCredentialsRequest(page_size=3, page_token=tok))
    assert len(nxt.credentials) == 3


@pytest.mark.parametrize(("size", "code"), [(-1, INVALID), (501, INVALID), (500, OK), (1, OK)])
async def test_page_size_limits(admin: Client, size: int, code: grpc.StatusCode) -> None:
    await create(admin, "one")
    assert await outcome(admin.ListCredentials(cpb.ListCredentialsRequest(page_size=size))) == code


async def test_default_page_size_is_100(admin: Client) -> None:
    await asyncio.gather(*(create(admin, f"cred-{i:03d}") for i in range(101)))
    first = await admin.ListCredentials(cpb.ListCredentialsRequest())
    assert (len(first.credentials), first.total_size) == (100, 101)
    assert first.next_page_token
    second = await admin.ListCredentials(cpb.ListCredentialsRequest(page_token=first.next_page_token))
    assert [c.name for c in second.credentials] == ["cred-100"]
    assert (second.next_page_token, second.total_size) == ("", 101)


# --- token scopes x permissions --------------------------------------------------------------------------------


async def test_read_only_token(users: Users) -> None:
    writer = await users.make("alice", [VIEW], scopes=["credentialVault.read", "credentialVault.write"])
    cred = await create(writer, "mine", ALL, scopes=[APP])
    reader = await users.admin.CreateToken(
        tpb.CreateTokenRequest(name="ro", scopes=["credentialVault.read"], kind=tpb.TOKEN_KIND_API, owner="alice")
    )
    ro = Client(users.channel, reader.token, "alice")

    assert (await get(ro, cred.id)).id == cred.id
    assert await listed_ids(ro) == [cred.id]
    details = cpb.GetCredentialDetailsRequest(id=cred.id, app_id="app.a")
    assert (await ro.GetCredentialDetails(details)).details.username_password.password == "pw-123"
    for call in (
        ro.CreateCredential(create_req("nope")),
        ro.OverwriteCredential(overwrite_req(cred.id)),
        ro.UpdateCredentialMetadata(cpb.UpdateCredentialMetadataRequest(id=cred.id, name="n")),
        ro.DeleteCredential(cpb.DeleteCredentialRequest(id=cred.id)),
    ):
        err = await expect_code(call, PD)
        assert "credentialVault.write" in (err.details() or "")
    assert (await get(writer, cred.id)).version == 1


async def test_write_only_token(users: Users) -> None:
    wo = await users.make("alice", [VIEW], scopes=["credentialVault.write"])
    cred = await create(wo, "mine")
    assert cred.owner == "alice"
    for call in (
        wo.GetCredential(cpb.GetCredentialRequest(id=cred.id)),
        wo.ListCredentials(cpb.ListCredentialsRequest()),
        wo.GetCredentialDetails(cpb.GetCredentialDetailsRequest(id=cred.id, app_id="app.a")),
    ):
        err = await expect_code(call, PD)
        assert "credentialVault.read" in (err.details() or "")
    # Write does not include read, but writing one's own credentials works.
    assert (await wo.OverwriteCredential(overwrite_req(cred.id))).credential.version == 2
    await wo.DeleteCredential(cpb.DeleteCredentialRequest(id=cred.id))


async def test_token_without_vault_scopes(admin: Client, users: Users) -> None:
    other = await users.make("alice", [VIEW, MONITORING, ENVIRONMENT], scopes=["apiTokens.read", "users.read"])
    cred = await create(admin, "x", ALL)
    await expect_code(other.GetCredential(cpb.GetCredentialRequest(id=cred.id)), PD)
    await expect_code(other.CreateCredential(create_req("y")), PD)
    await expect_code(other.DeleteCredential(cpb.DeleteCredentialRequest(id=cred.id)), PD)


async def test_effective_rights_follow_permission_changes_immediately(admin: Client, users: Users) -> None:
    alice = await users.make("alice", [VIEW])
    mon = await users.make("mon", [MONITORING])
    cred = await create(alice, "a", OWNER_ONLY)
    assert (await get(mon, cred.id)).owner == "alice"

    # CHANGE_MONITORING_SETTINGS -> VIEW_ENVIRONMENT: the same token loses sight of and power over alice's credential.
    await admin.SetUserPermissions(ipb.SetUserPermissionsRequest(username="mon", permissions=[VIEW]))
    await expect_code(mon.GetCredential(cpb.GetCredentialRequest(id=cred.id)), NF)
    await expect_code(mon.OverwriteCredential(overwrite_req(cred.id)), NF)
    public = await create(alice, "public", ALL)
    await expect_code(mon.DeleteCredential(cpb.DeleteCredentialRequest(id=public.id)), PD)

    # No permission at all: no vault, no creating, although the token still carries every scope.
    await admin.SetUserPermissions(ipb.SetUserPermissionsRequest(username="alice", permissions=[]))
    await expect_code(alice.CreateCredential(create_req("b")), PD)
    await expect_code(alice.GetCredential(cpb.GetCredentialRequest(id=cred.id)), PD)
    await expect_code(alice.ListCredentials(cpb.ListCredentialsRequest()), PD)
    await expect_code(alice.DeleteCredential(cpb.DeleteCredentialRequest(id=cred.id)), NF)

    # Zone permission only: public credentials, nothing else.
    await admin.SetUserPermissions(
        ipb.SetUserPermissionsRequest(
            username="alice", zone_permissions=[ipb.ZonePermissions(management_zone="z", permissions=[VIEW])]
        )
    )
    assert await listed_ids(alice) == [public.id]
    await expect_code(alice.GetCredential(cpb.GetCredentialRequest(id=cred.id)), NF)

    # Granted back: the same tokens work again.
    await admin.SetUserPermissions(ipb.SetUserPermissionsRequest(username="alice", permissions=[VIEW]))
    await admin.SetUserPermissions(ipb.SetUserPermissionsRequest(username="mon", permissions=[MONITORING]))
    assert (await get(alice, cred.id)).owner == "alice"
    assert (await mon.OverwriteCredential(overwrite_req(cred.id))).credential.owner == "mon"


async def test_deleted_users_token_stops_at_once_and_credentials_stay(admin: Client, users: Users) -> None:
    alice = await users.make("alice", [VIEW])
    own = await create(alice, "a-own", OWNER_ONLY)
    public = await create(alice, "a-public", ALL)
    assert (await alice.GetCurrentUser(ipb.GetCurrentUserRequest())).user.username == "alice"

    await admin.DeleteUser(ipb.DeleteUserRequest(username="alice"))
    await expect_code(alice.GetCurrentUser(ipb.GetCurrentUserRequest()), grpc.StatusCode.UNAUTHENTICATED)
    await expect_code(alice.GetCredential(cpb.GetCredentialRequest(id=own.id)), grpc.StatusCode.UNAUTHENTICATED)
    await expect_code(alice.CreateCredential(create_req("late")), grpc.StatusCode.UNAUTHENTICATED)

    for cred in (own, public):
        assert await get(admin, cred.id) == cred
    resp = await admin.ListCredentials(cpb.ListCredentialsRequest(owner="alice"))
    assert {c.id for c in resp.credentials} == {own.id, public.id}
    assert {c.owner for c in resp.credentials} == {"alice"}


async def test_a_deleted_users_name_is_never_given_to_a_new_account(admin: Client, users: Users) -> None:
    """Credentials keep naming their deleted owner: a new 'alice' must not inherit them."""
    alice = await users.make("alice", [VIEW])
    own = await create(alice, "a-own", OWNER_ONLY)
    await admin.DeleteUser(ipb.DeleteUserRequest(username="alice"))
    err = await expect_code(
        admin.CreateUser(ipb.CreateUserRequest(username="alice", permissions=[VIEW])), grpc.StatusCode.ALREADY_EXISTS
    )
    assert "deleted user" in (err.details() or "")
    assert (await get(admin, own.id)).owner == "alice"


# --- GetCredentialDetails: the AppEngine exception ------------------------------------------------------------


def _details_req(cred_id: str, app_id: str = "") -> cpb.GetCredentialDetailsRequest:
    return cpb.GetCredentialDetailsRequest(id=cred_id, app_id=app_id)


def _app(apps: list[str] | None = None, contextless: bool = False) -> cpb.AppEngineAccess:
    return cpb.AppEngineAccess(allowed_apps=apps or [], allow_contextless_access=contextless)


async def _details_rows(vault: RunningVault, cred_id: str) -> list[tuple[str, str, str | None]]:
    async with vault.store.autocommit() as tx:
        rows = await tx.list_audit()
    out = []
    for r in rows:
        if r["action"] == "credential.read_details" and r["target"] == cred_id:
            detail = json.loads(r["detail"]) if isinstance(r["detail"], str) else r["detail"]
            out.append((r["actor"], r["outcome"], detail.get("app_id")))
    return sorted(out)


# credential (access, scopes, app_engine), caller, app_id, expected
DETAILS_CASES = [
    ("all-apps", "owner", "app.any", OK),
    ("all-apps", "owner", "", PD),  # contextless access off
    ("all-apps-contextless", "owner", "", OK),
    ("all-apps-contextless", "owner", "app.any", OK),
    ("only-app-a", "owner", "app.a", OK),
    ("only-app-a", "owner", "app.b", PD),
    ("only-app-a", "owner", "", PD),
    ("only-app-a-contextless", "owner", "", OK),
    ("only-app-a-contextless", "owner", "app.b", PD),
    ("no-app-engine-scope", "owner", "app.a", PD),
    ("no-app-engine-scope", "admin", "app.a", PD),
    ("no-app-engine-scope", "admin", "", PD),
    ("all-apps", "admin", "app.a", PD),  # owner-only credential of someone else: admin sees it, has no access
    ("all-apps", "other", "app.a", NF),  # not even visible
    ("shared-bob", "bob", "app.a", OK),
    ("shared-bob", "admin", "app.a", PD),
    ("shared-bob", "other", "app.a", NF),
    ("public", "other", "app.a", OK),
    ("public", "admin", "app.a", OK),
    ("public", "zone", "app.a", OK),
    ("public-no-app-engine-scope", "admin", "app.a", PD),
]

DETAILS_CREDENTIALS: dict[str, tuple[cpb.Access, list[int], cpb.AppEngineAccess | None]] = {
    "all-apps": (OWNER_ONLY, [APP], _app()),
    "all-apps-contextless": (OWNER_ONLY, [APP], _app(contextless=True)),
    "only-app-a": (OWNER_ONLY, [SYN, APP], _app(["app.a"])),
    "only-app-a-contextless": (OWNER_ONLY, [APP], _app(["app.a"], contextless=True)),
    "no-app-engine-scope": (OWNER_ONLY, [SYN], None),
    "shared-bob": (shared("bob"), [APP], _app()),
    "public": (ALL, [APP], _app()),
    "public-no-app-engine-scope": (ALL, [SYN], None),
}


async def test_get_credential_details(vault: RunningVault, admin: Client, users: Users) -> None:
    """One table, one server: each row gets a fresh credential of alice's; every mismatch is reported at once."""
    alice = await users.make("alice", [VIEW])
    callers = {
        "owner": alice,
        "admin": admin,
        "bob": await users.make("bob", [VIEW]),
        "other": await users.make("carol", [VIEW]),
        "zone": await users.make("zoe", [], zones={"z": [VIEW]}),
    }
    secret = "Det41ls-s3cret-value"
    mismatches = []
    for cred_kind, role, app_id, code in DETAILS_CASES:
        case = f"{cred_kind} / {role} / app_id={app_id!r}"
        access, scopes, app = DETAILS_CREDENTIALS[cred_kind]
        cred = await create(alice, cred_kind, access, scopes=scopes, app_engine=app, contents=up("svc", secret))
        caller = callers[role]
        got, resp, message = await result(caller.GetCredentialDetails(_details_req(cred.id, app_id)))
        if got != code:
            mismatches.append(f"{case}: expected {code.name}, got {got.name} ({message})")
            continue
        assert secret not in message, case
        if code == OK:
            assert resp.details.username_password == cpb.UsernamePassword(username="svc", password=secret), case
            assert resp.credential == cred, case
        expected_rows = {
            OK: [(caller.username, "ok", app_id or None)],
            PD: [(caller.username, "denied", app_id or None)],
            NF: [],  # invisible: nothing revealed, nothing read
        }[code]
        assert await _details_rows(vault, cred.id) == expected_rows, case
    assert mismatches == []


async def test_contents_need_the_app_engine_scope_whatever_app_settings_the_row_holds(
    vault: RunningVault, users: Users
) -> None:
    """The scope decides: app settings left in a credential's row (written by hand here; the API stores none without
    the scope) open nothing."""
    alice = await users.make("alice", [VIEW])
    cred = await create(alice, "synthetic only", ALL, scopes=[SYN], contents=up("svc", "pw"))
    async with vault.store.transaction() as tx:
        status = await tx.conn.execute(
            "UPDATE credentials SET app_allowed_apps = '{app.a}', app_contextless = true WHERE id = $1", cred.id
        )
    assert status == "UPDATE 1"
    for app_id in ("app.a", ""):
        denied = await expect_code(alice.GetCredentialDetails(_details_req(cred.id, app_id)), PD)
        assert "does not have the APP_ENGINE scope" in (denied.details() or "")


async def test_details_of_token_credential_and_every_read_is_audited(vault: RunningVault, users: Users) -> None:
    alice = await users.make("alice", [VIEW])
    cred = await create(alice, "tok", ALL, scopes=[APP], app_engine=_app(["app.a"]), contents=token("T0ken-v4lue"))
    for _ in range(3):
        resp = await alice.GetCredentialDetails(_details_req(cred.id, "app.a"))
        assert resp.details.token.token == "T0ken-v4lue"
    await expect_code(alice.GetCredentialDetails(_details_req(cred.id, "app.b")), PD)
    rows = await _details_rows(vault, cred.id)
    assert rows == [("alice", "denied", "app.b")] + [("alice", "ok", "app.a")] * 3


async def test_responses_never_contain_the_secret(admin: Client, users: Users) -> None:
    alice = await users.make("alice", [VIEW])
    secret, secret2 = "S3cr3t-pa55-XYZ-first", "S3cr3t-pa55-XYZ-second"
    created = await alice.CreateCredential(
        create_req("secretive", contents=up("svc", secret), access=ALL, scopes=[SYN, APP])
    )
    responses: list[Any] = [created]
    cred_id = created.credential.id
    responses.append(await alice.GetCredential(cpb.GetCredentialRequest(id=cred_id)))
    responses.append(await admin.GetCredential(cpb.GetCredentialRequest(id=cred_id)))
    responses.append(await alice.ListCredentials(cpb.ListCredentialsRequest()))
    responses.append(await alice.UpdateCredentialMetadata(cpb.UpdateCredentialMetadataRequest(id=cred_id, name="n")))
    responses.append(await alice.OverwriteCredential(overwrite_req(cred_id, password=secret2)))
    responses.append(await admin.ListCredentials(cpb.ListCredentialsRequest(name_contains="n")))
    for resp in responses:
        raw = resp.SerializeToString()
        assert secret.encode() not in raw
        assert secret2.encode() not in raw
        assert b"pa55" not in raw
    # The contents really are stored: the AppEngine path returns the new password.
    details = await alice.GetCredentialDetails(_details_req(cred_id, "app.a"))
    assert details.details.username_password.password == secret2


# --- identity RPCs --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "perms",
    [pytest.param([VIEW], id="view"), pytest.param([VIEW, MONITORING], id="monitoring")],
)
async def test_identity_rpcs_need_environment_settings(admin: Client, users: Users, perms: list[int]) -> None:
    alice = await users.make("alice", perms)
    await users.make("bob", [VIEW])
    for call in (
        alice.CreateUser(ipb.CreateUserRequest(username="mallory", permissions=[VIEW])),
        alice.GetUser(ipb.GetUserRequest(username="bob")),
        alice.ListUsers(ipb.ListUsersRequest()),
        alice.SetUserPermissions(ipb.SetUserPermissionsRequest(username="alice", permissions=[ENVIRONMENT])),
        alice.DeleteUser(ipb.DeleteUserRequest(username="bob")),
    ):
        await expect_code(call, PD)
    await expect_code(admin.GetUser(ipb.GetUserRequest(username="mallory")), NF)
    assert list((await admin.GetUser(ipb.GetUserRequest(username="alice"))).user.permissions) == sorted(perms)
    assert (await admin.GetUser(ipb.GetUserRequest(username="bob"))).user.username == "bob"


async def test_identity_rpcs_need_users_scopes(users: Users) -> None:
    reader = await users.make("root2", [ENVIRONMENT], scopes=["users.read"])
    writer = await users.make("root3", [ENVIRONMENT], scopes=["users.write"])
    await expect_code(reader.CreateUser(ipb.CreateUserRequest(username="x1", permissions=[VIEW])), PD)
    await expect_code(reader.DeleteUser(ipb.DeleteUserRequest(username="root3")), PD)
    assert (await reader.GetUser(ipb.GetUserRequest(username="root3"))).user.username == "root3"
    assert "root2" in [u.username for u in (await reader.ListUsers(ipb.ListUsersRequest())).users]

    await expect_code(writer.GetUser(ipb.GetUserRequest(username="root2")), PD)
    created = await writer.CreateUser(ipb.CreateUserRequest(username="x2", permissions=[VIEW]))
    assert created.user.username == "x2"


async def test_zone_cannot_hold_environment_settings(admin: Client, users: Users) -> None:
    bad_zone = [ipb.ZonePermissions(management_zone="z", permissions=[ENVIRONMENT])]
    await expect_code(admin.CreateUser(ipb.CreateUserRequest(username="zed", zone_permissions=bad_zone)), INVALID)
    await expect_code(admin.GetUser(ipb.GetUserRequest(username="zed")), NF)
    await users.make("zed", [VIEW])
    req = ipb.SetUserPermissionsRequest(username="zed", permissions=[VIEW], zone_permissions=bad_zone)
    await expect_code(admin.SetUserPermissions(req), INVALID)
    assert list((await admin.GetUser(ipb.GetUserRequest(username="zed"))).user.zone_permissions) == []


async def test_duplicate_user(admin: Client, users: Users) -> None:
    await users.make("alice", [VIEW])
    req = ipb.CreateUserRequest(username="alice", permissions=[ENVIRONMENT])
    await expect_code(admin.CreateUser(req), grpc.StatusCode.ALREADY_EXISTS)
    assert list((await admin.GetUser(ipb.GetUserRequest(username="alice"))).user.permissions) == [VIEW]


@pytest.mark.parametrize(
    ("perms", "zones", "scopes"),
    [
        pytest.param([VIEW], None, None, id="view"),
        pytest.param([], {"z": [VIEW]}, None, id="zone-only"),
        pytest.param([], None, None, id="no-permissions"),
        pytest.param([VIEW], None, ["credentialVault.read"], id="vault-read-scope-only"),
    ],
)
async def test_get_current_user_works_for_any_valid_token(
    users: Users, perms: list[int], zones: dict[str, list[int]] | None, scopes: list[str] | None
) -> None:
    me = await users.make("me@example.com", perms, zones=zones, scopes=scopes)
    resp = await me.GetCurrentUser(ipb.GetCurrentUserRequest())
    assert resp.user.username == "me@example.com"
    assert list(resp.user.permissions) == perms
    assert me.token is not None
    assert resp.token_id == me.token.rsplit(".", 1)[0]
    assert list(resp.token_scopes) == sorted(scopes or ALL_SCOPES)
