"""`credvault credentials ...`: create, list, show, overwrite, update and delete credentials over gRPC.

Connection flags, CREDVAULT_* environment, output and gRPC error handling are those of :mod:`vault_service.cli.session`.
Secret contents come from files (``-`` for stdin) or a no-echo prompt on a terminal, never from arguments.
"""

from __future__ import annotations

import argparse
import functools
import getpass
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from credvault.v1 import credentials_pb2 as cpb
from vault_service import validation
from vault_service.certificates import MAX_CERTIFICATE_BYTES
from vault_service.cli import external_source
from vault_service.cli.session import (
    Session,
    add_command,
    add_group,
    add_paging_flags,
    all_pages,
    clean,
    common_parser,
    fields,
    label,
    output,
    required_file,
    secret_text,
    table,
    warn,
    when,
)
from vault_service.errors import InvalidArgument, UsageError

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

# The secret options that fit each credential type (the rest are refused, so nothing is silently ignored).
_OPTIONS_OF_TYPE: dict[int, frozenset[str]] = {
    cpb.CREDENTIAL_TYPE_USERNAME_PASSWORD: frozenset({"username", "password_file"}),
    cpb.CREDENTIAL_TYPE_CERTIFICATE: frozenset({"certificate_file", "certificate_password_file", "certificate_format"}),
    cpb.CREDENTIAL_TYPE_TOKEN: frozenset({"token_value_file"}),
    cpb.CREDENTIAL_TYPE_PUBLIC_CERTIFICATE: frozenset({"public_certificate_file"}),
}
_CONTENTS_OPTIONS = frozenset().union(*_OPTIONS_OF_TYPE.values())


# --- contents --------------------------------------------------------------------------------------------------------


def _checked_secret(value: str, option: str) -> str:
    """The vault's own limits on a secret text, checked before sending: a value past the message size limit would
    otherwise fail as transport text, without naming the field."""
    try:
        return validation.secret_field(option, value, required=True)
    except InvalidArgument as exc:
        raise UsageError(f"{exc.message} (the file's text, one trailing newline removed)") from None


def _checked_file(data: bytes, option: str) -> bytes:
    if len(data) > MAX_CERTIFICATE_BYTES:
        raise UsageError(f"{option}: the file has {len(data)} bytes; at most {MAX_CERTIFICATE_BYTES} are allowed")
    return data


def _certificate_format(ns: argparse.Namespace) -> cpb.CertificateFormat.ValueType:
    if ns.certificate_format is not None:
        return _CERT_FORMATS[ns.certificate_format]
    suffix = pathlib.Path(ns.certificate_file).suffix.lower()
    return cpb.CERTIFICATE_FORMAT_PKCS12 if suffix in (".p12", ".pfx") else cpb.CERTIFICATE_FORMAT_PEM


def _certificate_password(ns: argparse.Namespace, fmt: cpb.CertificateFormat.ValueType, data: bytes) -> str:
    option, what = "--certificate-password-file", "certificate password"
    if ns.certificate_password_file is not None:
        return secret_text(ns.certificate_password_file, what, option)
    if fmt == cpb.CERTIFICATE_FORMAT_PKCS12:
        return getpass.getpass(f"{what} (empty if none): ") if sys.stdin.isatty() else ""
    if b"ENCRYPTED" in data:  # an encrypted PEM private key needs its password
        return secret_text(None, what, option)
    return ""


def _certificate(ns: argparse.Namespace) -> cpb.Certificate:
    data = _checked_file(required_file(ns.certificate_file, "certificate", "--certificate-file"), "--certificate-file")
    fmt = _certificate_format(ns)
    return cpb.Certificate(data=data, password=_certificate_password(ns, fmt, data), format=fmt)


