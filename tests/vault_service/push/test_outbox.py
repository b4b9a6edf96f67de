"""The per-stream outbox: coalesced by resource (latest wins), bounded, chunked in apply order."""

from __future__ import annotations

import pytest

from credvault.v1 import engine_pb2 as epb
from vault_service.push.outbox import Delta, Outbox, OutboxOverflow

M, C = epb.RESOURCE_KIND_MONITOR, epb.RESOURCE_KIND_CREDENTIAL


def delta(revision: int, monitors: dict[str, int] | None = None, creds: dict[str, int] | None = None) -> Delta:
    return Delta(
        revision,
        {i: epb.CredentialResource(id=i, version=v) for i, v in (creds or {}).items()},
        {i: epb.MonitorResource(id=i, version=v) for i, v in (monitors or {}).items()},
        {},
    )


async def take_batch(box: Outbox) -> epb.ConfigBatch:
    taken = await box.take()
    assert isinstance(taken, epb.ConfigBatch)
    return taken


async def test_latest_wins_and_credentials_come_first() -> None:
    box = Outbox(100)
    box.put(delta(1, {"m1": 1}, {"c1": 1}))
    box.put(delta(2, {"m1": 5}))
    box.put(delta(3, creds={"c1": 7}))
    batch = await take_batch(box)
    assert batch.revision == 3
    assert [(c.id, c.version) for c in batch.credentials] == [("c1", 7)]
    assert [(m.id, m.version) for m in batch.monitors] == [("m1", 5)]


async def test_removal_replaces_pending_upsert_and_orders_after_monitors() -> None:
    box = Outbox(100)
    box.put(delta(1, {"m1": 1}, {"c1": 1}))
    box.put(
        Delta(
            2,
            {},
            {},
            {
                (C, "c1"): epb.Removal(kind=C, id="c1", reason=epb.REMOVAL_REASON_UNREFERENCED),
                (M, "m1"): epb.Removal(kind=M, id="m1", reason=epb.REMOVAL_REASON_DISABLED),
            },
        )
    )
    batch = await take_batch(box)
    assert not batch.monitors
    assert not batch.credentials
    assert [(r.kind, r.id) for r in batch.removals] == [(M, "m1"), (C, "c1")]


async def test_chunks_never_claim_more_than_handed_out() -> None:
    box = Outbox(10_000, chunk=3)
    box.put(delta(7, {f"m{i}": 1 for i in range(4)}, {"c1": 1, "c2": 1}))
    first, second = await take_batch(box), await take_batch(box)
    assert [c.id for c in first.credentials] == ["c1", "c2"]
    assert len(first.monitors) == 1
    assert first.revision == 0  # partial: the ack must not claim revision 7 yet
    assert len(second.monitors) == 3
    assert second.revision == 7


async def test_overflow_closes_instead_of_growing() -> None:
    box = Outbox(5)
    box.put(delta(1, {f"m{i}": 1 for i in range(6)}))
    with pytest.raises(OutboxOverflow):
        await box.take()


async def test_a_request_for_the_held_list_goes_before_pending_changes() -> None:
    box = Outbox(100)
    box.put(delta(4, {"m1": 1}))
    box.ask_held("digest differs")
    first = await box.take()
    assert isinstance(first, epb.ResyncRequest)
    assert first.reason == "digest differs"
    batch = await take_batch(box)
    assert [m.id for m in batch.monitors] == ["m1"]
    assert box.revision == 4


async def test_lag_counts_revisions_put_in_and_not_acknowledged() -> None:
    box = Outbox(100)
    assert box.lag == 0
    box.acked(4)  # the engine synced at revision 4
    box.put(delta(6, {"m1": 1}))
    box.put(delta(9, {"m2": 1}))
    assert box.lag == 5
    await take_batch(box)  # handed out is not acknowledged
    assert box.lag == 5
    box.acked(6)
    assert box.lag == 3
    box.acked(9)
    assert box.lag == 0
    box.acked(7)  # an older acknowledgement arriving late changes nothing
    assert box.lag == 0
