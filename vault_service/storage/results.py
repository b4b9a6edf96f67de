"""SQL of monitor execution results (mixed into ``Queries``).

Results go in and come out as ``credvault.v1`` protobuf messages, on purpose, as monitors do (see ``monitors``)."""

from __future__ import annotations

import datetime
import json

from google.protobuf import json_format

from credvault.v1 import monitors_pb2 as mpb
from vault_service.storage.connection import Connection

_STATUS_NAMES = {
    mpb.EXECUTION_STATUS_SUCCESS: "SUCCESS",
    mpb.EXECUTION_STATUS_FAILED: "FAILED",
    mpb.EXECUTION_STATUS_NOT_EXECUTABLE: "NOT_EXECUTABLE",
}
_STATUSES = {name: status for status, name in _STATUS_NAMES.items()}


# A browser execution's part of a result (events, page figures, screenshot) is stored as one more element of the
# ``requests`` array, {"browser": <MonitorResult JSON with only those fields>} (no schema change).
_BROWSER = "browser"
_BROWSER_FIELDS = (
    "events",
    "main_document_status",
    "console_errors",
    "failed_requests",
    "screenshot_png",
    "screenshot_note",
    "screenshot_size",
    "failed_request_urls",
)


def _steps(result: mpb.MonitorResult) -> list[dict[str, object]]:
    steps: list[dict[str, object]] = [json_format.MessageToDict(q) for q in result.requests]
    browser = mpb.MonitorResult()
    for field in _BROWSER_FIELDS:
        if field == "events":
            browser.events.extend(result.events)
        elif field == "failed_request_urls":
            browser.failed_request_urls.extend(result.failed_request_urls)
        else:
            setattr(browser, field, getattr(result, field))
    if browser.ByteSize():
        steps.append({_BROWSER: json_format.MessageToDict(browser)})
    return steps


class ResultQueries:
    conn: Connection

    async def insert_results(self, rows: list[tuple[str, str, mpb.MonitorResult]], keep_per_monitor: int) -> int:
        """Inserts (location id, engine id, result) rows whose monitor runs in that location (others are dropped),
        then prunes each affected monitor's history to its newest ``keep_per_monitor``. Returns how many were kept."""
        if not rows:
            return 0
        results = [r for _, _, r in rows]
        inserted = await self.conn.fetch(
            "INSERT INTO monitor_results (monitor_id, monitor_version, location_id, engine_id, started_at,"
            " duration_ms, status, failure_reason, requests)"
            " SELECT r.monitor_id, r.monitor_version, r.location_id, r.engine_id, r.started_at, r.duration_ms,"
            "  r.status, r.failure_reason, r.requests::jsonb"
            " FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::timestamptz[], $6::float8[],"
            "  $7::text[], $8::text[], $9::text[]) AS r (location_id, engine_id, monitor_id, monitor_version,"
            "  started_at, duration_ms, status, failure_reason, requests)"
            " JOIN monitors m ON m.id = r.monitor_id AND r.location_id = ANY (m.location_ids)"
            " RETURNING monitor_id",
            [loc for loc, _, _ in rows],
            [eng for _, eng, _ in rows],
            [r.monitor_id for r in results],
            [r.monitor_version for r in results],
            [r.start_time.ToDatetime(tzinfo=datetime.UTC) for r in results],
            [r.duration_ms for r in results],
            [_STATUS_NAMES[r.status] for r in results],
            [r.failure_reason for r in results],
            [json.dumps(_steps(r)) for r in results],
        )
        monitor_ids = sorted({row["monitor_id"] for row in inserted})
        if monitor_ids:
            await self.conn.execute(
                "DELETE FROM monitor_results r USING ("
                "  SELECT id, row_number() OVER (PARTITION BY monitor_id ORDER BY started_at DESC, id DESC) AS n"
                "  FROM monitor_results WHERE monitor_id = ANY ($1)"
                " ) old WHERE r.id = old.id AND old.n > $2",
                monitor_ids,
                keep_per_monitor,
            )
        return len(inserted)

    async def recent_results(self, monitor_id: str, location_id: str | None, limit: int) -> list[mpb.MonitorResult]:
        rows = await self.conn.fetch(
            "SELECT monitor_id, monitor_version, location_id, engine_id, started_at, duration_ms, status,"
            " failure_reason, requests FROM monitor_results"
            " WHERE monitor_id = $1 AND ($2::text IS NULL OR location_id = $2)"
            " ORDER BY started_at DESC, id DESC LIMIT $3",
            monitor_id,
            location_id,
            limit,
        )
        out = []
        for row in rows:
            result = mpb.MonitorResult(
                monitor_id=row["monitor_id"],
                monitor_version=row["monitor_version"],
                location_id=row["location_id"],
                engine_id=row["engine_id"],
                duration_ms=row["duration_ms"],
                status=_STATUSES[row["status"]],
                failure_reason=row["failure_reason"],
            )
            result.start_time.FromDatetime(row["started_at"])
            for step in row["requests"]:
                if _BROWSER in step:
                    json_format.ParseDict(step[_BROWSER], result)
                else:
                    json_format.ParseDict(step, result.requests.add())
            out.append(result)
        return out
