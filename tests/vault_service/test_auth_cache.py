"""The authentication cache: its bounds on their own (a clock of the test's), and through the gRPC API with two vault
replicas on one database: a token revoked or rotated, a user deleted or a user's permissions changed through
replica A are refused (or applied) on replica B right after, though B had the authentication remembered; also when
the change is made in the database by hand. Nothing waits for a notification: the statement doing the call
re-checks a remembered authentication."""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import identity_pb2 as ipb
from credvault.v1 import tokens_pb2 as tpb
from tests.conftest import Client, Users
from tests.helpers import ALL, MONITORING, NF, PD, UNAUTH, VIEW, create_req, expect_code, up
from tests.local_pki import LocalPki
from vault_service.auth_cache import AuthCache, CachedAuth
from vault_service.config import Settings
from vault_service.crypto import Keyring
from vault_service.errors import AuthenticationChanged
from vault_service.models import Permission, Principal, TokenScope, User
from vault_service.server import RunningVault, start_vault
from vault_service.storage.pool import register_codecs
from vault_service.storage.queries import Queries

ZONE_ONLY = [ipb.ZonePermissions(management_zone="zone-1", permissions=[VIEW])]
NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)


# --- the cache on its own ------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def entry(token_id: str = "cv0c01.A", digest: bytes = b"h" * 32) -> CachedAuth:
    user = User("alice", frozenset({Permission.VIEW_ENVIRONMENT}), {}, NOW, NOW)
    return CachedAuth(
        digest, Principal(user, token_id, frozenset({TokenScope.CREDENTIAL_VAULT_READ})), None, None, None
    )


def test_entries_live_at_most_the_ttl() -> None:
    clock = Clock()
    cache = AuthCache(1.0, clock=clock)
    cache.put(entry())
    clock.now += 0.999
    assert cache.get(b"h" * 32) is not None
    clock.now += 0.001
    assert cache.get(b"h" * 32) is None
    assert len(cache) == 0
    assert (cache.hits, cache.misses) == (1, 1)


def test_bounded_size_drops_the_oldest() -> None:
    cache = AuthCache(1.0, max_entries=2, clock=Clock())
    for i in range(3):
        cache.put(entry(f"cv0c01.T{i}", bytes([i]) * 32))
    assert len(cache) == 2
    assert cache.get(bytes([0]) * 32) is None
    assert cache.get(bytes([2]) * 32) is not None
    cache.discard(bytes([2]) * 32)
    assert cache.get(bytes([2]) * 32) is None


# --- two replicas through the gRPC API -----------------------------------------------------------------------------


@pytest.fixture
async def replica_b(settings: Settings, keyring: Keyring, vault: RunningVault) -> AsyncIterator[RunningVault]:
    """A second vault on the database of ``vault`` (replica A)."""
    running = await start_vault(settings, keyring=keyring)
    yield running
    await running.stop(0)


@pytest.fixture
async def channel_b(replica_b: RunningVault, local_pki: LocalPki) -> AsyncIterator[grpc.aio.Channel]:
    ch = local_pki.channel(replica_b.port)
    yield ch
    await ch.close(None)


def on(channel: grpc.aio.Channel, client: Client) -> Client:
    return Client(channel, client.token, client.username)


def cache_of(replica: RunningVault) -> AuthCache:
    assert replica.auth_cache is not None
    return replica.auth_cache


async def remembered_on(replica: RunningVault, client: Client) -> None:
    """Two calls through ``replica``; the second must have been answered on the remembered authentication."""
    cache = cache_of(replica)
    await client.ListCredentials(cpb.ListCredentialsRequest())
    hits = cache.hits
    await client.ListCredentials(cpb.ListCredentialsRequest())
    assert cache.hits == hits + 1


async def token_id(client: Client) -> str:
    info = (await client.LookupToken(tpb.LookupTokenRequest(token=client.token or ""))).info
    return str(info.id)


