-- Credentials synchronized from an external vault (OpenBao / HashiCorp Vault): where the contents come from (no
-- secret: companion secrets are credentials referenced by id), the synchronization's status, and a lease so that
-- exactly one replica synchronizes a credential at a time (taken over once it expires: its holder died).
ALTER TABLE credentials
    ADD COLUMN external_source       jsonb,
    ADD COLUMN sync_last_attempt     timestamptz,
    ADD COLUMN sync_last_success     timestamptz,
    ADD COLUMN sync_last_error       text NOT NULL DEFAULT '',
    ADD COLUMN sync_external_version text NOT NULL DEFAULT '',
    ADD COLUMN sync_failures         integer NOT NULL DEFAULT 0,
    ADD COLUMN next_sync_at          timestamptz,
    ADD COLUMN sync_owner            text,
    ADD COLUMN sync_lease_until      timestamptz;

-- The scheduler's scan: due synchronized credentials (a NULL next_sync_at is due: never synchronized yet).
CREATE INDEX credentials_next_sync ON credentials (next_sync_at NULLS FIRST) WHERE external_source IS NOT NULL;
