-- Execution results reported by engines: a bounded recent history per monitor (the vault prunes older rows as it
-- inserts). URLs and failure reasons hold placeholders, never a substituted secret.
CREATE TABLE monitor_results (
    id               bigserial PRIMARY KEY,
    monitor_id       text NOT NULL REFERENCES monitors (id) ON DELETE CASCADE,
    monitor_version  bigint NOT NULL,
    location_id      text NOT NULL,
    engine_id        text NOT NULL,
    started_at       timestamptz NOT NULL,
    duration_ms      double precision NOT NULL CHECK (duration_ms >= 0),
    status           text NOT NULL CHECK (status IN ('SUCCESS', 'FAILED', 'NOT_EXECUTABLE')),
    failure_reason   text NOT NULL DEFAULT '',
    -- The requests as protobuf JSON (RequestResult), in order.
    requests         jsonb NOT NULL DEFAULT '[]'::jsonb,
    received_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX monitor_results_recent ON monitor_results (monitor_id, started_at DESC, id DESC);
