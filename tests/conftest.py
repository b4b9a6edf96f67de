"""Test fixtures: a real PostgreSQL (the machine's, via CREDVAULT_TEST_DATABASE_URL, or the embedded one), a
migrated template database cloned per test, a real TLS gRPC server on loopback port 0, and clients."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest

from credvault.v1 import (
    audit_pb2_grpc,
    credentials_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
    monitors_pb2_grpc,
    tokens_pb2,
    tokens_pb2_grpc,
)
from tests.ci_skips import pytest_runtest_makereport  # noqa: F401 - the hook that fails required skips on CI
from tests.local_pki import LocalPki
from tests.openbao import openbao  # noqa: F401 - the session's OpenBao (tests/openbao.py)
from tests.push_helpers import EngineClient
from vault_service import embedded_pg, pki
from vault_service.bootstrap import bootstrap_admin
from vault_service.config import Settings
from vault_service.crypto import Keyring, new_keyring
from vault_service.server import RunningVault, start_vault
from vault_service.storage.migrate import migrate
from vault_service.storage.pool import Store

if TYPE_CHECKING:
    from tests.processes import System

ALL_SCOPES = [
    "credentialVault.read",
    "credentialVault.write",
    "syntheticMonitors.read",
    "syntheticMonitors.write",
    "apiTokens.read",
    "apiTokens.write",
    "users.read",
    "users.write",
    "auditLogs.read",
]


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """An administrative URL of a PostgreSQL server for the whole session. The embedded one lives in a directory of
    its own, not under pytest's temporary root: run as root, PostgreSQL runs as pgserver's user, and every pytest
    start (a test may run pytest in a child) sets that root back to mode 0700, out of that user's reach."""
    url = os.environ.get("CREDVAULT_TEST_DATABASE_URL")
    if url:
        yield url
        return
    directory = pathlib.Path(tempfile.mkdtemp(prefix="credvault-test-pg-"))
    url, handle = embedded_pg.start(directory / "data")
    try:
        yield url
    finally:
        handle.cleanup()
        shutil.rmtree(directory, ignore_errors=True)


async def _admin(pg_url: str) -> asyncpg.Connection:
    return await asyncpg.connect(with_database(pg_url, "postgres"))


