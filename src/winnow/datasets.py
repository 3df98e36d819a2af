"""Demo and synthetic data: nothing is downloaded, everything ships with scikit-learn or is generated."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Split:
    """Train/test features and labels of a demo set, with a one-line description."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    description: str


def random_relu_features(X: np.ndarray, width: int, seed: int) -> np.ndarray:
    """A fixed random ReLU layer: max(0, X A + c) with A ~ N(0, 1/d_in); nonnegative like a featurizer's."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((X.shape[1], width)) / np.sqrt(X.shape[1])
    c = 0.1 * rng.standard_normal(width)
    return np.maximum(X @ A + c, 0.0)


def _split(X: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    te, tr = perm[:n_test], perm[n_test:]
    return X[tr], y[tr], X[te], y[te]


def load_breast_cancer_embeddings(width: int = 32, seed: int = 0, test_fraction: float = 0.3) -> Split:
    """scikit-learn's bundled Wisconsin breast-cancer set (569 rows, 30 features), standardised on the
    training part and passed through a fixed random ReLU featurizer of ``width`` units; label 1 = malignant."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    y = (data.target == 0).astype(np.int64)  # sklearn: 0 = malignant
    Xtr, ytr, Xte, yte = _split(data.data.astype(np.float64), y, test_fraction, seed)
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-12
    Ftr = random_relu_features((Xtr - mu) / sd, width, seed)
    Fte = random_relu_features((Xte - mu) / sd, width, seed)
    return Split(Ftr, ytr, Fte, yte, f"breast cancer (sklearn), {len(ytr)} train / {len(yte)} test, "
                                     f"random ReLU featurizer D={width}, label 1 = malignant")


def load_digits_embeddings(width: int = 64, binary: bool = True, seed: int = 0,
                           test_fraction: float = 0.3) -> Split:
    """scikit-learn's bundled 8×8 digits (1 797 images) through a fixed random ReLU featurizer.
    ``binary``: label 1 = digit ≥ 5; otherwise the 10 digit classes."""
    from sklearn.datasets import load_digits

    data = load_digits()
    y = (data.target >= 5).astype(np.int64) if binary else data.target.astype(np.int64)
    Xtr, ytr, Xte, yte = _split(data.data / 16.0, y, test_fraction, seed)
    Ftr = random_relu_features(Xtr - 0.3, width, seed)
    Fte = random_relu_features(Xte - 0.3, width, seed)
    kind = "digit >= 5 vs < 5" if binary else "10 classes"
    return Split(Ftr, ytr, Fte, yte, f"digits (sklearn), {kind}, {len(ytr)} train / {len(yte)} test, "
                                     f"random ReLU featurizer D={width}")


def synthetic_embeddings(n: int, d: int = 64, *, d_in: int = 16, seed: int = 0, positive_rate: float | None = None,
                         chunk_size: int = 1 << 18) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream ``n`` rows of nonnegative float32 embeddings (a fixed random ReLU layer over Gaussian inputs)
    with labels from a logistic model on the inputs, in chunks of ``chunk_size`` (bounded memory).

    ``positive_rate`` shifts the logistic model's intercept by 1.6·logit(rate). This is a coarse knob, not a
    calibration: the realised fraction of positives is larger than asked when the rate is small (0.05 gives
    about 21 %, 0.003 about 5 %); measure it on the labels you get.
    The same ``seed`` gives the same rows whatever the chunk size."""
    rng = np.random.default_rng(seed)
    A = (rng.standard_normal((d_in, d)) / np.sqrt(d_in)).astype(np.float32)
    w = rng.standard_normal(d_in) * 1.5
    b = 0.0
    if positive_rate is not None:
        from scipy.special import logit

        b = float(logit(positive_rate)) * 1.6
    done = 0
    block = 1 << 16
    buf_X, buf_y = [], []
    while done < n:
        m = min(block, n - done)
        brng = np.random.default_rng([seed, done // block])
        Z = brng.standard_normal((m, d_in)).astype(np.float32)
        X = np.maximum(Z @ A, 0.0)
        p = 1.0 / (1.0 + np.exp(-(Z.astype(np.float64) @ w + b)))
        y = (brng.random(m) < p).astype(np.int64)
        buf_X.append(X)
        buf_y.append(y)
        done += m
        have = sum(len(v) for v in buf_y)
        while have >= chunk_size or (done == n and have > 0):
            Xc, yc = np.concatenate(buf_X), np.concatenate(buf_y)
            take = min(chunk_size, have)
            yield Xc[:take], yc[:take]
            buf_X, buf_y = [Xc[take:]], [yc[take:]]
            have -= take


def example_tables(seed: int = 0, test_fraction: float = 0.3) -> dict[str, dict[str, np.ndarray]]:
    """scikit-learn's bundled Wisconsin breast-cancer set as a user's own table would look: an ``id`` column of
    strings (``p-0001``…), the 30 measurements under their own names (with spaces, e.g. ``mean radius``), and the
    label ``malignant`` as ``yes``/``no``; split into ``train`` and ``test`` (a dict of columns each)."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    n = data.data.shape[0]
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(test_fraction * n))
    out: dict[str, dict[str, np.ndarray]] = {}
    for split, rows in (("test", np.sort(order[:n_test])), ("train", np.sort(order[n_test:]))):
        cols: dict[str, np.ndarray] = {"id": np.array([f"p-{i + 1:04d}" for i in rows], dtype=object)}
        for j, name in enumerate(data.feature_names):
            cols[str(name)] = data.data[rows, j].astype(np.float64)
        cols["malignant"] = np.where(data.target[rows] == 0, "yes", "no").astype(object)  # sklearn: 0 = malignant
        out[split] = cols
    return out


def write_example_csv(directory: Any, *, overwrite: bool = False, seed: int = 0) -> dict[str, Any]:
    """Write :func:`example_tables` to ``directory``/train.csv and test.csv (each atomically); returns the paths.
    An existing file is refused unless ``overwrite``."""
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.csv as pacsv

    from .io.outputs import atomic_path, check_output_path

    d = Path(directory)
    paths = {split: d / f"{split}.csv" for split in ("train", "test")}
    for p in paths.values():
        check_output_path(p, overwrite, argument="directory")
    for split, cols in example_tables(seed=seed).items():
        with atomic_path(paths[split], overwrite=overwrite, argument="directory") as tmp:
            pacsv.write_csv(pa.table(cols), tmp)
    return paths
