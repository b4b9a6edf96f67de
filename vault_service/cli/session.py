"""What the client command groups of `credvault` share: the connection and its session, gRPC errors as messages,
secret input, parsing, output and the common flags.

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
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn, Protocol, TypeVar

import grpc
from google.protobuf import timestamp_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from credvault import settings
from credvault.v1 import audit_pb2_grpc as agrpc
from credvault.v1 import credentials_pb2_grpc as cgrpc
from credvault.v1 import identity_pb2_grpc as igrpc
from credvault.v1 import monitors_pb2_grpc as mgrpc
from credvault.v1 import tokens_pb2_grpc as tgrpc
from vault_service.errors import ConfigurationError, UsageError

DEFAULT_SERVER = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 30.0

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

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)

# --- connection ------------------------------------------------------------------------------------------------------


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


def read_bytes(path: str, option: str) -> bytes:
    """A file's bytes ("-": stdin). The error names the path as given: a path is not a secret (secrets are never
    arguments), and a user who mistyped one needs to see which."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return pathlib.Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the {option} file {path!r}: {exc.strerror or type(exc).__name__}") from None


def _api_token(ns: argparse.Namespace) -> str:
    if ns.token_file is not None:
        token, origin = decode(read_bytes(ns.token_file, "--token-file"), "--token-file").strip(), "--token-file"
    else:
        token, origin = os.environ.get("CREDVAULT_TOKEN", "").strip(), "CREDVAULT_TOKEN"
    if not token:
        raise ConfigurationError(
            "no API token: set CREDVAULT_TOKEN (or pass --token-file FILE); tokens are never taken as arguments"
        )
    if not _TOKEN_CHARS.fullmatch(token):
        raise ConfigurationError(f"the API token from {origin} holds characters no token has")
    return token


@dataclasses.dataclass(frozen=True)
class _Endpoint:
    """Where the commands connect, and how."""

    target: str
    plaintext: bool


def _endpoint(ns: argparse.Namespace) -> _Endpoint:
    target = ns.server or os.environ.get("CREDVAULT_SERVER") or DEFAULT_SERVER
    return _Endpoint(target, bool(ns.insecure) or _env_flag("CREDVAULT_INSECURE"))


def _channel(ns: argparse.Namespace, endpoint: _Endpoint) -> grpc.Channel:
    target = endpoint.target
    if endpoint.plaintext:
        if not _is_loopback(target):
            warn(f"warning: sending the API token in plaintext to {target} (--insecure is for development)")
        return grpc.insecure_channel(target)
    ca_file = ns.ca or os.environ.get("CREDVAULT_CA_FILE")
    roots = read_bytes(ca_file, "CA (--ca, CREDVAULT_CA_FILE)") if ca_file else None
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=roots))


def _check_stdin_once(ns: argparse.Namespace) -> None:
    readers = [name for name in STDIN_OPTIONS if getattr(ns, name, None) == "-"]
    if len(readers) > 1:
        names = ", ".join("--" + n.replace("_", "-") for n in readers)
        raise UsageError(f"only one option can read stdin ('-'); got {names}")


# What grpc's UNAVAILABLE details say when client and server disagree on TLS, or nothing listens.
_TLS_TO_PLAINTEXT = ("WRONG_VERSION_NUMBER", "Tls handshake failed")
_PLAINTEXT_TO_TLS = ("Socket closed",)
_REFUSED = ("Connection refused",)


def connection_hint(details: str, endpoint: _Endpoint) -> str | None:
    """What to change when a call could not reach the vault, from grpc's UNAVAILABLE details; None if unsure."""
    if not endpoint.plaintext and any(mark in details for mark in _TLS_TO_PLAINTEXT):
        return (
            f"the server at {endpoint.target} does not speak TLS (a plaintext server such as credvault dev):"
            " set CREDVAULT_INSECURE=1 or pass --insecure"
        )
    if endpoint.plaintext and any(mark in details for mark in _PLAINTEXT_TO_TLS):
        return (
            f"the server at {endpoint.target} closed a plaintext connection; if it uses TLS, unset"
            " CREDVAULT_INSECURE and drop --insecure (and give its CA with --ca or CREDVAULT_CA_FILE)"
        )
    if any(mark in details for mark in _REFUSED):
        return f"nothing listens at {endpoint.target}: is the vault running? (CREDVAULT_SERVER or --server)"
    return None


def _fail_rpc(exc: grpc.RpcError, endpoint: _Endpoint) -> NoReturn:
    code = getattr(exc, "code", None)
    details = getattr(exc, "details", None)
    status = code() if callable(code) else None
    name = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
    text = clean(str((details() if callable(details) else None) or exc))
    hint = connection_hint(text, endpoint) if status == grpc.StatusCode.UNAVAILABLE else None
    print(f"credvault: {name}: {hint or text}", file=sys.stderr)
    raise SystemExit(1)