async def all_four_refused(client: Client, cred_id: str, code: grpc.StatusCode = UNAUTH) -> None:
    """Each of the calls that may use a remembered authentication."""
    await expect_code(client.GetCredential(cpb.GetCredentialRequest(id=cred_id)), code)
    await expect_code(client.ListCredentials(cpb.ListCredentialsRequest()), code)
    await expect_code(client.CreateCredential(create_req("refused")), code)
    await expect_code(client.OverwriteCredential(cpb.OverwriteCredentialRequest(id=cred_id, contents=up())), code)


async def test_revoked_on_a_is_refused_on_b_right_after(
    users: Users, replica_b: RunningVault, channel_b: grpc.aio.Channel
) -> None:
    alice = await users.make("alice", [VIEW])
    alice_b = on(channel_b, alice)
    cred = (await alice.CreateCredential(create_req("mine"))).credential.id
    await remembered_on(replica_b, alice_b)
    await alice.RevokeToken(tpb.RevokeTokenRequest(id=await token_id(alice)))
    await all_four_refused(alice_b, cred)
    await expect_code(alice.ListCredentials(cpb.ListCredentialsRequest()), UNAUTH)


async def test_rotated_without_grace_on_a_is_refused_on_b_right_after(
    users: Users, replica_b: RunningVault, channel_b: grpc.aio.Channel
) -> None:
    alice = await users.make("alice", [VIEW])
    alice_b = on(channel_b, alice)
    await remembered_on(replica_b, alice_b)
    rotated = await alice.RotateToken(tpb.RotateTokenRequest(id=await token_id(alice)))
    await expect_code(alice_b.ListCredentials(cpb.ListCredentialsRequest()), UNAUTH)
    await Client(channel_b, rotated.token).ListCredentials(cpb.ListCredentialsRequest())


async def test_deleted_user_on_a_is_refused_on_b_right_after(
    admin: Client, users: Users, replica_b: RunningVault, channel_b: grpc.aio.Channel
) -> None:
    alice = await users.make("alice", [VIEW])
    alice_b = on(channel_b, alice)
    cred = (await alice.CreateCredential(create_req("mine"))).credential.id
    await remembered_on(replica_b, alice_b)
    await admin.DeleteUser(ipb.DeleteUserRequest(username="alice"))
    await all_four_refused(alice_b, cred)


async def test_permissions_changed_on_a_apply_on_b_right_after(
    admin: Client, users: Users, replica_b: RunningVault, channel_b: grpc.aio.Channel
) -> None:
    """The token's scopes meet the user's permissions as they are at the time of the call, on every replica:
    taken away and given back, each takes effect on B at once, both ways."""
    alice = await users.make("alice", [VIEW])
    alice_b = on(channel_b, alice)
    await remembered_on(replica_b, alice_b)
    await alice_b.CreateCredential(create_req("before"))
    await admin.SetUserPermissions(
        ipb.SetUserPermissionsRequest(username="alice", permissions=[], zone_permissions=ZONE_ONLY)
    )
    await expect_code(alice_b.CreateCredential(create_req("after")), PD)  # zone-only users cannot create
    await admin.SetUserPermissions(ipb.SetUserPermissionsRequest(username="alice", permissions=[VIEW]))
    await alice_b.CreateCredential(create_req("again"))  # allowed again, though B remembered the denial's user


async def test_visibility_follows_the_permissions_at_the_time_of_the_call(
    admin: Client, users: Users, replica_b: RunningVault, channel_b: grpc.aio.Channel
) -> None:
    """Get, List and Overwrite of another's credential on B, as the user's permissions change on A."""
    owner = await users.make("owner", [VIEW])
    bob = await users.make("bob", [VIEW, MONITORING])
    bob_b = on(channel_b, bob)
    public = (await owner.CreateCredential(create_req("public", access=ALL))).credential.id
    private = (await owner.CreateCredential(create_req("private"))).credential.id
    await remembered_on(replica_b, bob_b)
    assert (await bob_b.ListCredentials(cpb.ListCredentialsRequest())).total_size == 2
    await bob_b.GetCredential(cpb.GetCredentialRequest(id=private))
    await admin.SetUserPermissions(ipb.SetUserPermissionsRequest(username="bob", permissions=[VIEW]))
    listed = await bob_b.ListCredentials(cpb.ListCredentialsRequest())
    assert [c.id for c in listed.credentials] == [public]
    assert listed.total_size == 1
    await expect_code(bob_b.GetCredential(cpb.GetCredentialRequest(id=private)), NF)
    await expect_code(bob_b.OverwriteCredential(cpb.OverwriteCredentialRequest(id=public, contents=up())), PD)
    await admin.SetUserPermissions(ipb.SetUserPermissionsRequest(username="bob", permissions=[VIEW, MONITORING]))
    taken = await bob_b.OverwriteCredential(cpb.OverwriteCredentialRequest(id=private, contents=up()))
    assert taken.credential.owner == "bob"


