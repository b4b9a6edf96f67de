"""`credvault`: run the vault (serve, dev), operate it (migrate, keys, admin), and use it (credentials, tokens)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import pathlib
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from credvault.log_redaction import register_secret
from credvault.logs import configure_logging
from credvault.memory_guard import MemoryLockUnavailable, protect_memory
from vault_service import audit_cli, client_cli, keys, monitors_cli, pki_cli
from vault_service.bootstrap import bootstrap_admin, migrate_and_bootstrap
from vault_service.config import Settings, load_settings
from vault_service.crypto import load_keyring_file, new_keyring, write_keyring_file
from vault_service.errors import ConfigurationError, Unavailable, VaultError
from vault_service.storage.migrate import migrate
from vault_service.storage.store import Store

log = logging.getLogger("credvault")


def _setup_logging(settings: Settings) -> None:
    configure_logging(settings.log_level, settings.log_format)
    if settings.database_url is not None:  # never in a log line, whatever prints the URL
        register_secret(urlsplit(settings.database_url.get_secret_value()).password)


def _server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database-url", help="PostgreSQL URL (env CREDVAULT_DATABASE_URL)")
    p.add_argument("--keyring-file", type=pathlib.Path, help="KEK keyring file (env CREDVAULT_KEYRING_FILE)")


def _settings(ns: argparse.Namespace, **extra: Any) -> Settings:
    flags = {
        "database_url": getattr(ns, "database_url", None),
        "keyring_file": getattr(ns, "keyring_file", None),
        "listen": getattr(ns, "listen", None),
        "tls_cert_file": getattr(ns, "tls_cert", None),
        "tls_key_file": getattr(ns, "tls_key", None),
        "allow_plaintext": True if getattr(ns, "allow_plaintext", False) else None,
        "log_level": getattr(ns, "log_level", None),
        "log_format": getattr(ns, "log_format", None),
        **extra,
    }
    return load_settings(**flags)


async def _with_store(settings: Settings, work: Callable[[Store], Awaitable[None]]) -> None:
    store = await Store.connect(settings.require_database_url(), min_size=1, max_size=4)
    try:
        await work(store)
    finally:
        await store.close()


# --- commands ----------------------------------------------------------------------------------------------------


def cmd_serve(ns: argparse.Namespace) -> None:
    from credvault import runtime
    from vault_service.server import serve
    from vault_service.tls13 import restart_unless_tls13_only

    restart_unless_tls13_only()  # first: exec resets what protect_memory sets
    settings = _settings(ns)
    _setup_logging(settings)
    try:
        protect_memory(require_lock=settings.require_mlock, setting="CREDVAULT_REQUIRE_MLOCK")
    except MemoryLockUnavailable as exc:
        raise ConfigurationError(str(exc)) from None
    runtime.run(serve(settings), settings.event_loop)


def cmd_migrate(ns: argparse.Namespace) -> None:
    settings = _settings(ns, allow_plaintext=True)
    _setup_logging(settings)

    async def work(store: Store) -> None:
        async with store.pool.acquire() as conn:
            applied = await migrate(conn)
        print(f"applied migrations: {applied or 'none (up to date)'}")

    asyncio.run(_with_store(settings, work))


def cmd_keys_rotate(ns: argparse.Namespace) -> None:
    settings = _settings(ns, allow_plaintext=True)
    if settings.keyring_file is None:
        raise ConfigurationError("key rotation writes a keyring file: set CREDVAULT_KEYRING_FILE (or --keyring-file)")
    old = load_keyring_file(settings.keyring_file)
    new = old.with_new_active_key()
    out: pathlib.Path = ns.output or settings.keyring_file

    async def work(store: Store) -> None:
        await keys.verify_keyring(store, old)
        write_keyring_file(out, new)  # first the key is safe on disk, then data keys move to it
        count = await keys.rewrap_all(store, new)
        print(f"active KEK is now {new.active_id!r}; re-wrapped {count} data keys; keyring written to {out}")
        print(f"once every replica runs with this keyring: credvault keys retire {old.active_id}")

    asyncio.run(_with_store(settings, work))


def cmd_keys_retire(ns: argparse.Namespace) -> None:
    settings = _settings(ns, allow_plaintext=True)
    if settings.keyring_file is None:
        raise ConfigurationError("retiring a key rewrites the keyring file: set CREDVAULT_KEYRING_FILE")
    keyring = load_keyring_file(settings.keyring_file)

    async def work(store: Store) -> None:
        smaller = await keys.retire(store, keyring, ns.kek_id)
        write_keyring_file(settings.keyring_file, smaller)  # type: ignore[arg-type]
        print(f"retired KEK {ns.kek_id!r}; keyring now holds {smaller.ids}")

    asyncio.run(_with_store(settings, work))


def cmd_keys_status(ns: argparse.Namespace) -> None:
    settings = _settings(ns, allow_plaintext=True)
    keyring = settings.load_keyring()

    async def work(store: Store) -> None:
        await keys.verify_keyring(store, keyring)
        async with store.read() as tx:
            usage = await tx.kek_usage()
        print(f"active KEK: {keyring.active_id}")
        for kek_id in sorted(set(keyring.ids) | set(usage)):
            print(f"  {kek_id}: {usage.get(kek_id, 0)} data keys{'' if keyring.has(kek_id) else ' (MISSING)'}")

    asyncio.run(_with_store(settings, work))


def cmd_admin_bootstrap(ns: argparse.Namespace) -> None:
    settings = _settings(ns, allow_plaintext=True)

    issued = asyncio.run(migrate_and_bootstrap(settings.require_database_url(), ns.username))
    print(f"created administrator {ns.username!r}. Its API token (shown once, store it now):", file=sys.stderr)
    print(issued.token)


def cmd_dev(ns: argparse.Namespace) -> None:
    """Everything on one machine: embedded PostgreSQL, a dev KEK, a dev PKI, an admin, the API and the engine port
    on loopback, and one engine worker for location ``local``."""
    from vault_service import embedded_pg, pki
    from vault_service.server import start_vault

    data_dir: pathlib.Path = (ns.data_dir or pathlib.Path.cwd() / ".credvault-dev").resolve()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    keyring_path = data_dir / "keyring.json"
    if not keyring_path.exists():
        write_keyring_file(keyring_path, new_keyring())
    dev_pki = pki.ensure_dev_pki(data_dir / "pki")
    engine = pki.EngineIdentity(dev_pki.trust_domain, DEV_LOCATION, DEV_ENGINE)
    engine_name = pki.engine_file_name(engine)
    if not (dev_pki.directory / f"{engine_name}.pem").exists():
        engine_ca = pki.load_ca(dev_pki.directory)
        pki.write_files(dev_pki.directory, engine_name, pki.issue_engine_certificate(engine_ca, engine, days=365))
    url, pg = embedded_pg.start(data_dir / "pg")
    settings = load_settings(
        database_url=url,
        keyring_file=keyring_path,
        listen=ns.listen,
        allow_plaintext=True,
        data_dir=data_dir,
        engine_listen=ns.engine_listen,
        engine_tls_cert_file=dev_pki.server_cert,
        engine_tls_key_file=dev_pki.server_key,
        engine_ca_file=dev_pki.engine_ca,
        trust_domain=dev_pki.trust_domain,
    )
    _setup_logging(settings)
    log.info("dev mode: this process does not lock its memory or turn core dumps off (credvault serve does)")
    token_path = data_dir / "admin-token"

    async def run() -> None:
        vault = await start_vault(settings)
        worker: asyncio.subprocess.Process | None = None
        try:
            async with vault.store.read() as tx:
                empty = await tx.count_users() == 0
            if empty:
                issued = await bootstrap_admin(vault.store, "admin")
                fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(issued.token + "\n")
            async with vault.store.transaction() as tx:
                if not await tx.existing_locations([DEV_LOCATION]):
                    await tx.insert_location(DEV_LOCATION, "local development")
                    await tx.insert_engine(DEV_LOCATION, DEV_ENGINE)
            worker = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "engine_worker",
                "--vault",
                f"localhost:{vault.engine_port}",
                "--cert",
                str(dev_pki.directory / f"{engine_name}.pem"),
                "--key",
                str(dev_pki.directory / f"{engine_name}.key"),
                "--ca",
                str(dev_pki.server_ca),
                "--status-listen",
                ns.worker_status_listen,
                stdin=asyncio.subprocess.DEVNULL,
            )
            addr = f"127.0.0.1:{vault.port}"
            banner = _DEV_BANNER.format(
                addr=addr,
                engine_port=vault.engine_port,
                data_dir=data_dir,
                token_path=token_path,
                status=ns.worker_status_listen,
            )
            print(banner, file=sys.stderr, flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        finally:
            if worker is not None and worker.returncode is None:
                worker.terminate()
                await worker.wait()
            await vault.stop(settings.shutdown_grace_seconds)

    try:
        asyncio.run(run())
    finally:
        pg.cleanup()


DEV_LOCATION = "local"
DEV_ENGINE = "local-1"

_DEV_BANNER = """
credvault dev is running (development only: plaintext API on loopback).
  API:          {addr}
  engine port:  127.0.0.1:{engine_port} (mutual TLS; one engine worker runs for location 'local')
  worker status: http://{status}/introspection (monitor ids and versions it holds, never values)
  data dir:     {data_dir}  (embedded PostgreSQL, dev KEK keyring.json, dev PKI; keys mode 0600)
  admin token:  {token_path}  (created on first start; shown nowhere else)

