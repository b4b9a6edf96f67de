"""Every module of the `credvault` console script imports, and so does everything its commands import late.

The commands import the server (and what only it needs) inside their functions to keep `credvault --help` fast, so
an import error there would otherwise show only when someone runs the command. Each module is imported in a fresh
interpreter: an import cycle can hide behind whatever another test imported first.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import pkgutil
import subprocess
import sys

import pytest

import vault_service.cli

CLI_DIR = pathlib.Path(vault_service.cli.__file__).parent
CLI_MODULES = sorted(f"vault_service.cli.{m.name}" for m in pkgutil.iter_modules([str(CLI_DIR)]))


def late_imports() -> list[tuple[str, str | None]]:
    """(module, name) of every import inside a function of a cli module; name is None for ``import module``."""
    found: list[tuple[str, str | None]] = []
    for path in sorted(CLI_DIR.glob("*.py")):
        for function in ast.walk(ast.parse(path.read_text())):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    found += [(alias.name, None) for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    found += [(node.module, alias.name) for alias in node.names]
    return found


@pytest.mark.parametrize("module", [*CLI_MODULES, "vault_service.server"])
def test_module_imports_in_a_fresh_interpreter(module: str) -> None:
    result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_every_late_import_resolves() -> None:
    late = late_imports()
    assert ("vault_service.server", "serve") in late  # the walk finds what `credvault serve` imports late
    for module, name in late:
        imported = importlib.import_module(module)
        if name is not None and not hasattr(imported, name):
            importlib.import_module(f"{module}.{name}")  # a submodule not imported yet; fails if there is none
