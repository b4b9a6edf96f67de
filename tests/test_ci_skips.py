"""On CI a skipped required test fails the run; an optional one (tests/ci_skips.py OPTIONAL) may skip; outside CI
skips stay skips. Run on a small suite of its own in a child pytest."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from tests.ci_skips import OPTIONAL

ROOT = pathlib.Path(__file__).resolve().parent.parent
SKIPPING = """
import pytest

def test_skips_in_the_body():
    pytest.skip("helm is not installed")

@pytest.mark.skipif(True, reason="needs openssl")
def test_skips_by_mark():
    pass

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_expected_failure():
    assert False

def test_runs():
    pass
"""


def _run_suite(tmp_path: pathlib.Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "conftest.py").write_text("from tests.ci_skips import pytest_runtest_makereport\n")
    (tmp_path / "tests" / "test_required.py").write_text(SKIPPING)
    (tmp_path / "tests" / "credvault").mkdir()
    (tmp_path / "tests" / "credvault" / "test_memory_guard.py").write_text(SKIPPING)  # a name on the optional list
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"PYTHONPATH": str(ROOT)}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", "--rootdir", tmp_path],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_on_ci_a_required_skip_fails_and_an_optional_one_does_not(tmp_path: pathlib.Path) -> None:
    run = _run_suite(tmp_path, "true")
    assert run.returncode == 1, run.stdout
    # a skip in the body fails the test; a skip by mark (at setup) makes an error of it: either fails the run
    assert "1 failed, 2 passed, 2 skipped, 2 xfailed, 1 error" in run.stdout
    assert "FAILED tests/test_required.py::test_skips_in_the_body" in run.stdout
    assert "ERROR tests/test_required.py::test_skips_by_mark" in run.stdout
    assert "a required test skipped on CI (Skipped: helm is not installed)" in run.stdout
    assert "test_memory_guard.py::test_skips" not in run.stdout.split("short test summary")[-1]


@pytest.mark.parametrize("ci", [None, "false"])
def test_outside_ci_skips_stay_skips(tmp_path: pathlib.Path, ci: str | None) -> None:
    run = _run_suite(tmp_path, ci)
    assert run.returncode == 0, run.stdout
    assert "2 passed, 4 skipped, 2 xfailed" in run.stdout


def test_every_optional_entry_names_a_test_file_of_the_suite() -> None:
    for entry in OPTIONAL:
        assert (ROOT / entry.split("::")[0]).is_file(), f"{entry} is on the optional list but does not exist"
