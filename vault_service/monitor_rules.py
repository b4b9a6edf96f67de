"""Monitor definitions: validation, the credentials a monitor references (and how), and the part of a definition
that a user without access to its credentials may not change.

A monitor definition is the protobuf ``credvault.v1.Monitor`` (the script is a deep tree; mirroring it in
dataclasses would only add a copy). It holds credential ids and ``{{CREDENTIALS_VAULT-<id>}}`` placeholders, never
a secret value.
"""

from __future__ import annotations

import enum
import re
import urllib.parse
from collections.abc import Iterator, Sequence

from credvault.formats import CREDENTIAL_ID, PLACEHOLDER, SLUG
from credvault.url_template import ORIGIN_PLACEHOLDER_HINT, placeholder_before_path
from credvault.v1 import monitors_pb2 as mpb
from vault_service import validation
from vault_service.errors import InvalidArgument
from vault_service.models import CredentialType

_LOOSE_PLACEHOLDER = re.compile(r"\{\{\s*CREDENTIALS_VAULT[^}]*\}\}")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
FREQUENCIES = frozenset({1, 2, 5, 10, 15, 30, 60})
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
MAX_REQUESTS = 50
MAX_EVENTS = 200
MAX_HEADERS = 50
MAX_URL = 4096
MAX_BODY = 64 * 1024
MAX_HEADER_VALUE = 8192
MAX_RULES = 20
MAX_LOCATIONS = 50
DEFAULT_TIMEOUT_MS = 10_000
MAX_TIMEOUT_MS = 60_000
DEFAULT_BROWSER_TIMEOUT_MS = 60_000
MAX_BROWSER_TIMEOUT_MS = 300_000
MAX_SELECTOR = 1024
MAX_TEXT = 4096
MAX_JAVASCRIPT = 16 * 1024
MAX_MONITOR_BYTES = 512 * 1024  # a pushed config must fit one batch message with room to spare


class Use(enum.Enum):
    """How a monitor uses a credential; each use allows certain credential types."""

    BASIC_AUTH = "basic authentication"
    NTLM_AUTH = "NTLM authentication"
    CLIENT_CERTIFICATE = "client certificate"
    TOKEN_PLACEHOLDER = "token placeholder"
    FIELD_PLACEHOLDER = "username/password placeholder"
    BROWSER_LOGIN = "browser login"


ALLOWED_TYPES: dict[Use, frozenset[CredentialType]] = {
    Use.BASIC_AUTH: frozenset({CredentialType.USERNAME_PASSWORD}),
    Use.NTLM_AUTH: frozenset({CredentialType.USERNAME_PASSWORD}),
    Use.CLIENT_CERTIFICATE: frozenset({CredentialType.CERTIFICATE}),
    Use.TOKEN_PLACEHOLDER: frozenset({CredentialType.TOKEN}),
    Use.FIELD_PLACEHOLDER: frozenset({CredentialType.USERNAME_PASSWORD}),
    Use.BROWSER_LOGIN: frozenset({CredentialType.USERNAME_PASSWORD}),
}


def _placeholders(field: str, text: str, refs: dict[str, set[Use]]) -> None:
    for m in PLACEHOLDER.finditer(text):
        use = Use.FIELD_PLACEHOLDER if m.group(2) else Use.TOKEN_PLACEHOLDER
        refs.setdefault(m.group(1), set()).add(use)
    stripped = PLACEHOLDER.sub("", text)
    if _LOOSE_PLACEHOLDER.search(stripped):
        raise InvalidArgument(
            field, "has a malformed credential placeholder; use {{CREDENTIALS_VAULT-<16 hex>}} or .username/.password"
        )


def check_credential_id(field: str, value: str) -> str:
    if not CREDENTIAL_ID.match(value):
        raise InvalidArgument(field, "must be CREDENTIALS_VAULT- followed by 16 upper-case hex digits")
    return value


