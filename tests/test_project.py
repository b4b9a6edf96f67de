"""Project invariants: generated code is fresh, protos lint clean, engine_worker never imports vault_service, no
import runs against the vault's layers."""

from __future__ import annotations

import ast
import filecmp
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_generated_code_matches_protos(tmp_path: pathlib.Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)], check=True)
    committed = ROOT / "credvault" / "v1"
    generated = tmp_path / "credvault" / "v1"
    names = sorted(p.name for p in generated.iterdir() if p.suffix in {".py", ".pyi"})
    assert names, "nothing generated"
    stale = [n for n in names if not (committed / n).exists() or not filecmp.cmp(committed / n, generated / n, False)]
    assert not stale, f"generated code is stale, run scripts/gen_protos.py: {stale}"
    extra = sorted(
        p.name for p in committed.iterdir() if p.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"))
    )
    assert extra == names, "generated files without a .proto"


def test_buf_lint() -> None:
    buf = shutil.which("buf") or str(pathlib.Path(sys.executable).parent / "buf")
    if not pathlib.Path(buf).exists():
        pytest.fail("buf is not installed: pip install -e '.[test]' (buf-bin)")
    result = subprocess.run([buf, "lint"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_engine_worker_never_imports_vault_service() -> None:
    offenders = []
    for path in (ROOT / "engine_worker").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "vault_service"]
    assert not offenders


def _imported(path: pathlib.Path) -> set[str]:
    """Every dotted name a module imports, at any depth (lazy and TYPE_CHECKING imports count): ``from a import b``
    gives both ``a`` and ``a.b``, since b may be a module."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


# (the code that must not import, the packages it must not import): the layers of the vault, top to bottom, are
# cli -> server -> {api, push} -> domain modules -> storage -> models, and no arrow runs back up.
_LAYER_RULES = [
    ("vault_service/api", ("vault_service.storage", "asyncpg")),  # servicers reach the database through the domain
    ("vault_service/push", ("vault_service.api",)),  # push and api stand side by side
    ("vault_service/metrics.py", ("vault_service.push",)),  # metrics is handed what it reads
]
# What storage may import of the vault: itself and the types below it (no api, push or domain module).
_STORAGE_MAY_IMPORT = (
    "vault_service.storage",
    "vault_service.models",
    "vault_service.errors",
    "vault_service.certificates",
    "vault_service.crypto",
)


@pytest.mark.parametrize(("code", "forbidden"), _LAYER_RULES, ids=[rule[0] for rule in _LAYER_RULES])
def test_no_import_runs_against_the_layers(code: str, forbidden: tuple[str, ...]) -> None:
    top = ROOT / code
    paths = sorted(top.rglob("*.py")) if top.is_dir() else [top]
    assert paths, f"{code} has no module"
    offenders = [f"{p.relative_to(ROOT)}: {n}" for p in paths for n in sorted(_imported(p)) if _within(n, forbidden)]
    assert not offenders


def test_storage_imports_only_what_lies_below_it() -> None:
    offenders = [
        f"{p.relative_to(ROOT)}: {n}"
        for p in sorted((ROOT / "vault_service" / "storage").rglob("*.py"))
        for n in sorted(_imported(p))
        if n.split(".")[0] == "vault_service" and n != "vault_service" and not _within(n, _STORAGE_MAY_IMPORT)
    ]
    assert not offenders


# Every module of the vault on its floor: cli (5) -> server (4) -> api | push (3, side by side) -> domain modules (2)
# -> storage (1) -> the core types (0). A module imports only from its own floor or below, api and push never each
# other. A newcomer adding a module at the top of vault_service/ adds a domain module.
_CORE = ("vault_service.models", "vault_service.errors", "vault_service.crypto", "vault_service.certificates")


def _floor(module: str) -> tuple[int, str] | None:
    parts = module.split(".")
    if parts[0] != "vault_service" or len(parts) < 2:
        return None
    room = parts[1]
    if room == "cli":
        return 5, "cli"
    if room in ("server", "tls13"):
        return 4, "server"
    if room in ("api", "push"):
        return 3, room
    if room == "storage":
        return 1, "storage"
    if _within(module, _CORE):
        return 0, "core"
    return 2, "domain"


def _vault_modules() -> dict[str, pathlib.Path]:
    modules = {}
    for path in sorted((ROOT / "vault_service").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def test_the_vault_imports_only_downward() -> None:
    offenders = []
    for module, path in _vault_modules().items():
        mine = _floor(module)
        for name in sorted(_imported(path)):
            theirs = _floor(name)
            if mine is None or theirs is None:
                continue
            if theirs[0] > mine[0] or (theirs[0] == mine[0] == 3 and theirs[1] != mine[1]):
                offenders.append(f"{module} ({mine[1]}) imports {name} ({theirs[1]})")
    assert not offenders


def test_no_import_cycle() -> None:
    """No module of the vault, kernel or worker reaches itself through its imports (lazy ones included)."""
    modules = {}
    for package in ("credvault", "vault_service", "engine_worker"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    edges = {m: {n for n in _imported(p) if n in modules and n != m} for m, p in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for nxt in sorted(edges[module]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[module] = 2

    for module in sorted(modules):
        if module not in state:
            visit(module, [module])
    assert not cycles


def test_no_private_keys_committed() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False).stdout
    for name in tracked.splitlines():
        p = ROOT / name
        if p.is_file() and p.stat().st_size < 1_000_000 and p.suffix not in {".py", ".md"}:
            assert b"PRIVATE KEY-----" not in p.read_bytes(), name
