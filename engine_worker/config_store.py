"""The engine's in-memory store of monitor configurations and the resolved credentials they use.

Nothing here is ever written to disk, pickled or logged: the store lives in process memory for as long as the vault
wants the engine to run the monitors, and a removal or :meth:`ConfigStore.flush` overwrites each credential's secret
bytes with zeros before letting go of them.

A credential's contents are kept only as the serialized ``CredentialDetails`` in a ``bytearray`` (which, unlike
``bytes`` or ``str``, can be overwritten in place) and parsed on demand. That is best effort in Python: the received
protobuf message and the parsed copies handed out by :meth:`HeldCredential.details` are ordinary objects that the
garbage collector frees without zeroing, so callers should keep them short-lived.

Monitors (``credvault.v1.Monitor``) hold no secrets, only credential ids and ``{{CREDENTIALS_VAULT-<id>}}``
placeholders, and are kept as protobuf messages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NoReturn

from credvault.formats import PLACEHOLDER
from credvault.held_digest import HeldDigest
from credvault.v1 import credentials_pb2, engine_pb2, monitors_pb2

__all__ = ["SECRET_BEARING_FIELDS", "ConfigStore", "HeldCredential", "HeldMonitor", "Listener"]

log = logging.getLogger(__name__)

# Every attribute in engine_worker that holds secret material, by class. A test pins this: adding one means adding it
# here, keeping it out of __repr__, and wiping it.
SECRET_BEARING_FIELDS: dict[str, set[str]] = {
    "HeldCredential": {"_secret"},
    # looked_up_secrets (used by http_execution and browser_execution): the values of the credentials one execution
    # looked up, to scrub them from what it reports; cleared after it.
    "LookedUpSecrets": {"_secrets"},
}

# What a monitor needs from a credential it uses a certain way (mirrors the vault's rules for a definition), by the
# CredentialDetails oneof name.
_USERNAME_PASSWORD = "username_password"
_CERTIFICATE = "certificate"
_TOKEN = "token"


class HeldCredential:
    """A resolved credential: its id, version (in the engine protocol: its revision), the version the API shows
    (``credential_version``), kind (``username_password``, ``certificate``, ``token`` or ``public_certificate``) and
    the serialized contents in a wipeable ``bytearray``. The repr never shows them."""

    __slots__ = ("_secret", "credential_version", "id", "kind", "version")

    def __init__(
        self,
        credential_id: str,
        version: int,
        details: credentials_pb2.CredentialDetails,
        credential_version: int,
    ) -> None:
        self.id = credential_id
        self.version = version
        self.credential_version = credential_version
        self.kind = details.WhichOneof("details") or ""
        self._secret = bytearray(details.SerializeToString())

    @property
    def wiped(self) -> bool:
        return not any(self._secret)

    def details(self) -> credentials_pb2.CredentialDetails:
        """The contents, parsed from the held bytes. Keep the result only as long as it is needed."""
        if self.wiped and self.kind:
            raise ValueError(f"credential {self.id} has been wiped")
        details = credentials_pb2.CredentialDetails()
        details.ParseFromString(memoryview(self._secret))  # type: ignore[arg-type]  # no bytes copy
        return details

    def wipe(self) -> None:
        """Overwrites the held bytes with zeros (in place: the same bytearray, not a new one)."""
        self._secret[:] = bytes(len(self._secret))

    def __repr__(self) -> str:
        return f"HeldCredential(id={self.id!r}, version={self.version}, kind={self.kind!r}, contents=<redacted>)"

    __str__ = __repr__

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("a HeldCredential cannot be pickled or copied: secrets stay in this process's memory")


class HeldMonitor:
    """A monitor configuration (no secrets: ids and placeholders only) at a version (in the engine protocol: its
    revision; ``monitor_version`` is the version the API shows, what its results report). Kept serialized (about its
    wire size in memory, where a parsed message costs several times that) and parsed when asked for."""

    __slots__ = ("_config", "credential_ids", "frequency_minutes", "id", "monitor_version", "version")

    def __init__(self, monitor_id: str, version: int, monitor: monitors_pb2.Monitor) -> None:
        self.id = monitor_id
        self.version = version
        self.monitor_version = monitor.version
        self.credential_ids = tuple(monitor.credential_ids)
        self.frequency_minutes = monitor.frequency_minutes
        self._config = monitor.SerializeToString()

    @property
    def monitor(self) -> monitors_pb2.Monitor:
        return monitors_pb2.Monitor.FromString(self._config)

    def __repr__(self) -> str:
        return f"HeldMonitor(id={self.id!r}, version={self.version})"


def _uses(monitor: monitors_pb2.Monitor) -> dict[str, set[str]]:
    """The credentials the monitor's script references, each with the kinds of contents its uses need."""
    needs: dict[str, set[str]] = {}

    def placeholders(text: str) -> None:
        for match in PLACEHOLDER.finditer(text):
            needs.setdefault(match.group(1), set()).add(_USERNAME_PASSWORD if match.group(2) else _TOKEN)

    # ``match`` on the oneof names, not ``==`` chains: the names are interned strings, so ``is`` for ``==`` would
    # be an equivalent mutant on every comparison.
    match monitor.WhichOneof("script"):
        case "http":
            for request in monitor.http.requests:
                placeholders(request.url)
                placeholders(request.body)
                for header in request.headers:
                    placeholders(header.value)
                auth = request.authentication
                match auth.WhichOneof("method"):
                    case "basic_credential_id":
                        needs.setdefault(auth.basic_credential_id, set()).add(_USERNAME_PASSWORD)
                    case "ntlm_credential_id":
                        needs.setdefault(auth.ntlm_credential_id, set()).add(_USERNAME_PASSWORD)
                    case "client_certificate_credential_id":
                        needs.setdefault(auth.client_certificate_credential_id, set()).add(_CERTIFICATE)
        case "browser":
            placeholders(monitor.browser.url)
            if monitor.browser.login_credential_id:
                needs.setdefault(monitor.browser.login_credential_id, set()).add(_USERNAME_PASSWORD)
            for event in monitor.browser.events:
                match event.WhichOneof("event"):
                    case "navigate_url":
                        placeholders(event.navigate_url)
                    case "keystroke":
                        match event.keystroke.WhichOneof("text"):
                            case "credential":
                                field = event.keystroke.credential
                                kind = _USERNAME_PASSWORD if field.field else _TOKEN
                                needs.setdefault(field.credential_id, set()).add(kind)
    return needs


# Told the ids of the monitors a change added, replaced or removed (after the change is applied).
Listener = Callable[[set[str]], None]


def _reason_name(reason: int) -> str:
    try:
        return engine_pb2.RemovalReason.Name(reason)  # type: ignore[arg-type]
    except ValueError:
        return f"REMOVAL_REASON_{reason}"


class ConfigStore:
    """Monitors and credentials by id, changed only by :meth:`apply` (a ``ConfigBatch``) and :meth:`flush`.

    With ``location_id``, a monitor that does not list that location is rejected: the vault must never send it here.
    """

    def __init__(self, location_id: str | None = None) -> None:
        self._location_id = location_id
        self._monitors: dict[str, HeldMonitor] = {}
        self._credentials: dict[str, HeldCredential] = {}
        self._rejected: dict[str, int] = {}  # monitor id -> the version rejected last (an older one may be held)
        self._digest = HeldDigest()  # of every held monitor and credential (credvault.held_digest)
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        """``listener`` is called with the ids of the monitors each :meth:`apply` or :meth:`flush` changed."""
        self._listeners.append(listener)

    def _notify(self, monitor_ids: set[str]) -> None:
        if monitor_ids:
            for listener in self._listeners:
                listener(monitor_ids)

    # --- reading ---------------------------------------------------------------------------------------------------

    def credential(self, credential_id: str) -> HeldCredential | None:
        return self._credentials.get(credential_id)

    def monitor(self, monitor_id: str) -> HeldMonitor | None:
        return self._monitors.get(monitor_id)

    def monitors(self) -> list[HeldMonitor]:
        return [self._monitors[k] for k in sorted(self._monitors)]

    @property
    def monitor_count(self) -> int:
        return len(self._monitors)

    @property
    def credential_count(self) -> int:
        return len(self._credentials)

    def held(self) -> list[engine_pb2.HeldResource]:
        """Everything held, for the Hello after a (re)connect: monitors, then credentials, each sorted by id."""
        monitors = [
            engine_pb2.HeldResource(kind=engine_pb2.RESOURCE_KIND_MONITOR, id=m.id, version=m.version)
            for m in self.monitors()
        ]
        credentials = [
            engine_pb2.HeldResource(kind=engine_pb2.RESOURCE_KIND_CREDENTIAL, id=c.id, version=c.version)
            for c in (self._credentials[k] for k in sorted(self._credentials))
        ]
        return monitors + credentials

    def held_state(self, revision: int) -> engine_pb2.HeldState:
        """The digest of what is held, less the monitors whose newest version was rejected, for the vault's
        anti-entropy check (the vault leaves those out of what it expects too)."""
        rejected = [
            (engine_pb2.RESOURCE_KIND_MONITOR, mid, held.version)
            for mid in self._rejected
            if (held := self._monitors.get(mid)) is not None
        ]
        return engine_pb2.HeldState(revision=revision, digest=self._digest.without(rejected))

    def snapshot_ids(self) -> dict[str, dict[str, int]]:
        """Ids and revisions only, never contents: ``{"monitors": {id: revision}, "credentials": {id: revision}}``
        (a revision is what the protocol calls a resource's version)."""
        return {
            "monitors": {k: self._monitors[k].version for k in sorted(self._monitors)},
            "credentials": {k: self._credentials[k].version for k in sorted(self._credentials)},
        }

    def introspection(self) -> dict[str, dict[str, dict[str, int]]]:
        """What ``/introspection`` shows of each held object, never contents: ``{"monitors": {id: {"revision": r,
        "version": v}}, "credentials": {...}}``. The revision is what the engine holds it at (the protocol's resource
        version); the version is the one the API and the CLI show (a credential's: the version of the contents held)."""
        return {
            "monitors": {
                k: {"revision": m.version, "version": m.monitor_version} for k, m in sorted(self._monitors.items())
            },
            "credentials": {
                k: {"revision": c.version, "version": c.credential_version}
                for k, c in sorted(self._credentials.items())
            },
        }

    def __repr__(self) -> str:
        return f"ConfigStore(monitors={len(self._monitors)}, credentials={len(self._credentials)})"

    # --- changing --------------------------------------------------------------------------------------------------

    def apply(self, batch: engine_pb2.ConfigBatch) -> list[engine_pb2.Rejection]:
        """Applies a batch in the protocol's order: credential upserts, monitor upserts, monitor removals, credential
        removals. Idempotent: an upsert of the version held is a no-op, a removal of something unknown is ignored.

        Returns the rejected monitor upserts (their previously held version, if any, stays). Reasons name ids, kinds
        and rules only, never contents.
        """
        for resource in batch.credentials:
            self._upsert_credential(resource)
        rejections: list[engine_pb2.Rejection] = []
        changed: set[str] = set()
        for monitor in batch.monitors:
            before = self._monitors.get(monitor.id)
            reason = self._upsert_monitor(monitor)
            # a HeldMonitor equals only itself: != is this is not. Equivalent.
            if self._monitors.get(monitor.id) is not before:  # pragma: no mutate: IsNot_NotEq
                changed.add(monitor.id)
            if reason is None:
                self._rejected.pop(monitor.id, None)
            else:
                self._rejected[monitor.id] = monitor.version
                log.warning("rejected monitor %s revision %d: %s", monitor.id, monitor.version, reason)
                rejections.append(engine_pb2.Rejection(monitor_id=monitor.id, version=monitor.version, reason=reason))
        removals = list(batch.removals)
        # A kind is a small int, one object per value in CPython: is and is not below are == and !=. Equivalent.
        for removal in removals:
            if removal.kind == engine_pb2.RESOURCE_KIND_MONITOR:  # pragma: no mutate: Eq_Is
                self._rejected.pop(removal.id, None)
                if removal.id in self._monitors:
                    self._remove_monitor(removal.id, _reason_name(removal.reason))
                    changed.add(removal.id)
        removed_credentials = set()
        for removal in removals:
            if removal.kind == engine_pb2.RESOURCE_KIND_CREDENTIAL:  # pragma: no mutate: Eq_Is
                self._remove_credential(removal.id, _reason_name(removal.reason))
                removed_credentials.add(removal.id)
            elif removal.kind != engine_pb2.RESOURCE_KIND_MONITOR:  # pragma: no mutate: NotEq_IsNot
                log.warning("ignored a removal of %s of unknown kind %d", removal.id, removal.kind)
        if removed_credentials:  # only then can a held monitor have lost a credential (no work per batch otherwise)
            self._warn_dangling(removed_credentials)
        self._notify(changed)
        return rejections

    def flush(self) -> int:
        """Wipes every credential and forgets every monitor (fail-safe and shutdown). Returns how many were held."""
        count = len(self._monitors) + len(self._credentials)
        for credential in self._credentials.values():
            credential.wipe()
        self._credentials.clear()
        monitor_ids = set(self._monitors)
        self._monitors.clear()
        self._rejected.clear()
        self._digest.clear()
        self._notify(monitor_ids)
        return count

    def _upsert_credential(self, resource: engine_pb2.CredentialResource) -> None:
        if not resource.id:
            log.warning("ignored a credential upsert without an id")
            return
        held = self._credentials.get(resource.id)
        if held is not None and held.version == resource.version:
            return
        if resource.details.WhichOneof("details") is None:
            # Unusable: nothing to run with. A stale older secret is worse than none, so the old version goes too;
            # monitors that need it are rejected below.
            log.warning("credential %s revision %d has no contents: not held", resource.id, resource.version)
            if held is not None:
                self._remove_credential(resource.id, "replaced by a version without contents")
            return
        self._credentials[resource.id] = HeldCredential(
            resource.id, resource.version, resource.details, resource.credential_version
        )
        self._digest.add(engine_pb2.RESOURCE_KIND_CREDENTIAL, resource.id, resource.version)
        if held is not None:
            self._digest.remove(engine_pb2.RESOURCE_KIND_CREDENTIAL, resource.id, held.version)
            held.wipe()
        log.debug("holding credential %s revision %d", resource.id, resource.version)

    def _upsert_monitor(self, resource: engine_pb2.MonitorResource) -> str | None:
        """None when applied (or already held), else why not."""
        if not resource.id:
            return "the monitor resource has no id"
        held = self._monitors.get(resource.id)
        if held is not None and held.version == resource.version:
            return None
        if not resource.HasField("monitor"):
            return "the monitor resource has no monitor definition"
        monitor = resource.monitor
        if monitor.id and monitor.id != resource.id:
            return f"the definition's id {monitor.id} differs from the resource id"
        if not monitor.enabled:
            # A disabled monitor must not stay in engine memory: treat it as a removal.
            self._remove_monitor(resource.id, "upserted as disabled")
            return None
        if self._location_id is not None and self._location_id not in monitor.location_ids:
            return f"the monitor is not assigned to this engine's location {self._location_id}"
        if monitor.WhichOneof("script") is None:
            return "the monitor has no script (http or browser)"
        needs = _uses(monitor)
        for credential_id in monitor.credential_ids:
            needs.setdefault(credential_id, set())
        for credential_id in sorted(needs):
            credential = self._credentials.get(credential_id)
            if credential is None:
                return f"the monitor references credential {credential_id}, which the engine does not hold"
            wrong = sorted(kind for kind in needs[credential_id] if kind != credential.kind)
            if wrong:
                return (
                    f"credential {credential_id} is of kind {credential.kind}, "
                    f"but the monitor uses it as {' and '.join(wrong)}"
                )
        self._monitors[resource.id] = HeldMonitor(resource.id, resource.version, monitor)
        self._digest.add(engine_pb2.RESOURCE_KIND_MONITOR, resource.id, resource.version)
        if held is not None:
            self._digest.remove(engine_pb2.RESOURCE_KIND_MONITOR, resource.id, held.version)
        log.debug("holding monitor %s revision %d", resource.id, resource.version)
        return None

    def _remove_monitor(self, monitor_id: str, reason: str) -> None:
        held = self._monitors.pop(monitor_id, None)
        if held is not None:
            self._digest.remove(engine_pb2.RESOURCE_KIND_MONITOR, monitor_id, held.version)
            log.info("removed monitor %s revision %d (%s)", monitor_id, held.version, reason)

    def _remove_credential(self, credential_id: str, reason: str) -> None:
        held = self._credentials.pop(credential_id, None)
        if held is not None:
            self._digest.remove(engine_pb2.RESOURCE_KIND_CREDENTIAL, credential_id, held.version)
            held.wipe()
            log.info("removed credential %s revision %d (%s)", credential_id, held.version, reason)

    def _warn_dangling(self, removed: set[str]) -> None:
        for held in self._monitors.values():
            missing = sorted(removed.intersection(held.credential_ids))
            if missing:
                log.warning("monitor %s references credentials the engine no longer holds: %s", held.id, missing)
