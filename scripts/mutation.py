"""Mutation check of the security-critical modules with cosmic-ray: each module is mutated one change at a time
and the tests that guard it run against every mutant, in a fresh process each; a mutant the tests do not kill is a
hole in them. Prints, per module and in total, mutants, killed, survived and the time, then each survivor's diff.
Exit status 1 when a mutant survived. It works on a copy of the work tree (the work tree is never edited), and the
tests need PostgreSQL as the suite does (CREDVAULT_TEST_DATABASE_URL).

Skipped: mutants inside type annotations (never evaluated here: ``from __future__ import annotations``), and lines
marked ``# pragma: no mutate`` (or ``# pragma: no mutate: LtE_Lt, ...``, only those cosmic-ray operators),
each with a comment beside it saying why the mutant is equivalent; and ``is`` made
``==`` where one side is a member of a plain enum (equal only to itself: equivalent, found by operand so that the
line's other mutants still run); and the bare ``*`` of a parameter list, which cosmic-ray mutates as a multiplication.

    scripts/mutation                         # every module below
    scripts/mutation credvault/identity.py   # some of them
    scripts/mutation --work /tmp/m vault_service/policy.py   # kept: run it again to rerun only the survivors

Why cosmic-ray (measured on credvault/log_redaction.py with tests/test_logs.py and tests/test_redaction.py): mutmut
3.8 ran its 162 mutants in 34 s against cosmic-ray's 138 in 9 min 16 s, but it runs each mutant in a fork of one
warmed-up test process: process-wide state (the registry of secrets to mask) carried over from earlier tests let
mutants survive that a fresh process kills (``value is not None`` in register_secret), and gRPC does not support
fork. A fresh process per mutant is slower but every survivor it reports is real.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import enum
import importlib
import itertools
import pathlib
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
VENV_BIN = pathlib.Path(sys.executable).parent

# Each security-critical module with the tests that must kill its mutants.
MODULES: dict[str, tuple[str, ...]] = {
    "vault_service/policy.py": (
        "tests/vault_service/test_access_rules.py",
        "tests/vault_service/test_tokens.py",
        "tests/vault_service/test_audit.py",
        "tests/vault_service/test_monitors.py",
        "tests/vault_service/test_external_sync.py::test_companions_and_permissions",
        "tests/vault_service/test_external_sync.py::test_companions_must_exist_and_be_of_their_type",
    ),
    "vault_service/tokens.py": ("tests/vault_service/test_tokens.py", "tests/vault_service/test_auth_cache.py"),
    "credvault/log_redaction.py": ("tests/credvault/test_logs.py", "tests/credvault/test_redaction.py"),
    "credvault/secret_scrub.py": ("tests/credvault/test_secret_scrub.py", "tests/engine_worker/test_result_leaks.py"),
    "engine_worker/config_store.py": (
        "tests/engine_worker/test_config_store.py",
        "tests/engine_worker/test_engine_worker.py",
        "tests/engine_worker/test_scheduler.py",
    ),
    "credvault/identity.py": ("tests/credvault/test_identity.py", "tests/engine_worker/test_engine_worker.py"),
    "vault_service/push/follower.py": (
        "tests/vault_service/push/test_follower.py",
        "tests/vault_service/push/test_push.py",
        "tests/vault_service/push/test_convergence.py",
    ),
    "vault_service/push/location_state.py": (
        "tests/vault_service/push/test_location_state.py",
        "tests/vault_service/push/test_push.py",
        "tests/vault_service/push/test_convergence.py",
        "tests/vault_service/test_external_sync.py"
        "::test_engines_never_get_the_empty_placeholder_of_a_credential_not_yet_synchronized",
    ),
}


@dataclasses.dataclass
class Outcome:
    module: str
    mutants: int
    killed: int
    survived: int
    skipped: int
    seconds: float
    survivors: list[str]
    rerun: int  # with --work: the earlier survivors, run again (the rest kept their outcome); 0: a full run


def _pytest(tests: tuple[str, ...]) -> list[str]:
    return [str(VENV_BIN / "python"), "-m", "pytest", "-x", "-q", "-p", "no:randomly", *tests]


def _annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(line, column) start and end of every type annotation in ``source``."""
    spans = []
    for node in ast.walk(ast.parse(source)):
        found: list[ast.expr | None] = []
        if isinstance(node, ast.arg | ast.AnnAssign):
            found.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found.append(node.returns)
        for annotation in found:
            if annotation is not None and annotation.end_lineno is not None and annotation.end_col_offset is not None:
                start = (annotation.lineno, annotation.col_offset)
                spans.append((start, (annotation.end_lineno, annotation.end_col_offset)))
    return spans


