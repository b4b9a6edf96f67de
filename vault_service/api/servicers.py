"""The gRPC servicers of credvault.v1. Each method authenticates, translates, calls the domain, translates back.
Errors are raised as domain errors and mapped to status codes by :mod:`vault_service.api.status`."""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import credentials_pb2_grpc as cgrpc
from credvault.v1 import identity_pb2 as ipb
from credvault.v1 import identity_pb2_grpc as igrpc
from credvault.v1 import monitors_pb2 as mpb
from credvault.v1 import monitors_pb2_grpc as mgrpc
from credvault.v1 import tokens_pb2 as tpb
from credvault.v1 import tokens_pb2_grpc as tgrpc
from vault_service import contents_codec
from vault_service.api import caller, convert
from vault_service.credentials import CredentialService
from vault_service.errors import AuthenticationChanged, VaultError
from vault_service.identity import IdentityService
from vault_service.models import Credential, CredentialFilter, Page, Principal, TokenKind
from vault_service.monitors import MonitorService
from vault_service.results import ResultService
from vault_service.tokens import TokenService

Context = grpc.aio.ServicerContext[Any, Any]
R = TypeVar("R")


def _authorization(context: Context) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


class _Authenticated:
    def __init__(self, tokens: TokenService) -> None:
        self._tokens = tokens

    async def _principal(self, context: Context) -> Principal:
        return caller.authenticated(await self._tokens.authenticate(_authorization(context)))

    async def _rechecked(self, context: Context, work: Callable[[Principal], Awaitable[R]]) -> R:
        """``work`` for the caller, who may be a remembered principal: only for work whose statements re-check it
        (``Principal.check``). Any outcome but success decided on a remembered principal (an error, or a statement
        finding that the authentication changed) is decided again on a fresh lookup."""
        authorization = _authorization(context)
        principal = caller.authenticated(await self._tokens.authenticate(authorization, remembered=True))
        if principal.check is None:
            return await work(principal)
        try:
            return await work(principal)
        except (AuthenticationChanged, VaultError):
            pass
        return await work(caller.authenticated(await self._tokens.authenticate(authorization)))


class CredentialsServicer(_Authenticated, cgrpc.CredentialsServiceServicer):
    def __init__(self, tokens: TokenService, credentials: CredentialService) -> None:
        super().__init__(tokens)
        self._credentials = credentials

    # The four hot calls may run on a remembered authentication: their statements re-check it.

    async def CreateCredential(
        self, request: cpb.CreateCredentialRequest, context: Context
    ) -> cpb.CreateCredentialResponse:
        async def work(principal: Principal) -> Credential:
            return await self._credentials.create(
                principal,
                name=request.name,
                description=request.description,
                scopes=convert.scopes("scopes", request.scopes),
                contents=convert.contents("contents", request.contents, request.HasField("contents")),
                access=convert.access("access", request.access, request.HasField("access")),
                app_engine=convert.app_engine(request.app_engine, request.HasField("app_engine")),
            )

        return cpb.CreateCredentialResponse(credential=convert.credential(await self._rechecked(context, work)))

    async def GetCredential(self, request: cpb.GetCredentialRequest, context: Context) -> cpb.GetCredentialResponse:
        async def work(principal: Principal) -> Credential:
            return await self._credentials.get(principal, request.id)

        return cpb.GetCredentialResponse(credential=convert.credential(await self._rechecked(context, work)))

    async def ListCredentials(
        self, request: cpb.ListCredentialsRequest, context: Context
    ) -> cpb.ListCredentialsResponse:
        async def work(principal: Principal) -> Page[Credential]:
            flt = CredentialFilter(
                type=convert.credential_type("type", request.type),
                name_contains=request.name_contains or None,
                access_level=convert.access_level("access_level", request.access_level),
                owner=request.owner or None,
                scope=convert.scope("scope", request.scope),
            )
            return await self._credentials.list(principal, flt, request.page_size, request.page_token)

        page = await self._rechecked(context, work)
        return cpb.ListCredentialsResponse(
            credentials=[convert.credential(c) for c in page.items],
            next_page_token=page.next_page_token,
            total_size=page.total_size,
        )

    async def OverwriteCredential(
        self, request: cpb.OverwriteCredentialRequest, context: Context
    ) -> cpb.OverwriteCredentialResponse:
        async def work(principal: Principal) -> Credential:
            return await self._credentials.overwrite(
                principal,
                request.id,
                convert.contents("contents", request.contents, request.HasField("contents")),
                convert.access("access", request.access, request.HasField("access")),
                request.expected_version,
            )

        return cpb.OverwriteCredentialResponse(credential=convert.credential(await self._rechecked(context, work)))

    async def UpdateCredentialMetadata(
        self, request: cpb.UpdateCredentialMetadataRequest, context: Context
    ) -> cpb.UpdateCredentialMetadataResponse:
        principal = await self._principal(context)
        cred = await self._credentials.update_metadata(
            principal,
            request.id,
            name=request.name if request.HasField("name") else None,
            description=request.description if request.HasField("description") else None,
            access=convert.access("access", request.access, request.HasField("access")),
            expected_version=request.expected_version,
        )
        return cpb.UpdateCredentialMetadataResponse(credential=convert.credential(cred))

    async def DeleteCredential(
        self, request: cpb.DeleteCredentialRequest, context: Context
    ) -> cpb.DeleteCredentialResponse:
        principal = await self._principal(context)
        await self._credentials.delete(principal, request.id)
        return cpb.DeleteCredentialResponse()

    async def GetCredentialDetails(
        self, request: cpb.GetCredentialDetailsRequest, context: Context
    ) -> cpb.GetCredentialDetailsResponse:
        principal = await self._principal(context)
        cred, secret = await self._credentials.get_details(principal, request.id, request.app_id)
        return cpb.GetCredentialDetailsResponse(
            credential=convert.credential(cred), details=contents_codec.to_details(secret)
        )