def _refuse_other_contents_options(ns: argparse.Namespace, ctype: int) -> None:
    allowed = _OPTIONS_OF_TYPE.get(ctype, frozenset())
    given = sorted(o for o in _CONTENTS_OPTIONS - allowed if getattr(ns, o, None) is not None)
    if given:
        names = ", ".join("--" + o.replace("_", "-") for o in given)
        raise UsageError(f"not for a {label(_TYPES, ctype)} credential: {names}")


def _contents(ns: argparse.Namespace, ctype: int) -> cpb.CredentialContents:
    _refuse_other_contents_options(ns, ctype)
    if ctype == cpb.CREDENTIAL_TYPE_USERNAME_PASSWORD:
        if not ns.username:
            raise UsageError("--username is required for a username-password credential")
        password = _checked_secret(secret_text(ns.password_file, "password", "--password-file"), "--password-file")
        return cpb.CredentialContents(username_password=cpb.UsernamePassword(username=ns.username, password=password))
    if ctype == cpb.CREDENTIAL_TYPE_CERTIFICATE:
        return cpb.CredentialContents(certificate=_certificate(ns))
    if ctype == cpb.CREDENTIAL_TYPE_TOKEN:
        value = _checked_secret(
            secret_text(ns.token_value_file, "token value", "--token-value-file"), "--token-value-file"
        )
        return cpb.CredentialContents(token=cpb.Token(token=value))
    if ctype == cpb.CREDENTIAL_TYPE_PUBLIC_CERTIFICATE:
        option = "--public-certificate-file"
        pem = _checked_file(required_file(ns.public_certificate_file, "public certificate", option), option)
        return cpb.CredentialContents(public_certificate=cpb.PublicCertificate(pem=pem))
    raise UsageError(f"this client cannot write credentials of type {ctype}")


def _access(level: str | None, users: list[str] | None) -> cpb.Access | None:
    if level is None and not users:
        return None
    return cpb.Access(level=_ACCESS[level or "shared"], users=users or [])


def _app_engine(ns: argparse.Namespace, scopes: Sequence[str]) -> cpb.AppEngineAccess | None:
    if "app-engine" not in scopes and not ns.allowed_app and not ns.allow_contextless_access:
        return None
    return cpb.AppEngineAccess(allowed_apps=ns.allowed_app or [], allow_contextless_access=ns.allow_contextless_access)


# --- output ----------------------------------------------------------------------------------------------------------


def _scopes_text(scopes: Sequence[int]) -> str:
    return ",".join(label(_SCOPES, s) for s in scopes) or "-"


def _access_text(access: cpb.Access, detailed: bool) -> str:
    level = label(_ACCESS, access.level)
    if detailed and access.users:
        return f"{level} ({', '.join(clean(u) for u in access.users)})"
    return level


_CREDENTIAL_COLUMNS = ("ID", "NAME", "TYPE", "OWNER", "ACCESS", "SCOPES", "VERSION", "UPDATED")


def _credential_row(c: cpb.Credential) -> list[str]:
    return [
        c.id,
        clean(c.name),
        label(_TYPES, c.type),
        clean(c.owner),
        _access_text(c.access, detailed=False),
        _scopes_text(c.scopes),
        str(c.version),
        when(c.update_time),
    ]


def _credential_view(c: cpb.Credential) -> str:
    pairs = [
        ("id", c.id),
        ("name", clean(c.name)),
        ("description", clean(c.description)),
        ("type", label(_TYPES, c.type)),
        ("owner", clean(c.owner)),
        ("access", _access_text(c.access, detailed=True)),
        ("scopes", _scopes_text(c.scopes)),
    ]
    if cpb.CREDENTIAL_SCOPE_APP_ENGINE in c.scopes:
        apps = ", ".join(clean(a) for a in c.app_engine.allowed_apps) or "all"
        contextless = "yes" if c.app_engine.allow_contextless_access else "no"
        pairs.append(("app engine", f"apps: {apps}; contextless access: {contextless}"))
    if c.HasField("certificate_info"):
        info = c.certificate_info
        pairs += [
            ("subject", clean(info.subject)),
            ("issuer", clean(info.issuer)),
            ("not after", when(info.not_after)),
            ("sha256", info.sha256_fingerprint),
        ]
    pairs += external_source.view_pairs(c)
    pairs.append(("used by", _used_by_text(c)))
    pairs += [("version", str(c.version)), ("created", when(c.create_time)), ("updated", when(c.update_time))]
    return fields(pairs)


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


