"""Client commands of `credvault` for people: credentials, tokens and whoami over gRPC.

Secrets (passwords, tokens, certificates, the API token itself) are never taken as command-line argument values:
they come from files (``-`` for stdin), the environment (CREDVAULT_TOKEN) or a no-echo prompt on a terminal.
Human output is aligned tables; ``--json`` prints the RPC response as one JSON document for scripts.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import getpass
import ipaddress
import json
import os
import pathlib
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import timestamp_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from credvault.v1 import audit_pb2_grpc as agrpc
from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import credentials_pb2_grpc as cgrpc
from credvault.v1 import identity_pb2 as ipb
from credvault.v1 import identity_pb2_grpc as igrpc
from credvault.v1 import monitors_pb2_grpc as mgrpc
from credvault.v1 import tokens_pb2 as tpb
from credvault.v1 import tokens_pb2_grpc as tgrpc
from vault_service.errors import ConfigurationError

DEFAULT_SERVER = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 30.0

_TYPES: dict[str, cpb.CredentialType.ValueType] = {
    "username-password": cpb.CREDENTIAL_TYPE_USERNAME_PASSWORD,
    "certificate": cpb.CREDENTIAL_TYPE_CERTIFICATE,
    "token": cpb.CREDENTIAL_TYPE_TOKEN,
    "public-certificate": cpb.CREDENTIAL_TYPE_PUBLIC_CERTIFICATE,
}
_SCOPES: dict[str, cpb.CredentialScope.ValueType] = {
    "synthetic": cpb.CREDENTIAL_SCOPE_SYNTHETIC,
    "extension-authentication": cpb.CREDENTIAL_SCOPE_EXTENSION_AUTHENTICATION,
    "extension-validation": cpb.CREDENTIAL_SCOPE_EXTENSION_VALIDATION,
    "app-engine": cpb.CREDENTIAL_SCOPE_APP_ENGINE,
}
_ACCESS: dict[str, cpb.AccessLevel.ValueType] = {
    "owner-only": cpb.ACCESS_LEVEL_OWNER_ONLY,
    "shared": cpb.ACCESS_LEVEL_SHARED,
    "all": cpb.ACCESS_LEVEL_ALL,
}
_CERT_FORMATS: dict[str, cpb.CertificateFormat.ValueType] = {
    "pkcs12": cpb.CERTIFICATE_FORMAT_PKCS12,
    "pem": cpb.CERTIFICATE_FORMAT_PEM,
}
_KINDS: dict[str, tpb.TokenKind.ValueType] = {"personal": tpb.TOKEN_KIND_PERSONAL, "api": tpb.TOKEN_KIND_API}
_PERMISSIONS: dict[str, ipb.Permission.ValueType] = {
    "view-environment": ipb.PERMISSION_VIEW_ENVIRONMENT,
    "change-monitoring-settings": ipb.PERMISSION_CHANGE_MONITORING_SETTINGS,
    "change-environment-settings": ipb.PERMISSION_CHANGE_ENVIRONMENT_SETTINGS,
}

# Every option that names a file holding a secret (or the API token); at most one of them may be "-" (stdin).
_SECRET_FILE_OPTIONS = (
    "token_file",
    "password_file",
    "token_value_file",
    "certificate_file",
    "certificate_password_file",
    "public_certificate_file",
    "token_to_lookup_file",
)
# Options that may read stdin ("-"): only one of them can, per command.
STDIN_OPTIONS = (*_SECRET_FILE_OPTIONS, "body_file")
# The secret options that fit each credential type (the rest are refused, so nothing is silently ignored).
_OPTIONS_OF_TYPE: dict[int, frozenset[str]] = {
    cpb.CREDENTIAL_TYPE_USERNAME_PASSWORD: frozenset({"username", "password_file"}),
    cpb.CREDENTIAL_TYPE_CERTIFICATE: frozenset({"certificate_file", "certificate_password_file", "certificate_format"}),
    cpb.CREDENTIAL_TYPE_TOKEN: frozenset({"token_value_file"}),
    cpb.CREDENTIAL_TYPE_PUBLIC_CERTIFICATE: frozenset({"public_certificate_file"}),
}
_CONTENTS_OPTIONS = frozenset().union(*_OPTIONS_OF_TYPE.values())

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})
_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


# --- connection ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Session:
    """Stubs on one channel, and what every call sends along."""

    credentials: cgrpc.CredentialsServiceStub
    tokens: tgrpc.TokensServiceStub
    identity: igrpc.IdentityServiceStub
    monitors: mgrpc.MonitorsServiceStub
    audit: agrpc.AuditServiceStub
    metadata: tuple[tuple[str, str], ...]
    timeout: float

    def call(self, method: grpc.UnaryUnaryMultiCallable[Req, Resp], request: Req) -> Resp:
        return method(request, metadata=self.metadata, timeout=self.timeout)


Command = Callable[[argparse.Namespace, Session], None]


def _env_flag(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be 1 or 0, not {value!r}")


def _is_loopback(target: str) -> bool:
    host = target.rsplit(":", 1)[0].strip("[]") if ":" in target else target
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_bytes(path: str, option: str, show_path: bool = False) -> bytes:
    """A file's bytes ("-": stdin). The path of a secret is not echoed: it might be a mistyped secret."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return pathlib.Path(path).read_bytes()
    except OSError as exc:
        where = f" {path!r}" if show_path else ""
        raise ConfigurationError(
            f"cannot read the {option} file{where}: {exc.strerror or type(exc).__name__}"
        ) from None


