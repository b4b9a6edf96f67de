"""On CI (``CI=true``, as ``.ci/run`` sets it) a skipped test fails, unless it is on the optional list below: a
required test that cannot run there (helm missing, say) must turn CI red, not pass unnoticed. Outside CI skips stay
skips. Hooked in by tests/conftest.py."""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

__all__ = ["OPTIONAL", "on_ci", "pytest_runtest_makereport"]

# Test files (or node ids) that may skip on CI, each with why it cannot always run there.
OPTIONAL = {
    "tests/credvault/test_memory_guard.py": (
        "drops capabilities of its children: runs only as root on Linux, and looks for core files only where the "
        "kernel's core_pattern writes files"
    ),
    "tests/deploy/test_memory_lock_capability.py": (
        "sets a file capability (setcap) and starts processes as another user: runs only as root on Linux, where a "
        "Python interpreter that user may run exists"
    ),
}


def on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _optional(nodeid: str) -> bool:
    return any(nodeid == prefix or nodeid.startswith(f"{prefix}::") for prefix in OPTIONAL)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, object, None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if not (report.skipped and on_ci()) or hasattr(report, "wasxfail") or _optional(item.nodeid):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (
        f"a required test skipped on CI ({reason}). Install what it needs in .ci/run, or add it to OPTIONAL in "
        "tests/ci_skips.py with the reason it cannot run there."
    )
