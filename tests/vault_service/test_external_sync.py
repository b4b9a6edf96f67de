"""Credentials synchronized from a real OpenBao (tests/openbao.py): AppRole login and KV v2 / v1 reads; a value
changed in OpenBao reaches a real engine's memory through the sync and the push; unchanged values write nothing;
failures (revoked secret id, stopped or sealed OpenBao, deleted path, missing key) keep the last good value with
status and audit saying why, and the next good sync recovers; two replicas never write a version twice."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import pathlib
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from google.protobuf import duration_pb2, json_format
from google.protobuf.message import Message

from credvault.v1 import audit_pb2 as apb
from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import monitors_pb2 as mpb
from tests.conftest import Client, admin_of
from tests.helpers import SYN, expect_code, token
from tests.local_pki import LocalPki
from tests.openbao import OpenBao
from tests.real_engine import RealEngine, real_engine
from vault_service import contents_codec
from vault_service.config import Settings
from vault_service.crypto import Keyring
from vault_service.models import SecretContents, TokenSecret
from vault_service.server import RunningVault, start_vault

UP = cpb.CREDENTIAL_TYPE_USERNAME_PASSWORD
TOKEN = cpb.CREDENTIAL_TYPE_TOKEN


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The vaults of these tests synchronize when told to (SyncCredential), unless a test starts its scheduler."""
    return settings.model_copy(update={"external_sync": False})


@contextlib.asynccontextmanager
async def replica(settings: Settings, keyring: Keyring, name: str, **extra: object) -> AsyncIterator[RunningVault]:
    running = await start_vault(settings.model_copy(update={"replica_id": name, **extra}), keyring=keyring)
    try:
        yield running
    finally:
        await running.stop(0)


@dataclasses.dataclass
class Companions:
    role: str
    role_id: str
    secret_id: str
    role_cred: str
    secret_cred: str
    ca_cred: str


async def companions(admin: Client, bao: OpenBao, role: str, readable: list[str]) -> Companions:
    """An AppRole in OpenBao, its role id and secret id as TOKEN credentials, the CA as a PUBLIC_CERTIFICATE one."""
    role_id, secret_id = await asyncio.to_thread(bao.approle, role, readable)
    made = []
    for name, value in (("role id", role_id), ("secret id", secret_id)):
        made.append(
            (
                await admin.CreateCredential(
                    cpb.CreateCredentialRequest(name=f"{role} {name}", scopes=[SYN], contents=token(value))
                )
            ).credential.id
        )
    ca = cpb.CredentialContents(public_certificate=cpb.PublicCertificate(pem=bao.pki.server_ca_pem.read_bytes()))
    ca_cred = (
        await admin.CreateCredential(
            cpb.CreateCredentialRequest(
                name=f"{role} ca", scopes=[cpb.CREDENTIAL_SCOPE_EXTENSION_VALIDATION], contents=ca
            )
        )
    ).credential.id
    return Companions(role, role_id, secret_id, made[0], made[1], ca_cred)


def source(
    bao: OpenBao,
    c: Companions,
    path: str,
    *,
    mount: str = "secret",
    kv: int = cpb.KV_VERSION_V2,
    token_key: str = "",
    interval: int = 10,
) -> cpb.ExternalSource:
    return cpb.ExternalSource(
        provider=cpb.EXTERNAL_PROVIDER_HASHICORP_VAULT,
        address=bao.address,
        ca_certificate_credential_id=c.ca_cred,
        kv=cpb.KvLocation(mount=mount, path=path, version=kv),
        username_key="" if token_key else "user",
        password_key="" if token_key else "pass",
        token_key=token_key,
        approle=cpb.AppRoleAuth(role_id_credential_id=c.role_cred, secret_id_credential_id=c.secret_cred),
        sync_interval=duration_pb2.Duration(seconds=interval),
    )


async def create_synced(admin: Client, name: str, src: cpb.ExternalSource, ctype: int = UP) -> cpb.Credential:
    req = cpb.CreateCredentialRequest(name=name, scopes=[SYN], external_source=src, type=ctype)
    made: cpb.CreateCredentialResponse = await admin.CreateCredential(req)
    return made.credential


