"""The engine worker: the in-memory config store, the stream loop's own rules (heartbeats, a silent vault, backoff
and the fail-safe on a fake clock, rejections), settings, and the worker's wipe on exit.

The stream against the real vault, and the engine-worker process, are in test_engine_stream.py; the small test vault
here serves only what the real one cannot be made to do (see FakeVault). No assertion depends on wall-clock
durations: waits are on events, with generous timeouts.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import copy
import dataclasses
import importlib
import inspect
import logging
import os
import pathlib
import pickle
import pkgutil
import re
import socket
import textwrap
import types
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from cryptography import x509

import engine_worker
from credvault.held_digest import HeldDigest
from credvault.identity import EngineIdentity, identity_from_certificate
from credvault.v1 import credentials_pb2, engine_pb2, engine_pb2_grpc, monitors_pb2
from engine_worker import cli
from engine_worker.backoff import Backoff
from engine_worker.config_store import SECRET_BEARING_FIELDS, ConfigStore
from engine_worker.scheduler import Scheduler
from engine_worker.settings import Settings, load_settings
from engine_worker.stream import EngineStream, StreamSettings
from engine_worker.tls import check_tls_files, mtls_channel_factory
from engine_worker.worker import EngineWorker
from tests.local_pki import TRUST_DOMAIN, LocalPki, odd_leaf
from tests.real_engine import secret_buffer

ROOT = pathlib.Path(__file__).resolve().parents[2]
TIMEOUT = 20.0

LOCATION = "loc-1"
ENGINE = "eng-1"
SPIFFE = f"spiffe://{TRUST_DOMAIN}/location/{LOCATION}/engine/{ENGINE}"

SECRET = "pinned-secret-value-123"
SECRET2 = "other-secret-456"
C1 = "CREDENTIALS_VAULT-00000000000000C1"
C2 = "CREDENTIALS_VAULT-00000000000000C2"
C3 = "CREDENTIALS_VAULT-00000000000000C3"
M1 = "SYNTHETIC_TEST-00000000000000A1"
M2 = "SYNTHETIC_TEST-00000000000000A2"
M3 = "SYNTHETIC_TEST-00000000000000A3"

MONITOR = engine_pb2.RESOURCE_KIND_MONITOR
CREDENTIAL = engine_pb2.RESOURCE_KIND_CREDENTIAL


# --- builders ----------------------------------------------------------------------------------------------------


def up_cred(cid: str, version: int, password: str = SECRET) -> engine_pb2.CredentialResource:
    details = credentials_pb2.CredentialDetails(
        username_password=credentials_pb2.UsernamePassword(username="svc-user", password=password)
    )
    return engine_pb2.CredentialResource(id=cid, version=version, details=details)


def token_cred(cid: str, version: int, value: str = SECRET2) -> engine_pb2.CredentialResource:
    details = credentials_pb2.CredentialDetails(token=credentials_pb2.Token(token=value))
    return engine_pb2.CredentialResource(id=cid, version=version, details=details)


def http_monitor(
    mid: str,
    version: int,
    basic: str | None = None,
    placeholders: tuple[str, ...] = (),
    *,
    location: str = LOCATION,
    enabled: bool = True,
) -> engine_pb2.MonitorResource:
    request = monitors_pb2.HttpRequest(method="GET", url="https://shop.example/login", timeout_ms=10_000)
    for text in placeholders:
        request.headers.append(monitors_pb2.Header(name="Authorization", value=f"Bearer {text}"))
    if basic is not None:
        request.authentication.basic_credential_id = basic
    refs = sorted(
        {*([basic] if basic else []), *(re.findall(r"CREDENTIALS_VAULT-[0-9A-F]{16}", " ".join(placeholders)))}
    )
    monitor = monitors_pb2.Monitor(
        id=mid,
        name="shop login",
        type=monitors_pb2.MONITOR_TYPE_HTTP,
        enabled=enabled,
        frequency_minutes=5,
        location_ids=[location],
        http=monitors_pb2.HttpScript(requests=[request]),
        credential_ids=refs,
        version=version,
    )
    return engine_pb2.MonitorResource(id=mid, version=version, monitor=monitor)


def batch(
    revision: int,
    credentials: list[engine_pb2.CredentialResource] | None = None,
    monitors: list[engine_pb2.MonitorResource] | None = None,
    removals: list[engine_pb2.Removal] | None = None,
) -> engine_pb2.ConfigBatch:
    return engine_pb2.ConfigBatch(
        revision=revision, credentials=credentials or [], monitors=monitors or [], removals=removals or []
    )


def removal(kind: int, rid: str, reason: int = engine_pb2.REMOVAL_REASON_DELETED) -> engine_pb2.Removal:
    return engine_pb2.Removal(kind=kind, id=rid, reason=reason)


def held_tuples(resources: list[engine_pb2.HeldResource]) -> list[tuple[int, str, int]]:
    return [(r.kind, r.id, r.version) for r in resources]


# --- ConfigStore -------------------------------------------------------------------------------------------------


def test_credential_upserts_come_before_monitor_upserts_in_one_batch() -> None:
    store = ConfigStore(LOCATION)
    # The monitor is listed first on the wire side of things; it still sees the credential of the same batch.
    rejected = store.apply(batch(1, credentials=[up_cred(C1, 1)], monitors=[http_monitor(M1, 1, basic=C1)]))
    assert rejected == []
    assert store.snapshot_ids() == {"monitors": {M1: 1}, "credentials": {C1: 1}}
    held = store.credential(C1)
    assert held is not None
    assert held.details().username_password.password == SECRET
    assert held.kind == "username_password"


def test_monitor_removals_come_before_credential_removals(caplog: pytest.LogCaptureFixture) -> None:
    store = ConfigStore(LOCATION)
    store.apply(batch(1, credentials=[up_cred(C1, 1)], monitors=[http_monitor(M1, 1, basic=C1)]))
    buf = secret_buffer(store.credential(C1))
    caplog.set_level(logging.DEBUG, logger="engine_worker")
    # Listed credential first: the store still removes the monitor first, so nothing dangles on the way.
    rejected = store.apply(
        batch(
            2,
            removals=[
                removal(CREDENTIAL, C1, engine_pb2.REMOVAL_REASON_UNREFERENCED),
                removal(MONITOR, M1, engine_pb2.REMOVAL_REASON_DISABLED),
            ],
        )
    )
    assert rejected == []
    assert store.snapshot_ids() == {"monitors": {}, "credentials": {}}
    assert not any(buf)
    assert "no longer holds" not in caplog.text
    # Removals are logged by id and reason.
    assert f"removed monitor {M1}" in caplog.text
    assert "REMOVAL_REASON_DISABLED" in caplog.text
    assert f"removed credential {C1}" in caplog.text
    assert "REMOVAL_REASON_UNREFERENCED" in caplog.text


def test_upsert_then_remove_in_one_batch_removes() -> None:
    store = ConfigStore(LOCATION)
    store.apply(
        batch(
            1,
            credentials=[up_cred(C1, 1)],
            monitors=[http_monitor(M1, 1, basic=C1)],
            removals=[removal(MONITOR, M1), removal(CREDENTIAL, C1)],
        )
    )
    assert store.held() == []


def test_upserts_are_idempotent() -> None:
    store = ConfigStore(LOCATION)
    first = batch(1, credentials=[up_cred(C1, 1)], monitors=[http_monitor(M1, 1, basic=C1)])
    assert store.apply(first) == []
    held_cred = store.credential(C1)
    held_monitor = store.monitor(M1)
    buf = secret_buffer(held_cred)
    before = bytes(buf)
    assert store.apply(first) == []
    # The same version again is a no-op: the very same objects, the same bytes.
    assert store.credential(C1) is held_cred
    assert store.monitor(M1) is held_monitor
    assert bytes(buf) == before
    assert held_tuples(store.held()) == [(MONITOR, M1, 1), (CREDENTIAL, C1, 1)]


def test_a_new_version_replaces_and_wipes_the_old_secret() -> None:
    store = ConfigStore(LOCATION)
    store.apply(batch(1, credentials=[up_cred(C1, 1)]))
    old = secret_buffer(store.credential(C1))
    store.apply(batch(2, credentials=[up_cred(C1, 2, password=SECRET2)]))
    assert not any(old)
    held = store.credential(C1)
    assert held is not None
    assert held.version == 2
    assert held.details().username_password.password == SECRET2


def test_monitor_with_a_missing_credential_is_rejected_and_the_rest_applies() -> None:
    store = ConfigStore(LOCATION)
    rejected = store.apply(
        batch(
            7,
            credentials=[up_cred(C1, 1), token_cred(C2, 1)],
            monitors=[http_monitor(M1, 3, basic=C1), http_monitor(M2, 4, basic=C3), http_monitor(M3, 5, None, (C2,))],
        )
    )
    assert [(r.monitor_id, r.version) for r in rejected] == [(M2, 4)]
    reason = rejected[0].reason
    assert C3 in reason
    assert "does not hold" in reason
    for secret in (SECRET, SECRET2, "svc-user"):
        assert secret not in reason
    assert store.snapshot_ids() == {"monitors": {M1: 3, M3: 5}, "credentials": {C1: 1, C2: 1}}


def test_a_rejected_new_version_keeps_the_held_one() -> None:
    store = ConfigStore(LOCATION)
    store.apply(batch(1, credentials=[up_cred(C1, 1)], monitors=[http_monitor(M1, 1, basic=C1)]))
    rejected = store.apply(batch(2, monitors=[http_monitor(M1, 2, basic=C3)]))
    assert [(r.monitor_id, r.version) for r in rejected] == [(M1, 2)]
    held = store.monitor(M1)
    assert held is not None
    assert held.version == 1
    # Sent again once the credential is there, the same version applies.
    assert store.apply(batch(3, credentials=[up_cred(C3, 1)], monitors=[http_monitor(M1, 2, basic=C3)])) == []
    held = store.monitor(M1)
    assert held is not None
    assert held.version == 2


def test_monitors_the_engine_cannot_run_are_rejected_without_secrets() -> None:
    store = ConfigStore(LOCATION)
    no_script = http_monitor(M1, 1)
    no_script.monitor.ClearField("http")
    elsewhere = http_monitor(M2, 1, location="other-location")
    wrong_kind = http_monitor(M3, 1, basic=C2)  # basic authentication with a token credential
    mismatch = http_monitor("SYNTHETIC_TEST-00000000000000B1", 1)
    mismatch.monitor.id = M1
    empty = engine_pb2.MonitorResource(id="SYNTHETIC_TEST-00000000000000B2", version=1)
    rejected = store.apply(
        batch(
            1,
            credentials=[up_cred(C1, 1), token_cred(C2, 1)],
            monitors=[no_script, elsewhere, wrong_kind, mismatch, empty],
        )
    )
    reasons = {r.monitor_id: r.reason for r in rejected}
    assert set(reasons) == {M1, M2, M3, "SYNTHETIC_TEST-00000000000000B1", "SYNTHETIC_TEST-00000000000000B2"}
    assert "no script" in reasons[M1]
    assert LOCATION in reasons[M2]
    assert C2 in reasons[M3]
    assert "token" in reasons[M3]
    for reason in reasons.values():
        assert SECRET not in reason
        assert SECRET2 not in reason
    assert store.snapshot_ids()["monitors"] == {}


def test_placeholders_must_match_the_credential_kind() -> None:
    store = ConfigStore(LOCATION)
    store.apply(batch(1, credentials=[up_cred(C1, 1), token_cred(C2, 1)]))
    ok = http_monitor(M1, 1, None, (f"{{{{{C1}.password}}}}", f"{{{{{C2}}}}}"))
    bad = http_monitor(M2, 1, None, (f"{{{{{C2}.username}}}}",))
    rejected = store.apply(batch(2, monitors=[ok, bad]))
    assert [r.monitor_id for r in rejected] == [M2]


def browser_monitor(
    mid: str, login: str = "", events: tuple[monitors_pb2.BrowserEvent, ...] = ()
) -> engine_pb2.MonitorResource:
    """A browser monitor (each credential it references listed in credential_ids, as the vault sends it)."""
    script = monitors_pb2.BrowserScript(url="https://shop.example/", login_credential_id=login, events=events)
    refs = set(re.findall(r"CREDENTIALS_VAULT-[0-9A-F]{16}", str(script)))
    monitor = monitors_pb2.Monitor(
        id=mid, enabled=True, location_ids=[LOCATION], browser=script, credential_ids=sorted(refs), version=1
    )
    return engine_pb2.MonitorResource(id=mid, version=1, monitor=monitor)


def typed(credential_id: str, field: str = "") -> monitors_pb2.BrowserEvent:
    credential = monitors_pb2.CredentialField(credential_id=credential_id, field=field)
    return monitors_pb2.BrowserEvent(keystroke=monitors_pb2.Keystroke(selector="#f", credential=credential))


def test_browser_monitors_must_use_each_credential_as_its_kind() -> None:
    """A login and a typed username or password need a username/password credential, a typed credential without a
    field and a plain placeholder in a URL a token; literal keystrokes and clicks need nothing."""
    store = ConfigStore(LOCATION)
    store.apply(batch(1, credentials=[up_cred(C1, 1), token_cred(C2, 1)]))
    navigate = monitors_pb2.BrowserEvent(navigate_url=f"https://shop.example/?k={{{{{C2}}}}}")
    literal = monitors_pb2.BrowserEvent(keystroke=monitors_pb2.Keystroke(selector="#q", literal=f"{{{{{C1}}}}}"))
    click = monitors_pb2.BrowserEvent(click_selector=f"#{C1}")
    fine = browser_monitor(M1, C1, (navigate, typed(C1, "password"), typed(C2), literal, click))
    cases = {
        M2: browser_monitor(M2, login=C2),
        M3: browser_monitor(M3, events=(typed(C2, "username"),)),
        "SYNTHETIC_TEST-00000000000000B1": browser_monitor("SYNTHETIC_TEST-00000000000000B1", events=(typed(C1),)),
        "SYNTHETIC_TEST-00000000000000B2": browser_monitor(
            "SYNTHETIC_TEST-00000000000000B2",
            events=(monitors_pb2.BrowserEvent(navigate_url=f"https://x/{{{{{C2}.password}}}}"),),
        ),
    }
    rejected = store.apply(batch(2, monitors=[fine, *cases.values()]))
    assert {r.monitor_id for r in rejected} == set(cases)
    assert store.snapshot_ids()["monitors"] == {M1: 1}
    held = store.monitor(M1)
    assert held is not None
    assert held.monitor == fine.monitor  # parsed back from what is held


def test_resources_without_an_id_are_not_held() -> None:
    store = ConfigStore(LOCATION)
    nameless = up_cred("", 1)
    monitor = http_monitor(M1, 1)
    monitor.id = ""
    rejected = store.apply(batch(1, credentials=[nameless], monitors=[monitor]))
    assert [(r.monitor_id, r.reason) for r in rejected] == [("", "the monitor resource has no id")]
    assert store.held() == []


def test_a_held_monitor_whose_credential_is_removed_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    """The vault removes a monitor before its credential; if it ever did not, the log names what dangles."""
    store = ConfigStore(LOCATION)
    store.apply(batch(1, credentials=[up_cred(C1, 1), token_cred(C2, 1)], monitors=[http_monitor(M1, 1, basic=C1)]))
    caplog.set_level(logging.WARNING, logger="engine_worker")
    store.apply(batch(2, removals=[removal(CREDENTIAL, C2)]))
    assert "no longer holds" not in caplog.text  # C2 was not M1's
    store.apply(batch(3, removals=[removal(CREDENTIAL, C1)]))
    assert f"monitor {M1} references credentials the engine no longer holds: ['{C1}']" in caplog.text


def test_a_disabled_monitor_upsert_removes_it() -> None:
    store = ConfigStore(LOCATION)
    store.apply(batch(1, credentials=[up_cred(C1, 1)], monitors=[http_monitor(M1, 1, basic=C1)]))
    assert store.apply(batch(2, monitors=[http_monitor(M1, 2, basic=C1, enabled=False)])) == []
    assert store.monitor(M1) is None


def test_removals_of_unknown_resources_are_ignored() -> None:
    store = ConfigStore(LOCATION)
    store.apply(batch(1, credentials=[up_cred(C1, 1)]))
    rejected = store.apply(
        batch(
            2,
            removals=[
                removal(MONITOR, M1),
                removal(CREDENTIAL, C2),
                removal(engine_pb2.RESOURCE_KIND_UNSPECIFIED, C1),
                removal(CREDENTIAL, C3, 99),  # an unknown reason
            ],
        )
    )
    assert rejected == []
    assert store.snapshot_ids() == {"monitors": {}, "credentials": {C1: 1}}


def test_a_credential_without_contents_is_not_held() -> None:
    store = ConfigStore(LOCATION)
    store.apply(batch(1, credentials=[up_cred(C1, 1)]))
    old = secret_buffer(store.credential(C1))
    rejected = store.apply(
        batch(
            2, credentials=[engine_pb2.CredentialResource(id=C1, version=2)], monitors=[http_monitor(M1, 1, basic=C1)]
        )
    )
    assert store.credential(C1) is None
    assert not any(old)
    assert [r.monitor_id for r in rejected] == [M1]


def test_flush_wipes_every_secret() -> None:
    store = ConfigStore(LOCATION)
    store.apply(batch(1, credentials=[up_cred(C1, 1), token_cred(C2, 1)], monitors=[http_monitor(M1, 1, basic=C1)]))
    held = [store.credential(C1), store.credential(C2)]
    buffers = [secret_buffer(h) for h in held]
    assert store.flush() == 3
    for buf in buffers:
        assert len(buf) > 0
        assert buf == bytearray(len(buf))
    assert store.held() == []
    assert store.snapshot_ids() == {"monitors": {}, "credentials": {}}
    for h in held:
        assert h is not None
        assert h.wiped
        with pytest.raises(ValueError, match="wiped"):
            h.details()


def test_held_and_snapshot_show_ids_and_versions_only() -> None:
    store = ConfigStore(LOCATION)
    store.apply(
        batch(
            1,
            credentials=[up_cred(C1, 4), token_cred(C2, 2)],
            monitors=[http_monitor(M2, 9, basic=C1), http_monitor(M1, 8)],
        )
    )
    assert held_tuples(store.held()) == [(MONITOR, M1, 8), (MONITOR, M2, 9), (CREDENTIAL, C1, 4), (CREDENTIAL, C2, 2)]
    snapshot = store.snapshot_ids()
    assert snapshot == {"monitors": {M1: 8, M2: 9}, "credentials": {C1: 4, C2: 2}}
    assert SECRET not in repr(snapshot)
    assert SECRET2 not in repr(snapshot)


def test_reprs_redact_and_credentials_cannot_be_pickled_or_copied() -> None:
    store = ConfigStore(LOCATION)
    store.apply(batch(1, credentials=[up_cred(C1, 1), token_cred(C2, 1)], monitors=[http_monitor(M1, 1, basic=C1)]))
    held = store.credential(C1)
    assert held is not None
    for text in (repr(held), str(held), repr(store), repr(store.monitor(M1)), repr(store.held())):
        for secret in (SECRET, SECRET2):
            assert secret not in text
            assert secret.encode().hex() not in text
    assert "redacted" in repr(held)
    with pytest.raises(TypeError):
        pickle.dumps(held)
    with pytest.raises(TypeError):
        copy.copy(held)
    with pytest.raises(TypeError):
        copy.deepcopy(store)


def test_secrets_never_reach_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store = ConfigStore(LOCATION)
    store.apply(
        batch(
            1,
            credentials=[up_cred(C1, 1), token_cred(C2, 1), engine_pb2.CredentialResource(id=C3, version=1)],
            monitors=[http_monitor(M1, 1, basic=C1), http_monitor(M2, 1, basic=C2), http_monitor(M3, 1, basic=C3)],
            removals=[removal(CREDENTIAL, C2)],
        )
    )
    store.flush()
    assert caplog.text
    for secret in (SECRET, SECRET2, "svc-user"):
        assert secret not in caplog.text


# --- the pinned list of secret-bearing fields --------------------------------------------------------------------

SECRETISH = ("secret", "password", "token", "key", "details", "private")
# Attributes whose names look secret but hold none, with why. Anything else secret-looking must be pinned.
NOT_SECRETS = {"Settings": {"key"}}  # the *path* of the engine's key file; the key bytes are never kept in an object


def _engine_worker_modules() -> Iterator[types.ModuleType]:
    for info in pkgutil.walk_packages(engine_worker.__path__, "engine_worker."):
        if info.name == "engine_worker.__main__":  # runs the command on import
            continue
        yield importlib.import_module(info.name)


def _attribute_names(cls: type) -> set[str]:
    names: set[str] = set(inspect.get_annotations(cls))
    slots = cls.__dict__.get("__slots__", ())
    names |= {slots} if isinstance(slots, str) else set(slots)
    if dataclasses.is_dataclass(cls):
        names |= {f.name for f in dataclasses.fields(cls)}
    names |= set(getattr(cls, "model_fields", {}))  # pydantic models (the settings)
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
                names.add(target.attr)
    return names


def test_secret_bearing_fields_are_pinned() -> None:
    assert {"HeldCredential": {"_secret"}, "LookedUpSecrets": {"_secrets"}} == SECRET_BEARING_FIELDS
    seen: dict[str, set[str]] = {}
    for module in _engine_worker_modules():
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__:
                continue
            names = _attribute_names(cls)
            seen[name] = names
            secretish = {n for n in names if any(s in n.lower() for s in SECRETISH)}
            allowed = SECRET_BEARING_FIELDS.get(name, set()) | NOT_SECRETS.get(name, set())
            assert secretish <= allowed, f"{module.__name__}.{name} has unpinned secret-looking fields {secretish}"
    # The walk really sees the classes and fields (it would pass vacuously otherwise).
    assert "_secret" in seen["HeldCredential"]
    assert {"key", "cert", "ca"} <= seen["Settings"]
    assert "_store" in seen["EngineStream"]
    for cls_name, fields in SECRET_BEARING_FIELDS.items():
        assert fields <= seen[cls_name]


# --- the engine's files, from the tests' one PKI -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pki:
    """What an engine worker is given (its certificate, key and the vault's CA) and what the fake vault serves with."""

    local: LocalPki
    cert: pathlib.Path
    key: pathlib.Path

    @property
    def ca(self) -> pathlib.Path:
        return self.local.server_ca_pem

    @property
    def server_chain(self) -> bytes:
        return self.local.server.chain_pem

    @property
    def server_key(self) -> bytes:
        return self.local.server.key_pem

    @property
    def engine_ca(self) -> bytes:
        return self.local.engine_ca.cert_pem


@pytest.fixture(scope="module")
def pki(local_pki: LocalPki) -> Pki:
    return Pki(local_pki, *local_pki.engine_files(LOCATION, ENGINE))


def test_identity_comes_from_the_certificate(pki: Pki) -> None:
    identity = check_tls_files(pki.cert, pki.key, pki.ca)
    assert identity == EngineIdentity(TRUST_DOMAIN, LOCATION, ENGINE)


def test_tls_files_are_checked(pki: Pki, tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="CA certificate"):
        check_tls_files(pki.ca, pki.key, pki.ca)
    other_key = tmp_path / "other.key"
    other_key.write_bytes(pki.local.engine(LOCATION, ENGINE).key_pem)
    with pytest.raises(ValueError, match="does not belong"):
        check_tls_files(pki.cert, other_key, pki.ca)
    with pytest.raises(ValueError, match="cannot read"):
        check_tls_files(pki.cert, tmp_path / "missing.key", pki.ca)
    with pytest.raises(ValueError, match="not a PEM"):
        check_tls_files(pki.cert, pki.key, other_key)
    two_uris = odd_leaf([x509.UniformResourceIdentifier(SPIFFE), x509.UniformResourceIdentifier(SPIFFE + "x")])
    with pytest.raises(ValueError, match="exactly one"):
        identity_from_certificate(two_uris)
    dns_only = odd_leaf([x509.DNSName("engine.example")])
    with pytest.raises(ValueError, match="0 URI"):
        identity_from_certificate(dns_only)


# --- a small test vault -------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Session:
    """One engine stream as the test vault sees it."""

    hello: engine_pb2.Hello
    peer: dict[str, list[bytes]]
    outbox: asyncio.Queue[engine_pb2.StreamResponse | grpc.StatusCode | None] = dataclasses.field(
        default_factory=asyncio.Queue
    )
    acks: asyncio.Queue[engine_pb2.Ack] = dataclasses.field(default_factory=asyncio.Queue)
    heartbeats: asyncio.Queue[engine_pb2.Heartbeat] = dataclasses.field(default_factory=asyncio.Queue)
    ended: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def send(self, *messages: engine_pb2.ConfigBatch | engine_pb2.SyncComplete) -> None:
        for message in messages:
            if isinstance(message, engine_pb2.ConfigBatch):
                self.outbox.put_nowait(engine_pb2.StreamResponse(batch=message))
            else:
                self.outbox.put_nowait(engine_pb2.StreamResponse(sync_complete=message))

    async def ack(self) -> engine_pb2.Ack:
        return await asyncio.wait_for(self.acks.get(), TIMEOUT)

    async def sync(self, *batches: engine_pb2.ConfigBatch, revision: int) -> list[engine_pb2.Ack]:
        """Sends the batches and SyncComplete; returns the acks of all of them."""
        self.send(*batches, engine_pb2.SyncComplete(revision=revision))
        return [await self.ack() for _ in range(len(batches) + 1)]


class FakeVault(engine_pb2_grpc.EngineConfigServiceServicer):
    """Records each stream as a Session; sends what the test puts in its outbox, plus heartbeats unless silent.

    Kept for what the real vault cannot be made to do: stay silent on an open stream (dead-session detection), and
    send monitors the engine must reject (the real vault validates them first), with the exact acks the engine
    answers. Everything the real vault can do is tested against it: tests/test_engine_stream.py."""

    def __init__(self, heartbeat_every: float | None = 0.05) -> None:
        self.heartbeat_every = heartbeat_every
        self.sessions: asyncio.Queue[Session] = asyncio.Queue()

    async def next_session(self) -> Session:
        return await asyncio.wait_for(self.sessions.get(), TIMEOUT)

    async def Stream(
        self,
        request_iterator: AsyncIterator[engine_pb2.StreamRequest],
        context: grpc.aio.ServicerContext[object, object],
    ) -> AsyncIterator[engine_pb2.StreamResponse]:
        first = await anext(request_iterator)
        assert first.WhichOneof("message") == "hello"
        session = Session(first.hello, {k: list(v) for k, v in context.auth_context().items()})
        reader = asyncio.create_task(self._read(request_iterator, session))
        self.sessions.put_nowait(session)
        try:
            while True:
                try:
                    item = await asyncio.wait_for(session.outbox.get(), self.heartbeat_every)
                except TimeoutError:
                    yield engine_pb2.StreamResponse(heartbeat=engine_pb2.Heartbeat(sent_unix_ms=1))
                    continue
                if item is None:
                    return
                if isinstance(item, grpc.StatusCode):
                    await context.abort(item, "refused by the test vault")
                yield item
        finally:
            reader.cancel()
            session.ended.set()

    @staticmethod
    async def _read(requests: AsyncIterator[engine_pb2.StreamRequest], session: Session) -> None:
        async for request in requests:
            which = request.WhichOneof("message")
            if which == "ack":
                session.acks.put_nowait(request.ack)
            elif which == "heartbeat":
                session.heartbeats.put_nowait(request.heartbeat)


class VaultServer:
    def __init__(self, pki: Pki, vault: FakeVault, port: int = 0) -> None:
        self.pki = pki
        self.vault = vault
        self.port = port
        self.server: grpc.aio.Server | None = None

    async def start(self) -> None:
        server = grpc.aio.server(
            options=[
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            ]
        )
        engine_pb2_grpc.add_EngineConfigServiceServicer_to_server(self.vault, server)
        credentials = grpc.ssl_server_credentials(
            [(self.pki.server_key, self.pki.server_chain)],
            root_certificates=self.pki.engine_ca,
            require_client_auth=True,
        )
        self.port = server.add_secure_port(f"127.0.0.1:{self.port}", credentials)
        await server.start()
        self.server = server

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(None)
            self.server = None


@pytest.fixture
async def vault_server(pki: Pki) -> AsyncIterator[VaultServer]:
    server = VaultServer(pki, FakeVault())
    await server.start()
    yield server
    await server.stop()


@contextlib.asynccontextmanager
async def running(stream: EngineStream) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(stream.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def worker(pki: Pki, port: int, **settings: float) -> tuple[ConfigStore, EngineStream]:
    identity = check_tls_files(pki.cert, pki.key, pki.ca)
    store = ConfigStore(identity.location_id)
    options = {"heartbeat_interval": 0.2, "backoff_base": 0.02, "backoff_cap": 0.2, **settings}
    factory = mtls_channel_factory(f"127.0.0.1:{port}", pki.cert, pki.key, pki.ca, identity)
    return store, EngineStream(store, identity, factory, StreamSettings(**options))


# --- the stream loop ---------------------------------------------------------------------------------------------


async def test_hello_batches_acks_rejections_and_heartbeats(vault_server: VaultServer, pki: Pki) -> None:
    store, stream = worker(pki, vault_server.port)
    async with running(stream):
        session = await vault_server.vault.next_session()
        assert session.hello.location_id == LOCATION
        assert session.hello.engine_id == ENGINE
        assert list(session.hello.held) == []
        # Mutual TLS: the vault saw the engine's client certificate and its SPIFFE ID.
        assert session.peer["transport_security_type"] == [b"ssl"]
        assert SPIFFE.encode() in session.peer["x509_subject_alternative_name"]

        session.send(
            batch(
                5,
                credentials=[up_cred(C1, 1)],
                monitors=[http_monitor(M1, 3, basic=C1), http_monitor(M2, 4, basic=C2)],
            )
        )
        ack = await session.ack()
        assert ack.revision == 5
        assert [(r.monitor_id, r.version) for r in ack.rejected] == [(M2, 4)]
        assert C2 in ack.rejected[0].reason
        assert SECRET not in ack.rejected[0].reason
        assert store.snapshot_ids() == {"monitors": {M1: 3}, "credentials": {C1: 1}}
        assert not stream.synced.is_set()

        session.send(engine_pb2.SyncComplete(revision=5))
        assert (await session.ack()).revision == 5
        await asyncio.wait_for(stream.synced.wait(), TIMEOUT)

        buf = secret_buffer(store.credential(C1))
        session.send(
            batch(
                6,
                removals=[
                    removal(MONITOR, M1, engine_pb2.REMOVAL_REASON_DISABLED),
                    removal(CREDENTIAL, C1, engine_pb2.REMOVAL_REASON_UNREFERENCED),
                ],
            )
        )
        ack = await session.ack()
        assert ack.revision == 6
        assert list(ack.rejected) == []
        assert store.held() == []
        assert not any(buf)

        heartbeat = await asyncio.wait_for(session.heartbeats.get(), TIMEOUT)
        assert heartbeat.sent_unix_ms > 0
        state = stream.state
        assert state.connected
        assert state.synced
        assert state.last_applied_revision == 6
        assert state.reconnects == 0


async def test_a_silent_vault_is_dead_after_three_heartbeat_intervals(pki: Pki) -> None:
    """Counted in intervals, not seconds: the engine sends one heartbeat per interval, so the heartbeats it sent
    after the vault's last message bound how long it waited (three, plus one in flight when counting starts)."""
    server = VaultServer(pki, FakeVault(heartbeat_every=None))  # the real vault always answers: a fake must be silent
    await server.start()
    try:
        _store, stream = worker(pki, server.port, dead_after_intervals=3)
        async with running(stream):
            session = await server.vault.next_session()
            await session.sync(batch(2, credentials=[up_cred(C1, 1)]), revision=2)
            while not session.heartbeats.empty():  # sent before the vault's last message
                session.heartbeats.get_nowait()
            # The engine keeps sending heartbeats, hears nothing back, and gives the stream up.
            await asyncio.wait_for(session.heartbeats.get(), TIMEOUT)
            again = await server.vault.next_session()
            await asyncio.wait_for(session.ended.wait(), TIMEOUT)
            assert 1 + session.heartbeats.qsize() <= 3 + 1
            assert held_tuples(list(again.hello.held)) == [(CREDENTIAL, C1, 1)]
            assert stream.state.reconnects >= 1
    finally:
        await server.stop()


def test_backoff_is_exponential_with_full_jitter_and_resets() -> None:
    top = Backoff(0.5, 30.0, rng=lambda: 1.0)
    assert [top.next_delay() for _ in range(9)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    top.reset()
    assert top.next_delay() == 0.5
    bottom = Backoff(0.5, 30.0, rng=lambda: 0.0)
    assert {bottom.next_delay() for _ in range(5)} == {0.0}
    for _ in range(200):
        top.next_delay()  # no overflow after many attempts
    assert top.next_delay() == 30.0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_vault_backoff_and_fail_safe_with_a_fake_clock() -> None:
    """With an injected clock and sleep: delays 1, 2, 4, then 8 cut at the fail-safe deadline (t=10) to flush."""
    store = ConfigStore(LOCATION)
    store.apply(batch(1, credentials=[up_cred(C1, 1)], monitors=[http_monitor(M1, 1, basic=C1)]))
    buf = secret_buffer(store.credential(C1))
    now = [0.0]
    delays: list[float] = []
    held_at_sleep: list[int] = []
    enough = asyncio.Event()

    async def fake_sleep(delay: float) -> None:
        delays.append(delay)
        held_at_sleep.append(len(store.held()))
        now[0] += delay
        if len(delays) >= 7:
            enough.set()
            await asyncio.Event().wait()
        await asyncio.sleep(0)

    port = _closed_port()
    stream = EngineStream(
        store,
        EngineIdentity(TRUST_DOMAIN, LOCATION, ENGINE),
        lambda: grpc.aio.insecure_channel(f"127.0.0.1:{port}"),
        StreamSettings(heartbeat_interval=1.0, max_disconnected=10.0, backoff_base=1.0, backoff_cap=8.0),
        clock=lambda: now[0],
        sleep=fake_sleep,
        rng=lambda: 1.0,
    )
    async with running(stream):
        await asyncio.wait_for(enough.wait(), TIMEOUT)
    assert delays == [1.0, 2.0, 4.0, 3.0, 5.0, 8.0, 8.0]
    assert held_at_sleep == [2, 2, 2, 2, 0, 0, 0]  # flushed exactly at t=10
    assert stream.flushed.is_set()
    assert not any(buf)
    assert stream.state.flushes == 1
    assert stream.state.reconnects == 5
    assert not stream.state.connected


# --- the command -------------------------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ENGINE_"):
            monkeypatch.delenv(name)


def test_settings_from_env_and_flags(clean_env: None, monkeypatch: pytest.MonkeyPatch, pki: Pki) -> None:
    monkeypatch.setenv("ENGINE_VAULT", "vault.internal:7443")
    monkeypatch.setenv("ENGINE_CERT", str(pki.cert))
    monkeypatch.setenv("ENGINE_KEY", str(pki.key))
    monkeypatch.setenv("ENGINE_CA", str(pki.ca))
    monkeypatch.setenv("ENGINE_MAX_DISCONNECTED", "2h")
    monkeypatch.setenv("ENGINE_STATUS_LISTEN", "[::1]:0")
    settings = load_settings()
    assert settings.vault == "vault.internal:7443"
    assert settings.max_disconnected == 7200.0
    assert settings.status_listen == "[::1]:0"
    assert settings.heartbeat_interval == 10.0
    flagged = load_settings(vault="10.0.0.1:1", max_disconnected="30m")
    assert flagged.vault == "10.0.0.1:1"
    assert flagged.max_disconnected == 1800.0


def test_bad_settings_fail_clearly(clean_env: None, pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    for name in ("ENGINE_VAULT", "ENGINE_CERT", "ENGINE_KEY", "ENGINE_CA"):
        assert name in err
    base = ["--vault", "127.0.0.1:1", "--cert", str(pki.cert), "--key", str(pki.key), "--ca", str(pki.ca)]
    assert cli.main([*base, "--max-disconnected", "soon"]) == 2
    assert "--max-disconnected" in capsys.readouterr().err
    assert cli.main([*base, "--status-listen", "nowhere"]) == 2
    assert "ENGINE_STATUS_LISTEN" in capsys.readouterr().err
    assert cli.main([*base[:4], "--key", str(pki.ca), *base[6:]]) == 2
    assert "private key" in capsys.readouterr().err


# --- the digest of what is held (anti-entropy) ----------------------------------------------------------------------


def test_the_held_digest_follows_every_change_and_leaves_out_rejected_monitors() -> None:
    """The digest kept by ConfigStore equals the digest computed afresh from what it holds, after every kind of
    change, and leaves out a monitor whose newest version it rejected (the vault leaves it out too)."""

    def afresh(store: ConfigStore, leave_out: frozenset[str] = frozenset()) -> int:
        digest = HeldDigest()
        held = store.snapshot_ids()
        for mid, version in held["monitors"].items():
            if mid not in leave_out:
                digest.add(engine_pb2.RESOURCE_KIND_MONITOR, mid, version)
        for cid, version in held["credentials"].items():
            digest.add(engine_pb2.RESOURCE_KIND_CREDENTIAL, cid, version)
        return digest.value

    store = ConfigStore(LOCATION)
    assert store.held_state(0).digest == 0
    store.apply(batch(1, credentials=[up_cred(C1, 1)], monitors=[http_monitor(M1, 3, basic=C1)]))
    assert store.held_state(1) == engine_pb2.HeldState(revision=1, digest=afresh(store))
    assert store.held_state(1).digest != 0
    store.apply(batch(2, credentials=[up_cred(C1, 2)], monitors=[http_monitor(M1, 4, basic=C1)]))
    assert store.held_state(2).digest == afresh(store)
    rejected = store.apply(batch(3, monitors=[http_monitor(M1, 5, basic=C2)]))  # C2 is not held: rejected
    assert [r.monitor_id for r in rejected] == [M1]
    assert store.snapshot_ids()["monitors"] == {M1: 4}  # the older version stays, left out of the digest
    assert store.held_state(3).digest == afresh(store, frozenset({M1}))
    store.apply(batch(4, monitors=[http_monitor(M1, 6, basic=C1)]))  # accepted: counted again
    assert store.held_state(4).digest == afresh(store)
    store.apply(batch(5, removals=[removal(engine_pb2.RESOURCE_KIND_MONITOR, M1)]))
    store.apply(batch(6, removals=[removal(engine_pb2.RESOURCE_KIND_CREDENTIAL, C1)]))
    assert store.snapshot_ids() == {"monitors": {}, "credentials": {}}
    assert store.held_state(6).digest == 0
    store.apply(batch(7, credentials=[up_cred(C1, 9)]))
    store.flush()
    assert store.held_state(7).digest == 0


# --- the worker object -------------------------------------------------------------------------------------------


def worker_settings(pki: Pki) -> Settings:
    # Nothing listens on port 1: the stream keeps reconnecting, which is all these tests need of it.
    return Settings(vault="127.0.0.1:1", cert=pki.cert, key=pki.key, ca=pki.ca, status_listen="127.0.0.1:0")


def holding(worker: EngineWorker) -> bytearray:
    """Makes the worker hold a monitor and its credential; returns the credential's secret buffer."""
    assert worker.store.apply(batch(1, credentials=[up_cred(C1, 1)], monitors=[http_monitor(M1, 1, basic=C1)])) == []
    return secret_buffer(worker.store.credential(C1))


async def test_a_failing_task_ends_the_worker_which_wipes(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken_timer_loop(self: Scheduler) -> None:
        raise ZeroDivisionError("the timer loop broke")

    monkeypatch.setattr(Scheduler, "_timer_loop", broken_timer_loop)
    worker = EngineWorker(worker_settings(pki))
    buffer = holding(worker)
    with pytest.raises(RuntimeError, match="the scheduler stopped unexpectedly") as failed:
        await asyncio.wait_for(worker.run(), 60)  # the stream alone would run forever
    assert isinstance(failed.value.__cause__, ZeroDivisionError)
    assert (worker.store.monitor_count, worker.store.credential_count) == (0, 0)
    assert not any(buffer)


async def test_leaving_async_with_wipes(pki: Pki) -> None:
    async with EngineWorker(worker_settings(pki)) as idle:
        idle_buffer = holding(idle)
    assert idle.store.credential_count == 0, "wiped also when run() never ran"
    assert not any(idle_buffer)

    async with EngineWorker(worker_settings(pki)) as worker:
        buffer = holding(worker)
        running = asyncio.create_task(worker.run())
        await asyncio.sleep(0)  # run() begins
        assert not running.done()
    assert running.done(), "leaving the block ends run()"
    assert running.result() is None
    assert (worker.store.monitor_count, worker.store.credential_count) == (0, 0)
    assert not any(buffer)