class IdentityServicer(_Authenticated, igrpc.IdentityServiceServicer):
    def __init__(self, tokens: TokenService, identity: IdentityService) -> None:
        super().__init__(tokens)
        self._identity = identity

    async def CreateUser(self, request: ipb.CreateUserRequest, context: Context) -> ipb.CreateUserResponse:
        principal = await self._principal(context)
        user = await self._identity.create_user(
            principal,
            request.username,
            convert.permissions("permissions", request.permissions),
            convert.zone_permissions("zone_permissions", request.zone_permissions),
        )
        return ipb.CreateUserResponse(user=convert.user(user))

    async def GetUser(self, request: ipb.GetUserRequest, context: Context) -> ipb.GetUserResponse:
        principal = await self._principal(context)
        return ipb.GetUserResponse(user=convert.user(await self._identity.get_user(principal, request.username)))

    async def ListUsers(self, request: ipb.ListUsersRequest, context: Context) -> ipb.ListUsersResponse:
        principal = await self._principal(context)
        page = await self._identity.list_users(principal, request.page_size, request.page_token)
        return ipb.ListUsersResponse(users=[convert.user(u) for u in page.items], next_page_token=page.next_page_token)

    async def SetUserPermissions(
        self, request: ipb.SetUserPermissionsRequest, context: Context
    ) -> ipb.SetUserPermissionsResponse:
        principal = await self._principal(context)
        user = await self._identity.set_permissions(
            principal,
            request.username,
            convert.permissions("permissions", request.permissions),
            convert.zone_permissions("zone_permissions", request.zone_permissions),
        )
        return ipb.SetUserPermissionsResponse(user=convert.user(user))

    async def DeleteUser(self, request: ipb.DeleteUserRequest, context: Context) -> ipb.DeleteUserResponse:
        principal = await self._principal(context)
        await self._identity.delete_user(principal, request.username)
        return ipb.DeleteUserResponse()

    async def GetCurrentUser(self, request: ipb.GetCurrentUserRequest, context: Context) -> ipb.GetCurrentUserResponse:
        principal = await self._principal(context)
        return ipb.GetCurrentUserResponse(
            user=convert.user(principal.user),
            token_id=principal.token_id,
            token_scopes=sorted(s.value for s in principal.token_scopes),
        )


class TokensServicer(_Authenticated, tgrpc.TokensServiceServicer):
    async def CreateToken(self, request: tpb.CreateTokenRequest, context: Context) -> tpb.CreateTokenResponse:
        principal = await self._principal(context)
        kind = convert.token_kind("kind", request.kind) if request.kind else TokenKind.PERSONAL
        issued = await self._tokens.create(
            principal,
            name=request.name,
            scopes=list(request.scopes),
            kind=kind,
            owner=request.owner,
            expires_at=convert.from_ts("expire_time", request.expire_time) if request.HasField("expire_time") else None,
        )
        return tpb.CreateTokenResponse(info=convert.token_info(issued.info), token=issued.token)

    async def ListTokens(self, request: tpb.ListTokensRequest, context: Context) -> tpb.ListTokensResponse:
        principal = await self._principal(context)
        page = await self._tokens.list(principal, request.owner, request.page_size, request.page_token)
        return tpb.ListTokensResponse(
            tokens=[convert.token_info(t) for t in page.items], next_page_token=page.next_page_token
        )

    async def LookupToken(self, request: tpb.LookupTokenRequest, context: Context) -> tpb.LookupTokenResponse:
        principal = await self._principal(context)
        return tpb.LookupTokenResponse(info=convert.token_info(await self._tokens.lookup(principal, request.token)))

    async def RevokeToken(self, request: tpb.RevokeTokenRequest, context: Context) -> tpb.RevokeTokenResponse:
        principal = await self._principal(context)
        return tpb.RevokeTokenResponse(info=convert.token_info(await self._tokens.revoke(principal, request.id)))

    async def RotateToken(self, request: tpb.RotateTokenRequest, context: Context) -> tpb.RotateTokenResponse:
        principal = await self._principal(context)
        grace = datetime.timedelta(
            seconds=request.grace_period.seconds, microseconds=request.grace_period.nanos // 1000
        )
        issued, previous = await self._tokens.rotate(principal, request.id, grace)
        return tpb.RotateTokenResponse(
            info=convert.token_info(issued.info), token=issued.token, previous=convert.token_info(previous)
        )


