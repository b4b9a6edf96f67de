"""The one place where domain errors become gRPC status codes (as httpx maps transport errors).

Applied to every credvault.v1 method by a server interceptor, so servicers just raise domain errors.
Unexpected exceptions become INTERNAL with an incident id and nothing of the exception's text: the detail
goes to the log (exception type and traceback), never to the caller.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import grpc

from vault_service import errors
from vault_service.storage.store import Store

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

_UNAVAILABLE = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError)


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
    if isinstance(exc, _UNAVAILABLE):
        log.warning("database unavailable (incident %s): %s", incident, type(exc).__name__)
        return grpc.StatusCode.UNAVAILABLE, f"the database is unavailable; retry (incident {incident})"
    log.error("internal error (incident %s): %s", incident, type(exc).__name__, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (incident {incident})"


Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


def _wrap(inner: Behavior, store: Store | None) -> Behavior:
    async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            if store is None:
                return await inner(request, context)
            async with store.bound():
                return await inner(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code, message = status_of(exc)
            await context.abort(code, message)

    return behavior


class StatusMappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Maps exceptions of unary credvault.v1 handlers to status codes; with a store, each such call also works on
    one pooled connection (authentication and operation alike)."""

    def __init__(self, store: Store | None = None) -> None:
        self._store = store

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or not method.startswith("/credvault.v1.") or handler.unary_unary is None:
            return handler
        return grpc.unary_unary_rpc_method_handler(
            _wrap(handler.unary_unary, self._store),  # type: ignore[arg-type]
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
