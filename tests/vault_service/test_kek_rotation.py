"""Two-phase KEK rotation with no window: two replicas serve writes throughout add -> activate -> retire; activation
is refused while one of them has not loaded the new KEK; no replica ever meets a data key it cannot open."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest

from credvault.v1 import credentials_pb2 as cpb
from tests.conftest import Client
from tests.helpers import create_req, up
from tests.local_pki import LocalPki
from tests.processes import API_LISTENING, VAULT_MODULE_ARGV, System, child_environment, spawn, vault_environment
from vault_service import keys
from vault_service.bootstrap import bootstrap_admin, migrate_and_bootstrap
from vault_service.config import Settings
from vault_service.crypto import Keyring, load_keyring_file, write_keyring_file
from vault_service.errors import ConfigurationError, DecryptionError
from vault_service.server import RunningVault, start_vault

CHECK_SECONDS = 0.2


async def until(condition: Callable[[], Awaitable[bool]], within: float = 15.0) -> None:
    async with asyncio.timeout(within):
        while not await condition():  # noqa: ASYNC110 - another replica's report, in the database
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def replica(settings: Settings, keyring_file: pathlib.Path, name: str) -> AsyncIterator[RunningVault]:
    running = await start_vault(
        settings.model_copy(
            update={"keyring_file": keyring_file, "replica_id": name, "keyring_check_seconds": CHECK_SECONDS}
        )
    )
    try:
        yield running
    finally:
        await running.stop(0)


async def reports(vault: RunningVault) -> dict[str, tuple[tuple[str, ...], str]]:
    async with vault.store.autocommit() as tx:
        return {r.replica_id: (r.kek_ids, r.active_kek) for r in await tx.replicas() if r.live}


class Workload:
    """Creates and overwrites credentials through both replicas, and opens every stored data key with each replica's
    own keyring, until stopped: every failure is kept."""

    def __init__(self, clients: list[Client], vaults: list[RunningVault]) -> None:
        self.clients = clients
        self.vaults = vaults
        self.failures: list[str] = []
        self.writes = 0
        self.opened = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _write(self, client: Client, n: int) -> None:
        created: list[str] = []
        i = 0
        while not self._stop.is_set():
            try:
                if i % 2 == 0 or not created:
                    reply = await client.CreateCredential(create_req(f"c{n}-{i}", up("u", f"pw-{i}")))
                    created.append(reply.credential.id)
                else:
                    request = cpb.OverwriteCredentialRequest(id=created[-1], contents=up("u", f"pw-{i}"))
                    await client.OverwriteCredential(request)
                self.writes += 1
            except grpc.aio.AioRpcError as exc:
                self.failures.append(f"replica {n}: {exc.code().name}: {exc.details()}")
            i += 1
            await asyncio.sleep(0.01)

    async def _open_everything(self) -> None:
        while not self._stop.is_set():
            for vault in self.vaults:
                async with vault.store.autocommit() as tx:
                    sealed = await tx.sealed_not_under("", "", 100_000)
                for credential_id, version, contents in sealed:
                    try:
                        vault.keyring.open(credential_id, version, contents)
                        self.opened += 1
                    except DecryptionError as exc:
                        self.failures.append(f"{vault.keyring!r} cannot open: {exc}")
            await asyncio.sleep(0.05)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._write(c, n)) for n, c in enumerate(self.clients)]
        self._tasks.append(asyncio.create_task(self._open_everything()))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


@pytest.fixture
def keyring_files(tmp_path: pathlib.Path, keyring: Keyring) -> tuple[pathlib.Path, pathlib.Path]:
    """Each replica's own copy of the keyring (as each pod has its mounted Secret)."""
    files = (tmp_path / "a.json", tmp_path / "b.json")
    for f in files:
        write_keyring_file(f, keyring)
    return files


