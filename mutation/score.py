"""Per-module mutation score from mutmut's stored results: run from the repository root after `mutmut run`.

    python mutation/score.py            # table: module, killed, survived, no tests, not checked, score
    python mutation/score.py --list     # also every mutant that is not killed, grouped by function
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys


def main() -> None:
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], capture_output=True,
                         text=True, check=True).stdout
    rows = re.findall(r"^\s*(\S+)__mutmut_\d+: (.+)$", out, flags=re.M)
    by_module: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    by_function: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
    for name, status in rows:
        module = name.rsplit(".", 1)[0]
        by_module[module][status] += 1
        by_function[(name, status)][status] += 1
    print(f"{'module':40s} {'killed':>7s} {'survived':>9s} {'no tests':>9s} {'unchecked':>10s} {'score':>7s}")
    for module, c in sorted(by_module.items()):
        checked = c["killed"] + c["timeout"] + c["survived"] + c["no tests"]
        score = (c["killed"] + c["timeout"]) / checked if checked else float("nan")
        print(f"{module:40s} {c['killed'] + c['timeout']:7d} {c['survived']:9d} {c['no tests']:9d} "
              f"{c['not checked']:10d} {score:7.1%}")
    if "--list" in sys.argv:
        for (name, status), c in sorted(by_function.items()):
            if status not in ("killed", "timeout", "not checked"):
                print(f"{sum(c.values()):4d}  {status:9s} {name}")


if __name__ == "__main__":
    main()
