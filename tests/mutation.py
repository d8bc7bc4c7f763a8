"""Mutation testing of the core modules with mutmut (issue 23; docs/testing.md): ``make mutation``.

mutmut changes one operator, constant, argument or call of a module at a time (a *mutant*) and runs the tests
that cover the changed function; a mutant that no test fails on *survives*: a bug of that shape would go
unnoticed. The score of a module is ``(killed + timeout) / (mutants - skipped)``, as mutmut computes it.

Which modules and which tests: ``[tool.mutmut] only_mutate`` in pyproject.toml lists the core modules and
``[tool.dltricks.mutation]`` the tests that pin each one. Every module runs in its own scratch copy of the
project (``.mutation/<module>/``), with only that module mutated and only its tests selected, so a module
costs minutes rather than the whole suite per mutant; the results stay there (mutmut resumes an interrupted
run and reuses the verdicts of unchanged functions).

    python tests/mutation.py                              # every core module, one after the other (hours)
    python tests/mutation.py src/dltricks/utils/io.py     # one module
    python tests/mutation.py --list                       # the modules and their tests
    python tests/mutation.py --survivors src/dltricks/utils/io.py   # the diffs of its surviving mutants
    python tests/mutation.py --retest src/dltricks/utils/io.py      # test its survivors again (after new tests)
    python tests/mutation.py --fresh src/dltricks/utils/io.py       # forget earlier verdicts, test every mutant

Earlier verdicts are keyed by the mutated function, not by the tests, and mutmut keeps its map from functions to
the tests that reach them: after adding tests, ``--retest`` maps the tests again and runs the surviving mutants
against them (minutes); ``--fresh`` reruns the whole module.

Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ROOT / ".mutation"


def load_plan() -> dict[str, list[str]]:
    """Core module -> the test files that pin it, from pyproject.toml."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    modules = config["tool"]["mutmut"]["only_mutate"]
    tests = config["tool"]["dltricks"]["mutation"]
    missing = [m for m in modules if m not in tests]
    if missing:
        raise SystemExit(f"[tool.dltricks.mutation] lists no tests for {', '.join(missing)}")
    return {m: tests[m] for m in modules}


def _scratch_dir(module: str) -> Path:
    return SCRATCH / module.removeprefix("src/dltricks/").removesuffix(".py").replace("/", ".")


def _narrowed_pyproject(module: str, tests: list[str]) -> str:
    """pyproject.toml with ``[tool.mutmut]`` narrowed to one module and its tests."""
    text = (ROOT / "pyproject.toml").read_text()
    text = re.sub(r"(?ms)^only_mutate = \[.*?\]\n", f"only_mutate = {json.dumps([module])}\n", text, count=1)
    return re.sub(r"(?ms)^pytest_add_cli_args_test_selection = \[.*?\]\n",
                  f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n", text, count=1)


def prepare(module: str, tests: list[str]) -> Path:
    """A scratch copy of the project (sources, tests, pyproject.toml) for one module; earlier results are kept."""
    work = _scratch_dir(module)
    work.mkdir(parents=True, exist_ok=True)
    for name in ("src", "tests"):
        shutil.rmtree(work / name, ignore_errors=True)
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (work / "pyproject.toml").write_text(_narrowed_pyproject(module, tests))
    return work


def _env() -> dict[str, str]:
    # The real data sets for tests that need them; one intra-op thread (2 cores in CI).
    shared = os.environ.get("DLTRICKS_SHARED_DATA", str(ROOT.parent / "shared" / "data"))
    return {**os.environ, "DLTRICKS_SHARED_DATA": shared, "OMP_NUM_THREADS": "1", "DLTRICKS_PROGRESS": "0"}


def _mutmut(work: Path, *args: str, capture: bool = True) -> str:
    exe = Path(sys.executable).with_name("mutmut")
    proc = subprocess.run([str(exe), *args], cwd=work, env=_env(), text=True,
                          capture_output=capture, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"mutmut {' '.join(args)} failed in {work} (exit {proc.returncode})\n"
                         f"{(proc.stdout or '')[-2000:]}{(proc.stderr or '')[-2000:]}")
    return proc.stdout or ""


def score(work: Path) -> dict[str, float]:
    """mutmut's CI statistics of a finished run, with the score in percent."""
    _mutmut(work, "export-cicd-stats")
    stats = json.loads((work / "mutants" / "mutmut-cicd-stats.json").read_text())
    tested = stats["total"] - stats.get("skipped", 0)
    stats["score"] = 100.0 * (stats["killed"] + stats.get("timeout", 0)) / tested if tested else 0.0
    return stats


def survivors(work: Path) -> list[str]:
    lines = _mutmut(work, "results").splitlines()
    return [line.split(":")[0].strip() for line in lines if line.strip().endswith(("survived", "no tests"))]


def run_module(module: str, tests: list[str], max_children: int, *, how: str = "resume") -> dict[str, float]:
    """Mutate ``module``; ``how``: "resume" (keep earlier verdicts), "retest" (test the earlier survivors again,
    e.g. after new tests) or "fresh" (forget every earlier verdict)."""
    work = _scratch_dir(module)
    again = survivors(work) if how == "retest" and (work / "mutants").is_dir() else []
    if how == "fresh":
        shutil.rmtree(work / "mutants", ignore_errors=True)
    if how == "retest":  # mutmut maps functions to the tests that reach them once; new tests need a new map
        (work / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    work = prepare(module, tests)
    print(f"== {module}: mutating against {' '.join(tests)} in {work}"
          + (f" ({len(again)} earlier survivors again)" if again else ""), flush=True)
    _mutmut(work, "run", "--max-children", str(max_children), *again, capture=False)
    stats = score(work)
    print(f"== {module}: {stats['killed']} killed, {stats.get('timeout', 0)} timeout, {stats['survived']} survived, "
          f"{stats.get('no_tests', 0)} without tests, {stats['total']} mutants: score {stats['score']:.1f} %",
          flush=True)
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="core modules to mutate (default: all of them)")
    parser.add_argument("--list", action="store_true", help="print the modules and their tests, run nothing")
    parser.add_argument("--survivors", action="store_true", help="print the diffs of the surviving mutants")
    parser.add_argument("--max-children", type=int, default=1, help="mutants tested in parallel (default 1)")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--retest", action="store_true", help="test the earlier surviving mutants again")
    again.add_argument("--fresh", action="store_true", help="forget earlier verdicts and test every mutant")
    args = parser.parse_args(argv)
    plan = load_plan()
    unknown = [m for m in args.modules if m not in plan]
    if unknown:
        parser.error(f"not a core module: {', '.join(unknown)}; --list shows them")
    modules = args.modules or list(plan)
    if args.list:
        for m in modules:
            print(f"{m}: {' '.join(plan[m])}")
        return 0
    if args.survivors:
        for m in modules:
            work = _scratch_dir(m)
            for name in survivors(work):
                print(_mutmut(work, "show", name))
        return 0
    how = "retest" if args.retest else "fresh" if args.fresh else "resume"
    results = {m: run_module(m, plan[m], args.max_children, how=how) for m in modules}
    print("\nmodule                                              score  killed  survived  mutants")
    for m, s in results.items():
        print(f"{m:50s} {s['score']:5.1f} %  {s['killed']:6d}  {s['survived'] + s.get('no_tests', 0):8d}  "
              f"{s['total']:7d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
