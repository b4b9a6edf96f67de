"""Token rotation with write-back to a real OpenBao (tests/openbao.py), real PostgreSQL and real gRPC: the new secret
lands in the KV v2 field (read back with the `bao` CLI) and authenticates RPCs, the old token works during the grace
period and stops after it; two replicas rotating one token at once rotate it once; a write the vault refuses leaves
the old token valid and the new one revoked, with audit and metric; the secret is in no response, log, audit row,
metric or pg_dump; scheduled rotation runs on the policy's interval (made short by a setting)."""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, json_format

from credvault.v1 import audit_pb2 as apb
from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import identity_pb2 as ipb
from credvault.v1 import tokens_pb2 as tpb
from tests.cli_helpers import cli_env, run
from tests.conftest import Client, Users, admin_of
from tests.helpers import expect_code
from tests.local_pki import LocalPki
from tests.openbao import OpenBao
from tests.vault_service.test_external_sync import Companions, companions, replica
from vault_service.config import Settings
from vault_service.crypto import Keyring
from vault_service.external_sync import hashicorp
from vault_service.server import RunningVault

SCOPES = ["apiTokens.read", "apiTokens.write"]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No background work unless a test asks; policies may rotate every second."""
    return settings.model_copy(
        update={"external_sync": False, "token_rotation": False, "token_rotation_min_interval_seconds": 1.0}
    )


def writer_role(bao: OpenBao, role: str, path: str, *, write: bool = True) -> None:
    """The role's policy: read (and with ``write`` create/update) the KV v2 data and read the metadata of ``path``."""
    caps = '"read", "create", "update"' if write else '"read"'
    rules = f'path "secret/data/{path}" {{ capabilities = [{caps}] }}\npath "secret/metadata/{path}" {{ capabilities = ["read"] }}\n'  # noqa: E501
    bao.cli("policy", "write", role, "-", stdin=rules)


def target(bao: OpenBao, c: Companions, path: str) -> cpb.ExternalSource:
    return cpb.ExternalSource(
        provider=cpb.EXTERNAL_PROVIDER_HASHICORP_VAULT,
        address=bao.address,
        ca_certificate_credential_id=c.ca_cred,
        kv=cpb.KvLocation(mount="secret", path=path, version=cpb.KV_VERSION_V2),
        token_key="token",
        approle=cpb.AppRoleAuth(role_id_credential_id=c.role_cred, secret_id_credential_id=c.secret_cred),
    )


def kv_get(bao: OpenBao, path: str) -> tuple[str, int]:
    """The field ``token`` and the current version of secret/<path>, read with the bao CLI."""
    got = json.loads(bao.cli("kv", "get", "-format=json", "-mount=secret", path))
    return str(got["data"]["data"].get("token", "")), int(got["data"]["metadata"]["version"])


async def rotating_token(
    admin: Client,
    bao: OpenBao,
    role: str,
    path: str,
    *,
    write: bool = True,
    grace: int = 0,
    interval: int = 0,
    kind: tpb.TokenKind.ValueType = tpb.TOKEN_KIND_API,
) -> tpb.CreateTokenResponse:
    """An API token of admin with a rotation policy writing to secret/<path> (which holds version 1 already)."""
    c = await companions(admin, bao, role, [f"secret/data/{path}"])
    await asyncio.to_thread(writer_role, bao, role, path, write=write)
    await asyncio.to_thread(bao.put, "secret", path, token="placeholder", other="kept")
    made: tpb.CreateTokenResponse = await admin.CreateToken(
        tpb.CreateTokenRequest(name=f"{role} app", scopes=SCOPES, kind=kind)
    )
    rotation = tpb.TokenRotation(
        target=target(bao, c, path),
        interval=duration_pb2.Duration(seconds=interval),
        grace_period=duration_pb2.Duration(seconds=grace),
    )
    await admin.SetTokenRotation(tpb.SetTokenRotationRequest(id=made.info.id, rotation=rotation))
    return made


