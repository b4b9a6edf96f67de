"""The audit log through AuditService.ListAuditEvents: only CHANGE_ENVIRONMENT_SETTINGS with an auditLogs.read
token; filters (actor, action, target, time range); page tokens; never a secret value."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import timestamp_pb2

from credvault.v1 import audit_pb2 as apb
from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import identity_pb2 as ipb
from credvault.v1 import tokens_pb2 as tpb
from tests.conftest import ALL_SCOPES, Client, Users
from tests.helpers import APP, create_req, expect_code, up
from vault_service.pagination import encode_page_token

VIEW = 1
MONITORING = 2
ENVIRONMENT = 3
CANARY = "CANARY-audit-3b9f-never-listed"


async def list_all(client: Client, **filters: object) -> list[apb.AuditEvent]:
    events: list[apb.AuditEvent] = []
    request = apb.ListAuditEventsRequest(page_size=2, **filters)
    while True:
        page = await client.ListAuditEvents(request)
        events += page.events
        if not page.next_page_token:
            return events
        request.page_token = page.next_page_token


async def test_who_did_what_to_which_id_when(admin: Client, users: Users) -> None:
    req = create_req("shop", up("alice", CANARY), scopes=[APP])
    req.app_engine.allow_contextless_access = True
    cred = (await admin.CreateCredential(req)).credential
    await admin.OverwriteCredential(cpb.OverwriteCredentialRequest(id=cred.id, contents=up("alice", CANARY + "2")))
    await admin.GetCredentialDetails(cpb.GetCredentialDetailsRequest(id=cred.id))
    ops = await users.make("ops", [ENVIRONMENT])
    me = await admin.GetCurrentUser(ipb.GetCurrentUserRequest())

    response = await ops.ListAuditEvents(apb.ListAuditEventsRequest())
    events = list(response.events)
    assert response.next_page_token == ""
    assert [e.id for e in events] == sorted((e.id for e in events), reverse=True)  # newest first
    mine = [(e.actor, e.action, e.target_id, e.outcome) for e in events if e.target_id == cred.id]
    assert mine == [
        ("admin", "credential.read_details", cred.id, "ok"),
        ("admin", "credential.overwrite", cred.id, "ok"),
        ("admin", "credential.create", cred.id, "ok"),
    ]
    read = next(e for e in events if e.action == "credential.read_details")
    assert read.token_id == me.token_id
    assert read.token_id.startswith("cv0c01.")
    assert read.details["version"] == "2"
    assert read.time.seconds > 0
    actions = {e.action for e in events}
    assert {"admin.bootstrap", "user.create", "token.create"} <= actions
    bootstrap = next(e for e in events if e.action == "admin.bootstrap")
    assert (bootstrap.actor, bootstrap.token_id, bootstrap.target_id) == ("<local operator>", "", "admin")
    assert CANARY.encode() not in response.SerializeToString()


@pytest.mark.parametrize(
    ("permissions", "scopes", "code"),
    [
        ([ENVIRONMENT], ALL_SCOPES, grpc.StatusCode.OK),
        ([ENVIRONMENT], ["auditLogs.read"], grpc.StatusCode.OK),
        ([ENVIRONMENT], [s for s in ALL_SCOPES if s != "auditLogs.read"], grpc.StatusCode.PERMISSION_DENIED),
        ([VIEW], ALL_SCOPES, grpc.StatusCode.PERMISSION_DENIED),
        ([VIEW, MONITORING], ALL_SCOPES, grpc.StatusCode.PERMISSION_DENIED),
        ([], ALL_SCOPES, grpc.StatusCode.PERMISSION_DENIED),
    ],
)
async def test_only_environment_settings_with_the_scope(
    users: Users, permissions: list[int], scopes: list[str], code: grpc.StatusCode
) -> None:
    caller = await users.make("caller", permissions, scopes=scopes)
    call = caller.ListAuditEvents(apb.ListAuditEventsRequest())
    if code == grpc.StatusCode.OK:
        assert (await call).events
    else:
        err = await expect_code(call, code)
        assert "CHANGE_ENVIRONMENT_SETTINGS" in (err.details() or "") or "auditLogs.read" in (err.details() or "")


async def test_without_a_valid_token(admin: Client, channel: grpc.aio.Channel) -> None:
    await expect_code(
        Client(channel, None).ListAuditEvents(apb.ListAuditEventsRequest()), grpc.StatusCode.UNAUTHENTICATED
    )
    assert admin.token is not None
    wrong = admin.token[:-4] + ("AAAA" if not admin.token.endswith("AAAA") else "BBBB")
    await expect_code(
        Client(channel, wrong).ListAuditEvents(apb.ListAuditEventsRequest()), grpc.StatusCode.UNAUTHENTICATED
    )


async def test_filters_and_pages(admin: Client, users: Users) -> None:
    ids = [(await admin.CreateCredential(create_req(f"c{i}"))).credential.id for i in range(5)]
    bob = await users.make("bob", [VIEW])
    bobs = (await bob.CreateCredential(create_req("bob's"))).credential.id
    await admin.DeleteCredential(cpb.DeleteCredentialRequest(id=ids[0]))

    everything = await list_all(admin)
    assert len({e.id for e in everything}) == len(everything)  # pages neither repeat nor skip
    unpaged = (await admin.ListAuditEvents(apb.ListAuditEventsRequest(page_size=500))).events
    assert [e.id for e in everything] == [e.id for e in unpaged]

    assert [e.target_id for e in await list_all(admin, actor="bob")] == [bobs]
    creates = await list_all(admin, action="credential.create")
    assert [e.target_id for e in creates] == [bobs, *reversed(ids)]
    assert [e.action for e in await list_all(admin, target_id=ids[0])] == ["credential.delete", "credential.create"]
    assert await list_all(admin, actor="nobody") == []

    # time range: [start, end) on the events' own times
    third = creates[2]
    since = await list_all(admin, action="credential.create", start_time=third.time)
    assert [e.id for e in since] == [e.id for e in creates[:3]]
    before = await list_all(admin, action="credential.create", end_time=third.time)
    assert [e.id for e in before] == [e.id for e in creates[3:]]
    window = await list_all(admin, action="credential.create", start_time=creates[3].time, end_time=third.time)
    assert [e.id for e in window] == [creates[3].id]


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"page_size": -1}, "page_size"),
        ({"page_size": 501}, "page_size"),
        ({"page_token": "not-a-token"}, "page_token"),
        ({"actor": "x" * 200}, "actor"),
        ({"action": "a\x00b"}, "action"),
        ({"target_id": "t" * 301}, "target_id"),
        (
            {"start_time": timestamp_pb2.Timestamp(seconds=2000), "end_time": timestamp_pb2.Timestamp(seconds=1000)},
            "end_time",
        ),
    ],
)
async def test_bad_requests_name_the_field(admin: Client, request_fields: dict[str, object], field: str) -> None:
    request = apb.ListAuditEventsRequest(**request_fields)
    err = await expect_code(admin.ListAuditEvents(request), grpc.StatusCode.INVALID_ARGUMENT)
    assert (err.details() or "").startswith(f"{field}:")


async def test_a_page_token_is_bound_to_its_filters(admin: Client) -> None:
    for i in range(3):
        await admin.CreateToken(tpb.CreateTokenRequest(name=f"t{i}", scopes=["users.read"], kind=tpb.TOKEN_KIND_API))
    first = await admin.ListAuditEvents(apb.ListAuditEventsRequest(page_size=1, action="token.create"))
    assert first.next_page_token
    other = apb.ListAuditEventsRequest(page_size=1, action="credential.create", page_token=first.next_page_token)
    err = await expect_code(admin.ListAuditEvents(other), grpc.StatusCode.INVALID_ARGUMENT)
    assert (err.details() or "").startswith("page_token:")
    # a token of the right shape whose key is not an event id: refused, not an internal error
    forged = encode_page_token(("audit", None, "token.create", None, None, None), "not-an-id")
    request = apb.ListAuditEventsRequest(page_size=1, action="token.create", page_token=forged)
    err = await expect_code(admin.ListAuditEvents(request), grpc.StatusCode.INVALID_ARGUMENT)
    assert (err.details() or "").startswith("page_token:")