def credential_uses(monitor: mpb.Monitor) -> dict[str, set[Use]]:
    """Every credential the monitor references, with how it uses it. Validates the references' syntax."""
    refs: dict[str, set[Use]] = {}
    which = monitor.WhichOneof("script")
    if which == "http":
        for i, req in enumerate(monitor.http.requests):
            f = f"monitor.http.requests[{i}]"
            _placeholders(f"{f}.url", req.url, refs)
            _placeholders(f"{f}.body", req.body, refs)
            for j, h in enumerate(req.headers):
                _placeholders(f"{f}.headers[{j}].value", h.value, refs)
            auth = req.authentication.WhichOneof("method")
            if auth == "basic_credential_id":
                cid = check_credential_id(
                    f"{f}.authentication.basic_credential_id", req.authentication.basic_credential_id
                )
                refs.setdefault(cid, set()).add(Use.BASIC_AUTH)
            elif auth == "ntlm_credential_id":
                cid = check_credential_id(
                    f"{f}.authentication.ntlm_credential_id", req.authentication.ntlm_credential_id
                )
                refs.setdefault(cid, set()).add(Use.NTLM_AUTH)
            elif auth == "client_certificate_credential_id":
                cid = check_credential_id(
                    f"{f}.authentication.client_certificate_credential_id",
                    req.authentication.client_certificate_credential_id,
                )
                refs.setdefault(cid, set()).add(Use.CLIENT_CERTIFICATE)
    elif which == "browser":
        b = monitor.browser
        _placeholders("monitor.browser.url", b.url, refs)
        if b.login_credential_id:
            refs.setdefault(
                check_credential_id("monitor.browser.login_credential_id", b.login_credential_id), set()
            ).add(Use.BROWSER_LOGIN)
        for i, ev in enumerate(b.events):
            if ev.WhichOneof("event") == "navigate_url":
                _placeholders(f"monitor.browser.events[{i}].navigate_url", ev.navigate_url, refs)
            elif ev.WhichOneof("event") == "keystroke" and ev.keystroke.WhichOneof("text") == "credential":
                cred = ev.keystroke.credential
                cid = check_credential_id(f"monitor.browser.events[{i}].keystroke.credential", cred.credential_id)
                if cred.field not in ("", "username", "password"):
                    raise InvalidArgument(
                        f"monitor.browser.events[{i}].keystroke.credential.field", "must be username or password"
                    )
                refs.setdefault(cid, set()).add(Use.FIELD_PLACEHOLDER if cred.field else Use.TOKEN_PLACEHOLDER)
    return refs


def _url(field: str, url: str) -> None:
    if not url:
        raise InvalidArgument(field, "must not be empty")
    if len(url) > MAX_URL:
        raise InvalidArgument(field, f"is longer than {MAX_URL} characters")
    if placeholder_before_path(url):
        raise InvalidArgument(field, ORIGIN_PLACEHOLDER_HINT)
    parsed = urllib.parse.urlsplit(PLACEHOLDER.sub("x", url))
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InvalidArgument(field, "must be an absolute http:// or https:// URL")


def _each_rule(
    field: str, rules: Sequence[mpb.ValidationRule | mpb.BrowserValidation]
) -> Iterator[tuple[str, str, mpb.ValidationRule | mpb.BrowserValidation]]:
    """Each rule with its field path and kind; at most MAX_RULES, each setting one."""
    if len(rules) > MAX_RULES:
        raise InvalidArgument(field, f"at most {MAX_RULES} rules")
    for i, rule in enumerate(rules):
        which = rule.WhichOneof("rule")
        if which is None:
            raise InvalidArgument(f"{field}[{i}]", "must set one rule")
        yield f"{field}[{i}]", which, rule


def _status_codes(field: str, codes: list[int]) -> None:
    if not codes or any(not 100 <= c <= 599 for c in codes):
        raise InvalidArgument(field, "must list HTTP status codes 100-599")


