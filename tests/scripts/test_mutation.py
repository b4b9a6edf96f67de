"""scripts/mutation.py: the table of modules it mutates names code and tests that exist (tests move; a stale path
would only show when someone runs the slow check)."""

from __future__ import annotations

import ast
import enum
import importlib.util
import pathlib
import sqlite3
import subprocess
import sys
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent


def _mutation_script() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("mutation_script", ROOT / "scripts" / "mutation.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_module_and_test_path_exists() -> None:
    modules: dict[str, tuple[str, ...]] = _mutation_script().MODULES
    assert modules
    missing = [m for m in modules if not (ROOT / m).is_file()]
    for module, tests in modules.items():
        assert tests, f"{module}: no tests"
        missing += [f"{module}: {t}" for t in tests if not (ROOT / t.split("::")[0]).is_file()]
    assert not missing, f"scripts/mutation.py MODULES names paths that do not exist: {missing}"


def test_every_test_selection_collects() -> None:
    """Node ids (path::test) too: pytest exits non-zero when one names no test."""
    modules: dict[str, tuple[str, ...]] = _mutation_script().MODULES
    selections = sorted({t for tests in modules.values() for t in tests})
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:randomly", *selections],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"MODULES' tests do not collect:\n{result.stdout[-2000:]}{result.stderr}"


class _Plain(enum.Enum):
    A = "a"


class _Text(enum.StrEnum):
    A = "a"


@pytest.mark.parametrize(
    ("expression", "equivalent"),
    [
        ("_Plain.A", True),  # == is identity: ``is`` made ``==`` cannot differ
        ("PLAIN_A", True),  # a module-level alias of a member
        ("_Text.A", False),  # == "a" too: ``is`` made ``==`` differs for a plain string
        ("None", False),
        ("unknown.A", False),
    ],
)
def test_only_enum_identity_mutants_are_skipped_as_equivalent(expression: str, equivalent: bool) -> None:
    node = ast.parse(expression, mode="eval").body
    namespace: dict[str, object] = {"_Plain": _Plain, "_Text": _Text, "PLAIN_A": _Plain.A}
    assert _mutation_script()._is_identity_enum_member(node, namespace) is equivalent


def _session(tmp_path: pathlib.Path, specs: list[tuple[str, str, int, int]], name: str = "s") -> pathlib.Path:
    """A cosmic-ray session of the mutants (job id, operator, row, column), each starting and ending there and
    numbered per operator in the order given (cosmic-ray's occurrence)."""
    session = tmp_path / f"{name}.sqlite"
    seen: dict[str, int] = {}
    numbered = []
    for job, operator, row, col in specs:
        numbered.append((job, operator, row, col, row, col, seen.get(operator, 0)))
        seen[operator] = seen.get(operator, 0) + 1
    with sqlite3.connect(session) as db:
        db.execute(
            "CREATE TABLE mutation_specs (job_id, operator_name, start_pos_row, start_pos_col, end_pos_row,"
            " end_pos_col, occurrence)"
        )
        db.execute("CREATE TABLE work_results (job_id PRIMARY KEY, worker_outcome, output, test_outcome, diff)")
        db.executemany("INSERT INTO mutation_specs VALUES (?, ?, ?, ?, ?, ?, ?)", numbered)
    return session


def _skipped(session: pathlib.Path) -> set[str]:
    with sqlite3.connect(session) as db:
        return {job for (job,) in db.execute("SELECT job_id FROM work_results WHERE worker_outcome = 'SKIPPED'")}


def test_a_pragma_skips_its_lines_mutants_or_only_the_operators_it_names(tmp_path: pathlib.Path) -> None:
    (tmp_path / "m.py").write_text(
        "a = 1 <= 2\nb = 1 <= 2  # pragma: no mutate\nc = 1 <= 2  # pragma: no mutate: LtE_Lt, NumberReplacer -- why\n"
    )
    operators = ("ReplaceComparisonOperator_LtE_Lt", "ReplaceComparisonOperator_LtE_Eq")
    session = _session(tmp_path, [(f"{line}-{op}", f"core/{op}", line, 8) for line in (1, 2, 3) for op in operators])
    _mutation_script()._skip_pragmas(tmp_path, "m.py", session)
    assert _skipped(session) == {
        "2-ReplaceComparisonOperator_LtE_Lt",
        "2-ReplaceComparisonOperator_LtE_Eq",
        "3-ReplaceComparisonOperator_LtE_Lt",
    }


def test_the_keyword_only_marker_is_not_taken_for_a_multiplication(tmp_path: pathlib.Path) -> None:
    (tmp_path / "m.py").write_text("def f(a, *, b=2):\n    return a * b\n")
    operator = "core/ReplaceBinaryOperator_Mul_Div"
    session = _session(tmp_path, [("marker", operator, 1, 9), ("product", operator, 2, 13)])
    _mutation_script()._skip_keyword_only_markers(tmp_path, "m.py", session)
    assert _skipped(session) == {"marker"}


def test_a_rerun_keeps_the_outcomes_of_the_same_mutants_though_lines_moved(tmp_path: pathlib.Path) -> None:
    """Mutants are matched by operator and occurrence, not by position: a comment line added above (a pragma's
    reason) moves every position below it, and the earlier survivor is the one left to run."""
    operator = "core/ReplaceComparisonOperator_LtE_Lt"
    before = _session(tmp_path, [("old-1", operator, 10, 4), ("old-2", operator, 20, 4)], "before")
    with sqlite3.connect(before) as db:
        db.executemany(
            "INSERT INTO work_results VALUES (?, 'NORMAL', '', ?, '')", [("old-1", "KILLED"), ("old-2", "SURVIVED")]
        )
    after = _session(tmp_path, [("new-1", operator, 11, 4), ("new-2", operator, 21, 4)], "after")
    script = _mutation_script()
    assert script._keep_outcomes(after, script._outcomes(before)) == 1
    with sqlite3.connect(after) as db:
        assert db.execute("SELECT job_id, test_outcome FROM work_results").fetchall() == [("new-1", "KILLED")]
