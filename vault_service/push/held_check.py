"""Anti-entropy for one engine stream: the engine reports the digest of what it holds with each ACK and heartbeat;
when the engine is current (it ACKed everything handed to its outbox and nothing is pending) and the digest differs
from what it should hold, the engine is asked for the list of what it holds, and sent exactly the difference.

Whatever a bug anywhere (vault, engine, network) made an engine hold, this repairs it within a heartbeat interval,
for that engine alone, and says so: ``credvault_engine_divergence_total`` counts it and the log names the ids.
When the engine's list shows no difference, the vault's own digest is what went wrong: the location state is marked
stale, to be rebuilt. A divergence that comes back at once is asked about again only after a growing pause, so a
disagreement that a repair cannot settle costs a request now and then, not one per heartbeat.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping

from credvault.v1 import engine_pb2 as epb
from vault_service.push.location_state import LocationState, Rejected
from vault_service.push.outbox import Delta, Outbox

log = logging.getLogger(__name__)

IDS_LOGGED = 20  # ids named per line; the counts say how many there were
MAX_PAUSE_DOUBLINGS = 8  # a divergence that keeps coming back is asked about at most every 256 intervals


class HeldCheck:
    def __init__(
        self,
        engine: str,
        state: LocationState,
        outbox: Outbox,
        rejected: Rejected,
        synced_revision: int,
        *,
        interval: float,
        on_divergence: Callable[[], None],
        on_unanswered: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine  # "location/engine", for the log
        self._state = state
        self._outbox = outbox
        self._rejected = rejected
        self._synced = synced_revision
        self._interval = interval
        self._on_divergence = on_divergence
        self._on_unanswered = on_unanswered
        self._clock = clock
        self._asked_at: float | None = None  # when the engine was asked for its list, until it answers
        self._not_before = 0.0  # no new request before then
        self._in_a_row = 0  # divergences since the digests last agreed
        self.divergences = 0

    def reported(self, held: epb.HeldState) -> None:
        """The engine says what it holds as of ``held.revision`` (from an ACK or a heartbeat)."""
        now = self._clock()
        if self._asked_at is not None:
            if now - self._asked_at > 3 * self._interval:
                self._on_unanswered()  # an engine that cannot answer (an old one) resyncs by reconnecting
            return
        if self._state.stale:
            return  # the state itself is about to be rebuilt: nothing to compare with yet
        if self._outbox.pending or held.revision < max(self._synced, self._outbox.revision):
            return  # changes are on their way: it cannot hold the current set yet
        expected = self._state.expected_digest(self._rejected)
        if held.digest == expected:
            self._in_a_row = 0
            return
        if now < self._not_before:
            return
        self._asked_at = now
        self._not_before = now + self._interval * 2 ** min(self._in_a_row, MAX_PAUSE_DOUBLINGS)
        self._in_a_row += 1
        self.divergences += 1
        self._on_divergence()
        log.warning(
            "engine %s holds a different set than it should at revision %d (digest %016x, expected %016x): "
            "asking it for what it holds",
            self._engine,
            held.revision,
            held.digest,
            expected,
        )
        self._outbox.ask_held("what the engine holds differs from what it should hold")

    def gone_monitors(self, held: Iterable[epb.HeldResource]) -> list[str]:
        return self._state.gone_monitors(held)

    def answered(self, held: list[epb.HeldResource], reasons: Mapping[str, int]) -> None:
        """The engine listed what it holds: send it the difference (no await between reading the state and
        handing the difference to the outbox)."""
        self._asked_at = None
        if self._state.stale:
            return  # the rebuild sends the difference; the next report is compared again
        items = self._state.diff(held, self._rejected, reasons)
        delta = Delta(self._state.revision, {}, {}, {})
        for item in items:
            if isinstance(item, epb.CredentialResource):
                delta.credentials[item.id] = item
            elif isinstance(item, epb.MonitorResource):
                delta.monitors[item.id] = item
            else:
                delta.removals[(item.kind, item.id)] = item
        log.warning(
            "engine %s repaired: %d upserts %s, %d removals %s",
            self._engine,
            len(delta.credentials) + len(delta.monitors),
            _ids([*delta.credentials, *delta.monitors]),
            len(delta.removals),
            _ids([resource_id for _, resource_id in delta.removals]),
        )
        if delta.empty():
            log.error("engine %s holds what it should, but the digests differ: rebuilding the location", self._engine)
            self._state.stale = True
        else:
            self._outbox.put(delta)


def _ids(ids: list[str]) -> str:
    shown = ", ".join(sorted(ids)[:IDS_LOGGED])
    return f"[{shown}{', …' if len(ids) > IDS_LOGGED else ''}]"
