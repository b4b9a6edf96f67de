-- One meaning of "version": a monitor's version counts its own changes (1, 2, ...), as a credential's does. The
-- number engines hold it at (MonitorResource.version, from resource_versions, unique forever) is its revision,
-- as credentials.resource_version is a credential's. Existing monitors keep their version as their revision, and
-- their version goes on rising from where it is (never back: an expected_version read before still means the same).
ALTER TABLE monitors ADD COLUMN revision bigint;
UPDATE monitors SET revision = version;
ALTER TABLE monitors ALTER COLUMN revision SET NOT NULL,
    ALTER COLUMN revision SET DEFAULT nextval('resource_versions'),
    ALTER COLUMN version SET DEFAULT 1;