async def works(channel: grpc.aio.Channel, token: str) -> bool:
    try:
        await Client(channel, token).ListTokens(tpb.ListTokensRequest())
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
            raise
        return False
    return True


async def until(condition: Callable[[], Awaitable[bool]], within: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


async def named(admin: Client, name: str) -> list[tpb.TokenInfo]:
    listed: tpb.ListTokensResponse = await admin.ListTokens(tpb.ListTokensRequest(page_size=100))
    return [t for t in listed.tokens if t.name == name]


async def rotation_audit(admin: Client, token_id: str) -> list[apb.AuditEvent]:
    events = await admin.ListAuditEvents(apb.ListAuditEventsRequest(target_id=token_id, page_size=100))
    return [e for e in events.events if e.action == "token.rotate"]


def metric(vault: RunningVault, outcome: str) -> float:
    return float(vault.metrics.token_rotation_total.labels(outcome)._value.get())


async def test_rotation_writes_the_new_secret_to_openbao_and_the_old_token_ends_after_the_grace(
    vault: RunningVault, admin: Client, channel: grpc.aio.Channel, openbao: OpenBao
) -> None:
    made = await rotating_token(admin, openbao, "rot-ok", "rot/ok", grace=4)
    rotated: tpb.RotateTokenResponse = await admin.RotateToken(tpb.RotateTokenRequest(id=made.info.id))
    assert rotated.token == ""  # write-back: the secret is only in OpenBao
    secret, version = await asyncio.to_thread(kv_get, openbao, "rot/ok")
    assert version == 2
    assert rotated.external_version == 2
    assert secret.startswith(rotated.info.id + ".")
    assert json.loads(openbao.cli("kv", "get", "-format=json", "-mount=secret", "rot/ok"))["data"]["data"]["other"] == (
        "kept"
    )
    assert await works(channel, secret)
    assert await works(channel, made.token)  # the grace period
    assert rotated.previous.HasField("revoke_time")
    assert rotated.info.name == made.info.name
    assert list(rotated.info.scopes) == list(made.info.scopes)
    await until(lambda: _not(works(channel, made.token)))
    assert await works(channel, secret)
    [event] = await rotation_audit(admin, made.info.id)
    assert event.outcome == "ok"
    assert metric(vault, "rotated") == 1


async def _not(check: Awaitable[bool]) -> bool:
    return not await check


async def test_two_replicas_rotating_one_token_at_once_rotate_it_once(
    settings: Settings, keyring: Keyring, local_pki: LocalPki, openbao: OpenBao
) -> None:
    async with (
        replica(settings, keyring, "a") as a,
        replica(settings, keyring, "b") as b,
        admin_of(a, local_pki) as admin,
        local_pki.channel(b.port) as channel_b,
    ):
        admin_b = Client(channel_b, admin.token, "admin")
        cas_total = 0
        for round_ in range(3):
            path = f"rot/two{round_}"
            made = await rotating_token(admin, openbao, f"rot-two{round_}", path, grace=600)
            outcomes = await asyncio.gather(
                admin.RotateToken(tpb.RotateTokenRequest(id=made.info.id)),
                admin_b.RotateToken(tpb.RotateTokenRequest(id=made.info.id)),
                return_exceptions=True,
            )
            won = [o for o in outcomes if isinstance(o, tpb.RotateTokenResponse)]
            lost = [o for o in outcomes if not isinstance(o, tpb.RotateTokenResponse)]
            assert len(won) == 1, outcomes
            assert all(
                isinstance(o, grpc.aio.AioRpcError)
                and o.code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.FAILED_PRECONDITION)
                for o in lost
            ), lost
            secret, version = await asyncio.to_thread(kv_get, openbao, path)
            assert version == 2  # advanced by exactly one
            assert secret.startswith(won[0].info.id + ".")
            tokens = await named(admin, made.info.name)
            live_successors = [t for t in tokens if t.id != made.info.id and not t.HasField("revoke_time")]
            assert [t.id for t in live_successors] == [won[0].info.id]
            assert await works(channel_b, secret)
            assert await works(channel_b, made.token)  # in its grace period
            # The loser was refused before writing anything (the rotation lease), or revoked its own successor after
            # losing the check-and-set and said why.
            failed = [e for e in await rotation_audit(admin, made.info.id) if e.outcome == "failed"]
            assert all(e.details["reason"] == "cas_conflict" for e in failed), failed
            cas_total += len(failed)
            assert metric(a, "cas_conflict") + metric(b, "cas_conflict") == cas_total


