"""The one server interceptor of both ports. Every RPC is counted and timed for Prometheus
(:mod:`vault_service.metrics`: started, handled by status code, handling time; by type, service and method; unknown
methods are not counted, so no label comes from a caller). A request that is not a valid protobuf message is refused
with INVALID_ARGUMENT before anything else (:mod:`vault_service.api.undecodable`). The unary credvault.v1 methods
also get their domain errors mapped to status codes (:mod:`vault_service.api.status`), their denials audited
(:mod:`vault_service.denial_audit`) and, with a call runner (the store's ``Store.call``), one pooled connection for
the whole call (authentication and operation alike), run again on a fresh one if the database session was lost
before anything of the call could have committed.

Each method's wrapped handler, with its label children, is made on its first call and reused: a call costs one
dictionary lookup here, and a few wrappers around the servicer method (measured, refusing, vault).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from vault_service.api import caller
from vault_service.api.status import status_of
from vault_service.api.undecodable import Refusals, refusing_undecodable, request_type, tolerant
from vault_service.denial_audit import DenialAudit
from vault_service.errors import PermissionDenied, Unauthenticated
from vault_service.metrics import VaultMetrics

Context = grpc.aio.ServicerContext[Any, Any]
_OK = grpc.StatusCode.OK.name
_UNKNOWN = grpc.StatusCode.UNKNOWN.name
_CANCELLED = grpc.StatusCode.CANCELLED.name
# How a vault call's work runs on the database: server.py hands in ``Store.call`` (the API layer knows no storage).
CallRunner = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]


class _Measured:
    """One method's series."""

    def __init__(self, metrics: VaultMetrics, labels: tuple[str, str, str]) -> None:
        self._metrics = metrics
        self._labels = labels
        self._started = metrics.rpc_started.labels(*labels)
        self._seconds = metrics.rpc_seconds.labels(*labels)
        self._handled: dict[str, Any] = {}

    def call(self, context: Context) -> _Timed:
        self._started.inc()
        return _Timed(self, context)

    def done(self, start: float, context: Context, exc: BaseException | None) -> None:
        code = context.code()
        if isinstance(code, grpc.StatusCode):
            name = code.name
        elif isinstance(exc, asyncio.CancelledError):
            name = _CANCELLED
        elif exc is not None:
            name = _UNKNOWN
        else:
            name = _OK
        handled = self._handled.get(name)
        if handled is None:
            handled = self._handled[name] = self._metrics.rpc_handled.labels(*self._labels, name)
        handled.inc()
        self._seconds.observe(time.perf_counter() - start)


class _Timed:
    """``with measured.call(context):`` around one RPC's work: handled and timed however it ends."""

    __slots__ = ("_context", "_measured", "_start")

    def __init__(self, measured: _Measured, context: Context) -> None:
        self._measured = measured
        self._context = context
        self._start = time.perf_counter()

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._measured.done(self._start, self._context, exc)


def _vault_unary(
    inner: Callable[..., Any], run_call: CallRunner | None, action: str, denials: DenialAudit | None
) -> Callable[..., Any]:
    """A credvault.v1 unary method (``action``: its "service/method" name): on one bound connection, domain errors as
    status codes, denials audited."""

    async def unary(request: Any, context: Context) -> Any:
        try:
            if run_call is None:
                return await inner(request, context)
            return await run_call(lambda: inner(request, context))
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            if denials is not None:
                await _audit_denial(denials, exc, action, context)
            code, message = status_of(exc)
            await context.abort(code, message)

    return unary


async def _audit_denial(denials: DenialAudit, exc: Exception, action: str, context: Context) -> None:
    if isinstance(exc, Unauthenticated):
        sent_token = any(key == "authorization" for key, _ in context.invocation_metadata() or ())
        source = context.peer().rpartition(":")[0] or "unknown"
        await denials.auth_failed(source, "bad_token" if sent_token else "no_token")
    elif isinstance(exc, PermissionDenied) and not exc.audited:
        principal = caller.current()
        if principal is not None:
            await denials.denied(principal, action, exc.message)


def _measured(inner: Callable[..., Any], measured: _Measured) -> Callable[..., Any]:
    """The same kind of behavior as ``inner`` (coroutine, or async generator for streamed responses), measured."""
    if inspect.isasyncgenfunction(inner):

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            with measured.call(context):
                async for item in inner(request, context):
                    yield item

        return stream

    async def unary(request: Any, context: Context) -> Any:
        with measured.call(context):
            return await inner(request, context)

    return unary


_KINDS = (
    ("unary_unary", "unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", "server_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", "client_stream", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", "bidi_stream", grpc.stream_stream_rpc_method_handler),
)


class ApiInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Metrics and refusal of undecodable requests for every method; with ``vault_calls``, also status mapping,
    denial audit (with ``denials``) and, with ``run_call``, one bound connection for each unary credvault.v1 call."""

    def __init__(
        self,
        metrics: VaultMetrics,
        *,
        vault_calls: bool = False,
        run_call: CallRunner | None = None,
        denials: DenialAudit | None = None,
    ) -> None:
        self._metrics = metrics
        self._vault_calls = vault_calls
        self._run_call = run_call
        self._denials = denials
        self._refusals = Refusals()
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = handler_call_details.method or ""
        wrapped = self._handlers.get(method)
        if wrapped is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return handler  # unknown: not counted, not remembered (the name is the caller's)
            wrapped = self._handlers[method] = self._wrap(method, handler)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        service, _, name = method.lstrip("/").rpartition("/")
        for attribute, kind, make in _KINDS:
            inner = getattr(handler, attribute)
            if inner is None:
                continue
            if self._vault_calls and kind == "unary" and method.startswith("/credvault.v1."):
                inner = _vault_unary(inner, self._run_call, f"{service}/{name}", self._denials)
            refusing = refusing_undecodable(inner, handler.request_streaming, request_type(method), self._refusals)
            return make(
                _measured(refusing, _Measured(self._metrics, (kind, service, name))),
                request_deserializer=tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler
