"""Small builders shared by the tests."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import identity_pb2 as ipb
from credvault.v1 import monitors_pb2 as mpb

OK = grpc.StatusCode.OK
NF = grpc.StatusCode.NOT_FOUND
PD = grpc.StatusCode.PERMISSION_DENIED
INVALID = grpc.StatusCode.INVALID_ARGUMENT
UNAUTH = grpc.StatusCode.UNAUTHENTICATED
FAILED = grpc.StatusCode.FAILED_PRECONDITION

VIEW = ipb.PERMISSION_VIEW_ENVIRONMENT
MONITORING = ipb.PERMISSION_CHANGE_MONITORING_SETTINGS
ENVIRONMENT = ipb.PERMISSION_CHANGE_ENVIRONMENT_SETTINGS

SYN = cpb.CREDENTIAL_SCOPE_SYNTHETIC
APP = cpb.CREDENTIAL_SCOPE_APP_ENGINE
OWNER_ONLY = cpb.Access(level=cpb.ACCESS_LEVEL_OWNER_ONLY)
ALL = cpb.Access(level=cpb.ACCESS_LEVEL_ALL)


def shared(*users: str) -> cpb.Access:
    return cpb.Access(level=cpb.ACCESS_LEVEL_SHARED, users=list(users))


def up(username: str = "svc-user", password: str = "pw-123") -> cpb.CredentialContents:
    return cpb.CredentialContents(username_password=cpb.UsernamePassword(username=username, password=password))


def token(value: str = "tok-abc") -> cpb.CredentialContents:
    return cpb.CredentialContents(token=cpb.Token(token=value))


def create_req(
    name: str = "cred",
    contents: cpb.CredentialContents | None = None,
    access: cpb.Access | None = None,
    scopes: list[int] | None = None,
    app_engine: cpb.AppEngineAccess | None = None,
) -> cpb.CreateCredentialRequest:
    req = cpb.CreateCredentialRequest(name=name, scopes=scopes or [SYN], contents=contents or up())
    if access is not None:
        req.access.CopyFrom(access)
    if app_engine is not None:
        req.app_engine.CopyFrom(app_engine)
    return req


async def expect_code(call: object, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    return info.value


async def one_monitor(admin: Any, location: str = "loc-a", engine: str = "e1") -> tuple[str, mpb.Monitor]:
    """A location with one engine and one enabled HTTP monitor there using a new username-password credential;
    returns the credential's id and the monitor."""
    await admin.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id=location)))
    await admin.AddEngine(mpb.AddEngineRequest(location_id=location, engine_id=engine))
    pair: str = (await admin.CreateCredential(create_req("pair", up("alice", "pw-1")))).credential.id
    req = mpb.HttpRequest(method="GET", url="https://shop.example/")
    req.authentication.basic_credential_id = pair
    monitor = mpb.Monitor(
        name="m", frequency_minutes=1, location_ids=[location], enabled=True, http=mpb.HttpScript(requests=[req])
    )
    created: mpb.Monitor = (await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=monitor))).monitor
    return pair, created