def _api_token(ns: argparse.Namespace) -> str:
    if ns.token_file is not None:
        token, origin = _decode(_read_bytes(ns.token_file, "--token-file"), "--token-file").strip(), "--token-file"
    else:
        token, origin = os.environ.get("CREDVAULT_TOKEN", "").strip(), "CREDVAULT_TOKEN"
    if not token:
        raise ConfigurationError(
            "no API token: set CREDVAULT_TOKEN (or pass --token-file FILE); tokens are never taken as arguments"
        )
    if not _TOKEN_CHARS.fullmatch(token):
        raise ConfigurationError(f"the API token from {origin} holds characters no token has")
    return token


def _channel(ns: argparse.Namespace) -> grpc.Channel:
    target = ns.server or os.environ.get("CREDVAULT_SERVER") or DEFAULT_SERVER
    if ns.insecure or _env_flag("CREDVAULT_INSECURE"):
        if not _is_loopback(target):
            _warn(f"warning: sending the API token in plaintext to {target} (--insecure is for development)")
        return grpc.insecure_channel(target)
    ca_file = ns.ca or os.environ.get("CREDVAULT_CA_FILE")
    roots = _read_bytes(ca_file, "CA (--ca, CREDVAULT_CA_FILE)", show_path=True) if ca_file else None
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=roots))


def _check_stdin_once(ns: argparse.Namespace) -> None:
    readers = [name for name in STDIN_OPTIONS if getattr(ns, name, None) == "-"]
    if len(readers) > 1:
        names = ", ".join("--" + n.replace("_", "-") for n in readers)
        raise ConfigurationError(f"only one option can read stdin ('-'); got {names}")


def _fail_rpc(exc: grpc.RpcError) -> NoReturn:
    code = getattr(exc, "code", None)
    details = getattr(exc, "details", None)
    status = code() if callable(code) else None
    name = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
    text = _clean(str((details() if callable(details) else None) or exc))
    print(f"credvault: {name}: {text}", file=sys.stderr)
    raise SystemExit(1)


def remote(command: Command) -> Callable[[argparse.Namespace], None]:
    """Wraps a command: resolve the token, open the channel, map gRPC errors to a message and exit status 1."""

    @functools.wraps(command)
    def run(ns: argparse.Namespace) -> None:
        _check_stdin_once(ns)
        metadata = (("authorization", f"Api-Token {_api_token(ns)}"),)
        with _channel(ns) as channel:
            session = Session(
                credentials=cgrpc.CredentialsServiceStub(channel),
                tokens=tgrpc.TokensServiceStub(channel),
                identity=igrpc.IdentityServiceStub(channel),
                monitors=mgrpc.MonitorsServiceStub(channel),
                audit=agrpc.AuditServiceStub(channel),
                metadata=metadata,
                timeout=ns.timeout,
            )
            try:
                command(ns, session)
            except grpc.RpcError as exc:
                _fail_rpc(exc)

    return run