def _mark_skipped(session: pathlib.Path, jobs: list[str], reason: str) -> None:
    """Marks mutants done, as skipped (before the run, as cr-filter-pragma does)."""
    with sqlite3.connect(session) as db:
        db.executemany(
            "INSERT OR REPLACE INTO work_results (job_id, worker_outcome, output, test_outcome, diff)"
            " VALUES (?, 'SKIPPED', ?, NULL, NULL)",
            [(job, reason) for job in jobs],
        )


def _skip_annotations(tree: pathlib.Path, module: str, session: pathlib.Path) -> None:
    """Skips the mutants inside type annotations."""
    spans = _annotation_spans((tree / module).read_text())
    with sqlite3.connect(session) as db:
        specs = db.execute("SELECT job_id, start_pos_row, start_pos_col FROM mutation_specs").fetchall()
    skipped = [job for job, row, col in specs if any(a <= (row, col) < b for a, b in spans)]
    _mark_skipped(session, skipped, "inside a type annotation")


def _skip_keyword_only_markers(tree: pathlib.Path, module: str, session: pathlib.Path) -> None:
    """Skips the "multiplication" mutants of a bare ``*`` in a parameter list (cosmic-ray takes it for an operator:
    made ``/`` it is equivalent for callers that pass the later parameters by keyword, otherwise a syntax error)."""
    source = (tree / module).read_text()
    products = []  # where each real multiplication's operator can be: between its operands
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            assert node.left.end_lineno is not None
            assert node.left.end_col_offset is not None
            products.append(
                ((node.left.end_lineno, node.left.end_col_offset), (node.right.lineno, node.right.col_offset))
            )
    with sqlite3.connect(session) as db:
        specs = db.execute(
            "SELECT job_id, start_pos_row, start_pos_col FROM mutation_specs"
            " WHERE operator_name LIKE 'core/ReplaceBinaryOperator_Mul_%'"
        ).fetchall()
    skipped = [job for job, row, col in specs if not any(a <= (row, col) < b for a, b in products)]
    _mark_skipped(session, skipped, "the keyword-only marker *, not a multiplication")


_PRAGMA = re.compile(r"#\s*pragma:\s*no mutate(?::\s*(?P<operators>\w+(?:\s*,\s*\w+)*))?")


def _skip_pragmas(tree: pathlib.Path, module: str, session: pathlib.Path) -> None:
    """Skips the mutants of a line marked ``# pragma: no mutate`` (all of them, as cr-filter-pragma does) or
    ``# pragma: no mutate: <operator>, ... -- why`` (only those operators, each named in full or by its end: LtE_Lt
    for ReplaceComparisonOperator_LtE_Lt; the line's other mutants still run). A mutant belongs to the line it ends
    on."""
    lines = (tree / module).read_text().splitlines()
    with sqlite3.connect(session) as db:
        specs = db.execute("SELECT job_id, operator_name, end_pos_row, end_pos_col FROM mutation_specs").fetchall()
    skipped = []
    for job, operator, row, col in specs:
        line = row - 1 if col else row - 2  # a mutant ending at a line's start ends on the line before
        pragma = _PRAGMA.search(lines[line]) if 0 <= line < len(lines) else None
        if pragma is None:
            continue
        named = pragma["operators"]
        if named is None or any(operator.endswith(n.strip()) for n in named.split(",")):
            skipped.append(job)
    _mark_skipped(session, skipped, "marked # pragma: no mutate")


