"""The gRPC servicer of credvault.v1.TokensService: each method authenticates, translates, calls the domain
(:mod:`vault_service.tokens`) and translates back; errors become status codes in :mod:`vault_service.api.status`."""

from __future__ import annotations

from credvault.v1 import tokens_pb2 as tpb
from credvault.v1 import tokens_pb2_grpc as tgrpc
from vault_service.api import convert
from vault_service.api.authenticated import Authenticated, Context
from vault_service.models import TokenKind
from vault_service.token_rotation import TokenRotation
from vault_service.tokens import TokenService


class TokensServicer(Authenticated, tgrpc.TokensServiceServicer):
    def __init__(self, tokens: TokenService, rotation: TokenRotation) -> None:
        super().__init__(tokens)
        self._rotation = rotation

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
        written = await self._rotation.rotate(principal, request.id)
        if written is not None:
            return tpb.RotateTokenResponse(
                info=convert.token_info(written.info),
                previous=convert.token_info(written.previous),
                external_version=written.kv_version,
            )
        grace = convert.duration(request.grace_period)
        issued, previous = await self._tokens.rotate(principal, request.id, grace)
        return tpb.RotateTokenResponse(
            info=convert.token_info(issued.info), token=issued.token, previous=convert.token_info(previous)
        )

    async def SetTokenRotation(
        self, request: tpb.SetTokenRotationRequest, context: Context
    ) -> tpb.SetTokenRotationResponse:
        principal = await self._principal(context)
        wanted = convert.token_rotation(request.rotation, request.HasField("rotation"))
        rotation, next_at = await self._rotation.set_policy(principal, request.id, wanted)
        return tpb.SetTokenRotationResponse(
            rotation=convert.token_rotation_out(rotation) if rotation else None, next_rotation_time=convert.ts(next_at)
        )
