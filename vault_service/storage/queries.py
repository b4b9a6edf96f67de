"""``Queries``: every SQL statement of the vault, on one connection (in a transaction or not: see ``pool.Store``),
composed from one class per aggregate. The domain layer calls these; nothing else talks SQL."""

from __future__ import annotations

from vault_service.storage.audit import AuditQueries
from vault_service.storage.changes import ChangeQueries
from vault_service.storage.connection import Connection
from vault_service.storage.credentials import CredentialQueries
from vault_service.storage.identity import IdentityQueries
from vault_service.storage.keys import KeyQueries
from vault_service.storage.monitors import MonitorQueries
from vault_service.storage.results import ResultQueries
from vault_service.storage.rotation import RotationQueries
from vault_service.storage.sync import SyncQueries


class Queries(
    CredentialQueries,
    IdentityQueries,
    AuditQueries,
    KeyQueries,
    MonitorQueries,
    ChangeQueries,
    ResultQueries,
    SyncQueries,
    RotationQueries,
):
    """Queries on one connection."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
