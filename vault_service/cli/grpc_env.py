"""What `credvault` sets in its own environment before grpc is imported: grpc's C core reads it once, at start.

Client commands keep grpc's core logging (handshake failures, trace lines) out of their output: the CLI turns
every failed call into one message of its own. `credvault serve` keeps it, since operators want grpc's errors.
`credvault dev` runs the vault in-process and spawns children while grpc runs: it turns grpc's fork handlers off
(their "skipping fork() handlers" warning on shutdown is noise there); its engine worker does not inherit that.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

SERVER_COMMANDS = frozenset({"serve", "dev"})
# Only for `credvault dev`'s own process; removed from the environment of the processes it starts.
DEV_ONLY = {"GRPC_ENABLE_FORK_SUPPORT": "false"}


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand of a `credvault` command line (its first word that is not an option), if any."""
    return next((word for word in argv if not word.startswith("-")), None)


def prepare(argv: Sequence[str]) -> None:
    """Sets grpc's environment for the command in ``argv``; does nothing once grpc is imported (too late)."""
    if "grpc" in sys.modules:
        return
    command = command_of(argv)
    if command == "serve":
        return
    if command == "dev":
        os.environ.update(DEV_ONLY)
        return
    os.environ["GRPC_VERBOSITY"] = "NONE"
    os.environ.pop("GRPC_TRACE", None)


def child_environment() -> dict[str, str]:
    """The environment for a process `credvault dev` starts: its own, without what only `dev` itself needs."""
    return {name: value for name, value in os.environ.items() if name not in DEV_ONLY}
