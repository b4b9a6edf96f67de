"""`credvault monitors create-browser` and the failure screenshot of `credvault monitors results --screenshot FILE`.

A browser monitor's events come from a YAML or JSON file: a mapping with ``events`` (and optionally ``validation``,
checked at the end), each in the protobuf JSON form of ``credvault.v1.BrowserEvent`` / ``BrowserValidation``
(field names as in the proto, snake_case or camelCase). Credentials are referenced by id (a keystroke's
``credential``), never written in the file.
"""

from __future__ import annotations

import argparse
import pathlib

import yaml
from google.protobuf import json_format

from credvault.v1 import monitors_pb2 as mpb
from vault_service.cli.session import clean, decode, read_bytes, warn, when
from vault_service.errors import UsageError

__all__ = ["add_browser_flags", "browser_script", "write_screenshot"]

_EVENTS_HINT = "a mapping with 'events' (and optionally 'validation') in the protobuf JSON form of BrowserEvent"


def add_browser_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", required=True)
    p.add_argument(
        "--url", required=True, help="the page opened first; may hold {{CREDENTIALS_VAULT-<id>}} placeholders"
    )
    p.add_argument("--location", action="append", required=True, metavar="ID", help="repeatable")
    p.add_argument("--events-file", metavar="FILE", help=f"YAML or JSON ('-': stdin): {_EVENTS_HINT}")
    p.add_argument(
        "--login-credential", metavar="ID", help="HTTP authentication (a username-password credential; DOMAIN\\user)"
    )
    p.add_argument("--text-present", action="append", metavar="TEXT", help="repeatable: checked at the end")
    p.add_argument("--frequency", type=int, default=5, metavar="MINUTES", help="1, 2, 5, 10, 15, 30 or 60 (default 5)")
    p.add_argument("--management-zone", metavar="ZONE")
    p.add_argument(
        "--script-timeout-ms", type=int, metavar="MS", help="the whole execution is cut after this (default 60000)"
    )
    p.add_argument("--disabled", action="store_true", help="create it disabled")


def browser_script(ns: argparse.Namespace) -> mpb.BrowserScript:
    script = mpb.BrowserScript()
    if ns.events_file is not None:
        text = decode(read_bytes(ns.events_file, "--events-file"), "--events-file")
        try:
            doc = yaml.safe_load(text)  # JSON is YAML
        except yaml.YAMLError:
            raise UsageError("--events-file: not YAML or JSON") from None
        if not isinstance(doc, dict) or not set(doc) <= {"events", "validation"}:
            raise UsageError(f"--events-file: expects {_EVENTS_HINT}")
        try:
            json_format.ParseDict(doc, script)
        except json_format.ParseError:
            raise UsageError(f"--events-file: an event or rule does not fit; expects {_EVENTS_HINT}") from None
    script.url = ns.url
    script.login_credential_id = ns.login_credential or ""
    script.validation.extend(mpb.BrowserValidation(text_present=t) for t in ns.text_present or [])
    script.timeout_ms = ns.script_timeout_ms or 0
    return script


def write_screenshot(results: list[mpb.MonitorResult], path: str) -> None:
    """Writes the newest failure screenshot among ``results`` to ``path`` (a note on stderr says which)."""
    for result in results:
        if result.screenshot_png:
            pathlib.Path(path).write_bytes(result.screenshot_png)
            warn(
                f"wrote the screenshot of the result of {when(result.start_time)} from {clean(result.location_id)}"
                f" ({len(result.screenshot_png)} bytes) to {clean(path)}"
            )
            return
    warn("no result among these has a screenshot (only failed browser executions have one)")
