-- An engine's connection is shown only while the replica holding its stream keeps renewing a lease: a replica that
-- was killed (SIGKILL, a lost node) cannot clear connected_since, and its engines would show connected forever.
-- Set when the stream syncs, renewed by the replica's one periodic statement, read against the configured lease.
ALTER TABLE engines ADD COLUMN lease_renewed_at timestamptz;
