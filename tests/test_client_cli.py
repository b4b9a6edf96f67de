"""The client CLI, run for real in a subprocess against the real TLS server of the test's event loop."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import sys
from dataclasses import dataclass

import pytest
import trustme

from tests.conftest import Client
from vault_service.server import RunningVault

TOKEN_RE = re.compile(r"^cv0c01\.[A-Z2-7]{24}\.[A-Z2-7]{64}$")
CLI = [sys.executable, "-c", "from vault_service.cli.main import main; main()"]


@dataclass(frozen=True)
class Result:
    rc: int
    out: str
    err: str


async def run(env: dict[str, str], *args: str, stdin: bytes | None = None) -> Result:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout=30)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def assert_contains(text: str, *parts: str) -> None:
    missing = [p for p in parts if p not in text]
    assert not missing, f"{missing} not in {text!r}"


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CREDVAULT_")}


@pytest.fixture
def env(vault: RunningVault, ca: trustme.CA, admin: Client, tmp_path: pathlib.Path) -> dict[str, str]:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.cert_pem.bytes())
    assert admin.token is not None
    return {
        **base_env(),
        "CREDVAULT_SERVER": f"localhost:{vault.port}",
        "CREDVAULT_CA_FILE": str(ca_file),
        "CREDVAULT_TOKEN": admin.token,
    }


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


async def test_token_is_printed_alone_once_and_works(env: dict[str, str], tmp_path: pathlib.Path) -> None:
    created = await run(
        env, "tokens", "create", "--name", "ci", "--scope", "credentialVault.read", "--expires-in", "1d"
    )
    assert created.rc == 0, created.err
    token = created.out.removesuffix("\n")
    assert TOKEN_RE.fullmatch(token), created.out
    assert "shown once" in created.err
    assert token not in created.err

    me = await run({**env, "CREDVAULT_TOKEN": token}, "whoami", "--json")
    assert me.rc == 0, me.err
    doc = json.loads(me.out)
    assert doc["user"]["username"] == "admin"
    assert doc["token_scopes"] == ["credentialVault.read"]
    assert token.startswith(doc["token_id"] + ".")

    token_file = tmp_path / "t"
    token_file.write_text(token + "\n")
    looked = await run(env, "tokens", "lookup", "--token-to-lookup-file", str(token_file))
    assert looked.rc == 0, looked.err
    assert doc["token_id"] in looked.out
    assert token not in looked.out

    listed = await run(env, "tokens", "list")
    assert listed.rc == 0, listed.err
    header = re.split(r"\s{2,}", listed.out.splitlines()[0])
    assert header == ["ID", "NAME", "OWNER", "KIND", "SCOPES", "EXPIRES", "LAST USED", "REVOKED"]
    assert doc["token_id"] in listed.out

    revoked = await run(env, "tokens", "revoke", doc["token_id"])
    assert revoked.rc == 0, revoked.err
    refused = await run({**env, "CREDVAULT_TOKEN": token}, "whoami")
    assert refused.rc == 1
    assert refused.err.startswith("credvault: UNAUTHENTICATED: ")


async def test_missing_token_is_a_configuration_error() -> None:
    result = await run({**base_env(), "CREDVAULT_SERVER": "127.0.0.1:9"}, "credentials", "list")
    assert result.rc == 2
    assert "CREDVAULT_TOKEN" in result.err


async def test_secrets_are_refused_as_arguments_and_never_echoed() -> None:
    env = {**base_env(), "CREDVAULT_SERVER": "127.0.0.1:9", "CREDVAULT_TOKEN": "cv0c01.X.Y"}
    common = ["credentials", "create", "--name", "n", "--type", "username-password", "--username", "u"]
    as_argument = await run(env, *common, "--password", "hunter2-secret")
    assert as_argument.rc == 2
    assert "--password-file" in as_argument.err
    assert "hunter2-secret" not in as_argument.err + as_argument.out

    no_file_no_tty = await run(env, *common)  # stdin is /dev/null: no prompt, a clear error
    assert no_file_no_tty.rc == 2
    assert "--password-file" in no_file_no_tty.err


async def test_unreachable_server_is_reported_with_its_status() -> None:
    env = {**base_env(), "CREDVAULT_SERVER": "127.0.0.1:9", "CREDVAULT_TOKEN": "cv0c01.X.Y", "CREDVAULT_INSECURE": "1"}
    result = await run(env, "whoami", "--timeout", "5")
    assert result.rc == 1
    assert result.err.startswith("credvault: UNAVAILABLE: ")


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


def test_used_by_names_the_first_monitors_and_says_how_to_list_the_rest() -> None:
    from credvault.v1 import credentials_pb2 as cpb
    from vault_service.cli.session import _used_by_text

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
