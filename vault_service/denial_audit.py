"""Denied calls in the audit log.

- A call of a known caller denied for a missing token scope or permission: one entry per call, actor and token of
  the caller, action the RPC (``credvault.v1.CredentialsService/CreateCredential``), outcome ``denied``, the reason
  in ``detail``. (A denial that the domain audits itself, with its target, is not written twice.)
- A failed authentication (no token, or one that is malformed, unknown, revoked or expired): folded per source
  address and kind (``no_token``, ``bad_token``), at most one entry per pair per interval (60 s), which carries in
  ``detail.count`` the failures of that pair since its previous entry (this one included). Actor
  ``<unauthenticated>``, action ``auth.failed``, target the source address. An anonymous flood costs the log at most
  one row per source and kind a minute, and the number of sources tracked is capped (beyond it, failures count
  under the source ``<other sources>``).

Writing an entry must not change what the caller hears: if the write fails, the denial is still returned and the
failure logged (without the entry's content).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from vault_service.models import Principal
from vault_service.storage.pool import Store
from vault_service.throttle import Throttle

log = logging.getLogger(__name__)

AUTH_FAILURE_INTERVAL_SECONDS = 60.0
MAX_SOURCES = 1000
UNAUTHENTICATED_ACTOR = "<unauthenticated>"
OTHER_SOURCES = "<other sources>"


class DenialAudit:
    def __init__(
        self,
        store: Store,
        *,
        interval: float = AUTH_FAILURE_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._auth_failures: Throttle[tuple[str, str]] = Throttle(
            interval, (OTHER_SOURCES, "any"), max_keys=MAX_SOURCES, clock=clock
        )

    async def denied(self, principal: Principal, action: str, reason: str) -> None:
        await self._write(principal.username, principal.token_id, action, None, {"reason": reason})

    async def auth_failed(self, source: str, kind: str) -> None:
        report = self._auth_failures.count((source, kind))
        if report is None:
            return
        (source, kind), count = report
        detail = {"kind": kind, "count": count, "interval_seconds": self._auth_failures.interval}
        await self._write(UNAUTHENTICATED_ACTOR, None, "auth.failed", source, detail)

    async def _write(
        self, actor: str, token_id: str | None, action: str, target: str | None, detail: dict[str, object]
    ) -> None:
        try:
            async with self._store.transaction() as tx:
                await tx.insert_audit(actor, token_id, action, target, "denied", detail)
        except Exception as exc:
            log.warning("could not write the audit entry of a denied %s call: %s", action, type(exc).__name__)