def _rules(field: str, rules: list[mpb.ValidationRule]) -> None:
    for path, which, rule in _each_rule(field, rules):
        assert isinstance(rule, mpb.ValidationRule)
        if which == "status_code_in":
            _status_codes(f"{path}.status_code_in", list(rule.status_code_in.codes))
        elif which == "body_matches_regex":
            try:
                re.compile(rule.body_matches_regex)
            except re.error as exc:
                raise InvalidArgument(f"{path}.body_matches_regex", f"is not a valid regex: {exc.msg}") from None


def _selector(field: str, value: str) -> None:
    if not value.strip():
        raise InvalidArgument(field, "must be a CSS selector")
    if len(value) > MAX_SELECTOR:
        raise InvalidArgument(field, f"is longer than {MAX_SELECTOR} characters")


def _script_text(field: str, value: str, max_len: int = MAX_JAVASCRIPT) -> None:
    """JavaScript and literal texts: bounded, and never a placeholder (credentials are typed, never put in code)."""
    if not value:
        raise InvalidArgument(field, "must not be empty")
    if len(value) > max_len:
        raise InvalidArgument(field, f"is longer than {max_len} characters")
    if _LOOSE_PLACEHOLDER.search(value):
        raise InvalidArgument(field, "must not hold credential placeholders; type a credential with a keystroke event")


def _timeout(field: str, value: int, default: int, low: int, high: int) -> int:
    if value == 0:
        return default
    if not low <= value <= high:
        raise InvalidArgument(field, f"must be {low} to {high}")
    return value


def _browser_wait(field: str, wait: mpb.BrowserWait, out: mpb.BrowserWait) -> None:
    which = wait.WhichOneof("condition")
    if which == "load_state" and wait.load_state == mpb.BROWSER_LOAD_STATE_UNSPECIFIED:
        raise InvalidArgument(f"{field}.load_state", "must be PAGE_LOAD or NETWORK_IDLE")
    if which == "fixed_ms" and not 1 <= wait.fixed_ms <= MAX_TIMEOUT_MS:
        raise InvalidArgument(f"{field}.fixed_ms", f"must be 1 to {MAX_TIMEOUT_MS}")
    if which == "element_selector":
        _selector(f"{field}.element_selector", wait.element_selector)
    if which == "element_text":
        _selector(f"{field}.element_text.selector", wait.element_text.selector)
        _script_text(f"{field}.element_text.text", wait.element_text.text, MAX_TEXT)
    if which == "javascript_condition":
        _script_text(f"{field}.javascript_condition", wait.javascript_condition)
    out.timeout_ms = _timeout(f"{field}.timeout_ms", wait.timeout_ms, DEFAULT_TIMEOUT_MS, 1, MAX_TIMEOUT_MS)


def _browser_validation(field: str, rules: list[mpb.BrowserValidation]) -> None:
    for path, which, rule in _each_rule(field, rules):
        assert isinstance(rule, mpb.BrowserValidation)
        if which in ("text_present", "text_absent"):
            _script_text(f"{path}.{which}", getattr(rule, which), MAX_TEXT)
        elif which in ("element_present", "element_absent"):
            _selector(f"{path}.{which}", getattr(rule, which))
        else:
            _status_codes(f"{path}.main_document_status_in", list(rule.main_document_status_in.codes))


