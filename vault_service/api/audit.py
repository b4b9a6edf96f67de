"""The gRPC servicer of credvault.v1.AuditService: protobuf <-> domain only (see :mod:`vault_service.audit`)."""

from __future__ import annotations

from credvault.v1 import audit_pb2 as apb
from credvault.v1 import audit_pb2_grpc as agrpc
from vault_service.api import convert
from vault_service.api.authenticated import Authenticated, Context
from vault_service.audit import AuditService
from vault_service.models import AuditEvent, AuditFilter
from vault_service.tokens import TokenService


def audit_event(event: AuditEvent) -> apb.AuditEvent:
    return apb.AuditEvent(
        id=event.id,
        time=convert.ts(event.at),
        actor=event.actor,
        token_id=event.token_id or "",
        action=event.action,
        target_id=event.target or "",
        outcome=event.outcome,
        details=event.detail,
    )


class AuditServicer(Authenticated, agrpc.AuditServiceServicer):
    def __init__(self, tokens: TokenService, audit: AuditService) -> None:
        super().__init__(tokens)
        self._audit = audit

    async def ListAuditEvents(
        self, request: apb.ListAuditEventsRequest, context: Context
    ) -> apb.ListAuditEventsResponse:
        principal = await self._principal(context)
        flt = AuditFilter(
            actor=request.actor,
            action=request.action,
            target=request.target_id,
            since=convert.from_ts("start_time", request.start_time) if request.HasField("start_time") else None,
            until=convert.from_ts("end_time", request.end_time) if request.HasField("end_time") else None,
        )
        page = await self._audit.list_events(principal, flt, request.page_size, request.page_token)
        return apb.ListAuditEventsResponse(
            events=[audit_event(e) for e in page.items], next_page_token=page.next_page_token
        )
