"""What a new user hits in the first hour with `credvault` (issue 12): messages that say what to change, never
grpc's own log lines or internal names, and deletions that say what they disable."""

from __future__ import annotations

import json
import pathlib
from collections.abc import AsyncIterator

import grpc
import pytest

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import monitors_pb2 as mpb
from tests.cli_helpers import Result, assert_contains, base_env, basic_auth_monitor, cli_env, run
from tests.conftest import Client
from tests.helpers import create_req, up
from tests.local_pki import LocalPki
from vault_service.server import RunningVault

PASSWORD = "pw-Hd55-never-shown"


@pytest.fixture
def env(vault: RunningVault, local_pki: LocalPki, admin: Client, tmp_path: pathlib.Path) -> dict[str, str]:
    return cli_env(vault, local_pki, admin, tmp_path)


@pytest.fixture
async def plaintext_port() -> AsyncIterator[int]:
    """A plaintext gRPC server, as `credvault dev` runs its API."""
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield port
    await server.stop(None)


def one_message(result: Result) -> str:
    """The command failed with exactly one line of its own on stderr: no grpc core log line before it."""
    assert result.rc != 0, result.out
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("credvault: "), result.err
    return lines[0]


async def test_tls_and_plaintext_mismatches_name_the_setting(env: dict[str, str], plaintext_port: int) -> None:
    to_dev = await run({**env, "CREDVAULT_SERVER": f"127.0.0.1:{plaintext_port}"}, "credentials", "list")
    assert_contains(one_message(to_dev), "does not speak TLS", "CREDVAULT_INSECURE=1")

    to_tls = await run({**env, "CREDVAULT_INSECURE": "1"}, "credentials", "list")
    assert_contains(one_message(to_tls), "unset CREDVAULT_INSECURE")


async def test_argument_errors_say_what_to_type(tmp_path: pathlib.Path) -> None:
    env = {**base_env(), "CREDVAULT_SERVER": "127.0.0.1:9", "CREDVAULT_TOKEN": "cv0c01.X.Y"}
    for group in ("credentials", "monitors", "keys"):
        missing = await run(env, group)
        assert missing.rc == 2
        assert_contains(missing.err, "COMMAND")
        assert f"{group}_command" not in missing.err

    version = await run(env, "--version")
    assert version.rc == 0, version.err
    assert version.out.startswith("credvault "), version.out

    top = (await run(env, "--help")).out
    description = top.split("commands:")[0]
    assert_contains(description, "monitors", "engines", "locations", "audit", "pki", "keys")

    dev = (await run(env, "dev", "--help")).out
    description, options = dev.split("options:", 1)
    assert_contains(description, "embedded PostgreSQL", "a second one is refused")
    listen_help = options.split("--listen LISTEN", 1)[1].split("--engine-listen", 1)[0]
    assert "API" in listen_help, dev

    create_http = (await run(env, "monitors", "create-http", "--help")).out
    assert "--timeout-ms" not in create_http
    assert_contains(create_http, "--request-timeout-ms", "--timeout")

    absent = tmp_path / "no-such-password.txt"
    common = ["credentials", "create", "--name", "n", "--type", "username-password", "--username", "u"]
    unreadable = await run(env, *common, "--password-file", str(absent))
    assert unreadable.rc == 2
    assert_contains(one_message(unreadable), str(absent), "No such file")
    assert "configuration error" not in unreadable.err


async def test_secret_size_and_emptiness_are_checked_with_the_field_named(env: dict[str, str], admin: Client) -> None:
    common = ["credentials", "create", "--name", "n", "--type", "username-password", "--username", "u"]
    huge = await run(env, *common, "--password-file", "-", stdin=b"x" * 2_000_000)
    assert_contains(one_message(huge), "--password-file", "16384")
    assert "larger than max" not in huge.err

    empty = await run(env, *common, "--password-file", "-", stdin=b"\n")
    assert_contains(one_message(empty), "--password-file", "must not be empty")

    with pytest.raises(grpc.aio.AioRpcError) as refused:  # the API refuses it too
        await admin.CreateCredential(create_req("empty", up("u", "")))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert_contains(refused.value.details() or "", "username_password.password", "must not be empty")


async def test_field_paths_in_monitor_errors_start_at_monitor(admin: Client) -> None:
    await admin.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id="loc-a", name="loc-a")))
    bad = basic_auth_monitor("not-an-id")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=bad))
    assert (refused.value.details() or "").startswith(
        "monitor.http.requests[0].authentication.basic_credential_id: "
    ), refused.value.details()


async def test_deleting_a_credential_in_use_needs_force_and_says_what_it_disabled(
    env: dict[str, str], admin: Client
) -> None:
    await admin.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id="loc-a", name="loc-a")))
    cred = (await admin.CreateCredential(create_req("basic", up("svc", PASSWORD)))).credential.id
    monitor = (await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=basic_auth_monitor(cred)))).monitor.id

    refused = await run(env, "credentials", "delete", cred)
    assert refused.rc == 2
    assert_contains(one_message(refused), monitor, "--force", "disables")
    assert (await admin.GetCredential(cpb.GetCredentialRequest(id=cred))).credential.id == cred  # still there

    forced = await run(env, "credentials", "delete", cred, "--force", "--json")
    assert forced.rc == 0, forced.err
    assert json.loads(forced.out) == {"disabled_monitor_ids": [monitor]}
    got = (await admin.GetMonitor(mpb.GetMonitorRequest(id=monitor))).monitor
    assert (got.enabled, got.disabled_reason) == (False, mpb.DISABLED_REASON_CREDENTIAL_DELETED)
