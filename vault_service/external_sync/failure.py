"""Why a synchronization failed: an outcome (a metric label) and a message built from a fixed template with
configuration only (address, mount, path, field names, HTTP status): never a secret, never an exception's text."""

from __future__ import annotations


class SyncFailure(Exception):
    """A synchronization that read nothing usable; the stored contents stay as they were."""

    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message


# The outcomes (``credvault_sync_total{outcome}``), besides the successes "changed" and "unchanged".
UNREACHABLE = "unreachable"
SEALED = "sealed"
AUTH_FAILED = "auth_failed"
DENIED = "denied"
NOT_FOUND = "not_found"
MISSING_KEY = "missing_key"
INVALID_VALUE = "invalid_value"
COMPANION = "companion"
# The synchronized credential's owner lost access to a companion credential (unshared, its owner changed).
COMPANION_DENIED = "permission_denied"
ERROR = "error"
