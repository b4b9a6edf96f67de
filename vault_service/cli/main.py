"""The `credvault` console script's entry point: prepares grpc's environment, then parses and runs the command.

The parser (:mod:`vault_service.cli.parser`) imports grpc, so it is imported only after
:func:`vault_service.cli.grpc_env.prepare` has set what grpc's C core reads at start.
"""

from __future__ import annotations

import sys

from vault_service.cli import grpc_env
from vault_service.errors import ConfigurationError, Unavailable, UsageError, VaultError


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    grpc_env.prepare(args)
    from vault_service.cli.parser import build_parser

    ns = build_parser().parse_args(args)
    try:
        ns.func(ns)
    except UsageError as exc:
        print(f"credvault: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except ConfigurationError as exc:
        print(f"credvault: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except (VaultError, Unavailable) as exc:
        print(f"credvault: {exc.message}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