def _browser_event(field: str, ev: mpb.BrowserEvent, out: mpb.BrowserEvent) -> None:
    kind = ev.WhichOneof("event")
    if kind is None:
        raise InvalidArgument(field, "must set an event")
    if kind == "navigate_url":
        _url(f"{field}.navigate_url", ev.navigate_url)
    elif kind == "click_selector":
        _selector(f"{field}.click_selector", ev.click_selector)
    elif kind == "keystroke":
        _selector(f"{field}.keystroke.selector", ev.keystroke.selector)
        text = ev.keystroke.WhichOneof("text")
        if text is None:
            raise InvalidArgument(f"{field}.keystroke", "must set literal or credential")
        if text == "literal":
            _script_text(f"{field}.keystroke.literal", ev.keystroke.literal, MAX_TEXT)
    elif kind == "select_option":
        _selector(f"{field}.select_option.selector", ev.select_option.selector)
        if not ev.select_option.value or len(ev.select_option.value) > MAX_TEXT:
            raise InvalidArgument(f"{field}.select_option.value", f"must be 1 to {MAX_TEXT} characters")
    else:
        _script_text(f"{field}.javascript", ev.javascript)
    validation.text(f"{field}.description", ev.description, max_len=validation.MAX_NAME, required=False)
    if ev.HasField("wait"):
        _browser_wait(f"{field}.wait", ev.wait, out.wait)
    _browser_validation(f"{field}.validation", list(ev.validation))


def _browser(b: mpb.BrowserScript, out: mpb.BrowserScript) -> None:
    _url("monitor.browser.url", b.url)
    if len(b.events) > MAX_EVENTS:
        raise InvalidArgument("monitor.browser.events", f"at most {MAX_EVENTS} events")
    for i, ev in enumerate(b.events):
        _browser_event(f"monitor.browser.events[{i}]", ev, out.events[i])
    _browser_validation("monitor.browser.validation", list(b.validation))
    out.timeout_ms = _timeout(
        "monitor.browser.timeout_ms", b.timeout_ms, DEFAULT_BROWSER_TIMEOUT_MS, 1000, MAX_BROWSER_TIMEOUT_MS
    )


def validate(monitor: mpb.Monitor) -> mpb.Monitor:
    """A normalized copy of a monitor definition, or InvalidArgument naming the field."""
    out = mpb.Monitor()
    out.CopyFrom(monitor)
    out.name = validation.text("monitor.name", monitor.name, max_len=validation.MAX_NAME, required=True)
    if monitor.frequency_minutes not in FREQUENCIES:
        raise InvalidArgument("monitor.frequency_minutes", f"must be one of {sorted(FREQUENCIES)}")
    locations = list(dict.fromkeys(monitor.location_ids))
    if not locations or len(locations) > MAX_LOCATIONS:
        raise InvalidArgument("monitor.location_ids", f"must list 1 to {MAX_LOCATIONS} locations")
    for loc in locations:
        if not SLUG.match(loc):
            raise InvalidArgument("monitor.location_ids", f"{loc!r} is not a location id")
    del out.location_ids[:]
    out.location_ids.extend(locations)
    if monitor.management_zone:
        validation.text("monitor.management_zone", monitor.management_zone, max_len=validation.MAX_NAME, required=True)
    which = monitor.WhichOneof("script")
    if which == "http":
        out.type = mpb.MONITOR_TYPE_HTTP
        reqs = monitor.http.requests
        if not reqs or len(reqs) > MAX_REQUESTS:
            raise InvalidArgument("monitor.http.requests", f"must hold 1 to {MAX_REQUESTS} requests")
        for i, req in enumerate(reqs):
            f = f"monitor.http.requests[{i}]"
            method = req.method.upper() or "GET"
            if method not in METHODS:
                raise InvalidArgument(f"{f}.method", f"must be one of {', '.join(sorted(METHODS))}")
            out.http.requests[i].method = method
            _url(f"{f}.url", req.url)
            if len(req.headers) > MAX_HEADERS:
                raise InvalidArgument(f"{f}.headers", f"at most {MAX_HEADERS} headers")
            for j, h in enumerate(req.headers):
                if not _HEADER_NAME.match(h.name):
                    raise InvalidArgument(f"{f}.headers[{j}].name", "is not a valid HTTP header name")
                if len(h.value) > MAX_HEADER_VALUE or any(c in h.value for c in "\r\n\x00"):
                    raise InvalidArgument(f"{f}.headers[{j}].value", "is too long or has CR, LF or NUL")
            if len(req.body) > MAX_BODY:
                raise InvalidArgument(f"{f}.body", f"is longer than {MAX_BODY} bytes")
            if req.timeout_ms == 0:
                out.http.requests[i].timeout_ms = DEFAULT_TIMEOUT_MS
            elif not 1 <= req.timeout_ms <= 60_000:
                raise InvalidArgument(f"{f}.timeout_ms", "must be 1 to 60000")
            _rules(f"{f}.validation", list(req.validation))
    elif which == "browser":
        out.type = mpb.MONITOR_TYPE_BROWSER
        b = monitor.browser
        _browser(b, out.browser)
    else:
        raise InvalidArgument("monitor.script", "must be set: http or browser")
    credential_uses(out)  # syntax of every reference
    if out.ByteSize() > MAX_MONITOR_BYTES:
        raise InvalidArgument("monitor", f"is {out.ByteSize()} bytes; at most {MAX_MONITOR_BYTES} are allowed")
    del out.credential_ids[:]
    out.credential_ids.extend(sorted(credential_uses(out)))
    return out


