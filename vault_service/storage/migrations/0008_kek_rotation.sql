-- Two-phase KEK rotation. Which KEK wraps new data keys is the database's to say, so that every replica follows one
-- choice (the keyring file's "active" only seeds it on first start); each replica reports the KEKs it has loaded and
-- the one it wraps with, so that activating a KEK waits until every live replica can open what it wraps, and
-- retiring one waits until no live replica wraps with it.
CREATE TABLE kek_active (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    kek_id text NOT NULL,
    activated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE vault_replicas (
    replica_id text PRIMARY KEY,
    kek_ids text[] NOT NULL,
    active_kek text NOT NULL,
    seen_at timestamptz NOT NULL DEFAULT now(),
    live_until timestamptz NOT NULL
);
