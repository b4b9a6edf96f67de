"""`credvault monitors ...`: synthetic monitors, their definitions and their recent results.

Connection flags, CREDVAULT_* environment, output and gRPC error handling are those of :mod:`vault_service.cli.session`.
Monitors hold credential ids and ``{{CREDENTIALS_VAULT-<id>}}`` placeholders, never a secret value: a placeholder
in a URL, header or body is a reference that the engine resolves, so it may be passed as an argument.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence
from typing import Any

from credvault.v1 import monitors_pb2 as mpb
from vault_service.cli.browser_monitors import add_browser_flags, browser_script, write_screenshot
from vault_service.cli.session import (
    Session,
    add_command,
    add_group,
    add_paging_flags,
    all_pages,
    clean,
    common_parser,
    decode,
    fields,
    label,
    output,
    read_bytes,
    table,
    warn,
    when,
)

_MONITOR_TYPES: dict[str, mpb.MonitorType.ValueType] = {
    "http": mpb.MONITOR_TYPE_HTTP,
    "browser": mpb.MONITOR_TYPE_BROWSER,
}
_REASONS: dict[str, mpb.DisabledReason.ValueType] = {
    "by-user": mpb.DISABLED_REASON_BY_USER,
    "credential-deleted": mpb.DISABLED_REASON_CREDENTIAL_DELETED,
}
# Headers that usually carry a secret: without a placeholder, their value would be stored in plain text.
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})
_PLACEHOLDER_MARK = "{{CREDENTIALS_VAULT-"


# --- parsing helpers -------------------------------------------------------------------------------------------------


def parse_header(text: str) -> mpb.Header:
    """``Name: value``. The value is not echoed on error: a mistyped argument might hold a secret."""
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise argparse.ArgumentTypeError("expects 'Name: value'")
    return mpb.Header(name=name.strip(), value=value.strip())


def _warn_literal_secrets(headers: Sequence[mpb.Header]) -> None:
    for h in headers:
        if h.name.lower() in _SECRET_HEADERS and _PLACEHOLDER_MARK not in h.value:
            warn(
                f"warning: header {clean(h.name)} holds no {_PLACEHOLDER_MARK}<id>}} placeholder: its value is"
                " stored and shown in plain text; keep secrets in a credential"
            )


def _body(ns: argparse.Namespace) -> str:
    if ns.body_file is None:
        return ""
    return decode(read_bytes(ns.body_file, "--body-file"), "--body-file")


def _authentication(ns: argparse.Namespace) -> mpb.HttpAuthentication | None:
    if ns.basic_credential:
        return mpb.HttpAuthentication(basic_credential_id=ns.basic_credential)
    if ns.ntlm_credential:
        return mpb.HttpAuthentication(ntlm_credential_id=ns.ntlm_credential)
    if ns.client_certificate_credential:
        return mpb.HttpAuthentication(client_certificate_credential_id=ns.client_certificate_credential)
    return None


def _validation(ns: argparse.Namespace) -> list[mpb.ValidationRule]:
    rules = []
    if ns.expect_status:
        rules.append(mpb.ValidationRule(status_code_in=mpb.StatusCodes(codes=ns.expect_status)))
    rules += [mpb.ValidationRule(body_contains=text) for text in ns.body_contains or []]
    return rules


def _http_request(ns: argparse.Namespace) -> mpb.HttpRequest:
    headers = ns.header or []
    _warn_literal_secrets(headers)
    request = mpb.HttpRequest(
        method=ns.method.upper(),
        url=ns.url,
        headers=headers,
        body=_body(ns),
        validation=_validation(ns),
        timeout_ms=ns.timeout_ms or 0,
    )
    auth = _authentication(ns)
    if auth is not None:
        request.authentication.CopyFrom(auth)
    return request


def _monitor(ns: argparse.Namespace) -> mpb.Monitor:
    """What every type of monitor takes from the flags (name, enabled, frequency, locations, zone)."""
    return mpb.Monitor(
        name=ns.name,
        enabled=not ns.disabled,
        frequency_minutes=ns.frequency,
        location_ids=list(dict.fromkeys(ns.location)),
        management_zone=ns.management_zone or "",
    )


def _http_monitor(ns: argparse.Namespace) -> mpb.Monitor:
    monitor = _monitor(ns)
    monitor.http.requests.append(_http_request(ns))
    return monitor


def _browser_monitor(ns: argparse.Namespace) -> mpb.Monitor:
    monitor = _monitor(ns)
    monitor.browser.CopyFrom(browser_script(ns))
    return monitor


# --- output ----------------------------------------------------------------------------------------------------------


def _list_text(items: Sequence[str]) -> str:
    return ",".join(clean(x) for x in items) or "-"


_MONITOR_COLUMNS = ("ID", "NAME", "TYPE", "ENABLED", "FREQ", "LOCATIONS", "CREDENTIALS", "VERSION")


def _enabled_text(m: mpb.Monitor) -> str:
    if m.enabled:
        return "yes"
    return f"no ({label(_REASONS, m.disabled_reason)})"


def _monitor_row(m: mpb.Monitor) -> list[str]:
    return [
        m.id,
        clean(m.name),
        label(_MONITOR_TYPES, m.type),
        _enabled_text(m),
        f"{m.frequency_minutes}m",
        _list_text(m.location_ids),
        _list_text(m.credential_ids),
        str(m.version),
    ]


def _auth_text(auth: mpb.HttpAuthentication) -> str:
    which = auth.WhichOneof("method")
    if which == "basic_credential_id":
        return f"basic {auth.basic_credential_id}"
    if which == "ntlm_credential_id":
        return f"NTLM {auth.ntlm_credential_id}"
    if which == "client_certificate_credential_id":
        return f"client certificate {auth.client_certificate_credential_id}"
    return "-"


def _rule_text(rule: mpb.ValidationRule) -> str:
    which = rule.WhichOneof("rule")
    if which == "status_code_in":
        return "status in " + ",".join(str(c) for c in rule.status_code_in.codes)
    if which is None:
        return "?"
    return f"{which.replace('_', ' ')} {clean(repr(getattr(rule, which)))}"


def _request_fields(i: int, req: mpb.HttpRequest) -> list[tuple[str, str]]:
    pairs = [(f"request {i}", f"{clean(req.method)} {clean(req.url)}")]
    pairs += [("  header", f"{clean(h.name)}: {clean(h.value)}") for h in req.headers]
    if req.body:
        pairs.append(("  body", f"{len(req.body)} characters"))
    pairs.append(("  auth", _auth_text(req.authentication)))
    pairs += [("  expect", _rule_text(r)) for r in req.validation]
    pairs.append(("  timeout", f"{req.timeout_ms} ms"))
    return pairs


def _browser_fields(b: mpb.BrowserScript) -> list[tuple[str, str]]:
    return [("url", clean(b.url)), ("login", b.login_credential_id or "-"), ("events", str(len(b.events)))]


def _monitor_view(m: mpb.Monitor) -> str:
    pairs = [
        ("id", m.id),
        ("name", clean(m.name)),
        ("type", label(_MONITOR_TYPES, m.type)),
        ("enabled", _enabled_text(m)),
        ("frequency", f"{m.frequency_minutes} minutes"),
        ("locations", _list_text(m.location_ids)),
        ("management zone", clean(m.management_zone) or "-"),
        ("credentials", _list_text(m.credential_ids)),
    ]
    if m.WhichOneof("script") == "http":
        for i, req in enumerate(m.http.requests, start=1):
            pairs += _request_fields(i, req)
    elif m.WhichOneof("script") == "browser":
        pairs += _browser_fields(m.browser)
    pairs += [("version", str(m.version)), ("revision", str(m.revision))]
    pairs += [("created", when(m.create_time)), ("updated", when(m.update_time))]
    return fields(pairs)


def _monitors_table(monitors: Sequence[mpb.Monitor]) -> str:
    return table(_MONITOR_COLUMNS, [_monitor_row(m) for m in monitors])


# --- monitors commands -----------------------------------------------------------------------------------------------


def _all_monitors(s: Session, request: mpb.ListMonitorsRequest) -> mpb.ListMonitorsResponse:
    merged = mpb.ListMonitorsResponse()
    for page in all_pages(functools.partial(s.call, s.monitors.ListMonitors), request):
        merged.monitors.extend(page.monitors)
    return merged


def cmd_monitors_list(ns: argparse.Namespace, s: Session) -> None:
    request = mpb.ListMonitorsRequest(
        page_size=ns.page_size or 0,
        page_token=ns.page_token or "",
        location_id=ns.location or "",
        credential_id=ns.credential or "",
    )
    response = _all_monitors(s, request) if ns.all else s.call(s.monitors.ListMonitors, request)
    output(ns, response, lambda: _monitors_table(response.monitors))
    if response.next_page_token and not ns.json:
        warn(f"more monitors: --all, or --page-token {response.next_page_token}")


def cmd_monitors_get(ns: argparse.Namespace, s: Session) -> None:
    response = s.call(s.monitors.GetMonitor, mpb.GetMonitorRequest(id=ns.id))
    output(ns, response, lambda: _monitor_view(response.monitor))


def cmd_monitors_create_http(ns: argparse.Namespace, s: Session) -> None:
    response = s.call(s.monitors.CreateMonitor, mpb.CreateMonitorRequest(monitor=_http_monitor(ns)))
    output(ns, response, lambda: _monitor_view(response.monitor))


def cmd_monitors_create_browser(ns: argparse.Namespace, s: Session) -> None:
    response = s.call(s.monitors.CreateMonitor, mpb.CreateMonitorRequest(monitor=_browser_monitor(ns)))
    output(ns, response, lambda: _monitor_view(response.monitor))


def _set_enabled(ns: argparse.Namespace, s: Session, enabled: bool) -> None:
    response = s.call(s.monitors.SetMonitorEnabled, mpb.SetMonitorEnabledRequest(id=ns.id, enabled=enabled))
    output(ns, response, lambda: _monitors_table([response.monitor]))


def cmd_monitors_enable(ns: argparse.Namespace, s: Session) -> None:
    _set_enabled(ns, s, enabled=True)


def cmd_monitors_disable(ns: argparse.Namespace, s: Session) -> None:
    _set_enabled(ns, s, enabled=False)


# CODES: the HTTP status code of each request of the execution, in order ("-": no response); for a browser
# execution, its main document's.
_RESULT_COLUMNS = ("STARTED", "LOCATION", "ENGINE", "VERSION", "STATUS", "MS", "CODES", "FAILURE")
_STATUSES: dict[str, mpb.ExecutionStatus.ValueType] = {
    "success": mpb.EXECUTION_STATUS_SUCCESS,
    "failed": mpb.EXECUTION_STATUS_FAILED,
    "not-executable": mpb.EXECUTION_STATUS_NOT_EXECUTABLE,
}


def _result_row(r: mpb.MonitorResult) -> list[str]:
    statuses = ",".join(str(q.status_code) if q.status_code else "-" for q in r.requests)
    if not statuses and r.main_document_status:  # a browser execution: its main document's status
        statuses = str(r.main_document_status)
    return [
        when(r.start_time),
        clean(r.location_id),
        clean(r.engine_id),
        str(r.monitor_version),
        label(_STATUSES, r.status),
        f"{r.duration_ms:.0f}",
        statuses or "-",
        clean(r.failure_reason) or "-",
    ]


def cmd_monitors_results(ns: argparse.Namespace, s: Session) -> None:
    request = mpb.GetResultsRequest(
        monitor_id=ns.id,
        limit=ns.limit or 0,
        location_id=ns.location or "",
        include_screenshots=ns.screenshot is not None,
    )
    response = s.call(s.monitors.GetResults, request)
    if ns.screenshot is not None:
        write_screenshot(list(response.results), ns.screenshot)
    output(ns, response, lambda: table(_RESULT_COLUMNS, [_result_row(r) for r in response.results]))


def cmd_monitors_delete(ns: argparse.Namespace, s: Session) -> None:
    response = s.call(s.monitors.DeleteMonitor, mpb.DeleteMonitorRequest(id=ns.id))
    output(ns, response, lambda: f"deleted {clean(ns.id)}")


# --- argparse --------------------------------------------------------------------------------------------------------


def _http_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", required=True)
    p.add_argument("--url", required=True, help="may hold {{CREDENTIALS_VAULT-<id>}} placeholders")
    p.add_argument("--location", action="append", required=True, metavar="ID", help="repeatable")
    p.add_argument("--method", default="GET", help="GET (default), POST, PUT, PATCH, DELETE, HEAD or OPTIONS")
    p.add_argument(
        "--header",
        action="append",
        type=parse_header,
        metavar="'NAME: VALUE'",
        help="repeatable; may hold placeholders",
    )
    p.add_argument("--body-file", metavar="FILE", help="request body ('-': stdin); may hold placeholders")
    auth = p.add_mutually_exclusive_group()
    auth.add_argument("--basic-credential", metavar="ID", help="basic authentication (a username-password credential)")
    auth.add_argument(
        "--ntlm-credential", metavar="ID", help="NTLM (a username-password credential, user or DOMAIN\\user)"
    )
    auth.add_argument("--client-certificate-credential", metavar="ID", help="a certificate credential")
    p.add_argument("--expect-status", action="append", type=int, metavar="CODE", help="repeatable: any of them")
    p.add_argument("--body-contains", action="append", metavar="TEXT", help="repeatable")
    p.add_argument("--frequency", type=int, default=5, metavar="MINUTES", help="1, 2, 5, 10, 15, 30 or 60 (default 5)")
    p.add_argument("--management-zone", metavar="ZONE")
    p.add_argument(
        "--request-timeout-ms",
        dest="timeout_ms",
        type=int,
        metavar="MS",
        help="the monitor's HTTP request timeout, 1-60000 (default 10000); --timeout is this command's own call",
    )
    p.add_argument("--disabled", action="store_true", help="create it disabled")


def _register_monitors(sub: Any, common: argparse.ArgumentParser) -> None:
    group = add_group(sub, "monitors", "manage synthetic monitors")
    p = add_command(group, "list", common, cmd_monitors_list, "list the monitors you may see")
    p.add_argument("--location", metavar="ID")
    p.add_argument("--credential", metavar="ID", help="only monitors that use this credential")
    add_paging_flags(p)
    p = add_command(group, "get", common, cmd_monitors_get, "show a monitor's definition")
    p.add_argument("id")
    p = add_command(group, "create-http", common, cmd_monitors_create_http, "create an HTTP monitor of one request")
    _http_flags(p)
    p = add_command(group, "results", common, cmd_monitors_results, "a monitor's recent results, newest first")
    p.add_argument("id")
    p.add_argument("--limit", type=int, help="how many (default 20, at most 500)")
    p.add_argument("--location", metavar="ID", help="only from this location")
    p.add_argument("--screenshot", metavar="FILE", help="write the newest failure screenshot (PNG) among them here")
    p = add_command(
        group, "create-browser", common, cmd_monitors_create_browser, "create a browser monitor (a clickpath)"
    )
    add_browser_flags(p)
    for name, command, text in (
        ("enable", cmd_monitors_enable, "enable a monitor"),
        ("disable", cmd_monitors_disable, "disable a monitor"),
        ("delete", cmd_monitors_delete, "delete a monitor"),
    ):
        add_command(group, name, common, command, text).add_argument("id")


def register(sub: Any) -> None:
    """Adds `monitors ...` to the `credvault` subcommands."""
    common = common_parser()
    _register_monitors(sub, common)
