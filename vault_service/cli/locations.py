"""`credvault locations ...` and `credvault engines ...`: private synthetic locations and the engines that serve them.

Connection flags, CREDVAULT_* environment, output and gRPC error handling are those of :mod:`vault_service.cli.session`.
"""

from __future__ import annotations

import argparse
from typing import Any

from credvault.v1 import monitors_pb2 as mpb
from vault_service.cli.session import (
    Session,
    add_command,
    add_group,
    clean,
    common_parser,
    output,
    table,
    when,
)

# --- output ----------------------------------------------------------------------------------------------------------


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


_LOCATION_COLUMNS = ("ID", "NAME", "CREATED")


def _location_row(loc: mpb.Location) -> list[str]:
    return [clean(loc.id), clean(loc.name), when(loc.create_time)]


_ENGINE_COLUMNS = ("LOCATION", "ENGINE", "CONNECTED", "SINCE", "APPLIED REV", "LAG", "REJECTED", "REVOKED")


def _engine_row(e: mpb.Engine) -> list[str]:
    return [
        clean(e.location_id),
        clean(e.engine_id),
        _yes_no(e.connected),
        when(e.connected_since),
        str(e.applied_revision),
        str(e.lag),
        str(len(e.rejected_monitors)),
        _yes_no(e.revoked),
    ]


# --- commands --------------------------------------------------------------------------------------------------------


def cmd_locations_list(ns: argparse.Namespace, s: Session) -> None:
    response = s.call(s.monitors.ListLocations, mpb.ListLocationsRequest())
    output(ns, response, lambda: table(_LOCATION_COLUMNS, [_location_row(x) for x in response.locations]))


def cmd_locations_create(ns: argparse.Namespace, s: Session) -> None:
    request = mpb.CreateLocationRequest(location=mpb.Location(id=ns.id, name=ns.name or ""))
    response = s.call(s.monitors.CreateLocation, request)
    output(ns, response, lambda: table(_LOCATION_COLUMNS, [_location_row(response.location)]))


def cmd_locations_delete(ns: argparse.Namespace, s: Session) -> None:
    response = s.call(s.monitors.DeleteLocation, mpb.DeleteLocationRequest(id=ns.id))
    output(ns, response, lambda: f"deleted {clean(ns.id)}")


def cmd_engines_list(ns: argparse.Namespace, s: Session) -> None:
    response = s.call(s.monitors.ListEngines, mpb.ListEnginesRequest(location_id=ns.location or ""))
    output(ns, response, lambda: table(_ENGINE_COLUMNS, [_engine_row(e) for e in response.engines]))


def cmd_engines_add(ns: argparse.Namespace, s: Session) -> None:
    request = mpb.AddEngineRequest(location_id=ns.location, engine_id=ns.engine)
    response = s.call(s.monitors.AddEngine, request)
    output(ns, response, lambda: table(_ENGINE_COLUMNS, [_engine_row(response.engine)]))


def cmd_engines_revoke(ns: argparse.Namespace, s: Session) -> None:
    request = mpb.RevokeEngineRequest(location_id=ns.location, engine_id=ns.engine)
    response = s.call(s.monitors.RevokeEngine, request)
    output(ns, response, lambda: table(_ENGINE_COLUMNS, [_engine_row(response.engine)]))


# --- argparse --------------------------------------------------------------------------------------------------------


def _engine_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--location", required=True, metavar="ID")
    p.add_argument("--engine", required=True, metavar="ID")


def _register_locations(sub: Any, common: argparse.ArgumentParser) -> None:
    group = add_group(sub, "locations", "manage private synthetic locations")
    add_command(group, "list", common, cmd_locations_list, "list the private locations")
    p = add_command(group, "create", common, cmd_locations_create, "create a private location")
    p.add_argument("id", help="lower-case letters, digits and '-'")
    p.add_argument("--name", help="display name (default: the id)")
    p = add_command(group, "delete", common, cmd_locations_delete, "delete a location that has no monitors")
    p.add_argument("id")


def _register_engines(sub: Any, common: argparse.ArgumentParser) -> None:
    group = add_group(sub, "engines", "manage the engines allowed to serve locations")
    p = add_command(group, "list", common, cmd_engines_list, "engines: connection, applied revision, lag, rejections")
    p.add_argument("--location", metavar="ID", help="only this location's engines")
    p = add_command(group, "add", common, cmd_engines_add, "allow an engine to serve a location")
    _engine_flags(p)
    p = add_command(
        group, "revoke", common, cmd_engines_revoke, "cut an engine's stream at once and refuse it afterwards"
    )
    _engine_flags(p)


def register(sub: Any) -> None:
    """Adds `locations ...` and `engines ...` to the `credvault` subcommands."""
    common = common_parser()
    _register_locations(sub, common)
    _register_engines(sub, common)
