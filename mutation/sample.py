"""Sampled mutation testing of the maths core, one module at a time, with that module's own tests.

A full mutmut run of the ten maths modules (about 4 000 mutants) takes hours on a small machine. This script
estimates each module's mutation score from a uniform random sample of its mutants (mutation sampling): it
generates every mutant of the module with mutmut (message-only lines are excluded by the `do_not_mutate_patterns`
of `[tool.mutmut]` in pyproject.toml), draws `--per-module` of them with a fixed seed, runs only those, and reports
killed / checked with a 95 % Wilson interval. Run from the repository root:

    python mutation/sample.py                       # all ten modules, 80 mutants each, seed 10
    python mutation/sample.py heads curvature       # some modules (keys below)
    python mutation/sample.py --per-module 0        # every mutant of the module (a full run, slow)
    python mutation/sample.py --recheck relative    # rerun only the last sample's survivors (after adding tests)
    python mutation/sample.py --report [--diff]     # table and survivors of the last runs, nothing rerun

Each module runs in its own work folder `mutation/.work/<key>/` (a copy of src/, tests/ and pyproject.toml whose
`[tool.mutmut]` mutates only that module and selects only its test files), so the mutmut test mapping is rebuilt
from the current tests on every run. Results go to `mutation/.work/<key>/sample.json`; survivors are printed with
their diffs (`--report --diff`). The sample depends only on the seed, the module key and the module's mutants.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "mutation" / ".work"

# key -> (module file, its test files). The heads' scoring fast path and leverage are tested where they are used
# (influence scores, Hessians), so the heads run with all three core test files.
MODULES = {
    "heads": ("src/winnow/core/heads.py",
              "tests/core/test_heads.py tests/core/test_curvature.py tests/core/test_influence.py "
              "tests/core/test_mixed_precision.py"),
    "blocks": ("src/winnow/core/blocks.py",
               "tests/core/test_mixed_precision.py tests/core/test_heads.py tests/core/test_curvature.py"),
    "curvature": ("src/winnow/core/curvature.py", "tests/core/test_curvature.py tests/analyses/test_stationarity.py"),
    "influence": ("src/winnow/core/influence.py", "tests/core/test_influence.py"),
    "memorization": ("src/winnow/analyses/memorization.py", "tests/analyses/test_memorization.py"),
    "relative": ("src/winnow/analyses/relative.py", "tests/analyses/test_relative.py"),
    "theorems": ("src/winnow/analyses/theorems.py", "tests/analyses/test_theorems.py"),
    "fidelity": ("src/winnow/analyses/fidelity.py", "tests/analyses/test_fidelity.py"),
    "theorem1": ("src/winnow/evaluation/theorem1.py", "tests/evaluation/test_theorem1.py"),
    "kfac": ("src/winnow/core/kfac.py", "tests/core/test_kfac.py"),
}

GENERATE = """
import sys
from mutmut.__main__ import copy_src_dir, copy_also_copy_files, setup_source_paths, create_mutants
from mutmut.mutation.trampoline import set_mutant_under_test
from mutmut.mutation.data import SourceFileMutationData
from mutmut.utils.file_utils import walk_mutatable_files
set_mutant_under_test("mutant_generation")
copy_src_dir(); copy_also_copy_files(); setup_source_paths(); create_mutants(1)
for path in walk_mutatable_files():
    m = SourceFileMutationData(path=path); m.load()
    print("\\n".join(sorted(m.exit_code_by_key)))