def remote(command: Command) -> Callable[[argparse.Namespace], None]:
    """Wraps a command: resolve the token, open the channel, map gRPC errors to a message and exit status 1."""

    @functools.wraps(command)
    def run(ns: argparse.Namespace) -> None:
        _check_stdin_once(ns)
        metadata = (("authorization", f"Api-Token {_api_token(ns)}"),)
        endpoint = _endpoint(ns)
        with _channel(ns, endpoint) as channel:
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
                _fail_rpc(exc, endpoint)

    return run


class _PageRequest(Protocol):
    page_token: str


class _Page(Protocol):
    @property
    def next_page_token(self) -> str: ...


PageRequest = TypeVar("PageRequest", bound=_PageRequest)
Page = TypeVar("Page", bound=_Page)


def all_pages(call: Callable[[PageRequest], Page], request: PageRequest) -> Iterator[Page]:
    """The pages of a list call from ``request`` on, following next_page_token until it ends or comes again."""
    seen: set[str] = set()
    while True:
        page = call(request)
        yield page
        if not page.next_page_token or page.next_page_token in seen:
            return
        seen.add(page.next_page_token)
        request.page_token = page.next_page_token


# --- secrets ---------------------------------------------------------------------------------------------------------


def decode(data: bytes, option: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{option}: the file is not UTF-8 text") from None


def _strip_newline(text: str) -> str:
    for ending in ("\r\n", "\n"):
        if text.endswith(ending):
            return text[: -len(ending)]
    return text


def secret_text(path: str | None, what: str, option: str) -> str:
    """A text secret from FILE / stdin ("-"), else a no-echo prompt on a terminal; one trailing newline goes."""
    if path is not None and not (path == "-" and sys.stdin.isatty()):
        return _strip_newline(decode(read_bytes(path, option), option))
    if sys.stdin.isatty():
        return getpass.getpass(f"{what}: ")
    raise UsageError(f"{option} FILE is required ('-' for stdin): secrets are never taken as arguments")


def required_file(path: str | None, what: str, option: str) -> bytes:
    if path is None:
        raise UsageError(f"{option} FILE is required for a {what} ('-' for stdin)")
    return read_bytes(path, option)


# --- parsing helpers -------------------------------------------------------------------------------------------------


def parse_duration(text: str) -> datetime.timedelta:
    """``30d``, ``12h``, ``3600s``, ``1h30m``, ``2w`` (:func:`credvault.settings.parse_duration`'s grammar)."""
    try:
        return datetime.timedelta(seconds=settings.parse_duration(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30d, 12h, 90m or 3600s") from None


def label(names: dict[str, Any], value: int) -> str:
    for name, number in names.items():
        if number == value:
            return name
    return "unspecified" if value == 0 else str(value)


def clean(text: str) -> str:
    """No control characters from the server reach the terminal."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def when(ts: timestamp_pb2.Timestamp, unset: str = "-") -> str:
    if ts.ByteSize() == 0:
        return unset
    return ts.ToDatetime(tzinfo=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- output ----------------------------------------------------------------------------------------------------------


def warn(message: str) -> None:
    print(f"credvault: {message}", file=sys.stderr)


def print_json(message: Message) -> None:
    doc = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    print(json.dumps(doc, indent=2, ensure_ascii=False))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [headers, *rows]]
    return "\n".join(lines)


def fields(pairs: Sequence[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in pairs) + 1
    return "\n".join(f"{(k + ':').ljust(width)} {v}".rstrip() for k, v in pairs)


def output(ns: argparse.Namespace, response: Message, human: Callable[[], str]) -> None:
    if ns.json:
        print_json(response)
    else:
        print(human())


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


def common_parser() -> argparse.ArgumentParser:
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


def subcommands(parser: argparse.ArgumentParser, dest: str) -> Any:
    """The subcommands of ``parser``; a missing one is reported as COMMAND, never by its internal name."""
    return parser.add_subparsers(dest=dest, metavar="COMMAND", title="commands", required=True)


def add_group(sub: Any, name: str, text: str, description: str | None = None) -> Any:
    """A command group (`credvault <name> ...`) whose subcommands are added with :func:`add_command`."""
    return subcommands(sub.add_parser(name, help=text, description=description or text), f"{name}_command")


def add_paging_flags(p: argparse.ArgumentParser) -> None:
    """--page-size and --page-token of a list command, and --all to follow the pages to the end."""
    p.add_argument("--page-size", type=int)
    p.add_argument("--page-token")
    p.add_argument("--all", action="store_true", help="follow page tokens to the end")


def add_command(
    group: Any, name: str, common: argparse.ArgumentParser, command: Command, text: str
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = group.add_parser(
        name, parents=[common], help=text, description=text, allow_abbrev=False
    )
    p.set_defaults(func=remote(command))
    return p
