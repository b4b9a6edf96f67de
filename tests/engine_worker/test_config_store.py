"""The worker's config store (engine_worker.config_store) at its edges: what the vault says replaces what is held
whatever the revisions' order, a removal acts only on its own kind, an identical upsert changes and tells nothing, a
monitor needs every credential it lists, and flush counts what it forgot. Found by the mutation check
(scripts/mutation): each test here fails on a mutant that every other test let through."""

from __future__ import annotations

import logging

import pytest

from credvault.v1 import engine_pb2
from engine_worker.config_store import ConfigStore
from tests.engine_worker.test_engine_worker import (
    C1,
    C2,
    C3,
    CREDENTIAL,
    LOCATION,
    M1,
    M2,
    MONITOR,
    SECRET2,
    batch,
    http_monitor,
    removal,
    token_cred,
    up_cred,
)
from tests.real_engine import secret_buffer

# Revisions past 256: CPython shares one object for each small int, so only these tell == from "is".
HIGH = 1000


def test_an_older_revision_from_the_vault_replaces_a_newer_one() -> None:
    """The vault is the truth: after a restore its revisions can go back, and the engine takes what it is sent."""
    store = ConfigStore(LOCATION)
    store.apply(batch(10, credentials=[up_cred(C1, 10)], monitors=[http_monitor(M1, 10, basic=C1)]))
    old = secret_buffer(store.credential(C1))
    store.apply(batch(11, credentials=[up_cred(C1, 5, password=SECRET2)], monitors=[http_monitor(M1, 5)]))
    held = store.credential(C1)
    assert held is not None
    assert (held.version, held.details().username_password.password) == (5, SECRET2)
    assert not any(old)
    monitor = store.monitor(M1)
    assert monitor is not None
    assert monitor.version == 5
    assert not monitor.monitor.http.requests[0].authentication.basic_credential_id


def test_the_same_high_revision_again_is_a_no_op_and_tells_no_listener() -> None:
    store = ConfigStore(LOCATION)
    told: list[set[str]] = []
    store.add_listener(told.append)
    first = batch(HIGH, credentials=[up_cred(C1, HIGH)], monitors=[http_monitor(M1, HIGH, basic=C1)])
    store.apply(first)
    assert told == [{M1}]
    held_credential, held_monitor = store.credential(C1), store.monitor(M1)
    again = batch(HIGH + 1, credentials=[up_cred(C1, HIGH)], monitors=[http_monitor(M1, HIGH, basic=C1)])
    assert store.apply(again) == []  # new message objects, equal revisions
    assert store.credential(C1) is held_credential
    assert store.monitor(M1) is held_monitor
    assert told == [{M1}]


def test_a_removal_acts_on_its_own_kind_only(caplog: pytest.LogCaptureFixture) -> None:
    """A monitor and a credential under one id: each removal takes its own kind; another kind takes nothing and is
    logged (0, the unspecified kind, below both; 7 above both)."""
    shared = "SHARED-ID"
    store = ConfigStore(LOCATION)
    monitor = http_monitor(shared, 1)
    store.apply(batch(1, credentials=[up_cred(shared, 1)], monitors=[monitor]))
    caplog.set_level(logging.WARNING, logger="engine_worker")
    for kind in (engine_pb2.RESOURCE_KIND_UNSPECIFIED, 7):
        caplog.clear()
        store.apply(batch(2, removals=[engine_pb2.Removal(kind=kind, id=shared)]))
        assert store.snapshot_ids() == {"monitors": {shared: 1}, "credentials": {shared: 1}}
        assert f"ignored a removal of {shared} of unknown kind {kind}" in caplog.text
    caplog.clear()
    store.apply(batch(3, removals=[removal(CREDENTIAL, shared)]))
    assert store.snapshot_ids() == {"monitors": {shared: 1}, "credentials": {}}
    store.apply(batch(4, credentials=[up_cred(shared, 2)]))
    store.apply(batch(5, removals=[removal(MONITOR, shared)]))
    assert store.snapshot_ids() == {"monitors": {}, "credentials": {shared: 2}}
    assert "unknown kind" not in caplog.text


def test_a_definition_whose_id_differs_from_its_resource_is_rejected_either_way() -> None:
    store = ConfigStore(LOCATION)
    for resource_id, definition_id in ((M1, M2), (M2, M1)):
        resource = http_monitor(definition_id, 1)
        resource.id = resource_id
        [rejection] = store.apply(batch(1, monitors=[resource]))
        assert rejection.reason == f"the definition's id {definition_id} differs from the resource id"
    assert store.held() == []


def test_a_monitor_needs_every_credential_it_lists_even_one_its_script_does_not_use() -> None:
    store = ConfigStore(LOCATION)
    store.apply(batch(1, credentials=[token_cred(C1, 1)]))
    monitor = http_monitor(M1, 1)
    monitor.monitor.credential_ids.extend([C1, C3])
    [rejection] = store.apply(batch(2, monitors=[monitor]))
    assert rejection.reason == f"the monitor references credential {C3}, which the engine does not hold"
    store.apply(batch(3, credentials=[token_cred(C3, 1)]))
    assert store.apply(batch(4, monitors=[monitor])) == []


def test_flush_counts_every_monitor_and_credential() -> None:
    store = ConfigStore(LOCATION)
    store.apply(
        batch(
            1,
            credentials=[up_cred(C1, 1), token_cred(C2, 1)],
            monitors=[http_monitor(M1, 1, basic=C1), http_monitor(M2, 1)],
        )
    )
    assert store.flush() == 4  # two and two
    assert store.flush() == 0