class MonitorsServicer(_Authenticated, mgrpc.MonitorsServiceServicer):
    def __init__(self, tokens: TokenService, monitors: MonitorService, results: ResultService) -> None:
        super().__init__(tokens)
        self._monitors = monitors
        self._results = results

    async def CreateLocation(self, request: mpb.CreateLocationRequest, context: Context) -> mpb.CreateLocationResponse:
        principal = await self._principal(context)
        loc = await self._monitors.create_location(principal, request.location.id, request.location.name)
        return mpb.CreateLocationResponse(location=loc)

    async def ListLocations(self, request: mpb.ListLocationsRequest, context: Context) -> mpb.ListLocationsResponse:
        principal = await self._principal(context)
        return mpb.ListLocationsResponse(locations=await self._monitors.list_locations(principal))

    async def DeleteLocation(self, request: mpb.DeleteLocationRequest, context: Context) -> mpb.DeleteLocationResponse:
        principal = await self._principal(context)
        await self._monitors.delete_location(principal, request.id)
        return mpb.DeleteLocationResponse()

    async def AddEngine(self, request: mpb.AddEngineRequest, context: Context) -> mpb.AddEngineResponse:
        principal = await self._principal(context)
        row = await self._monitors.add_engine(principal, request.location_id, request.engine_id)
        return mpb.AddEngineResponse(engine=convert.engine(row, None))

    async def ListEngines(self, request: mpb.ListEnginesRequest, context: Context) -> mpb.ListEnginesResponse:
        principal = await self._principal(context)
        rows = await self._monitors.list_engines(principal, request.location_id)
        return mpb.ListEnginesResponse(engines=[convert.engine(r, head) for r, head in rows])

    async def RevokeEngine(self, request: mpb.RevokeEngineRequest, context: Context) -> mpb.RevokeEngineResponse:
        principal = await self._principal(context)
        row = await self._monitors.revoke_engine(principal, request.location_id, request.engine_id)
        return mpb.RevokeEngineResponse(engine=convert.engine(row, None))

    async def CreateMonitor(self, request: mpb.CreateMonitorRequest, context: Context) -> mpb.CreateMonitorResponse:
        principal = await self._principal(context)
        return mpb.CreateMonitorResponse(monitor=await self._monitors.create(principal, request.monitor))

    async def GetMonitor(self, request: mpb.GetMonitorRequest, context: Context) -> mpb.GetMonitorResponse:
        principal = await self._principal(context)
        return mpb.GetMonitorResponse(monitor=await self._monitors.get(principal, request.id))

    async def ListMonitors(self, request: mpb.ListMonitorsRequest, context: Context) -> mpb.ListMonitorsResponse:
        principal = await self._principal(context)
        page = await self._monitors.list(
            principal, request.location_id, request.credential_id, request.page_size, request.page_token
        )
        return mpb.ListMonitorsResponse(monitors=page.items, next_page_token=page.next_page_token)

    async def UpdateMonitor(self, request: mpb.UpdateMonitorRequest, context: Context) -> mpb.UpdateMonitorResponse:
        principal = await self._principal(context)
        monitor = await self._monitors.update(principal, request.monitor, request.expected_version)
        return mpb.UpdateMonitorResponse(monitor=monitor)

    async def SetMonitorEnabled(
        self, request: mpb.SetMonitorEnabledRequest, context: Context
    ) -> mpb.SetMonitorEnabledResponse:
        principal = await self._principal(context)
        monitor = await self._monitors.set_enabled(principal, request.id, request.enabled)
        return mpb.SetMonitorEnabledResponse(monitor=monitor)

    async def DeleteMonitor(self, request: mpb.DeleteMonitorRequest, context: Context) -> mpb.DeleteMonitorResponse:
        principal = await self._principal(context)
        await self._monitors.delete(principal, request.id)
        return mpb.DeleteMonitorResponse()

    async def GetResults(self, request: mpb.GetResultsRequest, context: Context) -> mpb.GetResultsResponse:
        principal = await self._principal(context)
        results = await self._results.recent(principal, request.monitor_id, request.limit, request.location_id)
        return mpb.GetResultsResponse(results=results)
