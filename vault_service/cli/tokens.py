"""`credvault tokens ...` and `credvault whoami`: API tokens and the caller's user over gRPC.

Connection flags, CREDVAULT_* environment, output and gRPC error handling are those of :mod:`vault_service.cli.session`.
A new token is printed alone on stdout, once; the token to look up is read from a file or stdin, never an argument.
"""

from __future__ import annotations

import argparse
import datetime
import functools
from typing import Any

from credvault.v1 import identity_pb2 as ipb
from credvault.v1 import tokens_pb2 as tpb
from vault_service.cli import external_source
from vault_service.cli.session import (
    Session,
    add_command,
    add_group,
    all_pages,
    clean,
    common_parser,
    fields,
    label,
    output,
    parse_duration,
    print_json,
    secret_text,
    table,
    warn,
    when,
)
from vault_service.errors import UsageError

_KINDS: dict[str, tpb.TokenKind.ValueType] = {"personal": tpb.TOKEN_KIND_PERSONAL, "api": tpb.TOKEN_KIND_API}
_PERMISSIONS: dict[str, ipb.Permission.ValueType] = {
    "view-environment": ipb.PERMISSION_VIEW_ENVIRONMENT,
    "change-monitoring-settings": ipb.PERMISSION_CHANGE_MONITORING_SETTINGS,
    "change-environment-settings": ipb.PERMISSION_CHANGE_ENVIRONMENT_SETTINGS,
}


# --- output ----------------------------------------------------------------------------------------------------------


_TOKEN_COLUMNS = ("ID", "NAME", "OWNER", "KIND", "SCOPES", "EXPIRES", "LAST USED", "REVOKED")


def _token_row(t: tpb.TokenInfo) -> list[str]:
    return [
        t.id,
        clean(t.name),
        clean(t.owner),
        label(_KINDS, t.kind),
        ",".join(clean(s) for s in t.scopes) or "-",
        when(t.expire_time, "never"),
        when(t.last_used_time, "never"),
        when(t.revoke_time),
    ]


def _token_view(t: tpb.TokenInfo) -> str:
    pairs = [(h.lower(), v) for h, v in zip(_TOKEN_COLUMNS, _token_row(t), strict=True)]
    pairs.insert(5, ("created", when(t.create_time)))
    return fields(pairs)


# --- commands --------------------------------------------------------------------------------------------------------


def _print_new_token(ns: argparse.Namespace, response: tpb.CreateTokenResponse | tpb.RotateTokenResponse) -> None:
    info = response.info
    expires = when(info.expire_time, "never")
    warn(f"token {info.id} ({clean(info.name)!r}, owner {clean(info.owner)}, expires {expires}) was issued.")
    warn("it is shown once, now, and cannot be retrieved again: store it in a secret store.")
    if ns.json:
        print_json(response)
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
    for page in all_pages(functools.partial(s.call, s.tokens.ListTokens), request):
        merged.tokens.extend(page.tokens)
    output(ns, merged, lambda: table(_TOKEN_COLUMNS, [_token_row(t) for t in merged.tokens]))


def cmd_tokens_lookup(ns: argparse.Namespace, s: Session) -> None:
    token = secret_text(ns.token_to_lookup_file, "token to look up", "--token-to-lookup-file").strip()
    response = s.call(s.tokens.LookupToken, tpb.LookupTokenRequest(token=token))
    output(ns, response, lambda: _token_view(response.info))


def cmd_tokens_revoke(ns: argparse.Namespace, s: Session) -> None:
    response = s.call(s.tokens.RevokeToken, tpb.RevokeTokenRequest(id=ns.id))
    output(ns, response, lambda: _token_view(response.info))


def cmd_tokens_rotate(ns: argparse.Namespace, s: Session) -> None:
    request = tpb.RotateTokenRequest(id=ns.id)
    request.grace_period.FromTimedelta(ns.grace or datetime.timedelta(0))
    response = s.call(s.tokens.RotateToken, request)
    warn(f"the previous token {response.previous.id} stops working at {when(response.previous.revoke_time, 'once')}")
    if response.external_version:  # a rotation policy wrote the new token to the external vault: it is only there
        warn(
            f"token {response.info.id} was issued and written to the external vault"
            f" (version {response.external_version})"
        )
        output(ns, response, lambda: _token_view(response.info))
        return
    _print_new_token(ns, response)


def cmd_tokens_set_rotation(ns: argparse.Namespace, s: Session) -> None:
    request = tpb.SetTokenRotationRequest(id=ns.id)
    if not ns.clear:
        if not ns.target:
            raise UsageError("give --target FILE.json (where the new token is written), or --clear")
        request.rotation.target.CopyFrom(external_source.read_source(ns.target))
        request.rotation.interval.FromTimedelta(ns.every or datetime.timedelta(0))
        request.rotation.grace_period.FromTimedelta(ns.grace or datetime.timedelta(0))
    response = s.call(s.tokens.SetTokenRotation, request)
    output(ns, response, lambda: _rotation_view(response))


def _rotation_view(response: tpb.SetTokenRotationResponse) -> str:
    if not response.HasField("rotation"):
        return fields([("rotation", "none (rotate on demand only, the token printed once)")])
    r = response.rotation
    target = r.target
    return fields(
        [
            (
                "writes to",
                f"{clean(target.address)} {clean(target.kv.mount)}/{clean(target.kv.path)}"
                f" field {clean(target.token_key)}",
            ),
            ("every", f"{r.interval.seconds}s" if r.interval.seconds else "on demand (tokens rotate ID)"),
            ("grace", f"{r.grace_period.seconds}s"),
            ("next rotation", when(response.next_rotation_time, "-")),
        ]
    )


def _user_view(response: ipb.GetCurrentUserResponse) -> str:
    user = response.user
    pairs = [
        ("user", clean(user.username)),
        ("token", response.token_id),
        ("token scopes", ", ".join(clean(x) for x in response.token_scopes) or "-"),
        ("permissions", ", ".join(label(_PERMISSIONS, p) for p in user.permissions) or "-"),
    ]
    for zone in user.zone_permissions:
        perms = ", ".join(label(_PERMISSIONS, p) for p in zone.permissions)
        pairs.append((f"zone {clean(zone.management_zone)}", perms or "-"))
    return fields(pairs)


def cmd_whoami(ns: argparse.Namespace, s: Session) -> None:
    response = s.call(s.identity.GetCurrentUser, ipb.GetCurrentUserRequest())
    output(ns, response, lambda: _user_view(response))


# --- argparse --------------------------------------------------------------------------------------------------------


def register(sub: Any) -> None:
    """Adds `tokens ...` and `whoami` to the `credvault` subcommands."""
    common = common_parser()
    group = add_group(sub, "tokens", "manage API tokens")
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

    p = add_command(
        group,
        "set-rotation",
        common,
        cmd_tokens_set_rotation,
        "rotate a token into an external vault (KV v2 field, check-and-set), every --every or on `tokens rotate`",
    )
    p.add_argument("id")
    p.add_argument("--target", metavar="FILE", help="an ExternalSource in JSON (as for credentials); tokenKey = field")
    p.add_argument("--every", type=parse_duration, metavar="DURATION", help="e.g. 30d (default: on demand only)")
    p.add_argument("--grace", type=parse_duration, metavar="DURATION", help="old token keeps working (default 0)")
    p.add_argument("--clear", action="store_true", help="remove the rotation policy")

    add_command(sub, "whoami", common, cmd_whoami, "show your user, permissions and token")
