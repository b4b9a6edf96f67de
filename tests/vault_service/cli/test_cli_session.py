"""What every client command shares: the API token, secrets never as arguments, gRPC errors as messages."""

from __future__ import annotations

from tests.cli_helpers import base_env, run


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