async def monitor_at_loc_a(admin: Client, cred_id: str) -> mpb.Monitor:
    """Location loc-a with engine e1, and an enabled HTTP monitor there using the credential for basic auth."""
    await admin.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id="loc-a")))
    await admin.AddEngine(mpb.AddEngineRequest(location_id="loc-a", engine_id="e1"))
    req = mpb.HttpRequest(method="GET", url="https://shop.example/")
    req.authentication.basic_credential_id = cred_id
    monitor = mpb.Monitor(
        name="m", frequency_minutes=1, location_ids=["loc-a"], enabled=True, http=mpb.HttpScript(requests=[req])
    )
    created: mpb.Monitor = (await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=monitor))).monitor
    return created


def held_password(engine: RealEngine, cred_id: str) -> str | None:
    """The password a real engine holds for a USERNAME_PASSWORD credential (None: not got yet)."""
    held = engine.store.credential(cred_id)
    return None if held is None else held.details().username_password.password


async def sync(client: Client, cred_id: str) -> cpb.Credential:
    synced: cpb.SyncCredentialResponse = await client.SyncCredential(cpb.SyncCredentialRequest(id=cred_id))
    return synced.credential


async def sync_audit(admin: Client, cred_id: str) -> list[apb.AuditEvent]:
    events = await admin.ListAuditEvents(apb.ListAuditEventsRequest(target_id=cred_id, page_size=500))
    return sorted((e for e in events.events if e.action == "credential.sync"), key=lambda e: e.id)


async def until(condition: Callable[[], Awaitable[bool]], within: float = 30.0) -> None:
    async with asyncio.timeout(within):
        while not await condition():  # noqa: ASYNC110 - the vault changes it from its own tasks
            await asyncio.sleep(0.05)


def detail_of(vault: RunningVault, outcome: str) -> float:
    value = vault.metrics.registry.get_sample_value(
        "credvault_sync_total", {"provider": "HASHICORP_VAULT", "outcome": outcome}
    )
    return value or 0.0


async def test_approle_login_and_kv_reads_v2_and_v1(admin: Client, vault: RunningVault, openbao: OpenBao) -> None:
    await asyncio.to_thread(openbao.put, "secret", "reads/login", user="alice", **{"pass": "pw-v2"})
    await asyncio.to_thread(openbao.put, "kv1", "reads/api", tok="tok-v1")
    c = await companions(admin, openbao, "reads", ["secret/data/reads/*", "kv1/reads/*"])
    pair = await create_synced(admin, "pair", source(openbao, c, "reads/login"))
    tok = await create_synced(
        admin, "tok", source(openbao, c, "reads/api", mount="kv1", kv=cpb.KV_VERSION_V1, token_key="tok"), TOKEN
    )
    assert pair.external_source.kv.path == "reads/login"
    assert pair.sync_status.last_success.seconds == 0  # not synchronized yet

    synced = await sync(admin, pair.id)
    assert synced.version == 2
    assert synced.sync_status.last_error == ""
    assert synced.sync_status.external_version == "1"
    assert synced.sync_status.last_success.seconds > 0
    assert synced.sync_status.next_run.seconds >= synced.sync_status.last_attempt.seconds + 10
    synced_tok = await sync(admin, tok.id)
    assert (synced_tok.version, synced_tok.sync_status.external_version) == (2, "")

    # what the vault holds now is OpenBao's value
    assert await _static_value(vault, pair.id) == (2, "pw-v2")
    assert (await _stored(vault, tok.id))[1] == TokenSecret("tok-v1")
    assert detail_of(vault, "changed") == 2
    events = await sync_audit(admin, pair.id)
    assert [(e.outcome, e.details["version"]) for e in events] == [("ok", "2")]


