"""Denials in the audit log: a known caller denied for a missing scope or permission gets one entry per call (actor,
token, action = the RPC, outcome denied, the reason); failed authentications are folded to at most one entry per
source and kind per interval, carrying the count."""

from __future__ import annotations

import grpc

from credvault.v1 import audit_pb2 as apb
from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import identity_pb2 as ipb
from tests.conftest import Client, Users
from tests.helpers import create_req, expect_code
from vault_service.denial_audit import DenialAudit
from vault_service.storage.pool import Store
from vault_service.throttle import Throttle

VIEW = 1
ENVIRONMENT = 3
CREATE = "credvault.v1.CredentialsService/CreateCredential"
LIST = "credvault.v1.CredentialsService/ListCredentials"


async def events(admin: Client, **filters: object) -> list[apb.AuditEvent]:
    return list((await admin.ListAuditEvents(apb.ListAuditEventsRequest(page_size=500, **filters))).events)


async def test_scope_and_permission_denials_are_audited(admin: Client, users: Users) -> None:
    reader = await users.make("reader", [VIEW], scopes=["credentialVault.read"])
    nobody = await users.make("nobody", [])
    for _ in range(2):
        await expect_code(reader.CreateCredential(create_req("no")), grpc.StatusCode.PERMISSION_DENIED)
    await expect_code(nobody.ListCredentials(cpb.ListCredentialsRequest()), grpc.StatusCode.PERMISSION_DENIED)
    await reader.ListCredentials(cpb.ListCredentialsRequest())  # allowed: not audited as a denial

    reader_token = (await reader.GetCurrentUser(ipb.GetCurrentUserRequest())).token_id
    denied = [(e.actor, e.token_id, e.action, e.outcome) for e in await events(admin, actor="reader")]
    assert denied == [("reader", reader_token, CREATE, "denied")] * 2
    (scope,) = {e.details["reason"] for e in await events(admin, action=CREATE)}
    assert scope == "the token lacks the scope credentialVault.write"
    (permission,) = await events(admin, actor="nobody", action=LIST)
    assert (permission.outcome, permission.details["reason"]) == (
        "denied",
        "viewing the credential vault needs the VIEW_ENVIRONMENT permission",
    )


async def test_authentication_failures_are_folded(admin: Client, channel: grpc.aio.Channel) -> None:
    assert admin.token is not None
    wrong = Client(channel, admin.token[:-4] + ("AAAA" if not admin.token.endswith("AAAA") else "BBBB"))
    anonymous = Client(channel, None)
    for _ in range(20):
        await expect_code(wrong.ListCredentials(cpb.ListCredentialsRequest()), grpc.StatusCode.UNAUTHENTICATED)
        await expect_code(anonymous.GetCurrentUser(ipb.GetCurrentUserRequest()), grpc.StatusCode.UNAUTHENTICATED)
    failures = await events(admin, action="auth.failed")
    entries = sorted((e.actor, e.target_id, e.outcome, e.details["kind"], e.details["count"]) for e in failures)
    assert entries == [
        ("<unauthenticated>", "ipv4:127.0.0.1", "denied", "bad_token", "1"),
        ("<unauthenticated>", "ipv4:127.0.0.1", "denied", "no_token", "1"),
    ]


async def test_folded_failures_are_counted_in_the_next_entry(store: Store) -> None:
    now = [1000.0]
    audit = DenialAudit(store, interval=60, clock=lambda: now[0])
    for _ in range(5):
        await audit.auth_failed("ipv4:10.0.0.1", "bad_token")
    now[0] += 59
    await audit.auth_failed("ipv4:10.0.0.1", "bad_token")  # still within the interval: folded
    now[0] += 1
    await audit.auth_failed("ipv4:10.0.0.1", "bad_token")
    async with store.autocommit() as tx:
        rows = await tx.list_audit()
    assert [(r["target"], r["detail"]["count"]) for r in reversed(rows)] == [
        ("ipv4:10.0.0.1", 1),
        ("ipv4:10.0.0.1", 6),
    ]


def test_sources_beyond_the_cap_count_together() -> None:
    throttle: Throttle[str] = Throttle(60, "<other>", max_keys=2, clock=lambda: 0.0)
    assert [throttle.count(s) for s in ("a", "b", "c", "d", "a")] == [("a", 1), ("b", 1), ("<other>", 1), None, None]