# --- commands --------------------------------------------------------------------------------------------------------


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
    output(ns, response, lambda: table(_CREDENTIAL_COLUMNS, [_credential_row(c) for c in response.credentials]))
    if response.next_page_token and not ns.json:
        warn(f"more credentials: --all, or --page-token {response.next_page_token}")


def _all_credentials(s: Session, request: cpb.ListCredentialsRequest) -> cpb.ListCredentialsResponse:
    merged = cpb.ListCredentialsResponse()
    for page in all_pages(functools.partial(s.call, s.credentials.ListCredentials), request):
        merged.credentials.extend(page.credentials)
        merged.total_size = page.total_size
    return merged


def cmd_credentials_get(ns: argparse.Namespace, s: Session) -> None:
    response = s.call(s.credentials.GetCredential, cpb.GetCredentialRequest(id=ns.id))
    output(ns, response, lambda: _credential_view(response.credential))


def cmd_credentials_create(ns: argparse.Namespace, s: Session) -> None:
    ctype = _TYPES[ns.type]
    default_scope = "extension-validation" if ctype == cpb.CREDENTIAL_TYPE_PUBLIC_CERTIFICATE else "synthetic"
    scopes = list(dict.fromkeys(ns.scope or [default_scope]))
    request = cpb.CreateCredentialRequest(
        name=ns.name,
        description=ns.description or "",
        scopes=[_SCOPES[x] for x in scopes],
    )
    if ns.external_source:
        given = sorted("--" + o.replace("_", "-") for o in _CONTENTS_OPTIONS if getattr(ns, o, None) is not None)
        if given:
            raise UsageError(f"not with --external-source (the values come from there): {', '.join(given)}")
        request.external_source.CopyFrom(external_source.read_source(ns.external_source))
        request.type = ctype
    else:
        request.contents.CopyFrom(_contents(ns, ctype))
    access = _access(ns.access, ns.share_with)
    if access is not None:
        request.access.CopyFrom(access)
    app_engine = _app_engine(ns, scopes)
    if app_engine is not None:
        request.app_engine.CopyFrom(app_engine)
    response = s.call(s.credentials.CreateCredential, request)
    output(ns, response, lambda: _credential_view(response.credential))


def cmd_credentials_sync(ns: argparse.Namespace, s: Session) -> None:
    response = s.call(s.credentials.SyncCredential, cpb.SyncCredentialRequest(id=ns.id))
    output(ns, response, lambda: _credential_view(response.credential))


def cmd_credentials_overwrite(ns: argparse.Namespace, s: Session) -> None:
    current = s.call(s.credentials.GetCredential, cpb.GetCredentialRequest(id=ns.id)).credential
    request = cpb.OverwriteCredentialRequest(
        id=ns.id, contents=_contents(ns, current.type), expected_version=ns.expected_version or 0
    )
    access = _access(ns.access, ns.share_with)
    if access is not None:
        request.access.CopyFrom(access)
    response = s.call(s.credentials.OverwriteCredential, request)
    output(ns, response, lambda: _credential_view(response.credential))


def cmd_credentials_update(ns: argparse.Namespace, s: Session) -> None:
    access = _access(ns.access, ns.share_with)
    if ns.external_source:
        _change_source(ns, s, access)
        return
    if ns.name is None and ns.description is None and access is None:
        raise UsageError("nothing to update: give --name, --description, --access/--share-with or --external-source")
    request = cpb.UpdateCredentialMetadataRequest(id=ns.id, expected_version=ns.expected_version or 0)
    if ns.name is not None:
        request.name = ns.name
    if ns.description is not None:
        request.description = ns.description
    if access is not None:
        request.access.CopyFrom(access)
    response = s.call(s.credentials.UpdateCredentialMetadata, request)
    output(ns, response, lambda: _credential_view(response.credential))


