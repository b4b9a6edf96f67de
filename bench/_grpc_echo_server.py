"""A trivial grpc.aio unary server over mutual TLS: the ceiling that credentials_api.py compares GetCredential to.

One method, /bench.Echo/Call, bytes in and bytes out (identity serializers, no proto codegen): it answers every
request with a fixed response of --response-bytes bytes. Started as a separate process by credentials_api.py;
prints ``PORT <n>`` on stdout once it serves, and stops on SIGTERM/SIGINT.

    python bench/_grpc_echo_server.py --cert server.pem --key server.key --client-ca ca.pem --response-bytes 180
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import sys
from typing import Any

import grpc
from _child_server import announce_and_wait

METHOD_SERVICE = "bench.Echo"
METHOD_NAME = "Call"
METHOD_PATH = f"/{METHOD_SERVICE}/{METHOD_NAME}"


def _identity(data: bytes) -> bytes:
    return data


async def serve(cert_chain: bytes, key: bytes, client_ca: bytes, response_bytes: int) -> None:
    response = b"r" * response_bytes

    async def call(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return response

    handler = grpc.method_handlers_generic_handler(
        METHOD_SERVICE,
        {
            METHOD_NAME: grpc.unary_unary_rpc_method_handler(
                call, request_deserializer=_identity, response_serializer=_identity
            )
        },
    )
    # The same transport options as vault_service.server.start_vault, so only the handler differs.
    server = grpc.aio.server(
        options=[
            ("grpc.max_concurrent_streams", 1000),
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ]
    )
    server.add_generic_rpc_handlers((handler,))
    creds = grpc.ssl_server_credentials([(key, cert_chain)], root_certificates=client_ca, require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    await announce_and_wait(port)
    await server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cert", type=pathlib.Path, required=True, help="server certificate chain PEM")
    parser.add_argument("--key", type=pathlib.Path, required=True, help="server private key PEM")
    parser.add_argument(
        "--client-ca", type=pathlib.Path, required=True, help="CA PEM that client certificates chain to"
    )
    parser.add_argument("--response-bytes", type=int, default=180, help="size of every response")
    ns = parser.parse_args()
    try:
        asyncio.run(serve(ns.cert.read_bytes(), ns.key.read_bytes(), ns.client_ca.read_bytes(), ns.response_bytes))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