Try, in another shell (README.md walks through it):
  export CREDVAULT_SERVER={addr} CREDVAULT_INSECURE=1 CREDVAULT_TOKEN=$(cat {token_path})
  printf 's3cret' | credvault credentials create --name demo --type username-password --username alice \\
      --password-file -
  credvault credentials list
  credvault monitors create-http --name status --url http://{status}/metrics --location local --frequency 1
  credvault monitors results SYNTHETIC_TEST-...   # the worker's executions (within a minute)
  grpcurl -plaintext -H "authorization: Api-Token $CREDVAULT_TOKEN" {addr} list
Stop with Ctrl-C.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="credvault", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the vault API")
    _server_flags(p)
    p.add_argument("--listen", help="host:port (env CREDVAULT_LISTEN, default 127.0.0.1:50051)")
    p.add_argument("--tls-cert", type=pathlib.Path, help="server certificate chain PEM (env CREDVAULT_TLS_CERT_FILE)")
    p.add_argument("--tls-key", type=pathlib.Path, help="server private key PEM (env CREDVAULT_TLS_KEY_FILE)")
    p.add_argument("--allow-plaintext", action="store_true", help="serve without TLS (local use only)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-format", choices=["text", "json"], help="env CREDVAULT_LOG_FORMAT (default text)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("dev", help="run everything locally on the embedded PostgreSQL")
    p.add_argument("--data-dir", type=pathlib.Path, help="default ./.credvault-dev")
    p.add_argument("--listen", default="127.0.0.1:50051")
    p.add_argument("--engine-listen", default="127.0.0.1:50052", help="the engine port (mutual TLS)")
    p.add_argument("--worker-status-listen", default="127.0.0.1:9464", help="the dev worker's status endpoint")
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("migrate", help="apply database migrations")
    _server_flags(p)
    p.set_defaults(func=cmd_migrate)

    k = sub.add_parser("keys", help="key-encryption keys").add_subparsers(dest="keys_command", required=True)
    p = k.add_parser("rotate", help="add a KEK, make it active, re-wrap every data key (online)")
    _server_flags(p)
    p.add_argument("--output", type=pathlib.Path, help="write the new keyring here (default: in place)")
    p.set_defaults(func=cmd_keys_rotate)
    p = k.add_parser("retire", help="remove a KEK no data key needs any more")
    _server_flags(p)
    p.add_argument("kek_id")
    p.set_defaults(func=cmd_keys_retire)
    p = k.add_parser("status", help="which KEKs wrap how many data keys")
    _server_flags(p)
    p.set_defaults(func=cmd_keys_status)

    a = sub.add_parser("admin", help="administration").add_subparsers(dest="admin_command", required=True)
    p = a.add_parser("bootstrap", help="create the first administrator of an empty vault and print its token")
    _server_flags(p)
    p.add_argument("--username", default="admin")
    p.set_defaults(func=cmd_admin_bootstrap)

    client_cli.register(sub)
    monitors_cli.register(sub)
    pki_cli.register(sub)
    audit_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    ns = build_parser().parse_args(argv)
    try:
        ns.func(ns)
    except ConfigurationError as exc:
        print(f"credvault: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except (VaultError, Unavailable) as exc:
        print(f"credvault: {exc.message}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