async def test_add_activate_retire_with_two_replicas_serving(
    settings: Settings, keyring_files: tuple[pathlib.Path, pathlib.Path], local_pki: LocalPki
) -> None:
    file_a, file_b = keyring_files
    async with replica(settings, file_a, "replica-a") as a, replica(settings, file_b, "replica-b") as b:
        issued = await bootstrap_admin(a.store, "admin")
        async with local_pki.channel(a.port) as ch_a, local_pki.channel(b.port) as ch_b:
            work = Workload([Client(ch_a, issued.token), Client(ch_b, issued.token)], [a, b])
            work.start()
            try:
                # add: the new KEK reaches replica A only
                added = load_keyring_file(file_a).with_new_key()
                new_kek = added.newest_id
                write_keyring_file(file_a, added)

                async def a_loaded() -> bool:
                    return new_kek in (await reports(a))["replica-a"][0]

                await until(a_loaded)
                with pytest.raises(ConfigurationError, match="replica-b have not loaded"):
                    await keys.activate(a.store, added, new_kek)
                assert a.keyring.active_id == b.keyring.active_id == "kek-1"  # nothing changed

                # the keyring reaches replica B: activation goes through, everything is re-wrapped
                write_keyring_file(file_b, added)

                async def b_loaded() -> bool:
                    return new_kek in (await reports(a))["replica-b"][0]

                await until(b_loaded)
                done = await keys.activate(a.store, added, new_kek, settle_seconds=10)
                assert done.replicas == ["replica-a", "replica-b"]
                assert done.not_yet == []
                assert a.keyring.active_id == b.keyring.active_id == new_kek
                async with a.store.autocommit() as tx:
                    usage = await tx.kek_usage()
                assert set(usage) <= {new_kek}  # written after the switch, or re-wrapped

                # retire the old KEK: refused while it is active elsewhere is covered below; here it is free
                smaller = await keys.retire(a.store, added.with_active(new_kek), "kek-1")
                for f in keyring_files:
                    write_keyring_file(f, smaller)

                async def both_dropped_it() -> bool:
                    return all(ids == (new_kek,) for ids, _ in (await reports(a)).values())

                await until(both_dropped_it)
            finally:
                await work.stop()
    assert work.failures == []
    assert work.writes > 10
    assert work.opened > 10


async def test_retire_and_reload_refuse_what_is_still_needed(
    settings: Settings, keyring_files: tuple[pathlib.Path, pathlib.Path], local_pki: LocalPki
) -> None:
    file_a, _ = keyring_files
    async with replica(settings, file_a, "replica-a") as a:
        issued = await bootstrap_admin(a.store, "admin")
        async with local_pki.channel(a.port) as ch:
            await Client(ch, issued.token).CreateCredential(create_req("one"))
        added = load_keyring_file(file_a).with_new_key()
        with pytest.raises(ConfigurationError, match="is the active KEK"):
            await keys.retire(a.store, added.with_active(added.newest_id), "kek-1")
        # a keyring file without the active KEK (a Secret rolled back too far) is not taken: the replica keeps its own
        failed = "credvault_keyring_reload_failures_total"
        assert a.metrics.registry.get_sample_value(failed) == 0
        write_keyring_file(file_a, Keyring({"kek-9": b"\x01" * 32}, "kek-9"))
        assert a.keyring_keeper is not None
        a.keyring_keeper.wake()

        async def refused() -> bool:
            return a.metrics.registry.get_sample_value(failed) == 1

        await until(refused)
        assert a.keyring.ids == ["kek-1"]
        assert (await reports(a))["replica-a"] == (("kek-1",), "kek-1")


async def test_sighup_makes_a_serving_process_take_its_changed_keyring_file_at_once(
    system: System, database_url: str, keyring: Keyring, tmp_path: pathlib.Path
) -> None:
    """`credvault serve` checks its keyring file every keyring_check_seconds (here 5 minutes); SIGHUP checks now."""
    keyring_file = tmp_path / "keyring.json"
    write_keyring_file(keyring_file, keyring)
    await migrate_and_bootstrap(database_url, "admin")
    env = child_environment(CREDVAULT_KEYRING_FILE=str(keyring_file), CREDVAULT_KEYRING_CHECK_SECONDS="300")
    env |= {
        k: v
        for k, v in vault_environment(system.pki, database_url, "", system.api_port, system.engine_port).items()
        if k != "CREDVAULT_KEYRING"
    }
    vault = await spawn(sys.executable, *VAULT_MODULE_ARGV, "serve", env=env)
    system.procs.append(vault)
    await vault.wait_for_line(API_LISTENING)
    added = keyring.with_new_key()
    write_keyring_file(keyring_file, added)
    vault.proc.send_signal(signal.SIGHUP)
    await vault.wait_for_line(r"keyring: KEKs \['kek-1', 'kek-2'\] loaded", within=15)
    assert await vault.stop(signal.SIGTERM) == 0


async def test_a_replica_whose_keyring_lacks_the_active_kek_does_not_start(
    settings: Settings, keyring_files: tuple[pathlib.Path, pathlib.Path]
) -> None:
    file_a, file_b = keyring_files
    async with replica(settings, file_a, "replica-a") as a:
        added = load_keyring_file(file_a).with_new_key()
        write_keyring_file(file_a, added)
        a.keyring.adopt(added)
        assert a.keyring_keeper is not None
        await a.keyring_keeper.check()
        await keys.activate(a.store, added, added.newest_id)
        # replica B starts with the keyring from before the rotation (an old Secret): refused, and says why
        with pytest.raises(ConfigurationError, match=f"the active KEK '{added.newest_id}'.* is not in this keyring"):
            await start_vault(settings.model_copy(update={"keyring_file": file_b, "replica_id": "replica-b"}))
