"""`credvault credentials ...`, run for real in a subprocess against the real TLS server of the test's event loop."""

from __future__ import annotations

import json
import pathlib

import pytest

from credvault.v1 import credentials_pb2 as cpb
from tests.cli_helpers import Result, assert_contains, cli_env, run
from tests.conftest import Client
from tests.local_pki import LocalPki
from vault_service.server import RunningVault


@pytest.fixture
def env(vault: RunningVault, local_pki: LocalPki, admin: Client, tmp_path: pathlib.Path) -> dict[str, str]:
    return cli_env(vault, local_pki, admin, tmp_path)


async def test_credential_lifecycle_never_shows_the_password(env: dict[str, str]) -> None:
    password, new_password = "pw-Zq81-never-shown", "pw-Kx27-also-hidden"
    outputs: list[Result] = []

    async def cli(*args: str, stdin: bytes | None = None) -> Result:
        result = await run(env, *args, stdin=stdin)
        outputs.append(result)
        return result

    created = await cli(
        "credentials",
        "create",
        "--json",
        "--name",
        "shop login",
        "--type",
        "username-password",
        "--username",
        "alice",
        "--password-file",
        "-",
        stdin=f"{password}\n".encode(),
    )
    assert created.rc == 0, created.err
    cred = json.loads(created.out)["credential"]
    cred_id = cred["id"]
    assert cred["version"] == "1"

    listed = await cli("credentials", "list", "--json")
    assert listed.rc == 0, listed.err
    assert [c["id"] for c in json.loads(listed.out)["credentials"]] == [cred_id]

    table = await cli("credentials", "list")
    assert table.rc == 0, table.err
    header, row = table.out.splitlines()
    assert header.split() == ["ID", "NAME", "TYPE", "OWNER", "ACCESS", "SCOPES", "VERSION", "UPDATED"]
    assert row.startswith(cred_id)
    assert_contains(row, "shop login", "username-password", "admin", "owner-only", "synthetic")

    got = await cli("credentials", "get", cred_id)
    assert got.rc == 0, got.err
    assert_contains(got.out, cred_id, "shop login", "admin", "username-password", "no monitors")

    contents = ["--username", "alice", "--password-file", "-"]
    overwritten = await cli("credentials", "overwrite", cred_id, "--json", *contents, stdin=new_password.encode())
    assert overwritten.rc == 0, overwritten.err
    assert json.loads(overwritten.out)["credential"]["version"] == "2"

    stale = await cli("credentials", "overwrite", cred_id, "--expected-version", "1", *contents, stdin=b"x")
    assert stale.rc == 1
    assert stale.err.startswith("credvault: ABORTED: ")

    deleted = await cli("credentials", "delete", cred_id)
    assert deleted.rc == 0, deleted.err
    gone = await cli("credentials", "get", cred_id)
    assert gone.rc == 1
    assert gone.err.startswith("credvault: NOT_FOUND: ")

    for result in outputs:
        for secret in (password, new_password):
            assert secret not in result.out + result.err


def test_used_by_names_the_first_monitors_and_says_how_to_list_the_rest() -> None:
    from vault_service.cli.credentials import _used_by_text

    cred_id = "CREDENTIALS_VAULT-0123456789ABCDEF"
    assert _used_by_text(cpb.Credential(id=cred_id)) == "no monitors"
    one = cpb.Credential(id=cred_id, used_by_count=1, used_by=[cpb.CredentialUsage(monitor_id="SYNTHETIC_TEST-1")])
    assert _used_by_text(one) == "1 monitor: SYNTHETIC_TEST-1"
    many = cpb.Credential(
        id=cred_id,
        used_by_count=102,
        used_by=[cpb.CredentialUsage(monitor_id=f"SYNTHETIC_TEST-{n}") for n in range(2)],
    )
    assert _used_by_text(many) == (
        "102 monitors: SYNTHETIC_TEST-0, SYNTHETIC_TEST-1"
        f" and 100 more (credvault monitors list --credential {cred_id})"
    )
