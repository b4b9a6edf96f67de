"""`credvault audit list`: the audit log for people (a table) and scripts (``--json``).

Connection flags, CREDVAULT_* environment, output and gRPC error handling are those of
:mod:`vault_service.cli.session`. Needs CHANGE_ENVIRONMENT_SETTINGS and a token with the scope auditLogs.read.
"""

from __future__ import annotations

import argparse
import datetime
from typing import Any

from google.protobuf import timestamp_pb2

from credvault.v1 import audit_pb2 as apb
from vault_service.cli.session import (
    Session,
    add_command,
    add_group,
    add_paging_flags,
    clean,
    common_parser,
    output,
    parse_duration,
    table,
    warn,
    when,
)

_COLUMNS = ("TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME", "TOKEN", "DETAILS")


def parse_when(text: str) -> timestamp_pb2.Timestamp:
    """An RFC 3339 time (2025-05-01T12:00:00Z) or a duration ago (24h, 7d, 1h30m)."""
    try:
        when = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        try:
            when = datetime.datetime.now(datetime.UTC) - parse_duration(text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is neither an RFC 3339 time (2025-05-01T12:00:00Z) nor a duration like 24h or 7d"
            ) from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a time zone, for example 2025-05-01T12:00:00Z")
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    return out


def _row(e: apb.AuditEvent) -> list[str]:
    details = " ".join(f"{clean(k)}={clean(v)}" for k, v in sorted(e.details.items()))
    return [
        when(e.time),
        clean(e.actor),
        clean(e.action),
        clean(e.target_id) or "-",
        clean(e.outcome),
        e.token_id or "-",
        details or "-",
    ]


def cmd_audit_list(ns: argparse.Namespace, s: Session) -> None:
    request = apb.ListAuditEventsRequest(
        actor=ns.actor or "",
        action=ns.action or "",
        target_id=ns.target or "",
        page_size=ns.page_size or 0,
        page_token=ns.page_token or "",
    )
    if ns.since is not None:
        request.start_time.CopyFrom(ns.since)
    if ns.until is not None:
        request.end_time.CopyFrom(ns.until)
    response = s.call(s.audit.ListAuditEvents, request)
    if ns.all:
        seen: set[str] = set()
        while response.next_page_token and response.next_page_token not in seen:
            seen.add(response.next_page_token)
            request.page_token = response.next_page_token
            page = s.call(s.audit.ListAuditEvents, request)
            response.events.extend(page.events)
            response.next_page_token = page.next_page_token
    output(ns, response, lambda: table(_COLUMNS, [_row(e) for e in response.events]))
    if response.next_page_token and not ns.json:
        warn(f"more events: --all, or --page-token {response.next_page_token}")


def register(sub: Any) -> None:
    """Adds `audit list` to the `credvault` subcommands."""
    common = common_parser()
    group = add_group(sub, "audit", "read the audit log")
    p = add_command(group, "list", common, cmd_audit_list, "list audit events, newest first")
    p.add_argument("--actor", metavar="USER", help="only this user's actions")
    p.add_argument("--action", help="only this action, e.g. credential.delete")
    p.add_argument("--target", metavar="ID", help="only events about this id")
    p.add_argument("--since", type=parse_when, metavar="WHEN", help="RFC 3339 time, or a duration ago (24h, 7d)")
    p.add_argument("--until", type=parse_when, metavar="WHEN", help="RFC 3339 time, or a duration ago")
    add_paging_flags(p)
