"""The gRPC servicer of credvault.v1.IdentityService: each method authenticates, translates, calls the domain
(:mod:`vault_service.users`) and translates back; errors become status codes in :mod:`vault_service.api.status`."""

from __future__ import annotations

from credvault.v1 import identity_pb2 as ipb
from credvault.v1 import identity_pb2_grpc as igrpc
from vault_service.api import convert
from vault_service.api.authenticated import Authenticated, Context
from vault_service.tokens import TokenService
from vault_service.users import IdentityService


class IdentityServicer(Authenticated, igrpc.IdentityServiceServicer):
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
