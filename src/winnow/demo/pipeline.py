"""``winnow demo``: the whole pipeline on a bundled real data set, in well under a minute."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..analyses.influence import InfluenceAnalyzer
from ..core.heads import LogisticHead
from ..datasets import Split, load_digits_embeddings
from ..io.outputs import atomic_path
from ..report.html import Report
from ..report.run import scores_report, summarize_with_samples

DEMO_L2 = 1e-3


def write_parquet_dataset(path: Path, X: np.ndarray, y: np.ndarray, overwrite: bool = True) -> Path:
    """Write features as a fixed-size list column ``features`` with ``label`` and ``id`` (atomically)."""
    D = X.shape[1]
    feats = pa.FixedSizeListArray.from_arrays(pa.array(X.astype(np.float32).reshape(-1)), D)
    table = pa.table({"id": np.arange(len(y), dtype=np.int64), "label": y.astype(np.int64), "features": feats})
    with atomic_path(path, overwrite=overwrite, argument="--out") as tmp:
        pq.write_table(table, tmp)
    return path


def run_demo(out: str | Path = "winnow-demo", *, overwrite: bool = False, progress: bool = True,
             loo_points: int = 60, seed: int = 0, data: Split | None = None,
             report: Report | None = None, model: bool = True) -> dict[str, Path]:
    """The whole pipeline on ``data`` (default: digit embeddings, digit >= 5 vs < 5): fit a logistic head,
    score every training point (influence, self-influence, Newton removal effect, memorization), validate
    against actual leave-one-out retraining, check the paper's theorems and the relative Hessian, and write
    train/test Parquet, head.npz, scores.parquet and report.html under ``out``.

    A folder ``out`` that already holds files is refused unless ``overwrite``. ``report`` lets a caller put
    its own sections first; ``model`` adds the PyTorch part: a small MLP featurizer + head trained on the
    digit images, head-only vs full-model influence (Theorem 1)."""
    from ..analyses.fidelity import NewtonColumns, compare_removal_methods
    from ..analyses.lep import two_sample_search
    from ..analyses.memorization import MemorizationColumns
    from ..analyses.theorems import check_theorems
    from ..evaluation.lds import linear_datamodeling_score
    from ..io.outputs import check_output_dir
    from ..report import lds_section, lep_section, removal_methods_section, theorems_section

    out = check_output_dir(out, overwrite, argument="out")
    data = data if data is not None else load_digits_embeddings(binary=True, seed=seed)
    train_path = write_parquet_dataset(out / "train.parquet", data.X_train, data.y_train, overwrite)
    test_path = write_parquet_dataset(out / "test.parquet", data.X_test, data.y_test, overwrite)

    head = LogisticHead(l2=DEMO_L2, tol=1e-11).fit(train_path)
    head_path = head.save(out / "head.npz", overwrite=overwrite)
    analyzer = InfluenceAnalyzer(head, progress=progress).fit(train_path)
    memo = MemorizationColumns(quantile=0.9)
    scores_path = analyzer.write_scores(test_path, out / "scores.parquet", overwrite=overwrite,
                                        extra=[NewtonColumns(), memo])
    scores = pq.read_table(scores_path)
    loo = compare_removal_methods(head, train_path, test_path, points=loo_points, seed=seed, progress=progress)

    infl = scores.column("influence").to_numpy()
    proba = head.predict_proba(data.X_test)
    acc = float(np.mean((proba > 0.5) == data.y_test))

    rep = report if report is not None else Report("winnow demo: influence on a digits classifier head")
    rep.section("Setup", data.description)
    rep.table(["quantity", "value"], [
        ["training points n", len(data.y_train)], ["test points T", len(data.y_test)],
        ["head", repr(head)], ["parameters P", head.n_params], ["final ‖∇R‖∞", head.grad_norm_],
        ["test accuracy", acc], ["harmful points (influence > 0)", int((infl > 0).sum())],
        ["helpful points (influence < 0)", int((infl < 0).sum())],
        ["memorize (score > D, D = 0.9 quantile)", int(scores.column("memorize").to_numpy().sum())],
    ])
    # the same sections `winnow report` draws from a user's own scores
    scores_report(summarize_with_samples(scores_path, top=10), report=rep)
    removal_methods_section(rep, loo, title="Prediction vs actual leave-one-out retraining")
    lds_section(rep, linear_datamodeling_score(head, train_path, test_path, subsets=30, seed=seed))
    lep_section(rep, two_sample_search(head, train_path, test_path, full=True, sampler="leverage", seed=seed))
    theorems_section(rep, check_theorems(head, train_path, test_path, pairs=20000, seed=seed, l2_grid=None))
    paths = {"train": train_path, "test": test_path, "head": head_path, "scores": scores_path}
    if model:
        # the paper's setting: a trained featurizer + head, features captured by a hook, Theorem 1 evidence
        from .model import run_model_demo

        got = run_model_demo(out / "model", overwrite=overwrite, progress=progress, seed=seed, report=rep)
        paths["model_scores"] = got["scores_head"]
    paths["report"] = rep.write(out / "report.html", overwrite=overwrite)
    return paths
