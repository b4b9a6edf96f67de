-- Usernames of deleted users. Credentials keep naming their (deleted) owner, so a name is never given to a new
-- account: it would silently inherit the old account's owner-only credentials.
CREATE TABLE retired_usernames (
    username    text PRIMARY KEY,
    retired_at  timestamptz NOT NULL DEFAULT now()
);
