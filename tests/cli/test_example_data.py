"""`winnow example-data`: the bundled table users can try the CSV route on."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from winnow.cli import main


def test_example_data_is_breast_cancer_as_a_csv(tmp_path, capsys):
    main(["example-data", str(tmp_path / "d"), "--quiet"])
    rows = {}
    for split in ("train", "test"):
        with open(tmp_path / "d" / f"{split}.csv", newline="") as f:
            rows[split] = list(csv.DictReader(f))
    data = load_breast_cancer()
    assert len(rows["train"]) + len(rows["test"]) == data.data.shape[0]
    assert len(rows["test"]) == round(0.3 * data.data.shape[0])
    every = rows["train"] + rows["test"]
    assert len({r["id"] for r in every}) == data.data.shape[0]
    for r in every[:50]:
        i = int(r["id"].removeprefix("p-")) - 1
        got = np.array([float(r[str(name)]) for name in data.feature_names])
        np.testing.assert_allclose(got, data.data[i], rtol=1e-12)
        assert r["malignant"] == ("yes" if data.target[i] == 0 else "no")


def test_example_data_refuses_to_overwrite(tmp_path, capsys):
    main(["example-data", str(tmp_path), "--quiet"])
    before = (tmp_path / "train.csv").read_bytes()
    with pytest.raises(SystemExit) as e:
        main(["example-data", str(tmp_path), "--seed", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "DIRECTORY" in err and "--overwrite" in err
    assert (tmp_path / "train.csv").read_bytes() == before
    main(["example-data", str(tmp_path), "--seed", "1", "--overwrite", "--quiet"])
    assert (tmp_path / "train.csv").read_bytes() != before
