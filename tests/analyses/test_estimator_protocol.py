"""InfluenceAnalyzer (head) and ModelInfluence (whole model) offer one protocol: same method names, same
signatures, settings in the constructor; on a model whose parameters are exactly a linear head they agree."""

import inspect

import numpy as np
import pytest
import torch
from conftest import relu_embeddings

from winnow import InfluenceAnalyzer, InfluenceEstimator, LogisticHead, ModelInfluence, NotFittedError

METHODS = ("fit", "iter_scores", "score", "write_scores", "pairwise", "self_influence", "influence_up",
           "parameter_change_if_removed")


def test_same_methods_and_signatures():
    for name in METHODS:
        a = inspect.signature(getattr(InfluenceAnalyzer, name))
        b = inspect.signature(getattr(ModelInfluence, name))
        shared = [p for p in a.parameters if p in b.parameters]
        if name == "fit":  # the analyzer's fit also takes a prebuilt or sampled Hessian, keyword-only
            assert list(b.parameters) == ["self", "train"] and shared == ["self", "train"]
            continue
        assert list(a.parameters) == list(b.parameters), name
        for p in shared:
            assert a.parameters[p].kind == b.parameters[p].kind, (name, p)
            assert a.parameters[p].default == b.parameters[p].default, (name, p)


def test_both_implement_the_protocol_and_agree_on_a_linear_model(tmp_path):
    X, y = relu_embeddings(200, d=4, seed=11)
    Xt, yt = relu_embeddings(30, d=4, seed=12)
    head = LogisticHead(l2=1e-2).fit(X, y)
    lin = torch.nn.Linear(4, 1).double()
    with torch.no_grad():
        lin.weight.copy_(torch.as_tensor(head.weight_))
        lin.bias.copy_(torch.as_tensor(head.bias_))
    an = InfluenceAnalyzer(head)
    mi = ModelInfluence(lin, l2=1e-2, damping=0.0, solver="dense")
    for est in (an, mi):
        assert isinstance(est, InfluenceEstimator)
        with pytest.raises(NotFittedError):
            est.self_influence()
    an.fit((X, y))
    mi.fit((torch.as_tensor(X), torch.as_tensor(y)))
    a, m = an.score((Xt, yt)), mi.score((torch.as_tensor(Xt), torch.as_tensor(yt)))
    np.testing.assert_allclose(m["influence"].to_numpy(), a["influence"].to_numpy(), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(mi.influence_up(torch.as_tensor(X[:3]), torch.as_tensor(y[:3])),
                               an.influence_up(X[:3], y[:3]), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(mi.self_influence(), an.self_influence(), rtol=1e-8)


def test_head_in_the_constructor_everywhere_and_the_older_fit_form_still_works():
    from winnow import MemorizationAnalyzer, RelativeHessian, Subsampler, ValidationError

    X, y = relu_embeddings(300, d=4, seed=13)
    Xv, yv = relu_embeddings(100, d=4, seed=14)
    head = LogisticHead(l2=1e-2).fit(X, y)
    a = MemorizationAnalyzer(head, quantile=0.8).fit((X, y))
    b = MemorizationAnalyzer(quantile=0.8).fit(head, (X, y))
    np.testing.assert_array_equal(a.scores_, b.scores_)
    a = RelativeHessian(100, head=head, seed=3).fit((X, y))
    b = RelativeHessian(100, seed=3).fit(head, (X, y))
    np.testing.assert_array_equal(a.curvature_.hessian.numpy(), b.curvature_.hessian.numpy())
    a = Subsampler(0.5, head=head, sharpness=1.0, seed=1).fit((X, y), (Xv, yv))
    b = Subsampler(0.5, sharpness=1.0, seed=1).fit((X, y), head, (Xv, yv))
    np.testing.assert_array_equal(a.table()["id"].to_numpy(), b.table()["id"].to_numpy())
    for est in (MemorizationAnalyzer(), RelativeHessian(100)):
        with pytest.raises(ValidationError, match="head="):
            est.fit((X, y))
