import numpy as np
import pytest
import torch

torch.set_num_threads(2)


def relu_embeddings(n: int, d_in: int = 10, d: int = 16, seed: int = 0, k: int = 2):
    """Nonnegative features from a fixed random ReLU layer over Gaussian inputs, labels from a linear model."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, d_in))
    A = rng.standard_normal((d_in, d)) / np.sqrt(d_in)
    X = np.maximum(Z @ A, 0.0)
    if k == 2:
        w = rng.standard_normal(d_in)
        p = 1 / (1 + np.exp(-(Z @ w)))
        y = (rng.random(n) < p).astype(np.int64)
    else:
        W = rng.standard_normal((d_in, k))
        logits = Z @ W
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        y = np.array([rng.choice(k, p=pi) for pi in p], dtype=np.int64)
    return X, y


@pytest.fixture
def binary_data():
    return relu_embeddings(400, seed=1)


@pytest.fixture
def multiclass_data():
    return relu_embeddings(500, seed=2, k=4, d=8)


@pytest.fixture(scope="module")
def client():
    """A Dask client: a LocalCluster of 2 single-threaded workers in this process (fast to start)."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                       dashboard_address=None, silence_logs=40)
    c = distributed.Client(cluster, set_as_default=False)
    yield c
    c.close()
    cluster.close()
