"""`credvault`: run the vault (serve, dev), operate it (migrate, keys, admin, pki, locations, engines, audit), and
use it (credentials, monitors, tokens, whoami)."""

from __future__ import annotations

import argparse
import importlib.metadata
import pathlib

from vault_service.cli import admin, audit, credentials, dev, keys, locations, monitors, pki, tokens
from vault_service.cli.admin import server_flags
from vault_service.cli.session import add_group, subcommands

_DEV_HELP = "run everything locally on the embedded PostgreSQL"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="credvault", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = subcommands(parser, "command")

    p = sub.add_parser("serve", help="run the vault API")
    server_flags(p)
    p.add_argument("--listen", help="host:port (env CREDVAULT_LISTEN, default 127.0.0.1:50051)")
    p.add_argument("--tls-cert", type=pathlib.Path, help="server certificate chain PEM (env CREDVAULT_TLS_CERT_FILE)")
    p.add_argument("--tls-key", type=pathlib.Path, help="server private key PEM (env CREDVAULT_TLS_KEY_FILE)")
    p.add_argument("--allow-plaintext", action="store_true", help="serve without TLS (local use only)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-format", choices=["text", "json"], help="env CREDVAULT_LOG_FORMAT (default text)")
    p.set_defaults(func=admin.cmd_serve)

    p = sub.add_parser(
        "dev", help=_DEV_HELP, description=dev.DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data-dir", type=pathlib.Path, help="default ./.credvault-dev (one `credvault dev` at a time)")
    p.add_argument("--listen", default="127.0.0.1:50051", help="the API, plaintext (default 127.0.0.1:50051)")
    p.add_argument("--engine-listen", default="127.0.0.1:50052", help="the engine port (mutual TLS)")
    p.add_argument("--worker-status-listen", default="127.0.0.1:9464", help="the dev worker's status endpoint")
    p.add_argument(
        "--demo-site-listen", default="127.0.0.1:8089", help="the demo login site for browser monitors (loopback)"
    )
    p.set_defaults(func=dev.cmd_dev)

    p = sub.add_parser("migrate", help="apply database migrations")
    server_flags(p)
    p.set_defaults(func=admin.cmd_migrate)

    keys.register(sub)

    a = add_group(sub, "admin", "administration on the database itself: bootstrap, grant-scope")
    p = a.add_parser("bootstrap", help="create the first administrator of an empty vault and print its token")
    server_flags(p)
    p.add_argument("--username", default="admin")
    p.set_defaults(func=admin.cmd_admin_bootstrap)
    p = a.add_parser(
        "grant-scope",
        help="add a scope (one a later version introduced) to the live tokens of a user, or to one token; audited",
    )
    server_flags(p)
    p.add_argument("scope", help="for example auditLogs.read")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="every live token of this user")
    who.add_argument("--token", help="this token (its id, cv0c01.<public id>)")
    p.set_defaults(func=admin.cmd_admin_grant_scope)

    credentials.register(sub)
    tokens.register(sub)
    locations.register(sub)
    monitors.register(sub)
    pki.register(sub)
    audit.register(sub)
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("credvault")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"
