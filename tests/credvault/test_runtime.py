"""The runtime of credvault serve and the engine worker: the configured event loop, and the garbage collector's
tuning."""

from __future__ import annotations

import asyncio
import gc

import pydantic
import pytest
import uvloop

from credvault import runtime
from vault_service.config import Settings


@pytest.mark.parametrize(("name", "loop_type"), [("uvloop", uvloop.Loop), ("asyncio", asyncio.BaseEventLoop)])
def test_runs_on_the_configured_loop(name: str, loop_type: type) -> None:
    seen: list[asyncio.AbstractEventLoop] = []

    async def main() -> None:
        seen.append(asyncio.get_running_loop())

    runtime.run(main(), name)
    assert isinstance(seen[0], loop_type)
    assert isinstance(seen[0], uvloop.Loop) == (name == "uvloop")


def test_event_loop_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine_worker.settings import load_settings

    paths = {"vault": "vault:50052", "cert": "c.pem", "key": "k.pem", "ca": "ca.pem"}
    assert load_settings(**paths).event_loop == "uvloop"
    monkeypatch.setenv("ENGINE_EVENT_LOOP", "asyncio")
    assert load_settings(**paths).event_loop == "asyncio"
    with pytest.raises(ValueError, match="event_loop"):
        load_settings(**paths, event_loop="trio")
    assert Settings(allow_plaintext=True).event_loop == "uvloop"
    assert Settings(allow_plaintext=True, event_loop="asyncio").event_loop == "asyncio"
    with pytest.raises(pydantic.ValidationError, match="event_loop"):
        Settings(allow_plaintext=True, event_loop="trio")


def test_gc_tuning_freezes_what_exists_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        runtime.tune_gc_for_serving()
        assert gc.get_threshold() == runtime.GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