# ``is`` made ``==`` (``is not`` made ``!=``) where an operand is a member of a plain enum.Enum: equal only to
# itself, its == is identity, so the mutant cannot behave differently (not so for a StrEnum or IntEnum member).
_IDENTITY_TO_EQUALITY = ("core/ReplaceComparisonOperator_Is_Eq", "core/ReplaceComparisonOperator_IsNot_NotEq")


def _is_identity_enum_member(node: ast.expr, namespace: dict[str, object]) -> bool:
    """Whether ``node`` (a name or dotted name) names a member of an enum whose == is identity."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.insert(0, node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in namespace:
        return False
    value = namespace[node.id]
    for part in parts:
        value = getattr(value, part, None)
    return isinstance(value, enum.Enum) and type(value).__eq__ is object.__eq__


def _skip_enum_identity(module: str, session: pathlib.Path) -> None:
    """Skips ``is`` -> ``==`` on enum members (see _IDENTITY_TO_EQUALITY): the module's names are resolved by
    importing it."""
    source = (ROOT / module).read_text()
    namespace = vars(importlib.import_module(module.removesuffix(".py").replace("/", ".")))
    operands: dict[tuple[int, int], tuple[ast.expr, ast.expr]] = {}  # the operator's position: its two operands
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            chain = [node.left, *node.comparators]
            for left, right in itertools.pairwise(chain):
                if right.lineno == left.end_lineno:  # the operator lies between them on one line
                    assert left.end_col_offset is not None
                    line = source.splitlines()[right.lineno - 1]
                    gap = line[left.end_col_offset : right.col_offset]
                    column = left.end_col_offset + len(gap) - len(gap.lstrip(" )"))
                    operands[(right.lineno, column)] = (left, right)
    with sqlite3.connect(session) as db:
        specs = db.execute(
            "SELECT job_id, start_pos_row, start_pos_col FROM mutation_specs WHERE operator_name IN (?, ?)",
            _IDENTITY_TO_EQUALITY,
        ).fetchall()
    skipped = [
        job
        for job, row, col in specs
        if any(_is_identity_enum_member(side, namespace) for side in operands.get((row, col), ()))
    ]
    _mark_skipped(session, skipped, "is made == on a member of an enum whose == is identity")


def _copy_of_the_work_tree(into: pathlib.Path) -> pathlib.Path:
    """The files git knows of (tracked, or new and not ignored), as they are now."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    tree = into / "tree"
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tree / name)
    return tree


def _outcomes(session: pathlib.Path) -> dict[tuple[str, int], tuple[str, str, str, str]]:
    """A session's outcomes other than survivors and skips, by mutant: (operator, occurrence in the module), which
    stay the same while the code does (positions do not: a comment line above shifts them)."""
    with sqlite3.connect(session) as db:
        rows = db.execute(
            "SELECT s.operator_name, s.occurrence, r.worker_outcome, r.output, r.test_outcome, r.diff"
            " FROM work_results r JOIN mutation_specs s USING (job_id)"
            " WHERE r.worker_outcome != 'SKIPPED' AND r.test_outcome IS NOT 'SURVIVED'"
        ).fetchall()
    return {(operator, occurrence): tuple(outcome) for operator, occurrence, *outcome in rows}


def _keep_outcomes(session: pathlib.Path, earlier: dict[tuple[str, int], tuple[str, str, str, str]]) -> int:
    """Gives the new session's mutants the outcomes an earlier session of the same code found; returns how many
    are left to run (the earlier survivors)."""
    with sqlite3.connect(session) as db:
        pending = db.execute(
            "SELECT job_id, operator_name, occurrence FROM mutation_specs"
            " WHERE job_id NOT IN (SELECT job_id FROM work_results)"
        ).fetchall()
        kept = [(job, *earlier[(op, occurrence)]) for job, op, occurrence in pending if (op, occurrence) in earlier]
        db.executemany(
            "INSERT INTO work_results (job_id, worker_outcome, output, test_outcome, diff) VALUES (?, ?, ?, ?, ?)",
            kept,
        )
    return len(pending) - len(kept)


