"""Engines' ACKs are recorded with group commit: a burst of ACKs costs a few statements, not one each, a lone ACK
is written at once, and the latest revision per engine wins."""

from __future__ import annotations

from tests.processes import eventually
from vault_service.push.ack_recorder import AckRecorder
from vault_service.storage.pool import Store


async def applied(store: Store) -> dict[str, tuple[int, list[object]]]:
    async with store.autocommit() as tx:
        rows = await tx.conn.fetch("SELECT engine_id, applied_revision, rejected FROM engines ORDER BY engine_id")
    return {r["engine_id"]: (r["applied_revision"], r["rejected"]) for r in rows}


async def test_a_burst_is_written_in_few_statements_and_the_latest_wins(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.insert_location("loc-a", "A")
        for n in range(50):
            await tx.insert_engine("loc-a", f"e{n}")
    recorder = AckRecorder(store)
    for revision in (5, 7, 6):  # out of order: the highest stays
        for n in range(50):
            recorder.record("loc-a", f"e{n}", revision, [])
    recorder.record("loc-a", "e3", 7, [{"monitor_id": "m", "version": 1, "reason": "cannot run"}])
    await recorder.flush()
    assert recorder.writes <= 3  # 151 ACKs
    got = await applied(store)
    assert {e: rev for e, (rev, _) in got.items()} == {f"e{n}": 7 for n in range(50)}
    assert got["e3"][1] == [{"monitor_id": "m", "version": 1, "reason": "cannot run"}]

    # a lone ACK later is written without waiting for company
    before = recorder.writes
    recorder.record("loc-a", "e9", 8, [])

    async def e9_written() -> bool:
        return bool((await applied(store))["e9"][0] == 8)

    await eventually(e9_written)
    assert recorder.writes == before + 1


async def test_the_asynchronous_commit_of_acks_stays_in_their_statement(store: Store) -> None:
    """ACKs are committed without waiting for the WAL flush; the setting must not outlive the statement on the
    pooled connection, where the next call's writes (credentials, the change log) must be durable."""
    async with store.transaction() as tx:
        await tx.insert_location("loc-a", "A")
        await tx.insert_engine("loc-a", "e1")
    async with store.autocommit() as tx:
        await tx.engines_acked([("loc-a", "e1", 4, "[]")])
        assert await tx.conn.fetchval("SHOW synchronous_commit") == "on"
    assert (await applied(store))["e1"] == (4, [])
