"""`credvault`: run the vault (serve, dev), operate it (migrate, keys, admin), and use it (credentials, tokens)."""

from __future__ import annotations

import argparse
import pathlib
import sys

from vault_service.cli import admin, audit, credentials, dev, locations, monitors, pki, tokens
from vault_service.errors import ConfigurationError, Unavailable, VaultError


def _server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database-url", help="PostgreSQL URL (env CREDVAULT_DATABASE_URL)")
    p.add_argument("--keyring-file", type=pathlib.Path, help="KEK keyring file (env CREDVAULT_KEYRING_FILE)")


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
    p.set_defaults(func=admin.cmd_serve)

    p = sub.add_parser("dev", help="run everything locally on the embedded PostgreSQL")
    p.add_argument("--data-dir", type=pathlib.Path, help="default ./.credvault-dev")
    p.add_argument("--listen", default="127.0.0.1:50051")
    p.add_argument("--engine-listen", default="127.0.0.1:50052", help="the engine port (mutual TLS)")
    p.add_argument("--worker-status-listen", default="127.0.0.1:9464", help="the dev worker's status endpoint")
    p.set_defaults(func=dev.cmd_dev)

    p = sub.add_parser("migrate", help="apply database migrations")
    _server_flags(p)
    p.set_defaults(func=admin.cmd_migrate)

    k = sub.add_parser("keys", help="key-encryption keys").add_subparsers(dest="keys_command", required=True)
    p = k.add_parser("rotate", help="add a KEK, make it active, re-wrap every data key (online)")
    _server_flags(p)
    p.add_argument("--output", type=pathlib.Path, help="write the new keyring here (default: in place)")
    p.set_defaults(func=admin.cmd_keys_rotate)
    p = k.add_parser("retire", help="remove a KEK no data key needs any more")
    _server_flags(p)
    p.add_argument("kek_id")
    p.set_defaults(func=admin.cmd_keys_retire)
    p = k.add_parser("status", help="which KEKs wrap how many data keys")
    _server_flags(p)
    p.set_defaults(func=admin.cmd_keys_status)

    a = sub.add_parser("admin", help="administration").add_subparsers(dest="admin_command", required=True)
    p = a.add_parser("bootstrap", help="create the first administrator of an empty vault and print its token")
    _server_flags(p)
    p.add_argument("--username", default="admin")
    p.set_defaults(func=admin.cmd_admin_bootstrap)

    credentials.register(sub)
    tokens.register(sub)
    locations.register(sub)
    monitors.register(sub)
    pki.register(sub)
    audit.register(sub)
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