async def test_a_change_made_in_the_database_by_hand_is_seen_by_both_replicas(
    users: Users, vault: RunningVault, replica_b: RunningVault, channel_b: grpc.aio.Channel
) -> None:
    """Not only the vault's own RPCs: any change of a token row (here an operator's SQL) counts at once."""
    alice = await users.make("alice", [VIEW])
    alice_b = on(channel_b, alice)
    cred = (await alice.CreateCredential(create_req("mine"))).credential.id
    await remembered_on(vault, alice)
    await remembered_on(replica_b, alice_b)
    async with vault.store.transaction() as tx:
        await tx.conn.execute("UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE owner = 'alice'")
    await all_four_refused(alice, cred)
    await all_four_refused(alice_b, cred)


async def test_recording_a_use_does_not_invalidate(vault: RunningVault, users: Users) -> None:
    """last_used_at alone is not an authentication change (else every recorded use would cost a second lookup)."""
    alice = await users.make("alice", [VIEW])
    await remembered_on(vault, alice)
    async with vault.store.transaction() as tx:
        await tx.conn.execute("UPDATE api_tokens SET last_used_at = now() - interval '1 hour' WHERE owner = 'alice'")
    cache = cache_of(vault)
    hits, misses = cache.hits, cache.misses
    await alice.ListCredentials(cpb.ListCredentialsRequest())
    assert (cache.hits, cache.misses) == (hits + 1, misses)


async def test_a_remembered_use_is_recorded_once_the_resolution_has_passed(vault: RunningVault, users: Users) -> None:
    """A call answered on a remembered authentication records the use as well (in a statement of its own): here
    its last recorded use is an hour old, in the database and in the remembered entry, as if an hour had passed."""
    alice = await users.make("alice", [VIEW])
    await remembered_on(vault, alice)
    cache = cache_of(vault)
    remembered = cache.get(hashlib.sha256((alice.token or "").encode()).digest())  # keyed by the token's hash
    assert remembered is not None
    async with vault.store.transaction() as tx:
        an_hour_ago = await tx.conn.fetchval(
            "UPDATE api_tokens SET last_used_at = now() - interval '1 hour' WHERE owner = 'alice'"
            " RETURNING last_used_at"
        )
    remembered.last_used_at = an_hour_ago
    hits = cache.hits
    await alice.ListCredentials(cpb.ListCredentialsRequest())
    assert cache.hits == hits + 1
    async with vault.store.autocommit() as tx:
        recorded = await tx.conn.fetchval("SELECT last_used_at FROM api_tokens WHERE owner = 'alice'")
    assert recorded > an_hour_ago


async def test_other_calls_never_use_a_remembered_authentication(vault: RunningVault, users: Users) -> None:
    alice = await users.make("alice", [VIEW])
    await remembered_on(vault, alice)
    cache = cache_of(vault)
    hits = cache.hits
    await alice.GetCurrentUser(ipb.GetCurrentUserRequest())
    await alice.ListTokens(tpb.ListTokensRequest())
    assert cache.hits == hits


