"""Hostile bytes: a request that is not a valid protobuf message (random bytes, truncated or corrupt messages), to
every method of every service on the API port (the services its reflection lists) and on the engine port (every
service of engine.proto), is refused with INVALID_ARGUMENT naming the message type, before authentication; the log
gets no traceback, only one line per interval with the number refused."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from credvault.v1 import engine_pb2 as epb
from credvault.v1 import monitors_pb2 as mpb
from tests.conftest import Client
from tests.helpers import INVALID, create_req
from tests.local_pki import LocalPki
from vault_service.server import RunningVault

RAW = (None, None)  # no request serializer, no response deserializer: bytes as they are
CORRUPT = [
    b"\x08",  # a varint field without its value
    b"\x0a\x05ab",  # a length-delimited field shorter than its length
    b"\x0a\x02\xff\xfe",  # a string field that is not UTF-8 (where field 1 is a string)
    b"\x0f",  # wire type 7 does not exist
    b"\xff" * 11,  # a varint longer than 10 bytes
    create_req("truncated").SerializeToString()[:-1],
]


def undecodable(method: MethodDescriptor) -> list[bytes]:
    """Corrupt messages and seeded random bytes that really fail to parse as the method's request type."""
    request_class = message_factory.GetMessageClass(method.input_type)
    rng = random.Random(method.full_name)
    candidates = CORRUPT + [rng.randbytes(rng.randint(1, 200)) for _ in range(5)]

    def fails(raw: bytes) -> bool:
        try:
            request_class.FromString(raw)
        except DecodeError:
            return True
        return False

    return [raw for raw in candidates if fails(raw)]


async def send_raw(channel: grpc.aio.Channel, method: MethodDescriptor, raw: bytes) -> grpc.aio.AioRpcError:
    """One call of ``method`` with ``raw`` as its (only) request message, no token; the error it ends with."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    try:
        if method.client_streaming:
            async for _ in channel.stream_stream(path, *RAW)(iter([raw]), timeout=30):
                pass
        elif method.server_streaming:
            async for _ in channel.unary_stream(path, *RAW)(raw, timeout=30):
                pass
        else:
            await channel.unary_unary(path, *RAW)(raw, timeout=30)
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError(f"{path} accepted {raw!r}")


async def refuse_everything(channel: grpc.aio.Channel, services: list[str]) -> int:
    pool = descriptor_pool.Default()
    calls = 0
    for service in services:
        methods = pool.FindServiceByName(service).methods
        assert methods, service
        for method in methods:
            payloads = undecodable(method)
            assert len(payloads) >= 5, method.full_name
            for raw in payloads:
                error = await send_raw(channel, method, raw)
                expected = f"the request is not a valid {method.input_type.full_name} message"
                assert (error.code(), error.details()) == (INVALID, expected), (method.full_name, raw)
                calls += 1
    return calls


def assert_quiet(caplog: pytest.LogCaptureFixture, refused: int) -> None:
    """No traceback anywhere; exactly one refusal line (the first refusal of the interval), nothing above INFO
    besides it."""
    assert [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()] == []
    lines = [r.getMessage() for r in caplog.records if r.name == "vault_service.api.undecodable"]
    assert len(lines) == 1, lines
    assert lines[0].startswith("refused 1 request(s) that were not valid protobuf messages"), lines
    loud = [
        r.getMessage() for r in caplog.records if r.levelno > logging.INFO and r.name != "vault_service.api.undecodable"
    ]
    assert loud == []
    assert refused > len(lines)


async def served_services(channel: grpc.aio.Channel) -> list[str]:
    async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    async for response in stub.ServerReflectionInfo(ask()):
        return [s.name for s in response.list_services_response.service]
    raise AssertionError("no reflection response")


async def test_api_port_refuses_undecodable_requests_to_every_method(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    services = await served_services(channel)
    assert {"credvault.v1.CredentialsService", "grpc.health.v1.Health"} <= set(services)
    caplog.set_level(logging.DEBUG)
    refused = await refuse_everything(channel, services)
    assert_quiet(caplog, refused)


async def test_engine_port_refuses_undecodable_requests(
    push_vault: RunningVault, admin_client: Client, local_pki: LocalPki, caplog: pytest.LogCaptureFixture
) -> None:
    await admin_client.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id="loc")))
    await admin_client.AddEngine(mpb.AddEngineRequest(location_id="loc", engine_id="e1"))
    cert = local_pki.engine("loc", "e1")
    creds = grpc.ssl_channel_credentials(local_pki.server_ca.cert_pem, cert.key_pem, cert.chain_pem)
    caplog.set_level(logging.DEBUG)
    async with grpc.aio.secure_channel(f"localhost:{push_vault.engine_port}", creds) as channel:
        # as the first message of the stream
        refused = await refuse_everything(channel, [s.full_name for s in epb.DESCRIPTOR.services_by_name.values()])
        # after a valid Hello, while the engine is connected
        hello = epb.StreamRequest(hello=epb.Hello(location_id="loc", engine_id="e1")).SerializeToString()
        stream = channel.stream_stream("/credvault.v1.EngineConfigService/Stream", *RAW)(iter([hello, b"\x0a\x05ab"]))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stream:
                pass
        assert info.value.code() == INVALID, info.value.details()
    assert_quiet(caplog, refused + 1)
