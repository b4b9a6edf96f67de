-- Monitors, private locations, engines, and the durable change log that drives the push to engines.

-- Versions of what engines hold (monitor configs, credential contents): unique forever, across restarts and
-- replicas. Not commit-ordered; ordering is the change log's job.
CREATE SEQUENCE resource_versions;

CREATE TABLE locations (
    id          text PRIMARY KEY CHECK (id ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE engines (
    location_id       text NOT NULL REFERENCES locations (id) ON DELETE CASCADE,
    engine_id         text NOT NULL CHECK (engine_id ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    created_at        timestamptz NOT NULL DEFAULT now(),
    revoked_at        timestamptz,
    connected_since   timestamptz,
    connected_replica text,
    applied_revision  bigint NOT NULL DEFAULT 0,
    rejected          jsonb NOT NULL DEFAULT '[]'::jsonb,
    PRIMARY KEY (location_id, engine_id)
);

CREATE TABLE monitors (
    id                 text PRIMARY KEY CHECK (id ~ '^SYNTHETIC_TEST-[0-9A-F]{16}$'),
    name               text NOT NULL,
    type               text NOT NULL CHECK (type IN ('HTTP', 'BROWSER')),
    enabled            boolean NOT NULL,
    disabled_reason    text,
    frequency_minutes  integer NOT NULL,
    location_ids       text[] NOT NULL,
    management_zone    text NOT NULL DEFAULT '',
    -- The script as protobuf JSON: credential references and placeholders only, never a secret.
    script             jsonb NOT NULL,
    -- From resource_versions: changes with every change of the monitor.
    version            bigint NOT NULL DEFAULT nextval('resource_versions'),
    created_by         text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX monitors_locations ON monitors USING gin (location_ids);

-- Which credentials each monitor references ("used by"). No foreign key to credentials: a deleted credential
-- leaves the monitor disabled with its references, until the monitor gets new ones.
CREATE TABLE monitor_credentials (
    monitor_id     text NOT NULL REFERENCES monitors (id) ON DELETE CASCADE,
    credential_id  text NOT NULL,
    PRIMARY KEY (monitor_id, credential_id)
);
CREATE INDEX monitor_credentials_credential ON monitor_credentials (credential_id);

ALTER TABLE credentials ADD COLUMN resource_version bigint NOT NULL DEFAULT nextval('resource_versions');

-- The head of the change log. Appending takes this row's lock until commit, so revisions are assigned and
-- committed in order: a reader that has seen revision N never later finds a committed N-1 it skipped.
CREATE TABLE change_head (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    revision  bigint NOT NULL
);
INSERT INTO change_head (revision) VALUES (0);

-- Every change that alters what an engine should hold.
CREATE TABLE change_log (
    revision      bigint PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    kind          text NOT NULL CHECK (kind IN ('monitor', 'credential', 'engine')),
    object_id     text NOT NULL,
    -- Locations whose engines are affected (before and after the change).
    location_ids  text[] NOT NULL
);
