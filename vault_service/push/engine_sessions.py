"""What an engine stream needs from the rest of the vault, in one place (go-control-plane's ``Callbacks``): whether
the engine may connect and what it rejected before, its connection row, its ACKs (group-committed), its results, and
why it must let go of monitors. The stream itself only relays; everything here reads or writes the database or hands
work to a domain service."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from credvault.v1 import engine_pb2 as epb
from credvault.v1 import monitors_pb2 as mpb
from vault_service.push.ack_recorder import AckRecorder
from vault_service.push.location_state import removal_reason
from vault_service.results import ResultService
from vault_service.storage.pool import Store

log = logging.getLogger(__name__)

Rejections = dict[str, tuple[int, str]]  # monitor id -> (rejected version, reason), per engine
REASON_KEPT = 500  # characters of an engine's rejection reason that are recorded


class EngineSessions:
    def __init__(self, store: Store, results: ResultService, replica_id: str) -> None:
        self._store = store
        self._results = results
        self._replica_id = replica_id
        self.acks = AckRecorder(store)

    async def admitted(self, location_id: str, engine_id: str) -> Rejections | None:
        """The monitor versions a registered, unrevoked engine rejected before; None if it may not connect."""
        async with self._store.autocommit() as tx:
            row = await tx.get_engine_state(location_id, engine_id)
        if row is None or row.revoked_at is not None:
            return None
        return {r["monitor_id"]: (int(r["version"]), str(r["reason"])) for r in row.rejected}

    async def connected(self, location_id: str, engine_id: str) -> None:
        async with self._store.autocommit() as tx:
            await tx.engine_connected(location_id, engine_id, self._replica_id)

    async def disconnected(self, location_id: str, engine_id: str) -> None:
        async with self._store.autocommit() as tx:
            await tx.engine_disconnected(location_id, engine_id, self._replica_id)

    def acked(self, location_id: str, engine_id: str, ack: epb.Ack, rejected: Rejections) -> None:
        """Records the ACK and what it rejected (in ``rejected`` too); written in the background."""
        for r in ack.rejected:
            rejected[r.monitor_id] = (r.version, r.reason[:REASON_KEPT])
        listed = [{"monitor_id": m, "version": v, "reason": why} for m, (v, why) in sorted(rejected.items())]
        self.acks.record(location_id, engine_id, ack.revision, listed)

    def reported(
        self,
        location_id: str,
        engine_id: str,
        results: list[mpb.MonitorResult],
        secrets_of: Callable[[str], Mapping[str, str]],
    ) -> None:
        """Execution results, scrubbed of the values resolved for each monitor and written in the background."""
        self._results.submit(location_id, engine_id, results, secrets_of)

    async def removal_reasons(self, location_id: str, monitor_ids: list[str]) -> dict[str, int]:
        """Why an engine must let go of each of these monitors it holds."""
        if not monitor_ids:
            return {}
        async with self._store.autocommit() as tx:
            current = await tx.monitors_by_id(monitor_ids)
        return {mid: removal_reason(current.get(mid), location_id) for mid in monitor_ids}

    async def flush(self) -> None:
        """Writes what ACKs and results are still queued (before the pool closes)."""
        await self.acks.flush()
        await self._results.flush()
