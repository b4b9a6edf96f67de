"""Requests that are not valid protobuf messages: INVALID_ARGUMENT before anything else runs (no authentication, no
database, no servicer), and at most one log line per interval, with how many were refused, instead of a
traceback per request.

grpc.aio deserializes a unary request before it calls the method's behavior, and each message of a request stream
when the servicer reads it; a deserializer that raises ends the call with UNKNOWN (its exception's class and text to
the caller) and logs the traceback. So the interceptor gives each method a tolerant deserializer, which turns a
DecodeError into :data:`UNDECODABLE`, and a behavior that refuses that marker.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.message import DecodeError

from vault_service.throttle import Throttle

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]
LOG_INTERVAL_SECONDS = 60.0


class _Undecodable:
    def __repr__(self) -> str:
        return "UNDECODABLE"


UNDECODABLE: Any = _Undecodable()


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer``, returning :data:`UNDECODABLE` where it would raise DecodeError."""
    if deserializer is None:
        return None

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError:
            return UNDECODABLE

    return deserialize


def request_type(method: str) -> str:
    """The full name of a method's request message ("/pkg.Service/Method"), for the caller's error message."""
    service, _, name = method.lstrip("/").rpartition("/")
    try:
        return str(descriptor_pool.Default().FindMethodByName(f"{service}.{name}").input_type.full_name)
    except KeyError:
        return f"request of {service}/{name}"


class Refusals:
    """Refuses undecodable requests; logs one line per interval with the number refused (of any method)."""

    def __init__(self, throttle: Throttle[None] | None = None) -> None:
        self._throttle = throttle or Throttle(LOG_INTERVAL_SECONDS, None)

    async def refuse(self, context: Context, request_type: str) -> NoReturn:
        report = self._throttle.count(None)
        if report is not None:
            log.warning(
                "refused %d request(s) that were not valid protobuf messages (latest: a %s); at most one such"
                " line per %.0f s",
                report[1],
                request_type,
                self._throttle.interval,
            )
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid {request_type} message")
        raise AssertionError("abort returned")  # pragma: no cover (abort always raises)


def refusing_undecodable(
    inner: Callable[..., Any], request_streaming: bool, request_type: str, refusals: Refusals
) -> Callable[..., Any]:
    """The same kind of behavior as ``inner`` (coroutine, or async generator for streamed responses) that refuses
    an undecodable request (of a request stream: when the servicer reads it) instead of passing it on."""

    async def checked(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        async for request in requests:
            if request is UNDECODABLE:
                await refusals.refuse(context, request_type)
            yield request

    async def admitted(request: Any, context: Context) -> Any:
        if request_streaming:
            return checked(request, context)
        if request is UNDECODABLE:
            await refusals.refuse(context, request_type)
        return request

    if inspect.isasyncgenfunction(inner):

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            async for item in inner(await admitted(request, context), context):
                yield item

        return stream

    async def unary(request: Any, context: Context) -> Any:
        return await inner(await admitted(request, context), context)

    return unary