async def test_a_change_in_openbao_reaches_a_real_engine_and_the_same_value_writes_nothing(
    admin_client: Client, push_vault: RunningVault, local_pki: LocalPki, openbao: OpenBao
) -> None:
    admin = admin_client
    await asyncio.to_thread(openbao.put, "secret", "push/login", user="bob", **{"pass": "first"})
    c = await companions(admin, openbao, "push", ["secret/data/push/*"])
    pair = await create_synced(admin, "pair", source(openbao, c, "push/login"))
    await sync(admin, pair.id)
    await monitor_at_loc_a(admin, pair.id)

    async with real_engine(push_vault.engine_port, local_pki, "loc-a", "e1") as engine:

        def password() -> str | None:
            return held_password(engine, pair.id)

        await engine.wait_until(lambda: password() == "first")
        await asyncio.to_thread(openbao.put, "secret", "push/login", user="bob", **{"pass": "second"})
        after = await sync(admin, pair.id)
        assert (after.version, after.sync_status.external_version) == (3, "2")
        await engine.wait_until(lambda: password() == "second")

        # the same value again (a new KV version with equal fields), and no change at all: no version, no push
        await asyncio.to_thread(openbao.put, "secret", "push/login", user="bob", **{"pass": "second"})
        held_revision = engine.store.credential(pair.id).version  # type: ignore[union-attr]
        for _ in range(2):
            same = await sync(admin, pair.id)
            assert same.version == 3
            assert same.sync_status.external_version == "3"
        assert engine.store.credential(pair.id).version == held_revision  # type: ignore[union-attr]
    assert detail_of(push_vault, "unchanged") == 2
    assert len(await sync_audit(admin, pair.id)) == 2  # the two changes; nothing for the unchanged syncs


async def _stored(vault: RunningVault, cred_id: str) -> tuple[int, SecretContents]:
    """The version and contents the vault holds, read from its database."""
    async with vault.store.autocommit() as tx:
        found = await tx.get_credential_sealed(cred_id)
    assert found is not None
    return found[0].version, contents_codec.decode(vault.keyring.open(cred_id, found[0].version, found[1]))


async def _static_value(vault: RunningVault, cred_id: str) -> tuple[int, str]:
    version, secret = await _stored(vault, cred_id)
    return version, secret.password  # type: ignore[union-attr]


async def test_failures_keep_the_last_good_value_and_say_why_and_the_next_good_sync_recovers(
    admin: Client, vault: RunningVault, openbao: OpenBao
) -> None:
    await asyncio.to_thread(openbao.put, "secret", "fail/login", user="carol", **{"pass": "good"})
    c = await companions(admin, openbao, "fail", ["secret/data/fail/*"])
    pair = await create_synced(admin, "pair", source(openbao, c, "fail/login"))
    assert (await sync(admin, pair.id)).version == 2

    async def fails(expected_error: str, outcome: str) -> None:
        got = await sync(admin, pair.id)
        assert expected_error in got.sync_status.last_error, got.sync_status.last_error
        assert got.version == 2
        assert await _static_value(vault, pair.id) == (2, "good")
        last = (await sync_audit(admin, pair.id))[-1]
        assert (last.outcome, last.details["outcome"]) == ("failed", outcome)
        assert detail_of(vault, outcome) >= 1

    async def recovers() -> None:
        got = await sync(admin, pair.id)
        assert got.sync_status.last_error == ""
        assert got.version == 2  # the same value: nothing written
        assert (await sync_audit(admin, pair.id))[-1].details["recovered"] == "true"

    # a missing key
    await asyncio.to_thread(openbao.put, "secret", "fail/login", user="carol", other="x")
    await fails("has no field 'pass'", "missing_key")
    await asyncio.to_thread(openbao.put, "secret", "fail/login", user="carol", **{"pass": "good"})
    await recovers()

    # a deleted path (KV v2 delete of the latest version)
    await asyncio.to_thread(openbao.delete, "secret", "fail/login")
    await fails("no secret", "not_found")
    await asyncio.to_thread(openbao.put, "secret", "fail/login", user="carol", **{"pass": "good"})
    await recovers()

    # a revoked secret id, the tokens it obtained revoked too: the login is refused
    await asyncio.to_thread(openbao.destroy_secret_id, "fail", c.secret_id)
    await asyncio.to_thread(openbao.revoke_role_tokens, "fail")
    await fails("refused the AppRole login", "auth_failed")
    new_secret_id = await asyncio.to_thread(openbao.secret_id, "fail")
    await admin.OverwriteCredential(cpb.OverwriteCredentialRequest(id=c.secret_cred, contents=token(new_secret_id)))
    await recovers()

    # a sealed OpenBao, then a stopped one
    await asyncio.to_thread(openbao.seal)
    try:
        await fails("sealed", "sealed")
    finally:
        await asyncio.to_thread(openbao.unseal)
    await recovers()
    await asyncio.to_thread(openbao.stop)
    try:
        await fails("unreachable", "unreachable")
    finally:
        await asyncio.to_thread(openbao.start)
    await recovers()

    # and a changed value after all that is taken
    await asyncio.to_thread(openbao.put, "secret", "fail/login", user="carol", **{"pass": "better"})
    assert (await sync(admin, pair.id)).version == 3
    assert await _static_value(vault, pair.id) == (3, "better")


