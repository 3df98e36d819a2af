"""Influence quantities against an independent dense computation (autograd Hessian, per-example grads)."""

import numpy as np
import pytest
import reference as ref  # tests/reference.py: independent maths
from conftest import relu_embeddings

from winnow.core.curvature import fit_curvature
from winnow.core.heads import LogisticHead, SoftmaxHead
from winnow.core.influence import InfluenceAnalyzer
from winnow.errors import NotPositiveDefiniteError, ValidationError


def dense_reference(head, Xtr, ytr, Xte, yte):
    """I_loss matrix (T, n), self-influence (n,), I_up (n, P) from the independent maths of tests/reference.py:
    autograd of the paper's losses with the bias unregularised, a numpy (pseudo-)inverse."""
    kind = "logistic" if isinstance(head, LogisticHead) else "softmax"
    K, D = head.n_outputs, head.n_features_
    theta = head.theta_.numpy()
    H = ref.risk_hessian(kind, Xtr, ytr, theta, K, head.l2)
    Gp = ref.per_example_grads(kind, Xtr, ytr, theta, K)
    Gt = ref.per_example_grads(kind, Xte, yte, theta, K)
    # pseudo-inverse on the gradients' span: also right for the softmax bias null direction
    Hinv = ref.pinv_on_gradients(H, ref.bias_shift_direction(K, D) if kind == "softmax" else None)
    I = -(Gt @ Hinv @ Gp.T)
    self_infl = np.einsum("ip,pq,iq->i", Gp, Hinv, Gp)
    return I, self_infl, -(Hinv @ Gp.T).T


