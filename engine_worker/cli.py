"""`engine-worker`: run an engine: hold the vault's monitor configs in memory, execute the HTTP monitors at their
frequencies and report the results to the vault, and serve a local status endpoint.

Settings come from flags or ENGINE_* environment variables (flags win). SIGTERM or SIGINT closes the stream, wipes
every held secret and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import pathlib
import re
import signal
import sys
from typing import Any

import pydantic
from prometheus_client import CollectorRegistry, disable_created_metrics
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from credvault import runtime
from credvault.logs import configure_logging
from credvault.memory_guard import MemoryLockUnavailable, protect_memory
from engine_worker.config_store import ConfigStore
from engine_worker.execution_metrics import ExecutionMetrics
from engine_worker.http_execution import HttpExecutor
from engine_worker.result_reporter import ResultReporter
from engine_worker.scheduler import Scheduler
from engine_worker.status import DEFAULT_STATUS_LISTEN, StatusServer, parse_listen
from engine_worker.stream import EngineStream, StreamSettings
from engine_worker.target_tls import TargetTls
from engine_worker.tls import check_tls_files, mtls_channel_factory

__all__ = ["Settings", "load_settings", "main", "parse_duration", "serve"]

log = logging.getLogger("engine_worker")

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value: str | float) -> float:
    """Seconds from a number of seconds or a duration like ``4h``, ``30m``, ``1h30m``, ``0.5s``, ``250ms``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    if not _DURATION.fullmatch(text):
        raise ValueError(f"{value!r} is not a duration: seconds, or for example 4h, 30m, 1h30m, 0.5s, 250ms")
    return sum(float(number) * _UNITS[unit] for number, unit in _DURATION_PART.findall(text))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ENGINE_", extra="forbid", frozen=True)

    vault: str = Field(description="host:port of the vault's engine port")
    cert: pathlib.Path = Field(description="PEM certificate chain of this engine (leaf first)")
    key: pathlib.Path = Field(description="path of the PEM private key file of this engine's certificate")
    ca: pathlib.Path = Field(description="PEM certificate of the CA that issued the vault's server certificate")
    max_disconnected: float = Field(4 * 3600.0, gt=0, description="flush everything after this long without contact")
    heartbeat_interval: float = Field(10.0, gt=0, le=3600)
    status_listen: str = Field(DEFAULT_STATUS_LISTEN, description="host:port of the status endpoint (port 0: any)")
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    target_ca: pathlib.Path | None = Field(
        None, description="PEM CA certificates trusted for monitored HTTPS targets, besides the system's"
    )
    max_concurrent_executions: int = Field(100, ge=1, le=10_000)
    interval_scale: float = Field(
        1.0, gt=0, le=1, description="multiplies every monitor's interval (1 in production; smaller for demos, tests)"
    )
    log_format: str = Field("text", pattern=r"^(text|json)$", description="text, or json: one JSON object per line")
    event_loop: str = Field("uvloop", pattern=r"^(uvloop|asyncio)$", description="uvloop, or asyncio's own loop")
    require_mlock: bool = Field(False, description="refuse to start if the memory cannot be locked (CAP_IPC_LOCK)")

    @field_validator("max_disconnected", "heartbeat_interval", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("vault")
    @classmethod
    def _vault(cls, value: str) -> str:
        if parse_listen(value)[1] == 0:
            raise ValueError("the vault's port must not be 0")
        return value

    @field_validator("target_ca")
    @classmethod
    def _target_ca(cls, value: pathlib.Path | None) -> pathlib.Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a readable file")
        return value

    @field_validator("status_listen")
    @classmethod
    def _status_listen(cls, value: str) -> str:
        parse_listen(value)
        return value


def load_settings(**flags: Any) -> Settings:
    """Settings from the environment with the (non-None) flags on top; a ValueError lists what to fix."""
    try:
        return Settings(**{k: v for k, v in flags.items() if v is not None})
    except pydantic.ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "settings"
            where = f" (--{name.replace('_', '-')} or ENGINE_{name.upper()})" if err["loc"] else ""
            lines.append(f"  {name}{where}: {err['msg']}")
        raise ValueError("invalid configuration:\n" + "\n".join(lines)) from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="engine-worker",
        description="Run a synthetic engine: receive monitor configs from the vault over mutual TLS, in memory only.",
    )
    p.add_argument("--vault", help="host:port of the vault's engine port (ENGINE_VAULT)")
    p.add_argument("--cert", help="this engine's PEM certificate chain (ENGINE_CERT)")
    p.add_argument("--key", help="this engine's PEM private key (ENGINE_KEY)")
    p.add_argument("--ca", help="PEM CA certificate that issued the vault's certificate (ENGINE_CA)")
    p.add_argument("--max-disconnected", help="flush all configs after this long without the vault (default 4h)")
    p.add_argument("--heartbeat-interval", help="seconds between heartbeats (default 10)")
    p.add_argument("--status-listen", help=f"host:port of the status endpoint (default {DEFAULT_STATUS_LISTEN})")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--target-ca", help="PEM CA certificates to trust for monitored HTTPS targets (ENGINE_TARGET_CA)")
    p.add_argument("--max-concurrent-executions", help="monitor executions at a time (default 100)")
    p.add_argument("--interval-scale", help="multiply every monitor interval by this, at most 1 (demos and tests)")
    p.add_argument("--event-loop", choices=["uvloop", "asyncio"], help="default uvloop (ENGINE_EVENT_LOOP)")
    p.add_argument("--log-format", choices=["text", "json"], help="text (default) or json lines (ENGINE_LOG_FORMAT)")
    p.add_argument(
        "--require-mlock",
        action="store_true",
        default=None,
        help="refuse to start unless the memory can be locked: needs CAP_IPC_LOCK (ENGINE_REQUIRE_MLOCK)",
    )
    return p


