"""helm test for credvault: the vault answers grpc.health.v1.Health with SERVING.

Run by the chart's test pod as ``python -c "<this file>" --health HOST:PORT [--api HOST:PORT --ca FILE]`` with the
credvault image (grpcio and grpcio-health-checking are its dependencies). Exit 0 when every check passes, else 1.
"""

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(channel: grpc.Channel, what: str, timeout: float) -> bool:
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError as exc:
            print(f"FAIL {what}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return False
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    ok = reply.status == health_pb2.HealthCheckResponse.SERVING
    print(f"{'ok' if ok else 'FAIL'} {what}: {status}", file=sys.stdout if ok else sys.stderr)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="healthcheck", description=__doc__)
    parser.add_argument("--health", required=True, help="host:port of the plaintext health port")
    parser.add_argument("--api", help="host:port of the API port (TLS)")
    parser.add_argument("--ca", help="CA certificate of the API server (absent file: the system roots)")
    parser.add_argument("--server-name", help="name to verify the API certificate against (default: the host)")
    parser.add_argument("--timeout", type=float, default=10.0)
    ns = parser.parse_args(argv)

    ok = check(grpc.insecure_channel(ns.health), f"health port {ns.health}", ns.timeout)
    if ns.api:
        roots = None
        if ns.ca and os.path.exists(ns.ca):
            with open(ns.ca, "rb") as f:
                roots = f.read()
        options = [("grpc.ssl_target_name_override", ns.server_name)] if ns.server_name else []
        channel = grpc.secure_channel(ns.api, grpc.ssl_channel_credentials(roots), options=options)
        ok = check(channel, f"API port {ns.api} (TLS)", ns.timeout) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