@pytest.mark.parametrize("kind", ["logistic", "softmax"])
def test_influence_matches_dense_reference(kind, binary_data, multiclass_data):
    X, y = binary_data if kind == "logistic" else multiclass_data
    Xtr, ytr, Xte, yte = X[:120], y[:120], X[120:150], y[120:150]
    head = (LogisticHead(l2=1e-2) if kind == "logistic" else SoftmaxHead(l2=1e-2)).fit(Xtr, ytr)
    I_ref, self_ref, iup_ref = dense_reference(head, Xtr, ytr, Xte, yte)
    an = InfluenceAnalyzer(head, chunk_size=37).fit((Xtr, ytr))
    np.testing.assert_allclose(an.pairwise((Xte, yte)), I_ref, rtol=1e-8, atol=1e-10)
    scores = an.score((Xte, yte))
    np.testing.assert_allclose(scores["influence"].to_numpy(), I_ref.mean(0), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(scores["loss_change_if_removed"].to_numpy(), -I_ref.mean(0) / 120,
                               rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(scores["self_influence"].to_numpy(), self_ref, rtol=1e-8)
    assert (scores["self_influence"].to_numpy() >= 0).all()
    np.testing.assert_allclose(an.influence_up(Xtr[:5], ytr[:5]), iup_ref[:5], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(an.parameter_change_if_removed(Xtr[:5], ytr[:5]), -iup_ref[:5] / 120,
                               rtol=1e-8, atol=1e-12)
    np.testing.assert_array_equal(scores["id"].to_numpy(), np.arange(120))


@pytest.mark.parametrize("kind", ["logistic", "softmax"])
def test_streaming_equals_one_shot(kind, binary_data, multiclass_data):
    X, y = binary_data if kind == "logistic" else multiclass_data
    head = (LogisticHead(l2=1e-3) if kind == "logistic" else SoftmaxHead(l2=1e-3)).fit(X, y)
    test = (X[:50], y[:50])
    one = InfluenceAnalyzer(head, chunk_size=10**6).fit((X, y)).score(test)
    for cs in (1, 7, 64):
        many = InfluenceAnalyzer(head, chunk_size=cs).fit((X, y)).score(test)
        for col in ("influence", "self_influence", "loss_change_if_removed"):
            a, b = one[col].to_numpy(), many[col].to_numpy()
            assert np.max(np.abs(a - b)) <= 1e-12 * max(1.0, np.max(np.abs(a)))


def test_hessian_curvature_includes_l2_and_damping(binary_data):
    X, y = binary_data
    head = LogisticHead(l2=0.05).fit(X, y)
    c0 = fit_curvature(head, (X, y))
    c1 = fit_curvature(head, (X, y), damping=0.3)
    diff = (c1.hessian - c0.hessian).numpy()
    np.testing.assert_allclose(diff, 0.3 * np.eye(head.n_params), atol=1e-14)
    H = ref.risk_hessian("logistic", X, y, head.theta_.numpy(), 1, 0.05)
    np.testing.assert_allclose(c0.hessian.numpy(), H, rtol=1e-10, atol=1e-13)


def test_singular_hessian_suggests_damping():
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((100, 2))
    X = np.column_stack([Z, Z[:, 0] + Z[:, 1]])  # collinear
    y = (Z[:, 0] > 0).astype(int)
    head = LogisticHead.from_weights(np.array([0.5, -0.2, 0.1]), 0.0, l2=0.0)
    with pytest.raises(NotPositiveDefiniteError, match="damping"):
        InfluenceAnalyzer(head).fit((X, y))
    an = InfluenceAnalyzer(head, damping=1e-4, allow_nonstationary=True).fit((X, y))  # an arbitrary θ
    assert np.isfinite(an.score((X[:5], y[:5]))["influence"].to_numpy()).all()


def test_feature_dimension_mismatch(binary_data):
    X, y = binary_data
    head = LogisticHead(l2=1e-2).fit(X, y)
    with pytest.raises(ValidationError, match="D = 16"):
        InfluenceAnalyzer(head).fit((X[:, :5], y))
    an = InfluenceAnalyzer(head).fit((X, y))
    with pytest.raises(ValidationError, match="test"):
        an.score((X[:10, :5], y[:10]))


def test_labels_outside_head_rejected(binary_data):
    X, y = binary_data
    head = LogisticHead(l2=1e-2).fit(X, y)
    an = InfluenceAnalyzer(head).fit((X, y))
    with pytest.raises(ValidationError, match=r"\{0, 1\}"):
        an.score((X[:10], np.full(10, 2)))


# ------------------------------------------------------------------ signs against actual retraining
def _retrain_without(kind, X, y, K, l2, p, theta0):
    """θ̂₋ₚ: the minimiser of (1/n) Σ_{i≠p} ℓ_i + (λ/2)‖W‖² (ε = −1/n), by scipy on the independent risk."""
    w = np.ones(len(y))
    w[p] = 0.0
    return ref.fit_scipy(kind, X, y, K, l2, weights=w, normalizer=float(len(y)))


@pytest.mark.parametrize("kind", ["logistic", "softmax"])
def test_signs_against_leave_one_out_retraining(kind):
    """loss_change_if_removed = −influence/n predicts L(z_t, θ̂₋ₚ) − L(z_t, θ̂) (eq. 28) and
    parameter_change_if_removed = −I_up/n predicts θ̂₋ₚ − θ̂ (eq. 20), signs included."""
    from conftest import relu_embeddings

    if kind == "logistic":
        X, y = relu_embeddings(70, d_in=4, d=3, seed=21)
        K = 1
        head = LogisticHead(l2=0.1, tol=1e-12).fit(X, y)
    else:
        X, y = relu_embeddings(70, d_in=4, d=3, seed=22, k=3)
        K = 3
        head = SoftmaxHead(l2=0.1, tol=1e-12).fit(X, y)
    Xte, yte = X[:25], y[:25]
    n = len(y)
    an = InfluenceAnalyzer(head).fit((X, y))
    scores = an.score((Xte, yte))
    base = ref.losses_np(kind, Xte, yte, head.theta_.numpy(), K).mean()
    theta_sp = ref.fit_scipy(kind, X, y, K, head.l2)
    v = ref.bias_shift_direction(K, X.shape[1]) if kind == "softmax" else None
    points = [int(np.argmax(scores["influence"].to_numpy())), int(np.argmin(scores["influence"].to_numpy())), 5]
    for p in points:
        th_p = _retrain_without(kind, X, y, K, head.l2, p, theta_sp)
        actual = ref.losses_np(kind, Xte, yte, th_p, K).mean() - ref.losses_np(kind, Xte, yte, theta_sp, K).mean()
        pred = scores["loss_change_if_removed"].to_numpy()[p]
        assert np.sign(pred) == np.sign(actual)
        assert abs(pred - actual) <= 0.35 * abs(actual)  # first order: a factor n or a sign would fail
        assert scores["influence"].to_numpy()[p] == pytest.approx(-n * pred, rel=1e-12)
        dtheta = th_p - theta_sp
        if v is not None:
            dtheta = dtheta - v * (v @ dtheta)
        dpred = an.parameter_change_if_removed(X[p:p + 1], y[p:p + 1])[0]
        assert np.linalg.norm(dpred - dtheta) <= 0.35 * np.linalg.norm(dtheta)
        assert dpred @ dtheta > 0
    assert abs(base - ref.losses_np(kind, Xte, yte, theta_sp, K).mean()) < 1e-8


@pytest.mark.parametrize("kind", ["logistic", "softmax"])
def test_self_influence_write_scores_and_one_call_agree_with_reference(kind, binary_data, multiclass_data,
                                                                        tmp_path):
    import pyarrow.parquet as pq

    from winnow.core.influence import compute_influence

    X, y = binary_data if kind == "logistic" else multiclass_data
    Xtr, ytr, Xte, yte = X[:60], y[:60], X[60:75], y[60:75]
    head = (LogisticHead(l2=1e-2) if kind == "logistic" else SoftmaxHead(l2=1e-2)).fit(Xtr, ytr)
    I_ref, self_ref, _ = dense_reference(head, Xtr, ytr, Xte, yte)
    an = InfluenceAnalyzer(head, chunk_size=13).fit((Xtr, ytr))
    np.testing.assert_allclose(an.self_influence(), self_ref, rtol=1e-8)
    out = an.write_scores((Xte, yte), tmp_path / "s.parquet", pairs_out=tmp_path / "p.parquet")
    t = pq.read_table(out)
    assert t.column_names == ["id", "label", "influence", "loss_change_if_removed", "self_influence"]
    np.testing.assert_allclose(t.column("influence").to_numpy(), I_ref.mean(0), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(t.column("loss_change_if_removed").to_numpy(), -I_ref.mean(0) / 60, rtol=1e-8,
                               atol=1e-14)
    np.testing.assert_allclose(t.column("self_influence").to_numpy(), self_ref, rtol=1e-8)
    np.testing.assert_array_equal(t.column("label").to_numpy(), ytr)
    assert b"winnow.influence" in t.schema.metadata
    p = pq.read_table(tmp_path / "p.parquet")
    T = len(yte)
    np.testing.assert_array_equal(p.column("test_id").to_numpy(), np.tile(np.arange(T), 60))
    np.testing.assert_array_equal(p.column("train_id").to_numpy(), np.repeat(np.arange(60), T))
    np.testing.assert_allclose(p.column("influence").to_numpy(), I_ref.T.reshape(-1), rtol=1e-8, atol=1e-10)
    with pytest.raises(FileExistsError):
        an.write_scores((Xte, yte), out)
    one = compute_influence(head, (Xtr, ytr), (Xte, yte), damping=0.5, chunk_size=7)
    H = ref.risk_hessian(kind, Xtr, ytr, head.theta_.numpy(), head.n_outputs, head.l2, damping=0.5)
    Gp = ref.per_example_grads(kind, Xtr, ytr, head.theta_.numpy(), head.n_outputs)
    gbar = ref.per_example_grads(kind, Xte, yte, head.theta_.numpy(), head.n_outputs).mean(0)
    np.testing.assert_allclose(one["influence"].to_numpy(), -(Gp @ np.linalg.solve(H, gbar)), rtol=1e-8,
                               atol=1e-12)


@pytest.mark.parametrize("kind", ["logistic", "softmax"])
def test_score_chunk_function_against_dense_reference(kind, binary_data):
    """`winnow.core.influence.score_chunk` (the pure per-chunk kernel): influence −g_pᵀH⁻¹ḡ_t, loss change
    +g_pᵀH⁻¹ḡ_t / n, self-influence g_pᵀH⁻¹g_p and the pair block −g_pᵀH⁻¹g_t, all from tests/reference.py."""
    import torch

    from winnow.core import influence

    X, y = binary_data if kind == "logistic" else relu_embeddings(90, d=3, seed=5, k=3)
    Xtr, ytr, Xte, yte = X[:80], y[:80], X[80:90], y[80:90]
    head = (LogisticHead(l2=1e-2) if kind == "logistic" else SoftmaxHead(l2=1e-2)).fit(Xtr, ytr)
    I_ref, self_ref, _ = dense_reference(head, Xtr, ytr, Xte, yte)
    K, D = head.n_outputs, head.n_features_
    H = ref.risk_hessian(kind, Xtr, ytr, head.theta_.numpy(), K, head.l2)
    Hinv = ref.pinv_on_gradients(H, ref.bias_shift_direction(K, D) if kind == "softmax" else None)
    Gt = ref.per_example_grads(kind, Xte, yte, head.theta_.numpy(), K)
    direction = torch.as_tensor(Hinv @ Gt.mean(0))
    curv = fit_curvature(head, (Xtr, ytr))
    rows = slice(5, 25)
    out = influence.score_chunk(head, Xtr[rows], ytr[rows], direction=direction, curvature=curv, n_train=80,
                                pair_factors=torch.as_tensor(Hinv @ Gt.T))
    np.testing.assert_allclose(out["influence"], I_ref.mean(0)[rows], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(out["loss_change_if_removed"], -I_ref.mean(0)[rows] / 80, rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(out["self_influence"], self_ref[rows], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(out["pairs"], I_ref[:, rows].T, rtol=1e-8, atol=1e-12)
    out = influence.score_chunk(head, Xtr[rows], ytr[rows], direction=direction, curvature=None, n_train=80)
    assert "self_influence" not in out and "pairs" not in out


def test_old_import_paths_of_the_influence_module():
    """Names that moved out of `winnow.core.influence` still resolve there, to the same objects."""
    from winnow.analyses import influence as analyses
    from winnow.core import influence
    from winnow.engine import columns, passes

    assert influence.InfluenceAnalyzer is analyses.InfluenceAnalyzer
    assert influence.compute_influence is analyses.compute_influence
    assert influence.write_score_stream is analyses.write_score_stream
    assert influence.mean_test_gradient is passes.mean_test_gradient
    assert influence.test_gradients is passes.test_gradients
    assert influence.ScoreColumns is columns.ScoreColumns
    with pytest.raises(AttributeError, match="no_such_name"):
        influence.no_such_name  # noqa: B018
