-- Core schema: users, API tokens, credentials (encrypted), KEK checks, audit log.

CREATE TABLE users (
    username          text PRIMARY KEY,
    permissions       text[] NOT NULL DEFAULT '{}',
    zone_permissions  jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_tokens (
    public_id     text PRIMARY KEY,
    owner         text NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    name          text NOT NULL,
    scopes        text[] NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('PERSONAL', 'API')),
    secret_hash   bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    last_used_at  timestamptz,
    revoked_at    timestamptz
);
CREATE INDEX api_tokens_owner ON api_tokens (owner, created_at);

CREATE TABLE credentials (
    id                  text PRIMARY KEY CHECK (id ~ '^CREDENTIALS_VAULT-[0-9A-F]{16}$'),
    name                text NOT NULL,
    description         text NOT NULL DEFAULT '',
    type                text NOT NULL,
    scopes              text[] NOT NULL,
    owner               text NOT NULL,
    access_level        text NOT NULL CHECK (access_level IN ('OWNER_ONLY', 'SHARED', 'ALL')),
    shared_with         text[] NOT NULL DEFAULT '{}',
    app_allowed_apps    text[],
    app_contextless     boolean,
    cert_subject        text,
    cert_issuer         text,
    cert_not_after      timestamptz,
    cert_fingerprint    text,
    version             bigint NOT NULL CHECK (version > 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    kek_id              text NOT NULL,
    wrapped_key         bytea NOT NULL,
    ciphertext          bytea NOT NULL
);
CREATE INDEX credentials_name ON credentials (name, id);
CREATE INDEX credentials_kek ON credentials (kek_id);

-- One row per KEK that ever encrypted this database: proves at start-up that the configured key is the right one.
CREATE TABLE kek_checks (
    kek_id      text PRIMARY KEY,
    check_blob  bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Append-only: never a secret value in it.
CREATE TABLE audit_log (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor      text NOT NULL,
    token_id   text,
    action     text NOT NULL,
    target     text,
    outcome    text NOT NULL,
    detail     jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END $$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
