"""`credvault dev`: the whole system on one machine, with the development PKI it needs."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import logging
import os
import pathlib
import shutil
import signal
import sys

from cryptography.exceptions import InvalidSignature

from credvault.identity import EngineIdentity
from vault_service import pki
from vault_service.bootstrap import bootstrap_admin
from vault_service.cli.admin import setup_logging
from vault_service.cli.dev_demo_site import DEMO_PASSWORD, DEMO_USER, DemoSite
from vault_service.cli.dev_lock import lock_data_dir
from vault_service.cli.grpc_env import child_environment
from vault_service.config import load_settings
from vault_service.crypto import new_keyring, write_keyring_file


def cmd_dev(ns: argparse.Namespace) -> None:
    """Everything on one machine: embedded PostgreSQL, a dev KEK, a dev PKI, an admin, the API and the engine port
    on loopback, one engine worker for location ``local``, and a demo login site for browser monitors."""
    from vault_service import embedded_pg
    from vault_service.server import start_vault

    data_dir: pathlib.Path = (ns.data_dir or pathlib.Path.cwd() / ".credvault-dev").resolve()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock_data_dir(data_dir)  # held until this process ends
    keyring_path = data_dir / "keyring.json"
    if not keyring_path.exists():
        write_keyring_file(keyring_path, new_keyring())
    dev_pki = ensure_dev_pki(data_dir / "pki")
    engine = EngineIdentity(dev_pki.trust_domain, DEV_LOCATION, DEV_ENGINE)
    engine_name = pki.engine_file_name(engine)
    if not (dev_pki.directory / f"{engine_name}.pem").exists():
        engine_ca = pki.load_ca(dev_pki.directory)
        pki.write_files(dev_pki.directory, engine_name, pki.issue_engine_certificate(engine_ca, engine, days=365))
    embedded_pg.adopt_orphans()
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
    setup_logging(settings)
    logging.getLogger("credvault").info(
        "dev mode: this process does not lock its memory or turn core dumps off (credvault serve does)"
    )
    token_path = data_dir / "admin-token"
    site = DemoSite(ns.demo_site_listen)  # a bad address stops the start, before anything runs

    async def run() -> None:
        vault = await start_vault(settings)
        worker: asyncio.subprocess.Process | None = None
        try:
            await site.start()
            async with vault.store.autocommit() as tx:
                empty = await tx.count_users() == 0
            if empty:
                issued = await bootstrap_admin(vault.store, "admin")
                fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(issued.token + "\n")
            # Straight to storage, not MonitorService.create_location/add_engine: this seed has no principal to
            # authorise or audit, and location and engine go in together, in one transaction.
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
                env=child_environment(),
            )
            addr = f"127.0.0.1:{vault.port}"
            banner = _DEV_BANNER.format(
                addr=addr,
                engine_port=vault.engine_port,
                data_dir=data_dir,
                token_path=token_path,
                status=ns.worker_status_listen,
                cli=_cli_command(),
                site=site.url,
                demo_user=DEMO_USER,
                demo_password=DEMO_PASSWORD,
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
            await site.stop()
            await vault.stop(settings.shutdown_grace_seconds)

    try:
        asyncio.run(run())
    finally:
        embedded_pg.stop_and_reap(pg)


def _cli_command() -> str:
    """How to call `credvault` from another shell: bare if it is on PATH, else its full path (a fresh venv's
    bin directory is not on PATH until ``source .venv/bin/activate``)."""
    beside = pathlib.Path(sys.executable).parent / "credvault"
    on_path = shutil.which("credvault")
    if on_path is not None and (not beside.exists() or pathlib.Path(on_path).resolve() == beside.resolve()):
        return "credvault"
    return str(beside) if beside.exists() else "credvault"


DESCRIPTION = """Runs everything on this machine, for development: an embedded PostgreSQL, a dev KEK and a dev PKI
(keys mode 0600) and an admin whose token is written to <data dir>/admin-token, all in the data directory; the
API on --listen (plaintext, loopback), the engine port on --engine-listen (mutual TLS) and one engine worker for
location 'local', and a demo login site for browser monitors on --demo-site-listen (loopback). One credvault dev per
data directory: a second one is refused. Stop with Ctrl-C."""

DEV_LOCATION = "local"
DEV_ENGINE = "local-1"

_DEV_BANNER = """
credvault dev is running (development only: plaintext API on loopback).
  API:          {addr}
  engine port:  127.0.0.1:{engine_port} (mutual TLS; one engine worker runs for location 'local')
  worker status: http://{status}/introspection (ids, versions and revisions it holds, never values)
  data dir:     {data_dir}  (embedded PostgreSQL, dev KEK keyring.json, dev PKI; keys mode 0600)
  admin token:  {token_path}  (created on first start; shown nowhere else)
  demo site:    {site}  (a login form for browser monitors: {demo_user} / {demo_password})

