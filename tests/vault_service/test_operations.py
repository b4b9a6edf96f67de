"""The operations surface: the vault's and the worker's Prometheus endpoints fetched over HTTP and parsed with
prometheus-client's parser (the named series are there and move), the worker's JSON logs, and the plaintext
health-only gRPC port."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import credentials_pb2_grpc as cgrpc
from credvault.v1 import identity_pb2 as ipb
from credvault.v1 import monitors_pb2 as mpb
from tests.conftest import Client, with_engine_port
from tests.helpers import create_req, expect_code, up
from tests.local_pki import LocalPki
from tests.processes import (
    STATUS_LISTENING,
    WORKER_MODULE_ARGV,
    Proc,
    child_environment,
    eventually,
    spawn,
    worker_arguments,
)
from vault_service.config import Settings
from vault_service.crypto import Keyring
from vault_service.server import RunningVault, start_vault

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
API_METHOD = (("grpc_method", "GetCurrentUser"), ("grpc_service", "credvault.v1.IdentityService"))


async def scrape(port: int) -> tuple[Samples, set[str]]:
    """Every sample by (name, sorted labels), and the family names."""
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    families = list(text_string_to_metric_families(text))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}
    return samples, {f.name for f in families}


def handled(samples: Samples, code: str, method: tuple[tuple[str, str], ...] = API_METHOD) -> float:
    labels = tuple(sorted((*method, ("grpc_code", code), ("grpc_type", "unary"))))
    return samples.get(("grpc_server_handled_total", labels), 0.0)


@pytest.fixture
async def vault(settings: Settings, keyring: Keyring, local_pki: LocalPki) -> AsyncIterator[RunningVault]:
    """Overrides conftest's: with the engine port, the metrics port and the health port (the fixtures channel,
    admin and users of conftest then use this one)."""
    ops = with_engine_port(settings, local_pki).model_copy(
        update={"metrics_listen": "127.0.0.1:0", "health_listen": "127.0.0.1:0"}
    )
    running = await start_vault(ops, keyring=keyring)
    yield running
    await running.stop(0)


async def start_worker(pki: LocalPki, engine_port: int, location: str, engine: str) -> tuple[Proc, int]:
    """A real engine-worker process with JSON logs; returns it and its status port."""
    args = worker_arguments(pki, engine_port, location, engine, "--heartbeat-interval", "1", "--log-level", "DEBUG")
    worker = await spawn(sys.executable, *WORKER_MODULE_ARGV, *args, env=child_environment(ENGINE_LOG_FORMAT="json"))
    m = await worker.wait_for_line(STATUS_LISTENING)
    return worker, int(m.group(1))


def http_monitor(cred_id: str, location: str) -> mpb.Monitor:
    req = mpb.HttpRequest(method="GET", url="https://shop.example/")
    req.authentication.basic_credential_id = cred_id
    return mpb.Monitor(
        name="m", frequency_minutes=1, location_ids=[location], enabled=True, http=mpb.HttpScript(requests=[req])
    )


async def test_vault_and_worker_metrics_move(
    vault: RunningVault, channel: grpc.aio.Channel, admin: Client, local_pki: LocalPki, keyring: Keyring
) -> None:
    port = vault.metrics_port
    samples, names = await scrape(port)
    for family in (
        "grpc_server_started",
        "grpc_server_handled",
        "grpc_server_handling_seconds",
        "credvault_engines_connected",
        "credvault_push_pending",
        "credvault_push_latency_seconds",
        "credvault_change_log_lag",
        "credvault_kek_info",
    ):
        assert family in names, family
    assert samples[("credvault_kek_info", (("kek_id", keyring.active_id),))] == 1

    # RPCs: counted by method and status code, and timed
    ok_before, denied_before = handled(samples, "OK"), handled(samples, "UNAUTHENTICATED")
    await admin.GetCurrentUser(ipb.GetCurrentUserRequest())
    anonymous = Client(channel, None)
    await expect_code(anonymous.GetCurrentUser(ipb.GetCurrentUserRequest()), grpc.StatusCode.UNAUTHENTICATED)
    # a refused call's status reaches the client as the handler unwinds: its count may land a moment later

    async def denial_counted() -> bool:
        nonlocal samples
        samples, _ = await scrape(port)
        return handled(samples, "UNAUTHENTICATED") > denied_before

    await eventually(denial_counted)
    assert handled(samples, "OK") == ok_before + 1
    assert handled(samples, "UNAUTHENTICATED") == denied_before + 1
    timed = (("grpc_type", "unary"), *API_METHOD)
    assert samples[("grpc_server_handling_seconds_count", tuple(sorted(timed)))] == ok_before + denied_before + 2

    # a real worker connects: one engine of loc-a on this replica
    await admin.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id="loc-a")))
    await admin.AddEngine(mpb.AddEngineRequest(location_id="loc-a", engine_id="e1"))
    assert ("credvault_engines_connected", (("location", "loc-a"),)) not in samples
    worker, status_port = await start_worker(local_pki, vault.engine_port, "loc-a", "e1")
    try:

        async def connected() -> bool:
            return (await scrape(port))[0].get(("credvault_engines_connected", (("location", "loc-a"),))) == 1

        await eventually(connected)
        before, _ = await scrape(status_port)
        assert before[("configs_held", (("kind", "monitor"),))] == 0
        assert before[("connected", ())] == 1
        latency_before = (await scrape(port))[0][("credvault_push_latency_seconds_count", ())]

        # a change is pushed and ACKed: the worker holds it, the vault observed its push latency
        pair = (await admin.CreateCredential(create_req("pair", up("alice", "pw-metrics-1")))).credential.id
        await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=http_monitor(pair, "loc-a")))

        async def pushed() -> bool:
            vault_samples = (await scrape(port))[0]
            return vault_samples[("credvault_push_latency_seconds_count", ())] > latency_before

        await eventually(pushed)
        after, _ = await scrape(status_port)
        assert after[("configs_held", (("kind", "monitor"),))] == 1
        assert after[("configs_held", (("kind", "credential"),))] == 1
        assert after[("last_applied_revision", ())] > before[("last_applied_revision", ())]
        samples, _ = await scrape(port)
        assert samples[("credvault_push_pending", (("location", "loc-a"),))] == 0
        assert samples[("credvault_change_log_lag", ())] == 0
        stream_method = (("grpc_method", "Stream"), ("grpc_service", "credvault.v1.EngineConfigService"))
        assert (
            samples[("grpc_server_started_total", tuple(sorted((*stream_method, ("grpc_type", "bidi_stream")))))] == 1
        )

        # the follower stops processing: the change-log lag shows it
        assert vault.follower is not None
        await vault.follower.stop()
        await admin.OverwriteCredential(cpb.OverwriteCredentialRequest(id=pair, contents=up("alice", "pw-metrics-2")))
        samples, _ = await scrape(port)
        assert samples[("credvault_change_log_lag", ())] == 1
        for text in (repr(samples), repr(after)):
            assert "pw-metrics" not in text
    finally:
        assert await worker.stop() == 0
    # the worker logged JSON lines only, at DEBUG too, and never a secret
    records = [json.loads(line) for line in worker.lines]
    assert {"DEBUG", "INFO"} <= {r["level"] for r in records}
    assert any(r["message"].startswith("status listening on") for r in records)
    assert not any("pw-metrics" in line for line in worker.lines)


async def test_health_port_is_plaintext_and_serves_only_health(vault: RunningVault) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{vault.health_port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "credvault.v1.CredentialsService", "credvault.v1.IdentityService"):
            resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        await expect_code(
            cgrpc.CredentialsServiceStub(ch).ListCredentials(cpb.ListCredentialsRequest()),
            grpc.StatusCode.UNIMPLEMENTED,
        )
        # the same status as the API port: one servicer behind both
        await vault.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        resp = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
