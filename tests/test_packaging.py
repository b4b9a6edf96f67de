"""The built wheel is the product: it holds every package of the source tree, and installed (not editable) into a
fresh virtual environment its `credvault serve` serves and its `engine-worker` connects, run from outside the source
tree so nothing is imported from the checkout by accident."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from credvault.v1 import monitors_pb2 as mpb
from tests.local_pki import LocalPki
from tests.processes import System, eventually, introspect, vault_admin
from vault_service.crypto import Keyring

ROOT = pathlib.Path(__file__).resolve().parent.parent
IMPORT_ROOTS = ("credvault", "vault_service", "engine_worker")


def _source_files() -> list[str]:
    """What a clean checkout holds: tracked files and new ones git does not ignore (no build/, no caches)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The wheel, built from a copy of the checkout (a build in the tree could pick up a stale build/lib)."""
    source = tmp_path_factory.mktemp("source")
    for name in _source_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes((ROOT / name).read_bytes())
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(source)],
        check=True,
        capture_output=True,
    )
    (built,) = dist.glob("credvault-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The bin directory of a fresh virtual environment with the wheel installed (not editable). The dependencies
    come from this interpreter's site-packages, appended to its path by a .pth line: a directory named there is only
    added to sys.path, its own .pth files (this checkout's editable install) are not run."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (pathlib.Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    return venv / "bin"


def test_the_wheel_holds_every_package_and_its_data(wheel: pathlib.Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = sorted(
        str(init.parent.relative_to(ROOT)) for root in IMPORT_ROOTS for init in (ROOT / root).rglob("__init__.py")
    )
    missing = [package for package in packages if f"{package}/__init__.py" not in names]
    assert not missing, f"packages not in the wheel: {missing}"
    assert {"credvault", "vault_service", "vault_service/push", "engine_worker"} <= set(packages)
    data = [
        *(ROOT / "vault_service" / "storage" / "migrations").glob("*.sql"),
        *(ROOT / "credvault" / "v1").glob("*.pyi"),
        ROOT / "credvault" / "py.typed",
        ROOT / "vault_service" / "py.typed",
    ]
    missing = [str(path.relative_to(ROOT)) for path in data if str(path.relative_to(ROOT)) not in names]
    assert not missing, f"data files not in the wheel: {missing}"


def test_the_installed_package_imports_from_the_environment(installed: pathlib.Path, tmp_path: pathlib.Path) -> None:
    result = subprocess.run(
        [
            str(installed / "python"),
            "-c",
            "import credvault.v1.engine_pb2, vault_service.server, engine_worker.cli; print(vault_service.__file__)",
        ],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert pathlib.Path(result.stdout.strip()).is_relative_to(installed.parent), result.stdout


async def test_the_installed_vault_serves_and_its_worker_connects(
    installed: pathlib.Path, tmp_path: pathlib.Path, database_url: str, keyring: Keyring
) -> None:
    system = System(LocalPki.make(tmp_path), database_url, keyring, installed=installed)
    try:
        async with vault_admin(system, database_url) as admin:
            await admin.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id="loc-a")))
            await admin.AddEngine(mpb.AddEngineRequest(location_id="loc-a", engine_id="e1"))
            worker, port = await system.start_worker("loc-a", "e1")

            async def connected() -> bool:
                return bool((await introspect(port))["connected"])

            await eventually(connected)
            assert await worker.stop(signal.SIGTERM) == 0
        assert await system.procs[0].stop(signal.SIGTERM) == 0
    finally:
        await system.stop_all()