def _change_source(ns: argparse.Namespace, s: Session, access: cpb.Access | None) -> None:
    """`update --external-source`: an overwrite with a new source (API OverwriteCredential), on its own."""
    if ns.name is not None or ns.description is not None:
        raise UsageError("--external-source goes without --name/--description (update those separately)")
    request = cpb.OverwriteCredentialRequest(
        id=ns.id,
        external_source=external_source.read_source(ns.external_source),
        expected_version=ns.expected_version or 0,
    )
    if access is not None:
        request.access.CopyFrom(access)
    response = s.call(s.credentials.OverwriteCredential, request)
    output(ns, response, lambda: _credential_view(response.credential))


def cmd_credentials_delete(ns: argparse.Namespace, s: Session) -> None:
    """A credential monitors use is deleted only with --force: the deletion disables them (the API's rule)."""
    if not ns.force:
        current = s.call(s.credentials.GetCredential, cpb.GetCredentialRequest(id=ns.id)).credential
        if current.used_by_count:
            raise UsageError(
                f"not deleted: {ns.id} is used by {_used_by_text(current)}; deleting it disables them."
                " Pass --force to delete it anyway"
            )
    response = s.call(s.credentials.DeleteCredential, cpb.DeleteCredentialRequest(id=ns.id))
    output(ns, response, lambda: _deleted_text(ns.id, response))


def _deleted_text(credential_id: str, response: cpb.DeleteCredentialResponse) -> str:
    disabled = response.disabled_monitor_ids
    if not disabled:
        return f"deleted {credential_id}"
    return f"deleted {credential_id}; disabled {len(disabled)} monitor(s) that used it: {', '.join(disabled)}"


# --- argparse --------------------------------------------------------------------------------------------------------


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


def register(sub: Any) -> None:
    """Adds `credentials ...` to the `credvault` subcommands."""
    common = common_parser()
    group = add_group(sub, "credentials", "manage credentials on a vault")
    p = add_command(group, "list", common, cmd_credentials_list, "list the credentials you may see")
    p.add_argument("--type", choices=list(_TYPES))
    p.add_argument("--name", help="case-insensitive substring of the name")
    p.add_argument("--access", choices=list(_ACCESS))
    p.add_argument("--owner")
    p.add_argument("--scope", choices=list(_SCOPES))
    add_paging_flags(p)

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
    p.add_argument(
        "--external-source",
        metavar="FILE.json",
        help="username-password or token: synchronize the values from this external vault source (JSON) instead",
    )

    p = add_command(group, "sync", common, cmd_credentials_sync, "synchronize a credential from its external vault now")
    p.add_argument("id")

    p = add_command(group, "overwrite", common, cmd_credentials_overwrite, "replace the contents of a credential")
    p.add_argument("id")
    _access_flags(p)
    p.add_argument("--expected-version", type=int, help="fail (ABORTED) unless at this version")
    _contents_flags(p)

    p = add_command(
        group, "update", common, cmd_credentials_update, "change name, description, access or external source"
    )
    p.add_argument("id")
    p.add_argument("--name")
    p.add_argument("--description")
    _access_flags(p)
    p.add_argument(
        "--external-source",
        metavar="FILE.json",
        help="username-password or token: synchronize from this source (JSON) from now on; due at once",
    )
    p.add_argument("--expected-version", type=int, help="fail (ABORTED) unless at this version")

    p = add_command(group, "delete", common, cmd_credentials_delete, "delete a credential")
    p.add_argument("id")
    p.add_argument("--force", action="store_true", help="delete it even if monitors use it (they are disabled)")
