"""`credvault tokens ...` and `whoami`, run for real in a subprocess against the real TLS server of the test's loop."""

from __future__ import annotations

import json
import pathlib
import re

import pytest

from tests.cli_helpers import cli_env, run
from tests.conftest import Client
from tests.local_pki import LocalPki
from vault_service.server import RunningVault

TOKEN_RE = re.compile(r"^cv0c01\.[A-Z2-7]{24}\.[A-Z2-7]{64}$")


@pytest.fixture
def env(vault: RunningVault, local_pki: LocalPki, admin: Client, tmp_path: pathlib.Path) -> dict[str, str]:
    return cli_env(vault, local_pki, admin, tmp_path)


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
