"""The gRPC servicer of credvault.v1.CredentialsService: each method authenticates, translates, calls the domain
(:mod:`vault_service.credentials`) and translates back; errors become status codes in :mod:`.status`."""

from __future__ import annotations

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import credentials_pb2_grpc as cgrpc
from vault_service import contents_codec
from vault_service.api import convert
from vault_service.api.authenticated import Authenticated, Context
from vault_service.credentials import CredentialService
from vault_service.errors import InvalidArgument
from vault_service.external_sync.synchronizer import Synchronizer
from vault_service.models import Credential, CredentialFilter, Page, Principal
from vault_service.tokens import TokenService


class CredentialsServicer(Authenticated, cgrpc.CredentialsServiceServicer):
    def __init__(self, tokens: TokenService, credentials: CredentialService, synchronizer: Synchronizer) -> None:
        super().__init__(tokens)
        self._credentials = credentials
        self._synchronizer = synchronizer

    # The four hot calls may run on a remembered authentication: their statements re-check it.

    async def CreateCredential(
        self, request: cpb.CreateCredentialRequest, context: Context
    ) -> cpb.CreateCredentialResponse:
        async def work(principal: Principal) -> Credential:
            synchronized = request.HasField("external_source")
            contents = None
            if not synchronized or request.HasField("contents"):
                contents = convert.contents("contents", request.contents, request.HasField("contents"))
            return await self._credentials.create(
                principal,
                name=request.name,
                description=request.description,
                scopes=convert.scopes("scopes", request.scopes),
                contents=contents,
                access=convert.access("access", request.access, request.HasField("access")),
                app_engine=convert.app_engine(request.app_engine, request.HasField("app_engine")),
                external_source=convert.external_source(request.external_source, synchronized),
                credential_type=convert.credential_type("type", request.type),
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
            access = convert.access("access", request.access, request.HasField("access"))
            source = convert.external_source(request.external_source, request.HasField("external_source"))
            if source is not None:
                if request.HasField("contents"):
                    raise InvalidArgument("contents", "must be empty with external_source: the values come from there")
                return await self._credentials.change_source(
                    principal, request.id, source, access, request.expected_version
                )
            return await self._credentials.overwrite(
                principal,
                request.id,
                convert.contents("contents", request.contents, request.HasField("contents")),
                access,
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
        disabled = await self._credentials.delete(principal, request.id)
        return cpb.DeleteCredentialResponse(disabled_monitor_ids=disabled)

    async def GetCredentialDetails(
        self, request: cpb.GetCredentialDetailsRequest, context: Context
    ) -> cpb.GetCredentialDetailsResponse:
        principal = await self._principal(context)
        cred, secret = await self._credentials.get_details(principal, request.id, request.app_id)
        return cpb.GetCredentialDetailsResponse(
            credential=convert.credential(cred), details=contents_codec.to_details(secret)
        )

    async def SyncCredential(self, request: cpb.SyncCredentialRequest, context: Context) -> cpb.SyncCredentialResponse:
        principal = await self._principal(context)
        cred = await self._synchronizer.sync_now(principal, request.id)
        return cpb.SyncCredentialResponse(credential=convert.credential(cred))
