"""`credvault pki ...`: create the CAs and certificates for mutual TLS between the vault and its engine workers.

Files are written into one directory as ``<name>.pem`` (certificate chain) and ``<name>.key`` (private key, mode
0600, written atomically). Commands print the paths they wrote, never key material. Keep the directory out of version
control: private keys are never committed.
"""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Callable
from typing import Any

from credvault.identity import EngineIdentity, identity_from_certificate
from vault_service import pki
from vault_service.cli.session import add_group
from vault_service.errors import ConfigurationError, InvalidArgument

_INIT_HELP = """\
Creates two certificate authorities in --dir:

  engine-ca.pem/.key  signs engine client certificates. The vault's engine port trusts ONLY this CA, so a
                      certificate from it is an engine identity (its SAN URI
                      spiffe://<trust-domain>/location/<location>/engine/<engine>).
  server-ca.pem/.key  signs the vault's server certificate. Engines trust ONLY this CA for the vault.

Why two CAs and not one: the engine port must accept exactly the certificates that name an engine. With one CA,
the vault's server certificate (present on every vault host) would chain to the engine port's trust anchor too, and
keeping it out would rest on every TLS stack enforcing extended key usages. With two, "is an engine" and "is the
vault" are signed by different keys: the engine CA key, which mints engine identities, is used only when an engine
is enrolled and need not be on the vault hosts at all, and each CA can be rotated on its own. The cost is one more
file: the vault trusts engine-ca.pem, engines trust server-ca.pem.

The trust domain is recorded in the engine CA certificate (SAN URI spiffe://<trust-domain>), and issue-engine
uses it. Existing files are never overwritten without --force; replacing a CA invalidates everything it signed.
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _existing(directory: pathlib.Path, names: list[str]) -> list[pathlib.Path]:
    return [p for name in names for p in (directory / f"{name}.pem", directory / f"{name}.key") if p.exists()]


def _refuse_overwrite(directory: pathlib.Path, names: list[str], force: bool) -> None:
    existing = _existing(directory, names)
    if existing and not force:
        listed = ", ".join(str(p) for p in existing)
        raise ConfigurationError(f"refusing to overwrite {listed}: pass --force to replace")


def _load_ca(directory: pathlib.Path, name: str) -> pki.IssuedCertificate:
    if not (directory / f"{name}.pem").exists() or not (directory / f"{name}.key").exists():
        raise ConfigurationError(f"{directory / name}.pem/.key not found: run `credvault pki init --dir {directory}`")
    try:
        return pki.load_ca(directory, name)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot load the CA {name} from {directory}: {exc}") from None


def _write(directory: pathlib.Path, name: str, issued: pki.IssuedCertificate, what: str) -> None:
    try:
        pem, key = pki.write_files(directory, name, issued)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot write {name} into {directory}: {exc}") from None
    print(f"wrote {pem} ({what})")
    print(f"wrote {key} (private key, mode 0600: keep it secret, never commit it)")


def _issue(work: Callable[[], pki.IssuedCertificate]) -> pki.IssuedCertificate:
    """Runs an issuing call, turning bad input into a :class:`ConfigurationError`."""
    try:
        issued = work()
    except InvalidArgument as exc:
        raise ConfigurationError(exc.message) from None
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    return issued


# --- commands ----------------------------------------------------------------------------------------------------


def cmd_pki_init(ns: argparse.Namespace) -> None:
    directory: pathlib.Path = ns.dir
    try:
        trust_domain = pki.validate_trust_domain(ns.trust_domain)
    except InvalidArgument as exc:
        raise ConfigurationError(exc.message) from None
    _refuse_overwrite(directory, [pki.ENGINE_CA, pki.SERVER_CA], ns.force)
    engine_ca = _issue(lambda: pki.create_ca("credvault engine CA", days=ns.days, trust_domain=trust_domain))
    server_ca = _issue(lambda: pki.create_ca("credvault server CA", days=ns.days))
    _write(directory, pki.ENGINE_CA, engine_ca, f"engine CA certificate, trust domain {trust_domain}")
    _write(directory, pki.SERVER_CA, server_ca, "server CA certificate")


def cmd_pki_issue_server(ns: argparse.Namespace) -> None:
    directory: pathlib.Path = ns.dir
    _refuse_overwrite(directory, [pki.SERVER], ns.force)
    ca = _load_ca(directory, pki.SERVER_CA)
    issued = _issue(lambda: pki.issue_server_certificate(ca, list(ns.hostname), days=ns.days))
    _write(directory, pki.SERVER, issued, f"server certificate chain for {', '.join(ns.hostname)}")


def cmd_pki_issue_engine(ns: argparse.Namespace) -> None:
    directory: pathlib.Path = ns.dir
    ca = _load_ca(directory, pki.ENGINE_CA)
    recorded = pki.ca_trust_domain(ca)
    trust_domain = ns.trust_domain or recorded or pki.TRUST_DOMAIN_DEFAULT
    if recorded is not None and trust_domain != recorded:
        raise ConfigurationError(f"the engine CA in {directory} is for trust domain {recorded!r}, not {trust_domain!r}")
    try:
        identity = EngineIdentity(trust_domain, ns.location, ns.engine)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    name = pki.engine_file_name(identity)
    _refuse_overwrite(directory, [name], ns.force)
    pem = directory / f"{name}.pem"
    if pem.exists():
        # engine-a-b-c is both (location a, engine b-c) and (location a-b, engine c): never replace another engine.
        try:
            other = identity_from_certificate(pem.read_bytes(), trust_domain)
        except (OSError, ValueError):
            other = None
        if other is not None and other != identity:
            raise ConfigurationError(
                f"{pem} holds the certificate of another engine ({other.spiffe_uri}); move it away by hand"
            )
    issued = _issue(lambda: pki.issue_engine_certificate(ca, identity, days=ns.days))
    not_after = issued.certificate.not_valid_after_utc.isoformat()
    _write(directory, name, issued, f"engine certificate chain for {identity.spiffe_uri}, valid until {not_after}")


# --- registration ------------------------------------------------------------------------------------------------


def register(sub: Any) -> None:
    """Adds `pki init | issue-server | issue-engine` to the `credvault` subcommands."""
    group = add_group(sub, "pki", "create the CAs and certificates for mutual TLS with engines", description=__doc__)

    p = group.add_parser(
        "init",
        help="create the engine CA and the server CA",
        description=_INIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dir", type=pathlib.Path, required=True, help="directory for the PKI files (created 0700)")
    p.add_argument(
        "--trust-domain",
        default=pki.TRUST_DOMAIN_DEFAULT,
        help=f"SPIFFE trust domain of engine identities (default {pki.TRUST_DOMAIN_DEFAULT})",
    )
    p.add_argument("--days", type=_positive_int, default=3650, help="CA validity in days (default 3650)")
    p.add_argument("--force", action="store_true", help="replace existing CAs (invalidates everything they signed)")
    p.set_defaults(func=cmd_pki_init)

    p = group.add_parser(
        "issue-server", help="issue the vault's server certificate from the server CA: server.pem/server.key"
    )
    p.add_argument("--dir", type=pathlib.Path, required=True, help="the directory given to `pki init`")
    p.add_argument(
        "--hostname",
        action="append",
        required=True,
        help="DNS name or IP address engines connect to (repeatable); IP addresses become IP SANs",
    )
    p.add_argument("--days", type=_positive_int, default=397, help="validity in days (default 397)")
    p.add_argument("--force", action="store_true", help="replace an existing server.pem/server.key")
    p.set_defaults(func=cmd_pki_issue_server)

    p = group.add_parser(
        "issue-engine",
        help="issue an engine client certificate from the engine CA: engine-<location>-<engine>.pem/.key",
    )
    p.add_argument("--dir", type=pathlib.Path, required=True, help="the directory given to `pki init`")
    p.add_argument("--location", required=True, help="location id (a-z, 0-9, '-'; at most 63 characters)")
    p.add_argument("--engine", required=True, help="engine id (a-z, 0-9, '-'; at most 63 characters)")
    p.add_argument("--days", type=_positive_int, default=30, help="validity in days (default 30)")
    p.add_argument("--trust-domain", help="must match the engine CA's (default: the one recorded in it)")
    p.add_argument("--force", action="store_true", help="replace this engine's existing certificate and key")
    p.set_defaults(func=cmd_pki_issue_engine)
