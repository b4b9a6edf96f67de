"""One bounded outbox per engine stream, coalesced by resource (latest wins), so a slow engine never delays the
others or the write path: when it overflows the stream is closed and the engine resyncs."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterable

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
    def __init__(self, max_resources: int, chunk: int = 500, on_overflow: Callable[[], None] = lambda: None) -> None:
        self._max = max_resources
        self._chunk = chunk
        self._on_overflow = on_overflow
        self._pending: dict[Key, epb.CredentialResource | epb.MonitorResource | epb.Removal] = {}
        self._revision = 0  # of the newest delta put in
        self._acked = 0  # the newest revision the engine acknowledged
        self._complete_revision = 0  # everything up to this was fully handed out
        self._ready = asyncio.Event()
        self._resync: epb.ResyncRequest | None = None
        self.overflowed = False

    @property
    def pending(self) -> int:
        """Resources waiting to be handed out."""
        return len(self._pending)

    @property
    def revision(self) -> int:
        """The revision of the newest delta put in: an engine that ACKed it and has nothing pending is current."""
        return self._revision

    def acked(self, revision: int) -> None:
        """The engine acknowledged ``revision`` (applied everything up to it)."""
        self._acked = max(self._acked, revision)

    @property
    def lag(self) -> int:
        """Revisions of the location's changes put in that the engine has not acknowledged yet."""
        return max(0, self._revision - self._acked)

    def ask_held(self, reason: str) -> None:
        """Asks the engine for the list of what it holds (anti-entropy): :meth:`take` hands out the request next."""
        self._resync = epb.ResyncRequest(reason=reason)
        self._ready.set()

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
            self._on_overflow()
        self._ready.set()

    async def take(self) -> epb.ConfigBatch | epb.ResyncRequest:
        """Wait for pending changes and return at most ``chunk`` of them as one batch, in apply order (so a monitor
        never comes before a credential it needs). A partial batch carries the last revision fully handed out, so
        an ACK never claims more than the engine has. A pending :meth:`ask_held` comes first. Raises
        OutboxOverflow."""
        while not self._pending and not self.overflowed and self._resync is None:
            self._ready.clear()
            await self._ready.wait()
        if self.overflowed:
            raise OutboxOverflow("the engine fell too far behind; it must resync")
        if self._resync is not None:
            resync, self._resync = self._resync, None
            return resync
        ordered = ordered_items(self._pending.values())
        taken = first_chunk(ordered, self._chunk)
        rest = ordered[len(taken) :]
        for item in taken:
            kind = item.kind if isinstance(item, epb.Removal) else _kind(item)
            del self._pending[(kind, item.id)]
        if not rest:
            self._complete_revision = self._revision
        return batch_of(self._complete_revision, taken)


def _kind(item: epb.CredentialResource | epb.MonitorResource) -> int:
    return epb.RESOURCE_KIND_CREDENTIAL if isinstance(item, epb.CredentialResource) else epb.RESOURCE_KIND_MONITOR


Item = epb.CredentialResource | epb.MonitorResource | epb.Removal
MAX_BATCH_BYTES = 1024 * 1024  # far below the engines' 4 MiB receive limit


def first_chunk(items: list[Item], max_items: int) -> list[Item]:
    """The longest prefix of at most ``max_items`` items and MAX_BATCH_BYTES (at least one item)."""
    size = 0
    for n, item in enumerate(items[:max_items]):
        size += item.ByteSize()
        if n and size > MAX_BATCH_BYTES:
            return items[:n]
    return items[:max_items]


def chunks(items: list[Item], max_items: int) -> list[list[Item]]:
    out = []
    while items:
        head = first_chunk(items, max_items)
        out.append(head)
        items = items[len(head) :]
    return out


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