async def test_a_refused_write_keeps_the_old_token_and_revokes_the_new_one(
    vault: RunningVault, admin: Client, channel: grpc.aio.Channel, openbao: OpenBao
) -> None:
    made = await rotating_token(admin, openbao, "rot-ro", "rot/ro", write=False, grace=600)
    await expect_code(admin.RotateToken(tpb.RotateTokenRequest(id=made.info.id)), grpc.StatusCode.FAILED_PRECONDITION)
    assert await works(channel, made.token)
    _, version = await asyncio.to_thread(kv_get, openbao, "rot/ro")
    assert version == 1
    tokens = await named(admin, made.info.name)
    [successor] = [t for t in tokens if t.id != made.info.id]
    assert successor.HasField("revoke_time")
    [old] = [t for t in tokens if t.id == made.info.id]
    assert not old.HasField("revoke_time")
    [event] = await rotation_audit(admin, made.info.id)
    assert event.outcome == "failed"
    assert "HTTP 403" in str(event)
    assert successor.id in str(event)
    assert metric(vault, "denied") == 1
    assert metric(vault, "rotated") == 0
    # OpenBao stopped: nothing issued, the old token stays, the outcome says why.
    await asyncio.to_thread(openbao.stop)
    try:
        await expect_code(admin.RotateToken(tpb.RotateTokenRequest(id=made.info.id)), grpc.StatusCode.UNAVAILABLE)
    finally:
        await asyncio.to_thread(openbao.start)
    assert await works(channel, made.token)
    assert metric(vault, "unreachable") == 1
    assert [t.id for t in await named(admin, made.info.name) if not t.HasField("revoke_time")] == [made.info.id]


