"""`engine-worker`: run an engine: hold the vault's monitor configs in memory, execute the HTTP and browser monitors at
their frequencies and report the results to the vault, and serve a local status endpoint.

Settings come from flags or ENGINE_* environment variables (flags win). SIGTERM or SIGINT closes the stream, wipes
every held secret and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from credvault import runtime
from credvault.logs import configure_logging
from credvault.memory_guard import MemoryLockUnavailable, protect_memory
from engine_worker.settings import DEFAULT_STATUS_LISTEN, Settings, load_settings
from engine_worker.tls import check_tls_files
from engine_worker.worker import EngineWorker

__all__ = ["main", "serve"]

log = logging.getLogger("engine_worker")


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
    p.add_argument(
        "--certificate-check-interval",
        help="how often to look for a renewed certificate and reconnect with it (default 30s)",
    )
    p.add_argument("--status-listen", help=f"host:port of the status endpoint (default {DEFAULT_STATUS_LISTEN})")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--target-ca", help="PEM CA certificates to trust for monitored HTTPS targets (ENGINE_TARGET_CA)")
    p.add_argument("--max-concurrent-executions", help="monitor executions at a time (default 100)")
    p.add_argument(
        "--chromium-path",
        help="Chromium for browser monitors: a name on PATH or a path (default chromium; ENGINE_CHROMIUM_PATH)",
    )
    p.add_argument(
        "--max-concurrent-browser-executions", help="browser monitor executions at a time (default: the CPU count)"
    )
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
    """Runs the worker until SIGTERM or SIGINT (or cancellation); it always wipes the held secrets on the way out."""
    async with EngineWorker(settings) as worker:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.shutdown)
        try:
            await worker.run()
        finally:
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
            certificate_check_interval=ns.certificate_check_interval,
            status_listen=ns.status_listen,
            log_level=ns.log_level,
            target_ca=ns.target_ca,
            max_concurrent_executions=ns.max_concurrent_executions,
            chromium_path=ns.chromium_path,
            max_concurrent_browser_executions=ns.max_concurrent_browser_executions,
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