async def serve(settings: Settings) -> None:
    """Runs until SIGTERM or SIGINT (or cancellation); always wipes the held secrets on the way out."""
    identity = check_tls_files(settings.cert, settings.key, settings.ca)
    log.info("engine %s", identity.spiffe_id)
    store = ConfigStore(location_id=identity.location_id)
    disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: there are many per monitor
    registry = CollectorRegistry(auto_describe=True)
    metrics = ExecutionMetrics(registry)
    results = ResultReporter(on_drop=metrics.results_dropped.inc)
    stream = EngineStream(
        store,
        identity,
        mtls_channel_factory(settings.vault, settings.cert, settings.key, settings.ca, identity),
        StreamSettings(heartbeat_interval=settings.heartbeat_interval, max_disconnected=settings.max_disconnected),
        results=results,
    )
    scheduler = Scheduler(
        store,
        HttpExecutor(store, TargetTls(settings.target_ca)).execute,
        results.add,
        metrics=metrics,
        interval_scale=settings.interval_scale,
        max_concurrent=settings.max_concurrent_executions,
    )
    status = StatusServer(store, identity, lambda: stream.state, settings.status_listen, registry)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await status.start()
        scheduler.start()
        runtime.tune_gc_for_serving()
        runner = asyncio.create_task(stream.run(), name="engine-stream")
        stopper = asyncio.create_task(stop.wait(), name="engine-stop")
        try:
            await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (runner, stopper):
                task.cancel()
            await asyncio.gather(runner, stopper, return_exceptions=True)
        if runner.done() and not runner.cancelled() and runner.exception() is not None:
            raise RuntimeError("the stream loop stopped unexpectedly") from runner.exception()
        log.info("stopping")
    finally:
        await scheduler.stop()
        count = store.flush()
        log.info("wiped %d held monitors and credentials", count)
        await status.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def main(argv: list[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    try:
        settings = load_settings(
            vault=ns.vault,
            cert=ns.cert,
            key=ns.key,
            ca=ns.ca,
            max_disconnected=ns.max_disconnected,
            heartbeat_interval=ns.heartbeat_interval,
            status_listen=ns.status_listen,
            log_level=ns.log_level,
            target_ca=ns.target_ca,
            max_concurrent_executions=ns.max_concurrent_executions,
            interval_scale=ns.interval_scale,
            log_format=ns.log_format,
            event_loop=ns.event_loop,
            require_mlock=ns.require_mlock,
        )
        check_tls_files(settings.cert, settings.key, settings.ca)
    except ValueError as exc:
        print(f"engine-worker: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:  # before the stream brings any credential
        protect_memory(require_lock=settings.require_mlock, setting="--require-mlock (ENGINE_REQUIRE_MLOCK)")
    except MemoryLockUnavailable as exc:
        print(f"engine-worker: error: {exc}", file=sys.stderr)
        return 2
    try:
        runtime.run(serve(settings), settings.event_loop)
    except OSError as exc:  # for example the status port is taken
        log.error("cannot run: %s", exc)
        return 1
    with contextlib.suppress(Exception):
        logging.shutdown()
    return 0