"""

# Functions that only present results (report sections, figures, printed progress, repr): their mutants are in the
# sample and in the "all" score, and are left out of the "maths" score (a post-stratified subset of the same
# uniform sample, so it is itself a uniform sample of the maths functions' mutants).
PRESENTATION = re.compile(r"_section|figure|_progress_printer|__repr__|render|markdown|_plot")


def is_presentation(name: str) -> bool:
    return bool(PRESENTATION.search(name.split("__mutmut_")[0].rsplit(".", 1)[-1]))


def mutmut_table(module: str, test: str) -> str:
    """The `[tool.mutmut]` table of the main pyproject.toml with only `module` mutated and only `test` run."""
    text = (ROOT / "pyproject.toml").read_text()
    text = re.sub(r"only_mutate = \[[^\]]*\]", f'only_mutate = ["{module}"]', text)
    tests = ", ".join(f'"{t}"' for t in test.split())
    return re.sub(r"pytest_add_cli_args_test_selection = \[[^\]]*\]",
                  f"pytest_add_cli_args_test_selection = [{tests}]", text)


def mutmut(work: Path, *args: str, log: Path | None = None) -> str:
    command = [str(Path(sys.executable).parent / "mutmut"), *args]
    if log is None:
        return subprocess.run(command, cwd=work, capture_output=True, text=True, check=True).stdout
    with log.open("w") as f:
        subprocess.run(command, cwd=work, stdout=f, stderr=subprocess.STDOUT, check=False)
    return ""


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def prepare(key: str) -> list[str]:
    """A fresh work folder for ``key`` (current src/ and tests/); every mutant name of the module."""
    module, test = MODULES[key]
    work = WORK / key
    shutil.rmtree(work / "mutants", ignore_errors=True)
    for sub in ("src", "tests"):
        shutil.rmtree(work / sub, ignore_errors=True)
        shutil.copytree(ROOT / sub, work / sub, ignore=shutil.ignore_patterns("__pycache__"))
    (work / "pyproject.toml").write_text(mutmut_table(module, test))
    names = subprocess.run([sys.executable, "-c", GENERATE], cwd=work, capture_output=True, text=True,
                           check=True).stdout.split()
    return sorted(n for n in names if "__mutmut_" in n)


def statuses(key: str) -> dict[str, str]:
    out = mutmut(WORK / key, "results", "--all", "true")
    return dict(re.findall(r"^\s*(\S+__mutmut_\d+): (.+)$", out, flags=re.M))


def run_module(key: str, per_module: int, seed: int, jobs: int) -> None:
    """Draw the sample and run it."""
    names = prepare(key)
    sample = names if per_module <= 0 or per_module >= len(names) else \
        sorted(random.Random(f"{seed}:{key}").sample(names, per_module))
    print(f"{key}: {len(names)} mutants, running {len(sample)}", flush=True)
    mutmut(WORK / key, "run", "--max-children", str(jobs), *sample, log=WORK / key / "run.log")
    st = statuses(key)
    save(key, len(names), {n: st.get(n, "not checked") for n in sample})


def recheck(key: str, jobs: int, only: list[str] | None = None) -> None:
    """Rerun the sample's survivors (or those matching a glob of ``only``) against the current tests; keep the
    rest."""
    old = json.loads((WORK / key / "sample.json").read_text())
    todo = [n for n, s in old["sample"].items() if s in ("survived", "no tests", "not checked")
            and (not only or any(fnmatch.fnmatch(n, g) for g in only))]
    names = prepare(key)
    assert len(names) == old["mutants"], f"{key}: the module changed since the sample was drawn; run it again"
    print(f"{key}: rechecking {len(todo)} survivors", flush=True)
    if todo:
        mutmut(WORK / key, "run", "--max-children", str(jobs), *todo, log=WORK / key / "recheck.log")
        st = statuses(key)
        old["sample"].update({n: st.get(n, "not checked") for n in todo})
    save(key, old["mutants"], old["sample"])


def save(key: str, n_mutants: int, sample: dict[str, str]) -> None:
    result = {"module": MODULES[key][0], "mutants": n_mutants, "sample": sample}
    (WORK / key / "sample.json").write_text(json.dumps(result, indent=1))


def report(keys: list[str], diff: bool) -> None:
    print("| module | mutants | sampled | killed | survived | score (all) | 95 % interval | maths: killed / checked "
          "| score (maths) | 95 % interval |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    survivors = []
    for key in keys:
        path = WORK / key / "sample.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        rows = []
        for subset in (r["sample"], {n: s for n, s in r["sample"].items() if not is_presentation(n)}):
            killed = sum(s in ("killed", "timeout") for s in subset.values())
            checked = killed + sum(s in ("survived", "no tests") for s in subset.values())
            lo, hi = wilson(killed, checked)
            rows.append((killed, checked, killed / checked if checked else float("nan"), lo, hi))
        (k, c, sc, lo, hi), (mk, mc, msc, mlo, mhi) = rows
        print(f"| `{r['module']}` | {r['mutants']} | {len(r['sample'])} | {k} | {c - k} | {sc:.1%} | "
              f"{lo:.0%}–{hi:.0%} | {mk} / {mc} | {msc:.1%} | {mlo:.0%}–{mhi:.0%} |")
        survivors += [(key, n, s) for n, s in r["sample"].items() if s in ("survived", "no tests")]
    print()
    for key, name, s in survivors:
        print(f"{s:9s} {'presentation ' if is_presentation(name) else ''}{name}")
        if diff:
            print(mutmut(WORK / key, "show", name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help=f"module keys, default all: {', '.join(MODULES)}")
    parser.add_argument("--per-module", type=int, default=80, help="mutants drawn per module; 0 = all")
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=2, help="mutmut --max-children")
    parser.add_argument("--report", action="store_true", help="only print the table of the last runs")
    parser.add_argument("--diff", action="store_true", help="with --report: the diff of every survivor")
    parser.add_argument("--recheck", action="store_true",
                        help="rerun only the last sample's survivors against the current tests")
    parser.add_argument("--only", action="append", metavar="GLOB",
                        help="with --recheck: only the survivors whose name matches (repeatable)")
    args = parser.parse_args()
    keys = args.modules or list(MODULES)
    unknown = sorted(set(keys) - set(MODULES))
    if unknown:
        parser.error(f"unknown module keys {unknown}; known: {', '.join(MODULES)}")
    if args.recheck:
        for key in keys:
            recheck(key, args.jobs, args.only)
    elif not args.report:
        for key in keys:
            run_module(key, args.per_module, args.seed, args.jobs)
    report(keys, args.diff)


if __name__ == "__main__":
    main()