def check(module: str, tests: tuple[str, ...], work: pathlib.Path) -> Outcome:
    """Mutates ``module`` in ``work``/tree (a copy, where ``python -m pytest`` imports the code from)."""
    tree = work / "tree"
    started = time.monotonic()
    baseline = subprocess.run(_pytest(tests), cwd=tree, capture_output=True, text=True)
    if baseline.returncode != 0:
        raise SystemExit(f"{module}: its tests fail before any mutation:\n{baseline.stdout[-3000:]}")
    timeout = max(60.0, 5 * (time.monotonic() - started))  # a mutant that loops forever counts as killed
    config = work / f"{pathlib.Path(module).stem}.toml"
    session = config.with_suffix(".sqlite")
    config.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{module}"\n'
        f"timeout = {timeout:.0f}\n"
        "excluded-modules = []\n"
        f'test-command = "{" ".join(_pytest(tests))}"\n'
        "[cosmic-ray.distributor]\n"
        'name = "local"\n'
    )
    cosmic_ray = str(VENV_BIN / "cosmic-ray")
    code = ast.dump(ast.parse((tree / module).read_text()))  # comments (pragmas) and line numbers aside
    stamp = session.with_suffix(".ast")
    earlier = _outcomes(session) if session.exists() and stamp.exists() and stamp.read_text() == code else {}
    session.unlink(missing_ok=True)
    subprocess.run([cosmic_ray, "init", str(config), str(session)], cwd=tree, check=True, capture_output=True)
    stamp.write_text(code)
    _skip_pragmas(tree, module, session)
    _skip_annotations(tree, module, session)
    _skip_keyword_only_markers(tree, module, session)
    _skip_enum_identity(module, session)
    rerun = _keep_outcomes(session, earlier) if earlier else 0
    subprocess.run([cosmic_ray, "exec", str(config), str(session)], cwd=tree, check=True, capture_output=True)
    with sqlite3.connect(session) as db:
        rows = db.execute("SELECT worker_outcome, test_outcome, diff FROM work_results").fetchall()
        mutants = db.execute("SELECT count(*) FROM work_items").fetchone()[0]
    skipped = sum(1 for worker, _, _ in rows if worker == "SKIPPED")
    survivors = [diff for worker, test, diff in rows if worker == "NORMAL" and test == "SURVIVED"]
    return Outcome(
        module,
        mutants - skipped,
        mutants - skipped - len(survivors),
        len(survivors),
        skipped,
        time.monotonic() - started,
        survivors,
        rerun,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help=f"default: all of {', '.join(MODULES)}")
    parser.add_argument(
        "--work",
        type=pathlib.Path,
        help="keep the copy and each module's session here (default: a temporary directory); run again with the"
        " same --work after adding tests or pragmas, and only the mutants that survived run again, as long as the"
        " module's code is unchanged (comments aside)",
    )
    args = parser.parse_args()
    modules = args.modules or list(MODULES)
    unknown = sorted(set(modules) - set(MODULES))
    if unknown:
        parser.error(f"not a module this check knows: {', '.join(unknown)} (add it to MODULES with its tests)")
    outcomes = []
    with contextlib.ExitStack() as stack:
        if args.work is None:
            work = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="credvault-mutation-")))
        else:
            work = args.work.resolve()
            shutil.rmtree(work / "tree", ignore_errors=True)
        _copy_of_the_work_tree(work)
        for module in modules:
            outcome = check(module, MODULES[module], work)
            outcomes.append(outcome)
            again = f", a rerun of {outcome.rerun} earlier survivors" if outcome.rerun else ""
            print(
                f"{module}: {outcome.mutants} mutants, {outcome.killed} killed, {outcome.survived} survived"
                f" ({outcome.skipped} skipped: annotations, pragmas, enum identity, * markers),"
                f" {outcome.seconds:.0f} s{again}",
                flush=True,
            )
    total = [sum(getattr(o, f) for o in outcomes) for f in ("mutants", "killed", "survived", "seconds")]
    print(f"total: {total[0]} mutants, {total[1]} killed, {total[2]} survived, {total[3]:.0f} s")
    for outcome in outcomes:
        for diff in outcome.survivors:
            print(f"\nsurvived in {outcome.module}:\n{diff}")
    return 1 if total[2] else 0


if __name__ == "__main__":
    sys.exit(main())