async def test_the_scheduler_of_two_replicas_syncs_each_change_once(
    settings: Settings, keyring: Keyring, local_pki: LocalPki, openbao: OpenBao
) -> None:
    count = 6
    for n in range(count):
        await asyncio.to_thread(openbao.put, "secret", f"two/c{n}", user=f"u{n}", **{"pass": "one"})
    fast = {"external_sync": True, "external_sync_tick_seconds": 0.05}
    async with (
        replica(settings, keyring, "a", **fast) as a,
        replica(settings, keyring, "b", **fast) as b,
        admin_of(a, local_pki) as admin,
        local_pki.channel(b.port) as channel_b,
    ):
        admin_b = Client(channel_b, admin.token, "admin")
        c = await companions(admin, openbao, "two", ["secret/data/two/*"])
        ids = [(await create_synced(admin, f"c{n}", source(openbao, c, f"two/c{n}"))).id for n in range(count)]

        async def versions() -> list[int]:
            return [(await admin.GetCredential(cpb.GetCredentialRequest(id=i))).credential.version for i in ids]

        async def all_at(v: int) -> bool:
            return all(x == v for x in await versions())

        async def all_at_least(v: int) -> bool:
            return all(x >= v for x in await versions())

        await until(lambda: all_at(2))  # the first sync of each, due at once, by the schedulers
        for n in range(count):
            await asyncio.to_thread(openbao.put, "secret", f"two/c{n}", user=f"u{n}", **{"pass": "two"})
        # both replicas are told to sync every credential at once, while their schedulers run too
        calls = [client.SyncCredential(cpb.SyncCredentialRequest(id=i)) for i in ids for client in (admin, admin_b)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        for r in results:
            assert not isinstance(r, Exception) or (
                isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.ABORTED
            ), r
        await until(lambda: all_at_least(3))  # a scheduler's sync may have taken a lease the calls were refused
        assert await versions() == [3] * count
        for i in ids:
            changes = [e for e in await sync_audit(admin, i) if e.outcome == "ok" and "version" in e.details]
            assert [e.details["version"] for e in changes] == ["2", "3"]
        assert detail_of(a, "changed") + detail_of(b, "changed") == 2 * count


async def test_companions_and_permissions(admin: Client, users: object, openbao: OpenBao) -> None:
    from tests.conftest import Users
    from tests.helpers import MONITORING, PD, VIEW

    assert isinstance(users, Users)
    c = await companions(admin, openbao, "perm", ["secret/data/perm/*"])
    viewer = await users.make("viewer", [VIEW])
    editor = await users.make("editor", [MONITORING])
    src = source(openbao, c, "perm/x")
    # VIEW_ENVIRONMENT may create credentials, not synchronized ones
    await expect_code(create_synced(viewer, "v", src), PD)
    # the companions are the admin's, owner only: the editor has no access to them
    await expect_code(create_synced(editor, "e", src), PD)
    for cid in (c.role_cred, c.secret_cred, c.ca_cred):
        await admin.UpdateCredentialMetadata(
            cpb.UpdateCredentialMetadataRequest(id=cid, access=cpb.Access(level=cpb.ACCESS_LEVEL_ALL))
        )
    made = await create_synced(editor, "e", src)
    await expect_code(viewer.SyncCredential(cpb.SyncCredentialRequest(id=made.id)), PD)
    # a synchronized credential's contents are not overwritten by hand
    await expect_code(
        editor.OverwriteCredential(
            cpb.OverwriteCredentialRequest(
                id=made.id,
                contents=cpb.CredentialContents(username_password=cpb.UsernamePassword(username="a", password="b")),
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda s: setattr(s, "provider", 0), "external_source.provider"),
        (lambda s: setattr(s, "address", "http://127.0.0.1:8200"), "external_source.address"),
        (lambda s: setattr(s, "address", "https://u:p@127.0.0.1:8200"), "external_source.address"),
        (lambda s: setattr(s.kv, "mount", ""), "external_source.kv.mount"),
        (lambda s: setattr(s.kv, "path", "a/../b"), "external_source.kv.path"),
        (lambda s: setattr(s.kv, "version", 7), "external_source.kv.version"),
        (lambda s: setattr(s, "password_key", "bad key"), "external_source.password_key"),
        (lambda s: setattr(s, "token_key", "t"), "external_source.token_key"),
        (lambda s: s.ClearField("approle"), "external_source.auth"),
        (
            lambda s: setattr(s.approle, "role_id_credential_id", "nope"),
            "external_source.approle.role_id_credential_id",
        ),
        (lambda s: setattr(s.sync_interval, "seconds", 9), "external_source.sync_interval"),
        (lambda s: setattr(s.sync_interval, "nanos", 5), "external_source.sync_interval"),
        (lambda s: setattr(s, "ca_certificate_credential_id", "CA"), "external_source.ca_certificate_credential_id"),
    ],
)
async def test_every_field_is_checked(
    admin: Client, openbao: OpenBao, change: Callable[[cpb.ExternalSource], None], field: str
) -> None:
    c = Companions("x", "", "", "CREDENTIALS_VAULT-00000000000000AA", "CREDENTIALS_VAULT-00000000000000BB", "")
    src = source(openbao, c, "any")
    change(src)
    err = await expect_code(create_synced(admin, "x", src), grpc.StatusCode.INVALID_ARGUMENT)
    assert (err.details() or "").startswith(f"{field}:"), err.details()


async def test_companions_must_exist_and_be_of_their_type(admin: Client, openbao: OpenBao) -> None:
    c = await companions(admin, openbao, "types", ["secret/data/types/*"])
    missing = source(openbao, c, "any")
    missing.approle.secret_id_credential_id = "CREDENTIALS_VAULT-00000000000000BB"
    err = await expect_code(create_synced(admin, "x", missing), grpc.StatusCode.NOT_FOUND)
    assert (err.details() or "").startswith("external_source.approle.secret_id_credential_id:")
    swapped = source(openbao, c, "any")
    swapped.ca_certificate_credential_id = c.role_cred
    err = await expect_code(create_synced(admin, "x", swapped), grpc.StatusCode.INVALID_ARGUMENT)
    assert "PUBLIC_CERTIFICATE" in (err.details() or "")
    both = cpb.CreateCredentialRequest(name="x", scopes=[SYN], external_source=source(openbao, c, "any"), type=UP)
    both.contents.CopyFrom(token("t"))
    await expect_code(admin.CreateCredential(both), grpc.StatusCode.INVALID_ARGUMENT)
    untyped = cpb.CreateCredentialRequest(name="x", scopes=[SYN], external_source=source(openbao, c, "any"))
    err = await expect_code(admin.CreateCredential(untyped), grpc.StatusCode.INVALID_ARGUMENT)
    assert (err.details() or "").startswith("type:")


async def test_canary_external_values_companions_and_client_tokens_never_leak(
    admin: Client, vault: RunningVault, openbao: OpenBao, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.vault_service.test_canary import _no_canary, _pg_dump

    caplog.set_level(logging.DEBUG)
    user, password, tok = "CANARY-user-5b1e", "CANARY-pass-93d0", "CANARY-token-c4a7"
    await asyncio.to_thread(openbao.put, "secret", "canary/login", user=user, **{"pass": password})
    await asyncio.to_thread(openbao.put, "kv1", "canary/api", tok=tok)
    c = await companions(admin, openbao, "canary", ["secret/data/canary/*", "kv1/canary/*"])
    responses: list[Message] = []
    pair = await create_synced(admin, "pair", source(openbao, c, "canary/login"))
    api = await create_synced(
        admin, "api", source(openbao, c, "canary/api", mount="kv1", kv=cpb.KV_VERSION_V1, token_key="tok"), TOKEN
    )
    for cred in (pair, api):
        responses.append(await admin.SyncCredential(cpb.SyncCredentialRequest(id=cred.id)))
        responses.append(await admin.GetCredential(cpb.GetCredentialRequest(id=cred.id)))
    # a failure too: its message, status and audit row
    await asyncio.to_thread(openbao.put, "secret", "canary/login", user=user, other=password)
    failed = await admin.SyncCredential(cpb.SyncCredentialRequest(id=pair.id))
    assert "has no field" in failed.credential.sync_status.last_error
    responses.append(failed)
    responses.append(await admin.ListCredentials(cpb.ListCredentialsRequest()))
    audit = await admin.ListAuditEvents(apb.ListAuditEventsRequest(page_size=500))
    responses.append(audit)

    assert vault.synchronizer is not None
    client_tokens = [t.value.encode() for t in vault.synchronizer._client._tokens.values()]
    assert client_tokens  # one login, cached in memory
    secrets = [s.encode() for s in (user, password, tok, c.role_id, c.secret_id)] + client_tokens
    for r in responses:
        _no_canary(f"response {type(r).__name__}", r.SerializeToString(), secrets)
    logs = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records).encode()
    assert b"synchronization failed" in logs  # the logs were captured
    _no_canary("logs", logs, secrets)
    dump = await asyncio.to_thread(
        subprocess.run, [_pg_dump(), "--no-owner", "--dbname", database_url], capture_output=True, check=True
    )
    assert b"COPY public.credentials" in dump.stdout
    _no_canary("pg_dump", dump.stdout, secrets)
    # the values did arrive (the checks above are not vacuous)
    assert await _static_value(vault, pair.id) == (2, password)


async def test_cli_creates_syncs_and_shows_a_synchronized_token(
    admin: Client, vault: RunningVault, local_pki: LocalPki, openbao: OpenBao, tmp_path: pathlib.Path
) -> None:
    from tests.cli_helpers import assert_contains, cli_env, run

    value = "cli-token-value-8e2f"
    await asyncio.to_thread(openbao.put, "secret", "cli/api", api=value)
    c = await companions(admin, openbao, "cli", ["secret/data/cli/*"])
    src = source(openbao, c, "cli/api", token_key="api", interval=60)
    (tmp_path / "source.json").write_text(json_format.MessageToJson(src))
    env = cli_env(vault, local_pki, admin, tmp_path)
    args = [
        "credentials",
        "create",
        "--name",
        "api",
        "--type",
        "token",
        "--external-source",
        str(tmp_path / "source.json"),
    ]
    created = await run(env, *args, "--json")
    assert created.rc == 0, created.err
    cred_id = json.loads(created.out)["credential"]["id"]
    refused = await run(env, *args, "--token-value-file", "-", stdin=b"x\n")
    assert refused.rc != 0
    assert "--token-value-file" in refused.err

    synced = await run(env, "credentials", "sync", cred_id)
    assert synced.rc == 0, synced.err
    shown = await run(env, "credentials", "get", cred_id)
    assert shown.rc == 0, shown.err
    assert_contains(
        shown.out,
        f"synchronized from: {openbao.address}",
        "secret/cli/api (kv v2); fields token: api",
        "sync interval:",
        "60s",
        "last error:",
        "external version:  1",
    )
    assert "version:           2" in shown.out
    for out in (created.out, synced.out, shown.out):
        assert value not in out
    stored = await _stored(vault, cred_id)
    assert stored[1].token == value  # type: ignore[union-attr]


async def test_engines_never_get_the_empty_placeholder_of_a_credential_not_yet_synchronized(
    admin_client: Client, push_vault: RunningVault, local_pki: LocalPki, openbao: OpenBao
) -> None:
    """Until its first synchronization a synchronized credential holds an empty placeholder: engines get it without
    contents and reject the monitors that need it (engines list says so); the first good sync makes them run."""
    admin = admin_client
    c = await companions(admin, openbao, "first", ["secret/data/first/*"])
    pair = await create_synced(admin, "pair", source(openbao, c, "first/login"))  # nothing at that path yet
    m = await monitor_at_loc_a(admin, pair.id)

    async def rejected() -> bool:
        engines = (await admin.ListEngines(mpb.ListEnginesRequest(location_id="loc-a"))).engines
        return any(r.monitor_id == m.id for e in engines for r in e.rejected_monitors)

    async with real_engine(push_vault.engine_port, local_pki, "loc-a", "e1") as engine:
        await until(rejected)
        assert engine.store.credential(pair.id) is None
        assert engine.store.monitor(m.id) is None
        failed = await sync(admin, pair.id)  # the path is still missing: still nothing for the engines
        assert failed.sync_status.last_error
        assert engine.store.credential(pair.id) is None
        await asyncio.to_thread(openbao.put, "secret", "first/login", user="ann", **{"pass": "first-value"})
        await sync(admin, pair.id)

        def runs() -> bool:
            held = engine.store.credential(pair.id)
            return held is not None and engine.store.monitor(m.id) is not None

        await engine.wait_until(runs)
        held = engine.store.credential(pair.id)
        assert held is not None
        assert held.details().username_password.password == "first-value"
