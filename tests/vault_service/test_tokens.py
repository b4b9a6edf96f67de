"""API tokens through the gRPC API: format, storage as a hash only, authentication failures (one status, one message,
one code path), personal-token limit, who may issue which token, list / lookup / revoke / rotate, last use.

No wall-clock timing: expiry is forced in the database, grace periods are checked by their timestamps.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import hmac
import re
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import identity_pb2 as ipb
from credvault.v1 import tokens_pb2 as tpb
from tests.conftest import ALL_SCOPES, Client, Users
from tests.helpers import ENVIRONMENT, FAILED, NF, PD, UNAUTH, VIEW, create_req, expect_code
from tests.processes import eventually
from vault_service import tokens as tokens_mod
from vault_service.server import RunningVault

TOKEN_RE = re.compile(r"^cv0c01\.([A-Z2-7]{24})\.([A-Z2-7]{64})$")
TOKEN_ID_RE = re.compile(r"^cv0c01\.[A-Z2-7]{24}$")


PERSONAL = tpb.TOKEN_KIND_PERSONAL
API = tpb.TOKEN_KIND_API


def whoami() -> ipb.GetCurrentUserRequest:
    return ipb.GetCurrentUserRequest()


def create_token_req(
    name: str = "t", scopes: list[str] | None = None, kind: int = PERSONAL, owner: str = "", **kw: Any
) -> tpb.CreateTokenRequest:
    return tpb.CreateTokenRequest(name=name, scopes=scopes or ["credentialVault.read"], kind=kind, owner=owner, **kw)


def as_client(users: Users, token: str, username: str = "") -> Client:
    return Client(users.channel, token, username)


def with_header(users: Users, value: str) -> Client:
    client = Client(users.channel, None)
    client.metadata = (("authorization", value),)
    return client


def id_of(token: str) -> str:
    return token.rsplit(".", 1)[0]


def when(ts: timestamp_pb2.Timestamp) -> datetime.datetime:
    return ts.ToDatetime(tzinfo=datetime.UTC)


async def db_expire(vault: RunningVault, token_id: str) -> None:
    async with vault.store.transaction() as tx:
        status = await tx.conn.execute(
            "UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE public_id = $1", token_id
        )
    assert status == "UPDATE 1"


# --- format and storage ----------------------------------------------------------------------------------------


async def test_token_format_and_id(users: Users) -> None:
    alice = await users.make("alice", [VIEW])
    assert alice.token is not None
    for tok in (alice.token, (await alice.CreateToken(create_token_req())).token):
        m = TOKEN_RE.match(tok)
        assert m, tok
        me = await as_client(users, tok).GetCurrentUser(whoami())
        assert me.token_id == f"cv0c01.{m.group(1)}"
        assert TOKEN_ID_RE.match(me.token_id)
        assert m.group(2) not in me.SerializeToString().decode("latin-1")

    resp = await alice.CreateToken(create_token_req("named", ["credentialVault.read", "apiTokens.read"]))
    assert resp.info.id == id_of(resp.token)
    assert TOKEN_RE.match(resp.token).group(2) not in str(resp.info)  # type: ignore[union-attr]
    assert (resp.info.name, resp.info.owner, resp.info.kind) == ("named", "alice", PERSONAL)
    assert list(resp.info.scopes) == ["apiTokens.read", "credentialVault.read"]
    assert not resp.info.HasField("revoke_time")
    assert not resp.info.HasField("expire_time")
    assert not resp.info.HasField("last_used_time")
    # Every token is different.
    other = await alice.CreateToken(create_token_req("named"))
    assert (other.token, other.info.id) != (resp.token, resp.info.id)


async def test_secret_is_stored_only_as_a_hash(vault: RunningVault, users: Users) -> None:
    alice = await users.make("alice", [VIEW])
    resp = await alice.CreateToken(create_token_req("hashed"))
    secret = resp.token.rsplit(".", 1)[1]
    await as_client(users, resp.token).GetCurrentUser(whoami())  # touch it too
    async with vault.store.autocommit() as tx:
        rows = await tx.conn.fetch("SELECT * FROM api_tokens")
        audit = await tx.conn.fetch("SELECT * FROM audit_log")
    (row,) = [r for r in rows if r["public_id"] == resp.info.id]
    assert len(bytes(row["secret_hash"])) == 32
    for r in [*rows, *audit]:
        for column, value in dict(r).items():
            text = value.hex() if isinstance(value, bytes) else str(value)
            assert secret not in text, column
            assert secret.lower() not in text.lower(), column
            if isinstance(value, bytes):
                assert secret.encode() not in value, column


# --- authentication failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        (None, "missing API token"),
        ("", "missing API token"),
        ("Bearer x", "malformed authorization"),
        ("Api-Token", "malformed authorization"),
        ("Api-Token garbage", "invalid API token"),
        ("Api-Token cv0c01.short.secret", "invalid API token"),
    ],
)
async def test_missing_or_malformed_token(users: Users, header: str | None, fragment: str) -> None:
    client = Client(users.channel, None) if header is None else with_header(users, header)
    for call in (
        client.GetCurrentUser(whoami()),
        client.ListCredentials(cpb.ListCredentialsRequest()),
        client.CreateToken(create_token_req()),
    ):
        err = await expect_code(call, UNAUTH)
        assert fragment in (err.details() or "")


@pytest.mark.parametrize("scheme", ["Api", "Api-Tok", "Apitoken", "Bearer", "Basic", "Token"])
async def test_a_valid_token_under_another_scheme_is_refused(users: Users, scheme: str) -> None:
    """Only 'Api-Token' (in any case) carries a token: names sorting before and after it are refused alike."""
    alice = await users.make("alice", [VIEW])
    assert (await with_header(users, f"API-TOKEN {alice.token}").GetCurrentUser(whoami())).user.username == "alice"
    err = await expect_code(with_header(users, f"{scheme} {alice.token}").GetCurrentUser(whoami()), UNAUTH)
    assert "malformed authorization" in (err.details() or "")


def tampered(issued: str | None) -> tuple[str, str, str, str]:
    """The token's public id and secret, and each with its first character changed (an unknown id, a wrong
    secret)."""
    assert issued is not None
    m = TOKEN_RE.match(issued)
    assert m is not None
    public, secret = m.group(1), m.group(2)
    return (
        public,
        secret,
        ("A" if public[0] != "A" else "B") + public[1:],
        ("A" if secret[0] != "A" else "B") + secret[1:],
    )


async def test_unknown_id_wrong_secret_revoked_expired(vault: RunningVault, admin: Client, users: Users) -> None:
    alice = await users.make("alice", [VIEW])
    public, secret, unknown_public, wrong_secret = tampered(alice.token)

    unknown = await expect_code(as_client(users, f"cv0c01.{unknown_public}.{secret}").GetCurrentUser(whoami()), UNAUTH)
    wrong = await expect_code(as_client(users, f"cv0c01.{public}.{wrong_secret}").GetCurrentUser(whoami()), UNAUTH)
    assert unknown.details() == wrong.details()
    assert public not in (wrong.details() or "")
    # The real token still works.
    assert (await alice.GetCurrentUser(whoami())).user.username == "alice"

    # Revoked.
    revoked = await alice.CreateToken(create_token_req("to revoke"))
    await as_client(users, revoked.token).GetCurrentUser(whoami())
    await alice.RevokeToken(tpb.RevokeTokenRequest(id=revoked.info.id))
    err = await expect_code(as_client(users, revoked.token).GetCurrentUser(whoami()), UNAUTH)
    assert err.details() == unknown.details()

    # Expired: valid until its expire_time passes (forced in the database, no sleeping).
    expire_time = timestamp_pb2.Timestamp()
    expire_time.FromDatetime(datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1))
    expiring = await alice.CreateToken(create_token_req("expiring", expire_time=expire_time))
    assert when(expiring.info.expire_time) == when(expire_time)
    assert (await as_client(users, expiring.token).GetCurrentUser(whoami())).user.username == "alice"
    await db_expire(vault, expiring.info.id)
    err = await expect_code(as_client(users, expiring.token).GetCurrentUser(whoami()), UNAUTH)
    assert err.details() == unknown.details()
    await expect_code(as_client(users, expiring.token).ListCredentials(cpb.ListCredentialsRequest()), UNAUTH)


async def test_expire_time_must_be_in_the_future(users: Users) -> None:
    alice = await users.make("alice", [VIEW])
    past = timestamp_pb2.Timestamp()
    past.FromDatetime(datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=5))
    await expect_code(alice.CreateToken(create_token_req(expire_time=past)), grpc.StatusCode.INVALID_ARGUMENT)


async def test_unknown_id_and_wrong_secret_take_the_same_path(users: Users, monkeypatch: pytest.MonkeyPatch) -> None:
    alice = await users.make("alice", [VIEW])
    public, secret, unknown_public, wrong_secret = tampered(alice.token)
    await alice.GetCurrentUser(whoami())  # warm up (last-used update done, pool connections open)

    calls: collections.Counter[str] = collections.Counter()
    compared: list[tuple[int, int]] = []
    real_compare = hmac.compare_digest
    real_hash = tokens_mod._hash

    def counting_compare(a: bytes, b: bytes) -> bool:
        calls["compare_digest"] += 1
        compared.append((len(a), len(b)))
        return real_compare(a, b)

    def counting_hash(token_id: str, token_secret: str) -> bytes:
        calls["_hash"] += 1
        return real_hash(token_id, token_secret)

    monkeypatch.setattr("vault_service.tokens.hmac.compare_digest", counting_compare)
    monkeypatch.setattr(tokens_mod, "_hash", counting_hash)

    details = []
    for tok in (f"cv0c01.{unknown_public}.{secret}", f"cv0c01.{public}.{wrong_secret}"):
        calls.clear()
        compared.clear()
        err = await expect_code(as_client(users, tok).GetCurrentUser(whoami()), UNAUTH)
        details.append(err.details())
        assert calls == {"compare_digest": 1, "_hash": 1}, tok
        assert compared == [(32, 32)], tok  # a full hash comparison, against a dummy hash for the unknown id
    assert details[0] == details[1]

    calls.clear()
    await alice.GetCurrentUser(whoami())
    assert calls == {"compare_digest": 1, "_hash": 1}


# --- creating tokens -------------------------------------------------------------------------------------------


async def test_at_most_five_live_personal_tokens(vault: RunningVault, users: Users) -> None:
    alice = await users.make("alice", [VIEW])
    made = [await alice.CreateToken(create_token_req(f"p{i}")) for i in range(5)]
    err = await expect_code(alice.CreateToken(create_token_req("p5")), FAILED)
    assert "5 personal access tokens" in (err.details() or "")
    # API tokens (issued by an administrator) do not count: alice's own API token is there all along.
    await users.admin.CreateToken(create_token_req("api", kind=API, owner="alice"))
    await expect_code(alice.CreateToken(create_token_req("p5")), FAILED)

    await alice.RevokeToken(tpb.RevokeTokenRequest(id=made[0].info.id))
    sixth = await alice.CreateToken(create_token_req("p5"))
    assert (await as_client(users, sixth.token).GetCurrentUser(whoami())).user.username == "alice"
    await expect_code(alice.CreateToken(create_token_req("p6")), FAILED)

    # An expired one does not count either.
    await db_expire(vault, made[1].info.id)
    await alice.CreateToken(create_token_req("p6"))
    await expect_code(alice.CreateToken(create_token_req("p7")), FAILED)

    # The limit is per user.
    bob = await users.make("bob", [VIEW])
    for i in range(5):
        await bob.CreateToken(create_token_req(f"b{i}"))


async def test_more_live_personal_tokens_than_the_limit_refuse_another(vault: RunningVault, users: Users) -> None:
    """Over the limit (a revoked token restored in the database by hand: six live), not only at it, is refused."""
    alice = await users.make("alice", [VIEW])
    made = [await alice.CreateToken(create_token_req(f"p{i}")) for i in range(5)]
    await alice.RevokeToken(tpb.RevokeTokenRequest(id=made[0].info.id))
    await alice.CreateToken(create_token_req("p5"))
    async with vault.store.transaction() as tx:
        status = await tx.conn.execute("UPDATE api_tokens SET revoked_at = NULL WHERE public_id = $1", made[0].info.id)
    assert status == "UPDATE 1"
    err = await expect_code(alice.CreateToken(create_token_req("p6")), FAILED)
    assert "5 personal access tokens" in (err.details() or "")
    grace = duration_pb2.Duration(seconds=60)
    err = await expect_code(alice.RotateToken(tpb.RotateTokenRequest(id=made[1].info.id, grace_period=grace)), FAILED)
    assert "5 live personal access tokens" in (err.details() or "")


async def test_a_token_needs_a_name(users: Users) -> None:
    alice = await users.make("alice", [VIEW])
    for name in ("", "   "):
        request = tpb.CreateTokenRequest(name=name, scopes=["credentialVault.read"], kind=PERSONAL)
        err = await expect_code(alice.CreateToken(request), grpc.StatusCode.INVALID_ARGUMENT)
        assert "name" in (err.details() or "")
    assert [t.name for t in (await alice.ListTokens(tpb.ListTokensRequest())).tokens] == ["alice token"]


async def test_concurrent_creations_never_exceed_five_personal_tokens(vault: RunningVault, users: Users) -> None:
    """Eight creations race for alice's five places. To make them meet for certain, the test holds inserts into
    api_tokens back (a table lock that still lets them count) until all eight are waiting on a lock: each must have
    counted under the per-user lock, so only five get through, whatever order they run in."""
    alice = await users.make("alice", [VIEW])
    await alice.GetCurrentUser(whoami())  # the first use records last use (an api_tokens update) before the race
    racers = 8
    async with vault.store.pool.acquire() as gate:
        gate_tx = gate.transaction()
        await gate_tx.start()
        await gate.execute("LOCK TABLE api_tokens IN SHARE ROW EXCLUSIVE MODE")  # conflicts with INSERT only
        calls = [asyncio.ensure_future(alice.CreateToken(create_token_req(f"p{i}"))) for i in range(racers)]
        try:
            await eventually(lambda: _lock_waiters_at_least(gate, racers))
        finally:
            await gate_tx.commit()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert [o.code() for o in refused] == [FAILED] * (racers - 5), outcomes
    async with vault.store.transaction() as tx:
        live = await tx.conn.fetchval("SELECT count(*) FROM api_tokens WHERE owner = 'alice' AND kind = 'PERSONAL'")
    assert live == 5


async def _lock_waiters_at_least(conn: asyncpg.Connection, count: int) -> bool:
    """Whether ``count`` other sessions wait for a lock."""
    query = "SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted AND pid <> pg_backend_pid()"
    return bool(await conn.fetchval(query) >= count)


async def test_personal_limit_is_not_bypassed_by_rotating_with_grace(users: Users) -> None:
    alice = await users.make("alice", [VIEW])
    made = [await alice.CreateToken(create_token_req(f"p{i}")) for i in range(5)]
    hour = duration_pb2.Duration(seconds=3600)
    # With 5 live personal tokens a rotation with a grace period would leave 6 live ones.
    await expect_code(alice.RotateToken(tpb.RotateTokenRequest(id=made[0].info.id, grace_period=hour)), FAILED)
    assert (await as_client(users, made[0].token).GetCurrentUser(whoami())).user.username == "alice"
    # Rotating without grace keeps the count.
    rotated = await alice.RotateToken(tpb.RotateTokenRequest(id=made[0].info.id))
    await expect_code(alice.CreateToken(create_token_req("p5")), FAILED)
    # Below the limit a grace period is fine; the old one counts until its revoke_time.
    await alice.RevokeToken(tpb.RevokeTokenRequest(id=rotated.info.id))
    again = await alice.RotateToken(tpb.RotateTokenRequest(id=made[1].info.id, grace_period=hour))
    await expect_code(alice.CreateToken(create_token_req("p5")), FAILED)
    await expect_code(alice.RotateToken(tpb.RotateTokenRequest(id=again.info.id, grace_period=hour)), FAILED)


async def test_personal_token_only_for_oneself(admin: Client, users: Users) -> None:
    alice = await users.make("alice", [VIEW])
    await users.make("bob", [VIEW])
    err = await expect_code(alice.CreateToken(create_token_req(owner="bob")), PD)
    assert "yourself" in (err.details() or "")
    zoe = await users.make("zoe", [VIEW])  # a name sorting after the owner's, as alice's sorts before
    await expect_code(zoe.CreateToken(create_token_req(owner="bob")), PD)
    # Not even an administrator creates a personal token for someone else.
    await expect_code(admin.CreateToken(create_token_req(owner="bob")), PD)
    own = await alice.CreateToken(create_token_req(owner="alice"))
    assert (own.info.owner, own.info.kind) == ("alice", PERSONAL)
    # Kind unset means personal.
    unset = await alice.CreateToken(tpb.CreateTokenRequest(name="k", scopes=["credentialVault.read"]))
    assert unset.info.kind == PERSONAL
    listed = await admin.ListTokens(tpb.ListTokensRequest(owner="bob"))
    assert [t.name for t in listed.tokens] == ["bob token"]


async def test_api_tokens_need_environment_settings(admin: Client, users: Users) -> None:
    alice = await users.make("alice", [VIEW, ipb.PERMISSION_CHANGE_MONITORING_SETTINGS])
    await expect_code(alice.CreateToken(create_token_req(kind=API)), PD)
    await expect_code(alice.CreateToken(create_token_req(kind=API, owner="alice")), PD)

    issued = await admin.CreateToken(create_token_req("for alice", ["credentialVault.read"], kind=API, owner="alice"))
    assert (issued.info.owner, issued.info.kind) == ("alice", API)
    me = await as_client(users, issued.token).GetCurrentUser(whoami())
    assert (me.user.username, list(me.token_scopes)) == ("alice", ["credentialVault.read"])
    await expect_code(admin.CreateToken(create_token_req(kind=API, owner="nobody")), NF)

    # CHANGE_ENVIRONMENT_SETTINGS, but the token lacks apiTokens.write.
    env = await users.make("env", [ENVIRONMENT], scopes=["apiTokens.read", "credentialVault.read"])
    await expect_code(env.CreateToken(create_token_req(kind=API, owner="alice")), PD)
    await expect_code(env.CreateToken(create_token_req()), PD)


async def test_token_cannot_grant_scopes_it_lacks(admin: Client, users: Users) -> None:
    alice = await users.make("alice", [VIEW], scopes=["apiTokens.write", "credentialVault.read"])
    err = await expect_code(alice.CreateToken(create_token_req(scopes=["credentialVault.write"])), PD)
    assert "credentialVault.write" in (err.details() or "")
    await expect_code(alice.CreateToken(create_token_req(scopes=["credentialVault.read", "users.write"])), PD)
    ok = await alice.CreateToken(create_token_req(scopes=["credentialVault.read", "apiTokens.write"]))
    assert list(ok.info.scopes) == ["apiTokens.write", "credentialVault.read"]

    # The same holds for an administrator's narrow token issuing API tokens.
    narrow = await admin.CreateToken(create_token_req("narrow", ["apiTokens.write"], kind=API))
    narrow_admin = as_client(users, narrow.token, "admin")
    await expect_code(narrow_admin.CreateToken(create_token_req(scopes=ALL_SCOPES, kind=API, owner="alice")), PD)
    await expect_code(admin.CreateToken(create_token_req(scopes=["no.such.scope"])), grpc.StatusCode.INVALID_ARGUMENT)


# --- list, lookup, revoke --------------------------------------------------------------------------------------


async def test_list_tokens_own_and_others(admin: Client, users: Users) -> None:
    alice = await users.make("alice", [VIEW])
    bob = await users.make("bob", [VIEW])
    a1 = await alice.CreateToken(create_token_req("a1"))
    b1 = await bob.CreateToken(create_token_req("b1"))

    own = await alice.ListTokens(tpb.ListTokensRequest())
    assert sorted(t.name for t in own.tokens) == ["a1", "alice token"]
    assert {t.owner for t in own.tokens} == {"alice"}
    assert a1.info.id in {t.id for t in own.tokens}
    assert b1.info.id not in {t.id for t in own.tokens}
    assert own == await alice.ListTokens(tpb.ListTokensRequest(owner="alice"))

    await expect_code(alice.ListTokens(tpb.ListTokensRequest(owner="bob")), PD)
    of_bob = await admin.ListTokens(tpb.ListTokensRequest(owner="bob"))
    assert sorted(t.name for t in of_bob.tokens) == ["b1", "bob token"]

    # Paging.
    for i in range(3):
        await alice.CreateToken(create_token_req(f"more{i}"))
    for size in (1, 2, 3):  # odd and even: a page reads one row more than it returns, to know whether more follow
        seen, page_token = [], ""
        while True:
            page = await alice.ListTokens(tpb.ListTokensRequest(page_size=size, page_token=page_token))
            assert len(page.tokens) <= size
            seen += [t.id for t in page.tokens]
            page_token = page.next_page_token
            if not page_token:
                break
        assert len(seen) == len(set(seen)) == 5, size
    first = await alice.ListTokens(tpb.ListTokensRequest(page_size=2))
    req = tpb.ListTokensRequest(owner="alice", page_size=2, page_token=first.next_page_token)
    assert len((await alice.ListTokens(req)).tokens) == 2
    req = tpb.ListTokensRequest(owner="bob", page_size=2, page_token=first.next_page_token)
    await expect_code(admin.ListTokens(req), grpc.StatusCode.INVALID_ARGUMENT)

    # Listing needs apiTokens.read.
    no_read = await users.make("carol", [VIEW], scopes=["credentialVault.read"])
    await expect_code(no_read.ListTokens(tpb.ListTokensRequest()), PD)


async def test_lookup_token(admin: Client, users: Users) -> None:
    alice = await users.make("alice", [VIEW])
    made = await alice.CreateToken(create_token_req("looked up", ["credentialVault.read"]))

    info = (await admin.LookupToken(tpb.LookupTokenRequest(token=made.token))).info
    assert (info.id, info.name, info.owner, info.kind) == (made.info.id, "looked up", "alice", PERSONAL)
    assert list(info.scopes) == ["credentialVault.read"]
    own = (await alice.LookupToken(tpb.LookupTokenRequest(token=made.token))).info
    assert own.id == made.info.id
    # Looking a token up is not using it.
    assert not info.HasField("last_used_time")
    assert not own.HasField("last_used_time")

    m = TOKEN_RE.match(made.token)
    assert m is not None
    wrong = f"cv0c01.{m.group(1)}.{'A' if m.group(2)[0] != 'A' else 'B'}{m.group(2)[1:]}"
    for bad in ("", "garbage", made.info.id, wrong):
        await expect_code(admin.LookupToken(tpb.LookupTokenRequest(token=bad)), NF)
    await alice.RevokeToken(tpb.RevokeTokenRequest(id=made.info.id))
    await expect_code(admin.LookupToken(tpb.LookupTokenRequest(token=made.token)), NF)


async def test_revoke_token(admin: Client, users: Users) -> None:
    alice = await users.make("alice", [VIEW])
    bob = await users.make("bob", [VIEW])
    made = await alice.CreateToken(create_token_req("doomed"))
    doomed = as_client(users, made.token)
    await doomed.GetCurrentUser(whoami())

    # Someone else's token: not found (not even its existence is told), whichever way the names sort.
    await expect_code(bob.RevokeToken(tpb.RevokeTokenRequest(id=made.info.id)), NF)
    aaron = await users.make("aaron", [VIEW])
    await expect_code(aaron.RevokeToken(tpb.RevokeTokenRequest(id=made.info.id)), NF)
    await doomed.GetCurrentUser(whoami())
    await expect_code(bob.RevokeToken(tpb.RevokeTokenRequest(id="bad id")), grpc.StatusCode.INVALID_ARGUMENT)

    info = (await alice.RevokeToken(tpb.RevokeTokenRequest(id=made.info.id))).info
    assert info.HasField("revoke_time")
    await expect_code(doomed.GetCurrentUser(whoami()), UNAUTH)
    listed = {t.id: t for t in (await alice.ListTokens(tpb.ListTokensRequest())).tokens}
    assert listed[made.info.id].revoke_time == info.revoke_time

    # An administrator revokes anyone's; the user's own API token too.
    assert alice.token is not None
    await admin.RevokeToken(tpb.RevokeTokenRequest(id=id_of(alice.token)))
    await expect_code(alice.GetCurrentUser(whoami()), UNAUTH)


# --- rotate ----------------------------------------------------------------------------------------------------


async def test_rotate_without_grace(admin: Client, users: Users) -> None:
    alice = await users.make("alice", [VIEW])
    old = await alice.CreateToken(create_token_req("rotating", ["credentialVault.read", "apiTokens.read"]))
    resp = await admin.RotateToken(tpb.RotateTokenRequest(id=old.info.id, grace_period=duration_pb2.Duration()))

    assert TOKEN_RE.match(resp.token)
    assert resp.info.id == id_of(resp.token) != old.info.id
    assert (resp.info.name, resp.info.owner, resp.info.kind) == ("rotating", "alice", PERSONAL)
    assert list(resp.info.scopes) == list(old.info.scopes)
    assert resp.previous.id == old.info.id
    assert resp.previous.HasField("revoke_time")

    me = await as_client(users, resp.token).GetCurrentUser(whoami())
    assert (me.user.username, me.token_id) == ("alice", resp.info.id)
    await expect_code(as_client(users, old.token).GetCurrentUser(whoami()), UNAUTH)
    # A revoked token is not rotated again.
    await expect_code(alice.RotateToken(tpb.RotateTokenRequest(id=old.info.id)), FAILED)


async def test_rotate_with_grace_period(users: Users) -> None:
    alice = await users.make("alice", [VIEW])
    old = await alice.CreateToken(create_token_req("rotating"))
    resp = await alice.RotateToken(
        tpb.RotateTokenRequest(id=old.info.id, grace_period=duration_pb2.Duration(seconds=3600))
    )
    assert (resp.info.name, resp.info.owner, list(resp.info.scopes)) == ("rotating", "alice", list(old.info.scopes))
    # The old one still works during the grace period, and will stop an hour after the rotation.
    assert (await as_client(users, old.token).GetCurrentUser(whoami())).user.username == "alice"
    assert (await as_client(users, resp.token).GetCurrentUser(whoami())).user.username == "alice"
    revoke_at = when(resp.previous.revoke_time)
    delta = revoke_at - when(resp.info.create_time)
    assert datetime.timedelta(minutes=59) < delta < datetime.timedelta(minutes=61)
    listed = {t.id: t for t in (await alice.ListTokens(tpb.ListTokensRequest())).tokens}
    assert when(listed[old.info.id].revoke_time) == revoke_at
    assert not listed[resp.info.id].HasField("revoke_time")

    # Revoking it during the grace period ends it at once.
    await alice.RevokeToken(tpb.RevokeTokenRequest(id=old.info.id))
    await expect_code(as_client(users, old.token).GetCurrentUser(whoami()), UNAUTH)


async def test_a_token_in_its_grace_period_is_live_and_may_be_rotated_again(users: Users) -> None:
    """Its revocation lies ahead: it is not yet revoked (unlike a token whose revocation has come)."""
    alice = await users.make("alice", [VIEW])
    old = await alice.CreateToken(create_token_req("rotating"))
    hour = duration_pb2.Duration(seconds=3600)
    first = await alice.RotateToken(tpb.RotateTokenRequest(id=old.info.id, grace_period=hour))
    again = await alice.RotateToken(tpb.RotateTokenRequest(id=old.info.id))
    assert again.previous.id == old.info.id
    for token in (first.token, again.token):
        assert (await as_client(users, token).GetCurrentUser(whoami())).user.username == "alice"
    await expect_code(as_client(users, old.token).GetCurrentUser(whoami()), UNAUTH)


@pytest.mark.parametrize("seconds", [-1, 7 * 24 * 3600 + 1])
async def test_rotate_grace_period_bounds(users: Users, seconds: int) -> None:
    alice = await users.make("alice", [VIEW])
    old = await alice.CreateToken(create_token_req("rotating"))
    req = tpb.RotateTokenRequest(id=old.info.id, grace_period=duration_pb2.Duration(seconds=seconds))
    await expect_code(alice.RotateToken(req), grpc.StatusCode.INVALID_ARGUMENT)
    assert (await as_client(users, old.token).GetCurrentUser(whoami())).user.username == "alice"


@pytest.mark.parametrize("seconds", [0, 7 * 24 * 3600])
async def test_rotate_grace_period_bounds_are_allowed(users: Users, seconds: int) -> None:
    alice = await users.make("alice", [VIEW])
    old = await alice.CreateToken(create_token_req("rotating"))
    req = tpb.RotateTokenRequest(id=old.info.id, grace_period=duration_pb2.Duration(seconds=seconds))
    new = await alice.RotateToken(req)
    assert (await as_client(users, new.token).GetCurrentUser(whoami())).user.username == "alice"


async def test_rotate_keeps_expiry_and_refuses_an_expired_token(vault: RunningVault, users: Users) -> None:
    alice = await users.make("alice", [VIEW])
    expire_time = timestamp_pb2.Timestamp()
    expire_time.FromDatetime(datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1))
    old = await alice.CreateToken(create_token_req("expiring", expire_time=expire_time))
    resp = await alice.RotateToken(tpb.RotateTokenRequest(id=old.info.id))
    assert resp.info.expire_time == old.info.expire_time

    # An expired token would be rotated into a token that is dead on arrival: refused.
    await db_expire(vault, resp.info.id)
    await expect_code(alice.RotateToken(tpb.RotateTokenRequest(id=resp.info.id)), FAILED)
    assert len((await alice.ListTokens(tpb.ListTokensRequest())).tokens) == 3


async def test_rotate_someone_elses_token(admin: Client, users: Users) -> None:
    alice = await users.make("alice", [VIEW])
    bob = await users.make("bob", [VIEW])
    made = await alice.CreateToken(create_token_req("mine"))
    await expect_code(bob.RotateToken(tpb.RotateTokenRequest(id=made.info.id)), NF)
    await as_client(users, made.token).GetCurrentUser(whoami())
    resp = await admin.RotateToken(tpb.RotateTokenRequest(id=made.info.id))
    assert resp.info.owner == "alice"


# --- last use, effective rights --------------------------------------------------------------------------------


async def test_last_used_time_is_set_after_use(admin: Client, users: Users) -> None:
    await users.make("alice", [VIEW])
    made = await admin.CreateToken(create_token_req("fresh", kind=API, owner="alice"))
    assert not made.info.HasField("last_used_time")

    def find(resp: tpb.ListTokensResponse) -> tpb.TokenInfo:
        (found,) = [t for t in resp.tokens if t.id == made.info.id]
        return found

    assert not find(await admin.ListTokens(tpb.ListTokensRequest(owner="alice"))).HasField("last_used_time")
    await as_client(users, made.token).ListCredentials(cpb.ListCredentialsRequest())
    used = find(await admin.ListTokens(tpb.ListTokensRequest(owner="alice")))
    assert used.HasField("last_used_time")
    assert when(made.info.create_time) <= when(used.last_used_time)
    assert when(used.last_used_time) - when(made.info.create_time) < datetime.timedelta(minutes=1)


async def test_a_use_is_recorded_again_after_the_resolution_not_within_it(vault: RunningVault, users: Users) -> None:
    """The last use is written at most once per LAST_USED_RESOLUTION (a minute): a use 10 s after the recorded one
    leaves it, a use an hour after records the new time (the recorded time is set back in the database)."""
    alice = await users.make("alice", [VIEW])

    async def use_after(interval: str) -> tuple[datetime.datetime, datetime.datetime]:
        async with vault.store.transaction() as tx:
            before = await tx.conn.fetchval(
                f"UPDATE api_tokens SET last_used_at = now() - interval '{interval}' WHERE owner = 'alice'"
                " RETURNING last_used_at"
            )
        await alice.GetCurrentUser(whoami())  # never on a remembered authentication: the database path
        async with vault.store.autocommit() as tx:
            after = await tx.conn.fetchval("SELECT last_used_at FROM api_tokens WHERE owner = 'alice'")
        return before, after

    before, after = await use_after("10 seconds")
    assert after == before
    before, after = await use_after("1 hour")
    assert after > before


async def test_effective_rights_are_scopes_and_permissions_at_call_time(admin: Client, users: Users) -> None:
    alice = await users.make("alice", [VIEW])
    cred = (await alice.CreateCredential(create_req("mine"))).credential
    # Permission taken away: the same token loses the right at once, and gets it back at once.
    await admin.SetUserPermissions(ipb.SetUserPermissionsRequest(username="alice", permissions=[]))
    await expect_code(alice.GetCredential(cpb.GetCredentialRequest(id=cred.id)), PD)
    await expect_code(alice.CreateCredential(create_req("again")), PD)
    assert list((await alice.GetCurrentUser(whoami())).user.permissions) == []
    await admin.SetUserPermissions(ipb.SetUserPermissionsRequest(username="alice", permissions=[VIEW]))
    assert (await alice.GetCredential(cpb.GetCredentialRequest(id=cred.id))).credential.id == cred.id

    # Token-management rights: CHANGE_ENVIRONMENT_SETTINGS removed -> another user's tokens are out of reach.
    boss = await users.make("boss", [ENVIRONMENT])
    assert (await boss.ListTokens(tpb.ListTokensRequest(owner="alice"))).tokens
    await admin.SetUserPermissions(ipb.SetUserPermissionsRequest(username="boss", permissions=[VIEW]))
    await expect_code(boss.ListTokens(tpb.ListTokensRequest(owner="alice")), PD)
    await expect_code(boss.CreateToken(create_token_req(kind=API, owner="alice")), PD)