@pytest.fixture(scope="session")
def template_db(pg_url: str) -> Iterator[str]:
    """A migrated database that each test clones (CREATE DATABASE ... TEMPLATE is fast)."""
    name = f"credvault_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"

    async def create() -> None:
        conn = await _admin(pg_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        conn = await asyncpg.connect(with_database(pg_url, name))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    async def drop() -> None:
        conn = await _admin(pg_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(create())
    try:
        yield name
    finally:
        asyncio.run(drop())


@pytest.fixture
async def database_url(pg_url: str, template_db: str) -> AsyncIterator[str]:
    name = f"credvault_t_{uuid.uuid4().hex[:12]}"
    conn = await _admin(pg_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    finally:
        await conn.close()
    yield with_database(pg_url, name)
    conn = await _admin(pg_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def local_pki(tmp_path_factory: pytest.TempPathFactory) -> LocalPki:
    """The tests' one PKI (shared with the benches): the server certificate of both ports, the engine CA."""
    return LocalPki.make(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def server_tls(local_pki: LocalPki) -> tuple[pathlib.Path, pathlib.Path]:
    return local_pki.server_pem, local_pki.server_key


@pytest.fixture
def keyring() -> Keyring:
    return new_keyring()


@pytest.fixture
def settings(database_url: str, server_tls: tuple[pathlib.Path, pathlib.Path]) -> Settings:
    return Settings(
        database_url=database_url,
        listen="127.0.0.1:0",
        tls_cert_file=server_tls[0],
        tls_key_file=server_tls[1],
    )


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    s = await Store.connect(database_url, min_size=1, max_size=5)
    yield s
    await s.close()


@pytest.fixture
async def vault(settings: Settings, keyring: Keyring) -> AsyncIterator[RunningVault]:
    running = await start_vault(settings, keyring=keyring)
    yield running
    await running.stop(0)


@pytest.fixture
async def channel(vault: RunningVault, local_pki: LocalPki) -> AsyncIterator[grpc.aio.Channel]:
    ch = local_pki.channel(vault.port)
    yield ch
    await ch.close(None)


class Client:
    """Stubs that send one token."""

    def __init__(self, channel: grpc.aio.Channel, token: str | None, username: str = "") -> None:
        self.token = token
        self.username = username
        self.metadata = (("authorization", f"Api-Token {token}"),) if token else ()
        self._cred = credentials_pb2_grpc.CredentialsServiceStub(channel)
        self._ident = identity_pb2_grpc.IdentityServiceStub(channel)
        self._tokens = tokens_pb2_grpc.TokensServiceStub(channel)
        self._monitors = monitors_pb2_grpc.MonitorsServiceStub(channel)
        self._audit = audit_pb2_grpc.AuditServiceStub(channel)

    def __getattr__(self, rpc: str) -> Any:
        for stub in (self._cred, self._ident, self._tokens, self._monitors, self._audit):
            method = getattr(stub, rpc, None)
            if method is not None:
                return lambda request, _m=method: _m(request, metadata=self.metadata)
        raise AttributeError(rpc)


class Users:
    """Makes users with given permissions, each with a token of given scopes."""

    def __init__(self, channel: grpc.aio.Channel, admin: Client) -> None:
        self.channel = channel
        self.admin = admin

    async def make(
        self,
        username: str,
        permissions: list[int],
        zones: dict[str, list[int]] | None = None,
        scopes: list[str] | None = None,
    ) -> Client:
        await self.admin.CreateUser(
            identity_pb2.CreateUserRequest(
                username=username,
                permissions=permissions,
                zone_permissions=[
                    identity_pb2.ZonePermissions(management_zone=z, permissions=p) for z, p in (zones or {}).items()
                ],
            )
        )
        resp = await self.admin.CreateToken(
            tokens_pb2.CreateTokenRequest(
                name=f"{username} token", scopes=scopes or ALL_SCOPES, kind=tokens_pb2.TOKEN_KIND_API, owner=username
            )
        )
        return Client(self.channel, resp.token, username)


@pytest.fixture
async def admin(vault: RunningVault, channel: grpc.aio.Channel) -> Client:
    issued = await bootstrap_admin(vault.store, "admin")
    return Client(channel, issued.token, "admin")


@pytest.fixture
def users(channel: grpc.aio.Channel, admin: Client) -> Users:
    return Users(channel, admin)


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


# --- the engine port (push tests) --------------------------------------------------------------------------------

Connect = Callable[..., Awaitable[EngineClient]]


def with_engine_port(settings: Settings, local_pki: LocalPki) -> Settings:
    return settings.model_copy(
        update={
            "engine_listen": "127.0.0.1:0",
            "engine_tls_cert_file": local_pki.server_pem,
            "engine_tls_key_file": local_pki.server_key,
            "engine_ca_file": local_pki.engine_ca_pem,
            "trust_domain": local_pki.trust_domain,
            "engine_heartbeat_seconds": 1.0,
            "engine_outbox_max": 100,
        }
    )


@pytest.fixture
async def push_vault(settings: Settings, keyring: Keyring, local_pki: LocalPki) -> AsyncIterator[RunningVault]:
    running = await start_vault(with_engine_port(settings, local_pki), keyring=keyring)
    yield running
    await running.stop(0)


@contextlib.asynccontextmanager
async def admin_of(vault: RunningVault, local_pki: LocalPki) -> AsyncIterator[Client]:
    """A bootstrapped admin of ``vault`` on its own channel (which follows the vault through a restart on the same
    port)."""
    issued = await bootstrap_admin(vault.store, "admin")
    async with local_pki.channel(vault.port) as ch:
        yield Client(ch, issued.token, "admin")


@pytest.fixture
async def admin_client(push_vault: RunningVault, local_pki: LocalPki) -> AsyncIterator[Client]:
    async with admin_of(push_vault, local_pki) as client:
        yield client


@pytest.fixture
async def connect(push_vault: RunningVault, local_pki: LocalPki) -> AsyncIterator[Connect]:
    clients: list[EngineClient] = []

    async def open_stream(
        location: str,
        engine: str,
        cert: pki.IssuedCertificate | str | None = "issue",
        *,
        resume: EngineClient | None = None,
        wait: bool = True,
    ) -> EngineClient:
        """A stream with ``cert`` (default: a valid one; None: none), holding what ``resume`` held."""
        client = EngineClient(
            push_vault.engine_port,
            local_pki.server_ca.cert_pem,
            local_pki.engine(location, engine) if isinstance(cert, str) else cert,
        )
        if resume is not None:
            client.monitors, client.credentials = dict(resume.monitors), dict(resume.credentials)
        clients.append(client)
        client.start(location, engine)
        if wait:
            await client.wait_until(lambda: client.synced.is_set() or client.error is not None)
        return client

    yield open_stream
    for c in clients:
        await c.close()


# --- real processes (a `credvault serve` and `engine-worker`s) ---------------------------------------------------


@pytest.fixture
async def system(tmp_path: pathlib.Path, database_url: str, keyring: Keyring) -> AsyncIterator[System]:
    from tests.processes import System  # it uses this module's Client

    sys_ = System(LocalPki.make(tmp_path), database_url, keyring)
    try:
        yield sys_
    finally:
        await sys_.stop_all()


@pytest.fixture
async def system_admin(system: System, database_url: str) -> AsyncIterator[Client]:
    """The admin of the vault process of ``system`` (which this starts)."""
    from tests.processes import vault_admin

    async with vault_admin(system, database_url) as client:
        yield client