# The uses that log in with a credential's username (whose form therefore matters).
USERNAME_USES = frozenset({Use.BASIC_AUTH, Use.NTLM_AUTH, Use.BROWSER_LOGIN})


def check_username_format(monitor_type: int, uses: set[Use], username: str, credential_id: str) -> None:
    """HTTP basic authentication takes `user`; NTLM and browser logins `user` or `DOMAIN\\user` (one backslash,
    both parts non-empty). A credential used both ways must fit both. The username is not echoed."""
    if "\\" in username:
        domain, _, user = username.partition("\\")
        basic = monitor_type == mpb.MONITOR_TYPE_HTTP and Use.BASIC_AUTH in uses
        if basic or not domain or not user or "\\" in user:
            raise InvalidArgument(
                "monitor.credentials",
                f"the username of {credential_id} has a form this use does not support"
                " (HTTP basic: user; NTLM and browser: user or DOMAIN\\user)",
            )


def protected_part(monitor: mpb.Monitor) -> bytes:
    """What a user without access to the monitor's credentials may not change: the script without its validation
    rules, with credential ids blanked (replacing all credentials with accessible ones is allowed)."""
    m = mpb.Monitor()
    if monitor.WhichOneof("script") == "http":
        m.http.CopyFrom(monitor.http)
        for req in m.http.requests:
            del req.validation[:]
            req.ClearField("timeout_ms")
            req.url = PLACEHOLDER.sub("{{}}", req.url)
            req.body = PLACEHOLDER.sub("{{}}", req.body)
            for h in req.headers:
                h.value = PLACEHOLDER.sub("{{}}", h.value)
            if req.authentication.WhichOneof("method") == "basic_credential_id":
                req.authentication.basic_credential_id = "-"
            elif req.authentication.WhichOneof("method") == "ntlm_credential_id":
                req.authentication.ntlm_credential_id = "-"
            elif req.authentication.WhichOneof("method") == "client_certificate_credential_id":
                req.authentication.client_certificate_credential_id = "-"
    elif monitor.WhichOneof("script") == "browser":
        m.browser.CopyFrom(monitor.browser)
        m.browser.url = PLACEHOLDER.sub("{{}}", m.browser.url)
        del m.browser.validation[:]
        m.browser.ClearField("timeout_ms")
        if m.browser.login_credential_id:
            m.browser.login_credential_id = "-"
        for ev in m.browser.events:
            del ev.validation[:]
            if ev.WhichOneof("event") == "navigate_url":
                ev.navigate_url = PLACEHOLDER.sub("{{}}", ev.navigate_url)
            elif ev.WhichOneof("event") == "keystroke" and ev.keystroke.WhichOneof("text") == "credential":
                ev.keystroke.credential.credential_id = "-"
    m.management_zone = monitor.management_zone
    return m.SerializeToString(deterministic=True)
