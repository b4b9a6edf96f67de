"""The one domain error hierarchy of the vault.

Every error a caller can cause is a :class:`VaultError`. Messages are written for the caller (they say what to
fix) and must never contain the value of a secret field. The mapping to gRPC status codes lives in
:mod:`vault_service.api.status`, nowhere else.
"""

from __future__ import annotations


class VaultError(Exception):
    """Base of every error the vault reports to a caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(VaultError):
    """The request is malformed; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class Unauthenticated(VaultError):
    """No usable credentials on the call (missing, malformed, unknown, revoked or expired token)."""


class PermissionDenied(VaultError):
    """The caller is known but not allowed to do this. Every denial is audited: by the API layer
    (:mod:`vault_service.denial_audit`), unless the domain wrote its own entry and set ``audited``."""

    audited = False


class NotFound(VaultError):
    """The object does not exist, or the caller may not know that it exists."""


class AlreadyExists(VaultError):
    """An object with this key exists already."""


class FailedPrecondition(VaultError):
    """The system is not in a state in which this can be done (for example: a limit is reached)."""


class Aborted(VaultError):
    """A concurrent change won (optimistic versioning); re-read and retry."""


class ResourceExhausted(VaultError):
    """A quota is used up."""


class Unavailable(VaultError):
    """A dependency (the database) is not reachable; retrying may help."""


class ConfigurationError(Exception):
    """The process cannot start with this configuration (not reported over gRPC)."""


class UsageError(ConfigurationError):
    """A command-line argument (or a file it names) of the `credvault` console script is wrong: what to change."""


class DecryptionError(Exception):
    """Ciphertext does not authenticate under the key it claims: tampering or a wrong key.

    This is an internal fault, never caused by a caller's input; it maps to INTERNAL/DATA_LOSS.
    """


class AuthenticationChanged(Exception):
    """A statement found that a remembered authentication no longer holds (the token or its user changed): the
    call must be decided again on a fresh lookup. Never reaches a caller (it would be INTERNAL)."""