async def test_the_new_secret_is_in_no_response_log_audit_metric_or_database_dump(
    vault: RunningVault,
    admin: Client,
    openbao: OpenBao,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    made = await rotating_token(admin, openbao, "rot-canary", "rot/canary", grace=600)
    rotated: tpb.RotateTokenResponse = await admin.RotateToken(tpb.RotateTokenRequest(id=made.info.id))
    secret, _ = await asyncio.to_thread(kv_get, openbao, "rot/canary")
    canary = secret.rsplit(".", 1)[1]
    assert len(canary) == 64
    listed = await admin.ListTokens(tpb.ListTokensRequest(page_size=100))
    looked = await admin.LookupToken(tpb.LookupTokenRequest(token=secret))
    audit = await admin.ListAuditEvents(apb.ListAuditEventsRequest(page_size=500))
    dump = await asyncio.to_thread(
        subprocess.run, ["pg_dump", database_url], capture_output=True, text=True, check=True, timeout=120
    )
    assert "api_tokens" in dump.stdout
    assert rotated.info.id in dump.stdout
    for where, text in (
        ("RotateToken response", str(rotated)),
        ("ListTokens", str(listed)),
        ("LookupToken", str(looked)),
        ("audit", str(audit)),
        ("metrics", vault.metrics.exposition().decode()),
        ("logs", caplog.text),
        ("pg_dump", dump.stdout),
    ):
        assert canary not in text, where


async def test_scheduled_rotation_runs_on_the_policy_interval(
    settings: Settings, keyring: Keyring, local_pki: LocalPki, openbao: OpenBao
) -> None:
    fast = {"token_rotation": True, "token_rotation_tick_seconds": 0.1}
    async with (
        replica(settings, keyring, "s", **fast) as vault,
        admin_of(vault, local_pki) as admin,
        local_pki.channel(vault.port) as channel,
    ):
        made = await rotating_token(admin, openbao, "rot-sched", "rot/sched", grace=0, interval=1)

        async def rotated_twice() -> bool:
            return (await asyncio.to_thread(kv_get, openbao, "rot/sched"))[1] >= 3

        await until(rotated_twice)
        assert vault.rotation_scheduler is not None
        await vault.rotation_scheduler.stop()
        secret, _ = await asyncio.to_thread(kv_get, openbao, "rot/sched")
        assert await works(channel, secret)
        assert not await works(channel, made.token)  # grace 0: revoked at its rotation
        [first] = await rotation_audit(admin, made.info.id)
        assert (first.actor, first.outcome) == ("credvault:token-rotation", "ok")


async def test_the_cli_sets_a_policy_and_rotates_without_printing_the_token(
    vault: RunningVault, admin: Client, local_pki: LocalPki, openbao: OpenBao, tmp_path: pathlib.Path
) -> None:
    c = await companions(admin, openbao, "rot-cli", ["secret/data/rot/cli"])
    await asyncio.to_thread(writer_role, openbao, "rot-cli", "rot/cli")
    made: tpb.CreateTokenResponse = await admin.CreateToken(
        tpb.CreateTokenRequest(name="cli app", scopes=SCOPES, kind=tpb.TOKEN_KIND_API)
    )
    target_file = tmp_path / "target.json"
    target_file.write_text(json_format.MessageToJson(target(openbao, c, "rot/cli")))
    env = cli_env(vault, local_pki, admin, tmp_path)
    grace = "--grace", "1h"
    set_ = await run(
        env, "tokens", "set-rotation", made.info.id, "--target", str(target_file), "--every", "30d", *grace
    )
    assert set_.rc == 0, set_.err
    assert "secret/rot/cli field token" in set_.out
    assert "2592000s" in set_.out
    rotated = await run(env, "tokens", "rotate", made.info.id)
    assert rotated.rc == 0, rotated.err
    secret, version = await asyncio.to_thread(kv_get, openbao, "rot/cli")
    assert version == 1  # the path did not exist: created with check-and-set 0
    assert secret.split(".")[1] in rotated.out  # the new token's id ...
    assert secret.rsplit(".", 1)[1] not in rotated.out + rotated.err  # ... never its secret
    assert "written to the external vault (version 1)" in rotated.err
    cleared = await run(env, "tokens", "set-rotation", secret.rsplit(".", 1)[0], "--clear")
    assert cleared.rc == 0, cleared.err
    assert "none" in cleared.out


async def test_a_policy_is_checked_when_set(vault: RunningVault, admin: Client, users: Users, openbao: OpenBao) -> None:
    c = await companions(admin, openbao, "rot-check", ["secret/data/rot/check"])
    made: tpb.CreateTokenResponse = await admin.CreateToken(
        tpb.CreateTokenRequest(name="checked", scopes=SCOPES, kind=tpb.TOKEN_KIND_API)
    )

    async def refused(rotation: tpb.TokenRotation, code: grpc.StatusCode, client: Client = admin) -> str:
        request = tpb.SetTokenRotationRequest(id=made.info.id, rotation=rotation)
        return (await expect_code(client.SetTokenRotation(request), code)).details() or ""

    good = target(openbao, c, "rot/check")
    assert "rotation.target" in await refused(tpb.TokenRotation(), grpc.StatusCode.INVALID_ARGUMENT)
    v1 = cpb.ExternalSource()
    v1.CopyFrom(good)
    v1.kv.version = cpb.KV_VERSION_V1
    assert "KV_VERSION_V2" in await refused(tpb.TokenRotation(target=v1), grpc.StatusCode.INVALID_ARGUMENT)
    short = tpb.TokenRotation(target=good, interval=duration_pb2.Duration(seconds=0, nanos=500_000_000))
    assert "rotation.interval" in await refused(short, grpc.StatusCode.INVALID_ARGUMENT)
    long_grace = tpb.TokenRotation(target=good, grace_period=duration_pb2.Duration(seconds=8 * 86400))
    assert "rotation.grace_period" in await refused(long_grace, grpc.StatusCode.INVALID_ARGUMENT)
    # Another user with the rights to configure synchronization cannot point a token of theirs at admin's companions.
    other = await users.make("mallory", [ipb.PERMISSION_CHANGE_ENVIRONMENT_SETTINGS])
    theirs: tpb.CreateTokenResponse = await other.CreateToken(
        tpb.CreateTokenRequest(name="theirs", scopes=SCOPES, kind=tpb.TOKEN_KIND_PERSONAL)
    )
    request = tpb.SetTokenRotationRequest(id=theirs.info.id, rotation=tpb.TokenRotation(target=good))
    denied = await expect_code(other.SetTokenRotation(request), grpc.StatusCode.PERMISSION_DENIED)
    assert "has no access to credential" in (denied.details() or "")
    ok: tpb.SetTokenRotationResponse = await admin.SetTokenRotation(
        tpb.SetTokenRotationRequest(id=made.info.id, rotation=tpb.TokenRotation(target=good))
    )
    assert ok.rotation.target.token_key == "token"
    assert not ok.HasField("next_rotation_time")  # on demand only


async def test_a_rotation_with_grace_respects_the_personal_token_limit(
    vault: RunningVault, admin: Client, channel: grpc.aio.Channel, openbao: OpenBao
) -> None:
    made = await rotating_token(admin, openbao, "rot-pat", "rot/pat", grace=600, kind=tpb.TOKEN_KIND_PERSONAL)
    for n in range(4):  # five live personal tokens: the most allowed
        await admin.CreateToken(tpb.CreateTokenRequest(name=f"pat {n}", scopes=SCOPES, kind=tpb.TOKEN_KIND_PERSONAL))
    refused = await expect_code(
        admin.RotateToken(tpb.RotateTokenRequest(id=made.info.id)), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert "personal access tokens" in (refused.details() or "")
    assert (await asyncio.to_thread(kv_get, openbao, "rot/pat"))[1] == 1
    assert [t.id for t in await named(admin, made.info.name)] == [made.info.id]
    assert await works(channel, made.token)
    assert metric(vault, "personal_limit") == 1
    [event] = await rotation_audit(admin, made.info.id)
    assert (event.outcome, event.details["reason"]) == ("failed", "personal_limit")


async def test_another_writer_between_read_and_write_fails_the_check_and_set(
    vault: RunningVault,
    admin: Client,
    channel: grpc.aio.Channel,
    openbao: OpenBao,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another writer (the bao CLI) writes the path right after the rotation read its version: the real OpenBao
    refuses the check-and-set; the old token stays valid, the new one is revoked, audit and metric say cas_conflict."""
    made = await rotating_token(admin, openbao, "rot-cas", "rot/cas", grace=600)
    real = hashicorp.kv2_current_version

    async def read_then_someone_writes(*args: Any) -> int:
        version = await real(*args)
        await asyncio.to_thread(openbao.put, "secret", "rot/cas", token="someone else's")
        return version

    monkeypatch.setattr(hashicorp, "kv2_current_version", read_then_someone_writes)
    await expect_code(admin.RotateToken(tpb.RotateTokenRequest(id=made.info.id)), grpc.StatusCode.ABORTED)
    assert await asyncio.to_thread(kv_get, openbao, "rot/cas") == ("someone else's", 2)
    assert await works(channel, made.token)
    tokens = await named(admin, made.info.name)
    [successor] = [t for t in tokens if t.id != made.info.id]
    assert successor.HasField("revoke_time")
    [event] = await rotation_audit(admin, made.info.id)
    assert (event.outcome, event.details["reason"], event.details["new_revoked"]) == (
        "failed",
        "cas_conflict",
        successor.id,
    )
    assert metric(vault, "cas_conflict") == 1