# --- secrets ---------------------------------------------------------------------------------------------------------


def _decode(data: bytes, option: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigurationError(f"{option}: the file is not UTF-8 text") from None


def _strip_newline(text: str) -> str:
    for ending in ("\r\n", "\n"):
        if text.endswith(ending):
            return text[: -len(ending)]
    return text


def _secret_text(path: str | None, what: str, option: str) -> str:
    """A text secret from FILE / stdin ("-"), else a no-echo prompt on a terminal; one trailing newline goes."""
    if path is not None and not (path == "-" and sys.stdin.isatty()):
        return _strip_newline(_decode(_read_bytes(path, option), option))
    if sys.stdin.isatty():
        return getpass.getpass(f"{what}: ")
    raise ConfigurationError(f"{option} FILE is required ('-' for stdin): secrets are never taken as arguments")


def _required_file(path: str | None, what: str, option: str) -> bytes:
    if path is None:
        raise ConfigurationError(f"{option} FILE is required for a {what} ('-' for stdin)")
    return _read_bytes(path, option)


def _certificate_format(ns: argparse.Namespace) -> cpb.CertificateFormat.ValueType:
    if ns.certificate_format is not None:
        return _CERT_FORMATS[ns.certificate_format]
    suffix = pathlib.Path(ns.certificate_file).suffix.lower()
    return cpb.CERTIFICATE_FORMAT_PKCS12 if suffix in (".p12", ".pfx") else cpb.CERTIFICATE_FORMAT_PEM


def _certificate_password(ns: argparse.Namespace, fmt: cpb.CertificateFormat.ValueType, data: bytes) -> str:
    option, what = "--certificate-password-file", "certificate password"
    if ns.certificate_password_file is not None:
        return _secret_text(ns.certificate_password_file, what, option)
    if fmt == cpb.CERTIFICATE_FORMAT_PKCS12:
        return getpass.getpass(f"{what} (empty if none): ") if sys.stdin.isatty() else ""
    if b"ENCRYPTED" in data:  # an encrypted PEM private key needs its password
        return _secret_text(None, what, option)
    return ""


def _certificate(ns: argparse.Namespace) -> cpb.Certificate:
    data = _required_file(ns.certificate_file, "certificate", "--certificate-file")
    fmt = _certificate_format(ns)
    return cpb.Certificate(data=data, password=_certificate_password(ns, fmt, data), format=fmt)


def _refuse_other_contents_options(ns: argparse.Namespace, ctype: int) -> None:
    allowed = _OPTIONS_OF_TYPE.get(ctype, frozenset())
    given = sorted(o for o in _CONTENTS_OPTIONS - allowed if getattr(ns, o, None) is not None)
    if given:
        names = ", ".join("--" + o.replace("_", "-") for o in given)
        raise ConfigurationError(f"not for a {_label(_TYPES, ctype)} credential: {names}")


def _contents(ns: argparse.Namespace, ctype: int) -> cpb.CredentialContents:
    _refuse_other_contents_options(ns, ctype)
    if ctype == cpb.CREDENTIAL_TYPE_USERNAME_PASSWORD:
        if not ns.username:
            raise ConfigurationError("--username is required for a username-password credential")
        password = _secret_text(ns.password_file, "password", "--password-file")
        return cpb.CredentialContents(username_password=cpb.UsernamePassword(username=ns.username, password=password))
    if ctype == cpb.CREDENTIAL_TYPE_CERTIFICATE:
        return cpb.CredentialContents(certificate=_certificate(ns))
    if ctype == cpb.CREDENTIAL_TYPE_TOKEN:
        value = _secret_text(ns.token_value_file, "token value", "--token-value-file")
        return cpb.CredentialContents(token=cpb.Token(token=value))
    if ctype == cpb.CREDENTIAL_TYPE_PUBLIC_CERTIFICATE:
        pem = _required_file(ns.public_certificate_file, "public certificate", "--public-certificate-file")
        return cpb.CredentialContents(public_certificate=cpb.PublicCertificate(pem=pem))
    raise ConfigurationError(f"this client cannot write credentials of type {ctype}")


# --- parsing helpers -------------------------------------------------------------------------------------------------


def parse_duration(text: str) -> datetime.timedelta:
    """``30d``, ``12h``, ``3600s``, ``1h30m`` (units s, m, h, d, w)."""
    value = text.strip().lower()
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30d, 12h, 90m or 3600s")
    return datetime.timedelta(seconds=sum(int(n) * _UNIT_SECONDS[u] for n, u in parts))


def _access(level: str | None, users: list[str] | None) -> cpb.Access | None:
    if level is None and not users:
        return None
    return cpb.Access(level=_ACCESS[level or "shared"], users=users or [])


def _app_engine(ns: argparse.Namespace, scopes: Sequence[str]) -> cpb.AppEngineAccess | None:
    if "app-engine" not in scopes and not ns.allowed_app and not ns.allow_contextless_access:
        return None
    return cpb.AppEngineAccess(allowed_apps=ns.allowed_app or [], allow_contextless_access=ns.allow_contextless_access)


def _label(names: dict[str, Any], value: int) -> str:
    for name, number in names.items():
        if number == value:
            return name
    return "unspecified" if value == 0 else str(value)


def _clean(text: str) -> str:
    """No control characters from the server reach the terminal."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _when(ts: timestamp_pb2.Timestamp, unset: str = "-") -> str:
    if ts.ByteSize() == 0:
        return unset
    return ts.ToDatetime(tzinfo=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- output ----------------------------------------------------------------------------------------------------------


def _warn(message: str) -> None:
    print(f"credvault: {message}", file=sys.stderr)


def _print_json(message: Message) -> None:
    doc = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    print(json.dumps(doc, indent=2, ensure_ascii=False))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [headers, *rows]]
    return "\n".join(lines)


def _fields(pairs: Sequence[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in pairs) + 1
    return "\n".join(f"{(k + ':').ljust(width)} {v}".rstrip() for k, v in pairs)


def _scopes_text(scopes: Sequence[int]) -> str:
    return ",".join(_label(_SCOPES, s) for s in scopes) or "-"


def _access_text(access: cpb.Access, detailed: bool) -> str:
    level = _label(_ACCESS, access.level)
    if detailed and access.users:
        return f"{level} ({', '.join(_clean(u) for u in access.users)})"
    return level


_CREDENTIAL_COLUMNS = ("ID", "NAME", "TYPE", "OWNER", "ACCESS", "SCOPES", "VERSION", "UPDATED")


def _credential_row(c: cpb.Credential) -> list[str]:
    return [
        c.id,
        _clean(c.name),
        _label(_TYPES, c.type),
        _clean(c.owner),
        _access_text(c.access, detailed=False),
        _scopes_text(c.scopes),
        str(c.version),
        _when(c.update_time),
    ]


def _credential_view(c: cpb.Credential) -> str:
    pairs = [
        ("id", c.id),
        ("name", _clean(c.name)),
        ("description", _clean(c.description)),
        ("type", _label(_TYPES, c.type)),
        ("owner", _clean(c.owner)),
        ("access", _access_text(c.access, detailed=True)),
        ("scopes", _scopes_text(c.scopes)),
    ]
    if cpb.CREDENTIAL_SCOPE_APP_ENGINE in c.scopes:
        apps = ", ".join(_clean(a) for a in c.app_engine.allowed_apps) or "all"
        contextless = "yes" if c.app_engine.allow_contextless_access else "no"
        pairs.append(("app engine", f"apps: {apps}; contextless access: {contextless}"))
    if c.HasField("certificate_info"):
        info = c.certificate_info
        pairs += [
            ("subject", _clean(info.subject)),
            ("issuer", _clean(info.issuer)),
            ("not after", _when(info.not_after)),
            ("sha256", info.sha256_fingerprint),
        ]
    pairs.append(("used by", _used_by_text(c)))
    pairs += [("version", str(c.version)), ("created", _when(c.create_time)), ("updated", _when(c.update_time))]
    return _fields(pairs)


def _used_by_text(c: cpb.Credential) -> str:
    """The monitors named (the first ones by id), and how to list the rest."""
    if not c.used_by_count:
        return "no monitors"
    names = ", ".join(u.monitor_id for u in c.used_by)
    text = f"{c.used_by_count} monitor{'s' if c.used_by_count != 1 else ''}: {names}"
    rest = c.used_by_count - len(c.used_by)
    if rest > 0:
        text += f" and {rest} more (credvault monitors list --credential {c.id})"
    return text


_TOKEN_COLUMNS = ("ID", "NAME", "OWNER", "KIND", "SCOPES", "EXPIRES", "LAST USED", "REVOKED")


def _token_row(t: tpb.TokenInfo) -> list[str]:
    return [
        t.id,
        _clean(t.name),
        _clean(t.owner),
        _label(_KINDS, t.kind),
        ",".join(_clean(s) for s in t.scopes) or "-",
        _when(t.expire_time, "never"),
        _when(t.last_used_time, "never"),
        _when(t.revoke_time),
    ]


def _token_view(t: tpb.TokenInfo) -> str:
    pairs = [(h.lower(), v) for h, v in zip(_TOKEN_COLUMNS, _token_row(t), strict=True)]
    pairs.insert(5, ("created", _when(t.create_time)))
    return _fields(pairs)


# --- credentials commands --------------------------------------------------------------------------------------------


def _output(ns: argparse.Namespace, response: Message, human: Callable[[], str]) -> None:
    if ns.json:
        _print_json(response)
    else:
        print(human())


def cmd_credentials_list(ns: argparse.Namespace, s: Session) -> None:
    request = cpb.ListCredentialsRequest(
        page_size=ns.page_size or 0,
        page_token=ns.page_token or "",
        type=_TYPES[ns.type] if ns.type else cpb.CREDENTIAL_TYPE_UNSPECIFIED,
        name_contains=ns.name or "",
        access_level=_ACCESS[ns.access] if ns.access else cpb.ACCESS_LEVEL_UNSPECIFIED,
        owner=ns.owner or "",
        scope=_SCOPES[ns.scope] if ns.scope else cpb.CREDENTIAL_SCOPE_UNSPECIFIED,
    )
    response = _all_credentials(s, request) if ns.all else s.call(s.credentials.ListCredentials, request)
    _output(ns, response, lambda: table(_CREDENTIAL_COLUMNS, [_credential_row(c) for c in response.credentials]))
    if response.next_page_token and not ns.json:
        _warn(f"more credentials: --all, or --page-token {response.next_page_token}")


def _all_credentials(s: Session, request: cpb.ListCredentialsRequest) -> cpb.ListCredentialsResponse:
    merged = cpb.ListCredentialsResponse()
    seen: set[str] = set()
    while True:
        page = s.call(s.credentials.ListCredentials, request)
        merged.credentials.extend(page.credentials)
        merged.total_size = page.total_size
        if not page.next_page_token or page.next_page_token in seen:
            return merged
        seen.add(page.next_page_token)
        request.page_token = page.next_page_token


def cmd_credentials_get(ns: argparse.Namespace, s: Session) -> None:
    response = s.call(s.credentials.GetCredential, cpb.GetCredentialRequest(id=ns.id))
    _output(ns, response, lambda: _credential_view(response.credential))


def cmd_credentials_create(ns: argparse.Namespace, s: Session) -> None:
    ctype = _TYPES[ns.type]
    default_scope = "extension-validation" if ctype == cpb.CREDENTIAL_TYPE_PUBLIC_CERTIFICATE else "synthetic"
    scopes = list(dict.fromkeys(ns.scope or [default_scope]))
    request = cpb.CreateCredentialRequest(
        name=ns.name,
        description=ns.description or "",
        scopes=[_SCOPES[x] for x in scopes],
        contents=_contents(ns, ctype),
    )
    access = _access(ns.access, ns.share_with)
    if access is not None:
        request.access.CopyFrom(access)
    app_engine = _app_engine(ns, scopes)
    if app_engine is not None:
        request.app_engine.CopyFrom(app_engine)
    response = s.call(s.credentials.CreateCredential, request)
    _output(ns, response, lambda: _credential_view(response.credential))


def cmd_credentials_overwrite(ns: argparse.Namespace, s: Session) -> None:
    current = s.call(s.credentials.GetCredential, cpb.GetCredentialRequest(id=ns.id)).credential
    request = cpb.OverwriteCredentialRequest(
        id=ns.id, contents=_contents(ns, current.type), expected_version=ns.expected_version or 0
    )
    access = _access(ns.access, ns.share_with)
    if access is not None:
        request.access.CopyFrom(access)
    response = s.call(s.credentials.OverwriteCredential, request)
    _output(ns, response, lambda: _credential_view(response.credential))


def cmd_credentials_update(ns: argparse.Namespace, s: Session) -> None:
    access = _access(ns.access, ns.share_with)
    if ns.name is None and ns.description is None and access is None:
        raise ConfigurationError("nothing to update: give --name, --description or --access/--share-with")
    request = cpb.UpdateCredentialMetadataRequest(id=ns.id, expected_version=ns.expected_version or 0)
    if ns.name is not None:
        request.name = ns.name
    if ns.description is not None:
        request.description = ns.description
    if access is not None:
        request.access.CopyFrom(access)
    response = s.call(s.credentials.UpdateCredentialMetadata, request)
    _output(ns, response, lambda: _credential_view(response.credential))


def cmd_credentials_delete(ns: argparse.Namespace, s: Session) -> None:
    response = s.call(s.credentials.DeleteCredential, cpb.DeleteCredentialRequest(id=ns.id))
    _output(ns, response, lambda: f"deleted {ns.id}")


# --- tokens and identity commands ------------------------------------------------------------------------------------


def _print_new_token(ns: argparse.Namespace, response: tpb.CreateTokenResponse | tpb.RotateTokenResponse) -> None:
    info = response.info
    expires = _when(info.expire_time, "never")
    _warn(f"token {info.id} ({_clean(info.name)!r}, owner {_clean(info.owner)}, expires {expires}) was issued.")
    _warn("it is shown once, now, and cannot be retrieved again: store it in a secret store.")
    if ns.json:
        _print_json(response)
    else:
        print(response.token)


def cmd_tokens_create(ns: argparse.Namespace, s: Session) -> None:
    kind = ns.kind or ("api" if ns.owner else "personal")
    request = tpb.CreateTokenRequest(
        name=ns.name, scopes=list(dict.fromkeys(ns.scope)), kind=_KINDS[kind], owner=ns.owner or ""
    )
    if ns.expires_in is not None:
        request.expire_time.FromDatetime(datetime.datetime.now(datetime.UTC) + ns.expires_in)
    _print_new_token(ns, s.call(s.tokens.CreateToken, request))


def cmd_tokens_list(ns: argparse.Namespace, s: Session) -> None:
    merged = tpb.ListTokensResponse()
    request = tpb.ListTokensRequest(owner=ns.owner or "")
    seen: set[str] = set()
    while True:
        page = s.call(s.tokens.ListTokens, request)
        merged.tokens.extend(page.tokens)
        if not page.next_page_token or page.next_page_token in seen:
            break
        seen.add(page.next_page_token)
        request.page_token = page.next_page_token
    _output(ns, merged, lambda: table(_TOKEN_COLUMNS, [_token_row(t) for t in merged.tokens]))


def cmd_tokens_lookup(ns: argparse.Namespace, s: Session) -> None:
    token = _secret_text(ns.token_to_lookup_file, "token to look up", "--token-to-lookup-file").strip()
    response = s.call(s.tokens.LookupToken, tpb.LookupTokenRequest(token=token))
    _output(ns, response, lambda: _token_view(response.info))


def cmd_tokens_revoke(ns: argparse.Namespace, s: Session) -> None:
    response = s.call(s.tokens.RevokeToken, tpb.RevokeTokenRequest(id=ns.id))
    _output(ns, response, lambda: _token_view(response.info))


def cmd_tokens_rotate(ns: argparse.Namespace, s: Session) -> None:
    request = tpb.RotateTokenRequest(id=ns.id)
    request.grace_period.FromTimedelta(ns.grace or datetime.timedelta(0))
    response = s.call(s.tokens.RotateToken, request)
    _warn(f"the previous token {response.previous.id} stops working at {_when(response.previous.revoke_time, 'once')}")
    _print_new_token(ns, response)


def _user_view(response: ipb.GetCurrentUserResponse) -> str:
    user = response.user
    pairs = [
        ("user", _clean(user.username)),
        ("token", response.token_id),
        ("token scopes", ", ".join(_clean(x) for x in response.token_scopes) or "-"),
        ("permissions", ", ".join(_label(_PERMISSIONS, p) for p in user.permissions) or "-"),
    ]
    for zone in user.zone_permissions:
        perms = ", ".join(_label(_PERMISSIONS, p) for p in zone.permissions)
        pairs.append((f"zone {_clean(zone.management_zone)}", perms or "-"))
    return _fields(pairs)


def cmd_whoami(ns: argparse.Namespace, s: Session) -> None:
    response = s.call(s.identity.GetCurrentUser, ipb.GetCurrentUserRequest())
    _output(ns, response, lambda: _user_view(response))


# --- argparse --------------------------------------------------------------------------------------------------------


def _refuse_value(use_instead: str) -> type[argparse.Action]:
    class Refuse(argparse.Action):
        """A hidden option a person might try (--password VALUE): refused without echoing the value."""

        def __call__(
            self, parser: argparse.ArgumentParser, ns: argparse.Namespace, values: Any, option: str | None = None
        ) -> None:
            parser.error(f"{option} is not accepted: secrets are never command-line arguments; use {use_instead}")

    return Refuse


_REFUSED_OPTIONS = {
    "--token": "CREDVAULT_TOKEN or --token-file FILE",
    "--password": "--password-file FILE ('-' for stdin)",
    "--token-value": "--token-value-file FILE ('-' for stdin)",
    "--certificate-password": "--certificate-password-file FILE ('-' for stdin)",
}


def _common_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    for option, use_instead in _REFUSED_OPTIONS.items():
        p.add_argument(
            option, action=_refuse_value(use_instead), nargs="?", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    g = p.add_argument_group("connection")
    g.add_argument("--server", metavar="HOST:PORT", help=f"vault API (env CREDVAULT_SERVER, default {DEFAULT_SERVER})")
    g.add_argument(
        "--ca", metavar="FILE", help="CA bundle PEM to verify the server (env CREDVAULT_CA_FILE; default: system roots)"
    )
    g.add_argument(
        "--insecure", action="store_true", help="plaintext, no TLS: development only (env CREDVAULT_INSECURE=1)"
    )
    g.add_argument(
        "--token-file", metavar="FILE", help="file holding the API token ('-': stdin); default env CREDVAULT_TOKEN"
    )
    g.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS", help="per call (default 30)")
    p.add_argument("--json", action="store_true", help="print the response as one JSON document")
    return p


def _contents_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("contents (secrets only from files, '-' for stdin, or a prompt on a terminal)")
    g.add_argument("--username", help="for username-password")
    g.add_argument("--password-file", metavar="FILE", help="for username-password")
    g.add_argument("--token-value-file", metavar="FILE", help="for token")
    g.add_argument("--certificate-file", metavar="FILE", help="for certificate: PKCS#12 or PEM with the private key")
    g.add_argument("--certificate-password-file", metavar="FILE", help="for an encrypted certificate")
    g.add_argument("--certificate-format", choices=list(_CERT_FORMATS), help="default: by extension (.p12/.pfx)")
    g.add_argument("--public-certificate-file", metavar="FILE", help="for public-certificate: PEM certificate(s)")


def _access_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--access", choices=list(_ACCESS), help="who may use it (with --share-with: shared)")
    p.add_argument("--share-with", action="append", metavar="USER", help="repeatable; for --access shared")


def add_command(
    group: Any, name: str, common: argparse.ArgumentParser, command: Command, text: str
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = group.add_parser(
        name, parents=[common], help=text, description=text, allow_abbrev=False
    )
    p.set_defaults(func=remote(command))
    return p


def _register_credentials(sub: Any, common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("credentials", help="manage credentials on a vault").add_subparsers(
        dest="credentials_command", required=True
    )
    p = add_command(group, "list", common, cmd_credentials_list, "list the credentials you may see")
    p.add_argument("--type", choices=list(_TYPES))
    p.add_argument("--name", help="case-insensitive substring of the name")
    p.add_argument("--access", choices=list(_ACCESS))
    p.add_argument("--owner")
    p.add_argument("--scope", choices=list(_SCOPES))
    p.add_argument("--page-size", type=int)
    p.add_argument("--page-token")
    p.add_argument("--all", action="store_true", help="follow page tokens to the end")

    p = add_command(group, "get", common, cmd_credentials_get, "show the metadata of a credential (never its contents)")
    p.add_argument("id")

    p = add_command(group, "create", common, cmd_credentials_create, "create a credential")
    p.add_argument("--name", required=True)
    p.add_argument("--description")
    p.add_argument("--type", required=True, choices=list(_TYPES))
    p.add_argument("--scope", action="append", choices=list(_SCOPES), help="repeatable (default synthetic)")
    _access_flags(p)
    p.add_argument("--allowed-app", action="append", metavar="APP", help="app-engine scope: repeatable (default all)")
    p.add_argument("--allow-contextless-access", action="store_true", help="app-engine scope")
    _contents_flags(p)

    p = add_command(group, "overwrite", common, cmd_credentials_overwrite, "replace the contents of a credential")
    p.add_argument("id")
    _access_flags(p)
    p.add_argument("--expected-version", type=int, help="fail (ABORTED) unless at this version")
    _contents_flags(p)

    p = add_command(group, "update", common, cmd_credentials_update, "change name, description or access")
    p.add_argument("id")
    p.add_argument("--name")
    p.add_argument("--description")
    _access_flags(p)
    p.add_argument("--expected-version", type=int, help="fail (ABORTED) unless at this version")

    p = add_command(group, "delete", common, cmd_credentials_delete, "delete a credential")
    p.add_argument("id")


def _register_tokens(sub: Any, common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("tokens", help="manage API tokens").add_subparsers(dest="tokens_command", required=True)
    p = add_command(group, "create", common, cmd_tokens_create, "issue a token; it is printed alone on stdout, once")
    p.add_argument("--name", required=True)
    p.add_argument("--scope", action="append", required=True, help="repeatable, e.g. credentialVault.read")
    p.add_argument("--kind", choices=list(_KINDS), help="default personal (api with --owner)")
    p.add_argument("--owner", help="owner of an api token (default: you)")
    p.add_argument("--expires-in", type=parse_duration, metavar="DURATION", help="e.g. 30d, 12h, 3600s")

    p = add_command(group, "list", common, cmd_tokens_list, "list tokens (yours, or --owner's)")
    p.add_argument("--owner")

    p = add_command(group, "lookup", common, cmd_tokens_lookup, "show the metadata of a token you hold")
    p.add_argument("--token-to-lookup-file", metavar="FILE", help="file holding the token ('-': stdin)")

    p = add_command(group, "revoke", common, cmd_tokens_revoke, "revoke a token at once")
    p.add_argument("id")

    p = add_command(group, "rotate", common, cmd_tokens_rotate, "issue a replacement; the old one ends after --grace")
    p.add_argument("id")
    p.add_argument("--grace", type=parse_duration, metavar="DURATION", help="old token keeps working (default 0)")


def register(sub: Any) -> None:
    """Adds `credentials ...`, `tokens ...` and `whoami` to the `credvault` subcommands."""
    common = _common_parser()
    _register_credentials(sub, common)
    _register_tokens(sub, common)
    add_command(sub, "whoami", common, cmd_whoami, "show your user, permissions and token")
