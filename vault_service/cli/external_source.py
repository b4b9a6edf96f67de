"""`credvault credentials create|update --external-source FILE.json`, `credvault credentials sync ID`, and the external
source and sync status in `credentials get`.

The file holds an ``ExternalSource`` in protobuf's JSON mapping (no secret: the AppRole role id and secret id and
the CA are credentials of the vault, named by id)::

    {"address": "https://bao.internal:8200", "caCertificateCredentialId": "CREDENTIALS_VAULT-...",
     "kv": {"mount": "secret", "path": "team/shop", "version": "KV_VERSION_V2"},
     "usernameKey": "user", "passwordKey": "pass",
     "approle": {"roleIdCredentialId": "CREDENTIALS_VAULT-...", "secretIdCredentialId": "CREDENTIALS_VAULT-..."},
     "syncInterval": "300s"}

``provider`` may be left out (HashiCorp Vault / OpenBao); the README lists the fields of Azure Key Vault and
CyberArk CCP. `credvault credentials update ID --external-source FILE.json` changes a credential's source.
"""

from __future__ import annotations

from google.protobuf import json_format

from credvault.v1 import credentials_pb2 as cpb
from vault_service.cli.session import clean, read_bytes, when
from vault_service.errors import UsageError

MAX_SOURCE_FILE = 64 * 1024


def read_source(path: str) -> cpb.ExternalSource:
    raw = read_bytes(path, "--external-source")
    if len(raw) > MAX_SOURCE_FILE:
        raise UsageError(f"--external-source {path}: over {MAX_SOURCE_FILE} bytes")
    source = cpb.ExternalSource()
    try:
        json_format.Parse(raw.decode("utf-8"), source)
    except (json_format.ParseError, UnicodeDecodeError) as exc:
        raise UsageError(f"--external-source {path}: not an ExternalSource in JSON ({exc})") from None
    if not source.provider:
        source.provider = cpb.EXTERNAL_PROVIDER_HASHICORP_VAULT
    return source


def view_pairs(c: cpb.Credential) -> list[tuple[str, str]]:
    """The lines of `credentials get` for a synchronized credential (none for others)."""
    if not c.HasField("external_source"):
        return []
    src, status = c.external_source, c.sync_status
    kv = "v1" if src.kv.version == cpb.KV_VERSION_V1 else "v2"
    keys = f"token: {src.token_key}" if src.token_key else f"username: {src.username_key}, password: {src.password_key}"
    pairs = [("synchronized from", clean(src.address))]
    if src.provider == cpb.EXTERNAL_PROVIDER_HASHICORP_VAULT:
        pairs.append(("secret", f"{clean(src.kv.mount)}/{clean(src.kv.path)} (kv {kv}); fields {clean(keys)}"))
    pairs += _auth_pairs(src)
    if src.ca_certificate_credential_id:
        pairs.append(("vault ca", src.ca_certificate_credential_id))
    pairs += [
        ("sync interval", f"{src.sync_interval.seconds}s"),
        ("last sync", when(status.last_attempt, "never")),
        ("last success", when(status.last_success, "never")),
        ("last error", clean(status.last_error) or "-"),
        ("external version", status.external_version or "-"),
        ("next sync", when(status.next_run, "now")),
    ]
    return pairs


def _auth_pairs(src: cpb.ExternalSource) -> list[tuple[str, str]]:
    auth = src.WhichOneof("auth")
    if auth == "approle":
        return [
            ("approle", f"role id {src.approle.role_id_credential_id}, secret id {src.approle.secret_id_credential_id}")
        ]
    if auth == "cert":
        role = f", role {clean(src.cert.role)}" if src.cert.role else ""
        return [("cert login", f"client certificate {src.cert.client_certificate_credential_id}{role}")]
    return []
