-- Token rotation with write-back to an external vault (OpenBao / HashiCorp Vault KV v2): the policy of a token
-- (where its successor's secret is written, how often, the grace of the predecessor; no secret: the companions are
-- credentials referenced by id), when it is next due, and a lease so that one replica runs a scheduled rotation.
ALTER TABLE api_tokens
    ADD COLUMN rotation              jsonb,
    ADD COLUMN next_rotation_at      timestamptz,
    ADD COLUMN rotation_owner        text,
    ADD COLUMN rotation_lease_until  timestamptz;

-- The scheduler's scan: live tokens with a rotation policy, by when they are due.
CREATE INDEX api_tokens_next_rotation ON api_tokens (next_rotation_at)
    WHERE rotation IS NOT NULL AND revoked_at IS NULL;
