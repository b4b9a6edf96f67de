"""`credvault admin grant-scope`: a scope a later version added reaches the tokens of a deployment bootstrapped
before it existed (whose tokens cannot grant it to anybody), audited."""

from __future__ import annotations

import grpc

from credvault.v1 import audit_pb2 as apb
from tests.cli_helpers import assert_contains, base_env, run
from tests.conftest import Client
from tests.helpers import expect_code
from vault_service.server import RunningVault


async def test_grant_scope_to_an_existing_admin(admin: Client, vault: RunningVault, database_url: str) -> None:
    # as bootstrapped by a version before auditLogs.read existed
    async with vault.store.autocommit() as tx:
        await tx.conn.execute("UPDATE api_tokens SET scopes = array_remove(scopes, 'auditLogs.read')")
    await expect_code(admin.ListAuditEvents(apb.ListAuditEventsRequest()), grpc.StatusCode.PERMISSION_DENIED)
    env = base_env() | {"CREDVAULT_DATABASE_URL": database_url}

    unknown = await run(env, "admin", "grant-scope", "auditLogs.readall", "--user", "admin")
    assert unknown.rc != 0
    assert_contains(unknown.err, "unknown scope 'auditLogs.readall'", "auditLogs.read")
    nobody = await run(env, "admin", "grant-scope", "auditLogs.read", "--user", "nobody")
    assert nobody.rc != 0
    assert_contains(nobody.err, "user 'nobody' not found")

    granted = await run(env, "admin", "grant-scope", "auditLogs.read", "--user", "admin")
    assert granted.rc == 0, granted.err
    assert admin.token is not None
    token_id = admin.token.rsplit(".", 1)[0]
    assert_contains(granted.out, "granted auditLogs.read to 1 token(s) of user 'admin'", token_id)
    events = (await admin.ListAuditEvents(apb.ListAuditEventsRequest())).events
    grants = [(e.actor, e.target_id) for e in events if e.action == "token.scope_grant"]
    assert grants == [("<local operator>", token_id)]

    again = await run(env, "admin", "grant-scope", "auditLogs.read", "--token", token_id)
    assert again.rc == 0, again.err
    assert_contains(again.out, "no live token of token")
