"""Counts and times every RPC of a server for Prometheus (:mod:`vault_service.metrics`): started, handled by status
code, and the handling time, by type, service and method. Unknown methods are not counted (no label from a caller)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from vault_service.metrics import VaultMetrics

Context = grpc.aio.ServicerContext[Any, Any]


class _Call:
    """One RPC's labels and clock."""

    def __init__(self, metrics: VaultMetrics, labels: tuple[str, str, str]) -> None:
        self._metrics = metrics
        self._labels = labels
        metrics.rpc_started.labels(*labels).inc()
        self._start = time.perf_counter()

    def done(self, context: Context, exc: BaseException | None) -> None:
        code = context.code()
        if isinstance(code, grpc.StatusCode):
            name = code.name
        elif isinstance(exc, asyncio.CancelledError):
            name = grpc.StatusCode.CANCELLED.name
        elif exc is not None:
            name = grpc.StatusCode.UNKNOWN.name
        else:
            name = grpc.StatusCode.OK.name
        self._metrics.rpc_handled.labels(*self._labels, name).inc()
        self._metrics.rpc_seconds.labels(*self._labels).observe(time.perf_counter() - self._start)


def _wrap(inner: Callable[..., Any], metrics: VaultMetrics, labels: tuple[str, str, str]) -> Callable[..., Any]:
    """The same kind of behavior as ``inner`` (coroutine, or async generator for streamed responses), measured."""
    if inspect.isasyncgenfunction(inner):

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            call = _Call(metrics, labels)
            try:
                async for item in inner(request, context):
                    yield item
            except BaseException as exc:
                call.done(context, exc)
                raise
            call.done(context, None)

        return stream

    async def unary(request: Any, context: Context) -> Any:
        call = _Call(metrics, labels)
        try:
            result = await inner(request, context)
        except BaseException as exc:
            call.done(context, exc)
            raise
        call.done(context, None)
        return result

    return unary


_KINDS = (
    ("unary_unary", "unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", "server_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", "client_stream", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", "bidi_stream", grpc.stream_stream_rpc_method_handler),
)


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, metrics: VaultMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        service, _, method = (handler_call_details.method or "").lstrip("/").rpartition("/")
        for attribute, kind, make in _KINDS:
            inner = getattr(handler, attribute)
            if inner is not None:
                return make(
                    _wrap(inner, self._metrics, (kind, service, method)),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler
