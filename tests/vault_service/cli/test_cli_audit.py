"""`credvault audit list`, run for real in a subprocess against the real TLS server of the test's event loop."""

from __future__ import annotations

import json
import pathlib

import pytest

from tests.cli_helpers import assert_contains, cli_env, run
from tests.conftest import Client
from tests.local_pki import LocalPki
from vault_service.server import RunningVault


@pytest.fixture
def env(vault: RunningVault, local_pki: LocalPki, admin: Client, tmp_path: pathlib.Path) -> dict[str, str]:
    return cli_env(vault, local_pki, admin, tmp_path)


async def test_audit_list_table_and_json(env: dict[str, str]) -> None:
    created = await run(
        env, "credentials", "create", "--json", "--name", "audited", "--type", "token", "--token-value-file", "-",
        stdin=b"tok-audit-never-shown",
    )  # fmt: skip
    assert created.rc == 0, created.err
    cred_id = json.loads(created.out)["credential"]["id"]

    listed = await run(env, "audit", "list", "--target", cred_id, "--since", "1h")
    assert listed.rc == 0, listed.err
    header, row = listed.out.splitlines()
    assert header.split() == ["TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME", "TOKEN", "DETAILS"]
    assert_contains(row, "admin", "credential.create", cred_id, "ok", "cv0c01.", "version=1")

    paged = await run(env, "audit", "list", "--json", "--all", "--page-size", "1", "--until", "2999-01-01T00:00:00Z")
    assert paged.rc == 0, paged.err
    events = json.loads(paged.out)["events"]
    assert [e["action"] for e in events][:1] == ["credential.create"]
    assert {"admin.bootstrap", "credential.create"} <= {e["action"] for e in events}
    assert json.loads(paged.out)["next_page_token"] == ""

    future = await run(env, "audit", "list", "--since", "2999-01-01T00:00:00Z")
    assert (future.rc, future.out.splitlines()[1:]) == (0, [])
    bad = await run(env, "audit", "list", "--since", "yesterday")
    assert bad.rc == 2
    assert "neither an RFC 3339 time" in bad.err
    for result in (created, listed, paged):
        assert "tok-audit-never-shown" not in result.out + result.err
