"""One bounded outbox per engine stream, coalesced by resource (latest wins), so a slow engine never delays the
others or the write path: when it overflows the stream is closed and the engine resyncs."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable

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
    def __init__(self, max_resources: int, chunk: int = 500) -> None:
        self._max = max_resources
        self._chunk = chunk
        self._pending: dict[Key, epb.CredentialResource | epb.MonitorResource | epb.Removal] = {}
        self._revision = 0  # of the newest delta put in
        self._complete_revision = 0  # everything up to this was fully handed out
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
        """Wait for pending changes and return at most ``chunk`` of them as one batch, in apply order (so a monitor
        never comes before a credential it needs). A partial batch carries the last revision fully handed out, so
        an ACK never claims more than the engine has. Raises OutboxOverflow."""
        while not self._pending and not self.overflowed:
            self._ready.clear()
            await self._ready.wait()
        if self.overflowed:
            raise OutboxOverflow("the engine fell too far behind; it must resync")
        ordered = ordered_items(self._pending.values())
        taken, rest = ordered[: self._chunk], ordered[self._chunk :]
        for item in taken:
            kind = item.kind if isinstance(item, epb.Removal) else _kind(item)
            del self._pending[(kind, item.id)]
        if not rest:
            self._complete_revision = self._revision
        return batch_of(self._complete_revision, taken)


def _kind(item: epb.CredentialResource | epb.MonitorResource) -> int:
    return epb.RESOURCE_KIND_CREDENTIAL if isinstance(item, epb.CredentialResource) else epb.RESOURCE_KIND_MONITOR


Item = epb.CredentialResource | epb.MonitorResource | epb.Removal


def ordered_items(items: Iterable[Item]) -> list[Item]:
    """Apply order: credential upserts, monitor upserts, monitor removals, credential removals."""

    def rank(item: Item) -> int:
        if isinstance(item, epb.CredentialResource):
            return 0
        if isinstance(item, epb.MonitorResource):
            return 1
        return 2 if item.kind == epb.RESOURCE_KIND_MONITOR else 3

    return sorted(items, key=rank)


def batch_of(revision: int, items: Iterable[Item]) -> epb.ConfigBatch:
    batch = epb.ConfigBatch(revision=revision)
    for item in ordered_items(items):
        if isinstance(item, epb.CredentialResource):
            batch.credentials.append(item)
        elif isinstance(item, epb.MonitorResource):
            batch.monitors.append(item)
        else:
            batch.removals.append(item)
    return batch
