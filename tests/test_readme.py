"""The README's quickstart on one's own data, run literally: the commands as written, the output as shown."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(marker: str) -> str:
    m = re.search(rf"<!-- {marker} -->\n```\w*\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert m, f"README has no block after <!-- {marker} -->"
    return m.group(1)


@pytest.mark.slow
def test_readme_quickstart_runs_as_written_and_prints_what_it_shows(tmp_path):
    commands = [line for line in _block("quickstart").splitlines() if line.strip()]
    assert len(commands) <= 5 and all(c.startswith("winnow ") for c in commands)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "COLUMNS": "120"}
    out = []
    for command in commands:
        r = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=240)
        assert r.returncode == 0, (command, r.stderr)
        assert "Traceback" not in r.stderr
        out.append(r.stdout)
    assert "".join(out) == _block("quickstart-output")

    # the printed points, checked against the files themselves
    with open(tmp_path / "scores.csv", newline="") as f:
        scores = list(csv.DictReader(f))
    with open(tmp_path / "data" / "train.csv", newline="") as f:
        train = {r["id"]: r["malignant"] for r in csv.DictReader(f)}
    assert len(scores) == len(train) == 398
    influence = np.array([float(r["influence"]) for r in scores])
    ids = [r["id"] for r in scores]
    harmful = [ids[i] for i in np.argsort(-influence, kind="stable")[:5]]
    helpful = [ids[i] for i in np.argsort(influence, kind="stable")[:5]]
    printed = re.findall(r"^\s+\d\s+(p-\d{4})\s+(\d) \((yes|no)\)", "".join(out), re.M)
    assert [p[0] for p in printed] == harmful + helpful
    for pid, label, name in printed:
        assert name == train[pid] and label == ("1" if name == "yes" else "0")
    np.testing.assert_allclose([float(r["loss_change_if_removed"]) for r in scores], -influence / len(scores),
                               rtol=1e-12)
    assert (tmp_path / "report.html").stat().st_size > 10_000
