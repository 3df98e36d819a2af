"""The demo runs end to end and its outputs hold what the report claims."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from winnow.cli import main


@pytest.mark.slow
def test_demo_writes_scores_and_report(tmp_path, capsys):
    main(["demo", "--out", str(tmp_path), "--quiet"])
    printed = capsys.readouterr().out
    for name in ("scores.parquet", "report.html", "head.npz", "train.parquet", "test.parquet"):
        assert (tmp_path / name).exists() and str(tmp_path / name) in printed
    t = pq.read_table(tmp_path / "scores.parquet")
    assert {"influence", "loss_change_if_removed", "self_influence", "leverage",
            "loss_change_if_removed_newton", "memorization", "memorize"} <= set(t.column_names)
    n = t.num_rows
    np.testing.assert_allclose(t["loss_change_if_removed"].to_numpy(), -t["influence"].to_numpy() / n, rtol=1e-12)
    assert (t["self_influence"].to_numpy() >= 0).all()
    assert abs(t["memorize"].to_numpy().mean() - 0.1) < 0.01  # D is the 0.9 quantile
    html = (tmp_path / "report.html").read_text()
    for heading in ("Prediction vs actual leave-one-out retraining", "Relative influence (LEP)",
                    "Memorization", "Theorem 4", "Linear datamodeling score"):
        assert heading in html
    assert html.count("data:image/png;base64,") >= 5