async def test_failures_never_hit_the_cache(vault: RunningVault, users: Users) -> None:
    """An unknown id and a wrong secret for a remembered token both miss and take the database path."""
    alice = await users.make("alice", [VIEW])
    await remembered_on(vault, alice)
    assert alice.token is not None
    prefix, public, secret = alice.token.split(".")
    cache = cache_of(vault)
    details = []
    for tok in (f"{prefix}.{'A' if public[0] != 'A' else 'B'}{public[1:]}.{secret}", f"{prefix}.{public}.{'A' * 64}"):
        hits, misses = cache.hits, cache.misses
        err = await expect_code(Client(users.channel, tok).ListCredentials(cpb.ListCredentialsRequest()), UNAUTH)
        details.append(err.details())
        assert (cache.hits, cache.misses) == (hits, misses + 1)
    assert details[0] == details[1]


class TokenLookups:
    """Counts the database lookups of tokens (``Queries.get_token_for_auth``) from its creation on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = Queries.get_token_for_auth

        async def counting(queries: Queries, public_id: str) -> object:
            self.count += 1
            return await real(queries, public_id)

        monkeypatch.setattr(Queries, "get_token_for_auth", counting)


async def test_switched_off_every_call_looks_the_token_up(
    settings: Settings, keyring: Keyring, users: Users, local_pki: LocalPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    replica = await start_vault(settings.model_copy(update={"auth_cache_seconds": 0}), keyring=keyring)
    try:
        assert replica.auth_cache is None
        alice = await users.make("alice", [VIEW])
        lookups = TokenLookups(monkeypatch)
        async with local_pki.channel(replica.port) as channel:
            for _ in range(3):
                await on(channel, alice).ListCredentials(cpb.ListCredentialsRequest())
        assert lookups.count == 3
    finally:
        await replica.stop(0)


async def test_a_remembered_authentication_holds_across_session_time_zones(
    vault: RunningVault, users: Users, database_url: str
) -> None:
    """Pool connections may differ in TimeZone and DateStyle (an ALTER DATABASE ... SET between two connects): an
    authentication looked up on one must hold in a statement on another, or every remembered one would be refused
    and looked up again."""
    alice = await users.make("alice", [VIEW])
    cred = (await alice.CreateCredential(create_req("mine"))).credential.id
    token = await token_id(alice)
    async with vault.store.transaction() as tx:  # an expiry, so that every kind of value is compared
        await tx.conn.execute("UPDATE api_tokens SET expires_at = now() + interval '1 day' WHERE public_id = $1", token)
    zones = ("UTC", "Asia/Kolkata", "America/St_Johns")
    conns = [
        await asyncpg.connect(database_url, server_settings={"TimeZone": z, "DateStyle": style})
        for z, style in zip(zones, ("ISO, MDY", "SQL, DMY", "German"), strict=True)
    ]
    try:
        for conn in conns:  # set up as the pool sets up its connections
            await register_codecs(conn)
        for looked_up in conns:
            check = (await Queries(looked_up).get_token_for_auth(token)).auth_check(token)
            for other in conns:
                found = await Queries(other).get_credential(cred, check=check)  # the check held: the row comes back
                assert found is not None
                assert found.id == cred
        async with vault.store.transaction() as tx:
            await tx.conn.execute("UPDATE users SET permissions = '{}' WHERE username = 'alice'")
        with pytest.raises(AuthenticationChanged):
            await Queries(conns[1]).get_credential(cred, check=check)
    finally:
        for conn in conns:
            await conn.close()


async def test_a_remembered_authentication_needs_no_lookup(
    vault: RunningVault, users: Users, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The point of it: each of the four calls, on a remembered authentication that still holds, makes no token
    lookup (none first, and none again after its statement's re-check)."""
    alice = await users.make("alice", [VIEW])
    cred = (await alice.CreateCredential(create_req("mine"))).credential
    await remembered_on(vault, alice)
    lookups = TokenLookups(monkeypatch)
    await alice.GetCredential(cpb.GetCredentialRequest(id=cred.id))
    await alice.ListCredentials(cpb.ListCredentialsRequest())
    await alice.CreateCredential(create_req("another"))
    await alice.OverwriteCredential(cpb.OverwriteCredentialRequest(id=cred.id, contents=up()))
    assert lookups.count == 0
