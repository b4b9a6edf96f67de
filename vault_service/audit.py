"""Reading the audit log (who did what to which object, when, with what outcome). Only for holders of
CHANGE_ENVIRONMENT_SETTINGS with an auditLogs.read token; the log itself never holds a secret value."""

from __future__ import annotations

from vault_service import policy, validation
from vault_service.errors import InvalidArgument
from vault_service.models import AuditEvent, AuditFilter, Page, Principal
from vault_service.pagination import decode_page_token, encode_page_token, page_size
from vault_service.storage.pool import Store

MAX_ACTION = 100
MAX_TARGET = 300


def check_filter(flt: AuditFilter) -> AuditFilter:
    """The filter with empty strings as "any"; field names are those of ListAuditEventsRequest."""

    def text(field: str, value: str | None, max_len: int) -> str | None:
        return validation.text(field, value or "", max_len=max_len, required=False) or None

    if flt.since is not None and flt.until is not None and flt.until <= flt.since:
        raise InvalidArgument("end_time", "must be after start_time")
    return AuditFilter(
        actor=text("actor", flt.actor, validation.MAX_USERNAME),
        action=text("action", flt.action, MAX_ACTION),
        target=text("target_id", flt.target, MAX_TARGET),
        since=flt.since,
        until=flt.until,
    )


class AuditService:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def list_events(self, principal: Principal, flt: AuditFilter, size: int, page_token: str) -> Page[AuditEvent]:
        """Newest first. ``total_size`` is not counted (0): the log is large and only grows."""
        policy.require_audit_read(principal)
        flt = check_filter(flt)
        limit = page_size(size)
        query = ("audit", flt.actor, flt.action, flt.target, flt.since, flt.until)
        before = _before_id(decode_page_token(page_token, query, 1)[0]) if page_token else None
        async with self._store.autocommit() as tx:
            events = await tx.list_audit_events(flt, before, limit + 1)
        more = len(events) > limit
        events = events[:limit]
        return Page(events, encode_page_token(query, str(events[-1].id)) if more else "", 0)


def _before_id(key: str) -> int:
    if not key.isdigit():
        raise InvalidArgument("page_token", "is not a token returned by a previous call with the same filters")
    return int(key)