Try, in another shell (README.md walks through it):
  export CREDVAULT_SERVER={addr} CREDVAULT_INSECURE=1 CREDVAULT_TOKEN=$(cat {token_path})
  printf 's3cret' | {cli} credentials create --name demo --type username-password --username alice \\
      --password-file -
  {cli} credentials list
  {cli} monitors create-http --name status --url http://{status}/metrics --location local --frequency 1
  {cli} monitors results SYNTHETIC_TEST-...   # the worker's executions (within a minute)
  grpcurl -plaintext -H "authorization: Api-Token $CREDVAULT_TOKEN" {addr} list
Stop with Ctrl-C.
"""


# --- development PKI -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DevPki:
    """Paths of a development PKI made by :func:`ensure_dev_pki`."""

    directory: pathlib.Path
    trust_domain: str
    engine_ca: pathlib.Path  # engine-ca.pem: what the vault's engine port trusts
    server_ca: pathlib.Path  # server-ca.pem: what engines trust for the vault
    server_cert: pathlib.Path  # server.pem (chain)
    server_key: pathlib.Path  # server.key


def ensure_dev_pki(
    directory: pathlib.Path | str,
    *,
    trust_domain: str = pki.TRUST_DOMAIN_DEFAULT,
    hostnames: tuple[str, ...] = ("localhost", "127.0.0.1", "::1"),
) -> DevPki:
    """For ``credvault dev``: creates whatever of both CAs and the server certificate is missing, keeps the rest."""
    directory = pathlib.Path(directory)
    pki.validate_trust_domain(trust_domain)
    cas: dict[str, pki.IssuedCertificate] = {}
    for name, label in ((pki.ENGINE_CA, "engine"), (pki.SERVER_CA, "server")):
        pem, key = pki.file_paths(directory, name)
        if pem.exists() and key.exists():
            cas[name] = pki.load_ca(directory, name)
        else:
            cas[name] = pki.create_ca(f"credvault {label} CA (development)", trust_domain=trust_domain)
            pki.write_files(directory, name, cas[name])
    recorded = pki.ca_trust_domain(cas[pki.ENGINE_CA])
    if recorded is not None and recorded != trust_domain:
        raise ValueError(f"{directory} holds an engine CA for trust domain {recorded!r}, not {trust_domain!r}")
    server_pem, server_key = pki.file_paths(directory, pki.SERVER)
    if not _usable_server_certificate(directory, cas[pki.SERVER_CA]):
        pki.write_files(directory, pki.SERVER, pki.issue_server_certificate(cas[pki.SERVER_CA], list(hostnames)))
    engine_ca_pem, _ = pki.file_paths(directory, pki.ENGINE_CA)
    server_ca_pem, _ = pki.file_paths(directory, pki.SERVER_CA)
    return DevPki(directory, trust_domain, engine_ca_pem, server_ca_pem, server_pem, server_key)


def _usable_server_certificate(directory: pathlib.Path, server_ca: pki.IssuedCertificate) -> bool:
    """Whether ``server.pem``/``server.key`` exist, belong together, come from ``server_ca`` and last another day."""
    try:
        cert = pki.read_files(directory, pki.SERVER).certificate
        cert.verify_directly_issued_by(server_ca.certificate)
    except (OSError, ValueError, TypeError, InvalidSignature):
        return False
    return cert.not_valid_after_utc > datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
