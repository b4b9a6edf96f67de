"""One bounded outbox per engine stream, coalesced by resource (latest wins), so a slow engine never delays the
others or the write path: when it overflows the stream is closed and the engine resyncs."""

from __future__ import annotations

import asyncio
import dataclasses

from credvault.v1 import engine_pb2 as epb

Key = tuple[int, str]  # (ResourceKind, id)


@dataclasses.dataclass(frozen=True)
class Delta:
    """A change to what a location's engines hold, as of ``revision``."""

    revision: int
    credentials: dict[str, epb.CredentialResource]
    monitors: dict[str, epb.MonitorResource]
    removals: dict[Key, epb.Removal]

    def empty(self) -> bool:
        return not (self.credentials or self.monitors or self.removals)


class OutboxOverflow(Exception):
    pass


class Outbox:
    def __init__(self, max_resources: int) -> None:
        self._max = max_resources
        self._pending: dict[Key, epb.CredentialResource | epb.MonitorResource | epb.Removal] = {}
        self._revision = 0
        self._ready = asyncio.Event()
        self.overflowed = False

    def put(self, delta: Delta) -> None:
        """Coalesce a delta in; never blocks. Marks overflow instead of growing past the bound."""
        if self.overflowed:
            return
        for cid, cred in delta.credentials.items():
            self._pending[(epb.RESOURCE_KIND_CREDENTIAL, cid)] = cred
        for mid, mon in delta.monitors.items():
            self._pending[(epb.RESOURCE_KIND_MONITOR, mid)] = mon
        for key, removal in delta.removals.items():
            self._pending[key] = removal
        self._revision = max(self._revision, delta.revision)
        if len(self._pending) > self._max:
            self.overflowed = True
            self._pending.clear()
        self._ready.set()

    async def take(self) -> epb.ConfigBatch:
        """Wait for pending changes and return them as one batch, in apply order. Raises OutboxOverflow."""
        while not self._pending and not self.overflowed:
            self._ready.clear()
            await self._ready.wait()
        if self.overflowed:
            raise OutboxOverflow("the engine fell too far behind; it must resync")
        batch = batch_of(self._revision, self._pending.values())
        self._pending = {}
        return batch


def batch_of(revision: int, items: object) -> epb.ConfigBatch:
    batch = epb.ConfigBatch(revision=revision)
    removals = []
    for item in items:  # type: ignore[attr-defined]
        if isinstance(item, epb.CredentialResource):
            batch.credentials.append(item)
        elif isinstance(item, epb.MonitorResource):
            batch.monitors.append(item)
        else:
            removals.append(item)
    # monitor removals before credential removals: a credential goes after the last monitor that used it
    removals.sort(key=lambda r: r.kind != epb.RESOURCE_KIND_MONITOR)
    batch.removals.extend(removals)
    return batch
