"""The one place where domain errors become gRPC status codes (as httpx maps transport errors).

Applied to every credvault.v1 method by the server interceptor (:mod:`vault_service.api.interceptor`), so servicers
just raise domain errors.
Unexpected exceptions become INTERNAL with an incident id and nothing of the exception's text: the detail
goes to the log (exception type and traceback), never to the caller. A lost database arrives here as
``errors.Unavailable`` (the store translates the driver's errors), so nothing here knows the driver.
"""

from __future__ import annotations

import logging
import uuid

import grpc

from vault_service import errors

log = logging.getLogger(__name__)

_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Aborted, grpc.StatusCode.ABORTED),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
]


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Status code and caller-facing message for an exception."""
    for cls, code in _CODES:
        if isinstance(exc, cls):
            assert isinstance(exc, errors.VaultError)
            return code, exc.message
    incident = uuid.uuid4().hex[:12]
    if isinstance(exc, errors.DecryptionError):
        log.error("stored data failed to authenticate (incident %s): %s", incident, exc)
        return grpc.StatusCode.DATA_LOSS, f"stored data failed to authenticate (incident {incident})"
    log.error("internal error (incident %s): %s", incident, type(exc).__name__, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (incident {incident})"
