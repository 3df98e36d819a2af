"""Full-model curvature on networks that are not at a minimum: the Gauss-Newton product against a dense GGN built
here from per-sample Jacobians (torch.autograd.functional.jacobian), the closed-form head block, the damping
chosen from the spectrum, preconditioned CG and what every solver's ``converged`` means."""

import warnings

import numpy as np
import pytest
import torch
from nets import Net, data, trained_net

from winnow.core.autodiff import ModelFunction
from winnow.core.models import ModelData, ModelHessian, ModelInfluence, refine_model
from winnow.core.solvers import (
    CGSolver,
    ConvergenceWarning,
    DenseSolver,
    LanczosSolver,
    LiSSASolver,
    MatrixOperator,
    choose_damping,
)
from winnow.errors import NotPositiveDefiniteError, ValidationError
from winnow.evaluation.theorem1 import theorem1_check


def flat_params(net):
    names = [n for n, _ in net.named_parameters()]
    params = [p for _, p in net.named_parameters()]
    return names, params, torch.cat([p.detach().reshape(-1) for p in params])


def dense_ggn(net, X, y_k, l2, mask_all=False):
    """(1/n) Σ J_iᵀ H_out,i J_i + λ·mask from per-sample Jacobians of the logits (autograd), K outputs."""
    names, params, theta0 = flat_params(net)

    def logits_of(theta, x):
        out, o = {}, 0
        for n_, p in zip(names, params):
            out[n_] = theta[o:o + p.numel()].reshape(p.shape)
            o += p.numel()
        return torch.func.functional_call(net, out, (x[None],))[0]

    P = theta0.numel()
    G = torch.zeros(P, P, dtype=torch.float64)
    for i in range(len(X)):
        J = torch.autograd.functional.jacobian(lambda th, xi=X[i]: logits_of(th, xi), theta0)  # (K, P)
        z = logits_of(theta0, X[i]).detach()
        if z.numel() == 1:
            p = torch.sigmoid(z)
            Hout = (p * (1 - p)).reshape(1, 1)
        else:
            p = torch.softmax(z, 0)
            Hout = torch.diag(p) - torch.outer(p, p)
        G += J.T @ Hout @ J
    mask = torch.cat([torch.full((p.numel(),), 1.0 if (mask_all or p.ndim >= 2) else 0.0, dtype=torch.float64)
                      for p in params])
    return G / len(X) + l2 * torch.diag(mask)


@pytest.mark.parametrize("k", [1, 3])
def test_ggn_products_and_diagonal_match_a_dense_ggn_from_per_sample_jacobians(k):
    torch.manual_seed(1)
    net = Net(k=k).double().eval()  # untrained: far from a minimum, the exact Hessian is indefinite
    X, y = data(25, k=2 if k == 1 else k)
    l2 = 1e-2
    ref = dense_ggn(net, X, y, l2)
    fn = ModelFunction(net, None)
    loss = "logistic" if k == 1 else "softmax"
    op = ModelHessian(fn, ModelData((X, y), batch_size=7), loss, l2=l2, damping=0.0, n=len(y), batch_size=7,
                      curvature="ggn")
    V = torch.randn(fn.n_params, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    np.testing.assert_allclose(op.matvec(V).numpy(), (ref @ V).numpy(), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(op.matvec(V[:, 0]).numpy(), (ref @ V[:, 0]).numpy(), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(op.diagonal().numpy(), ref.diagonal().numpy(), rtol=1e-10, atol=1e-13)
    assert float(torch.linalg.eigvalsh(ref)[0]) > -1e-12  # PSD by construction...
    exact = ModelHessian(fn, ModelData((X, y)), loss, l2=l2, damping=0.0, n=len(y), curvature="hessian").dense()
    assert float(torch.linalg.eigvalsh(exact)[0]) < 0  # ...where the exact Hessian is not
    # the head block of either curvature in closed form equals the dense block
    C = np.arange(fn.slice_of("fc.weight").start, fn.slice_of("fc.bias").stop)
    for H in (ref, exact):
        kind = "ggn" if H is ref else "hessian"
        o = ModelHessian(fn, ModelData((X, y), batch_size=7), loss, l2=l2, damping=0.5, n=len(y), batch_size=7,
                         curvature=kind)
        blk = o.head_block("fc", C)
        np.testing.assert_allclose(blk.numpy(), (H[C][:, C] + 0.5 * torch.eye(len(C))).numpy(), rtol=1e-10,
                                   atol=1e-13)
    assert op.head_block("body.0", C) is None  # not the head feeding the logits


def test_ggn_influence_with_auto_damping_matches_a_dense_solve():
    torch.manual_seed(3)
    net = Net(k=3).double().eval()
    X, y = data(40, k=3)
    l2 = 1e-3
    warnings.simplefilter("ignore", UserWarning)  # an untrained net is not stationary: said, and beside the point
    mi = ModelInfluence(net, l2=l2, curvature="ggn", solver=CGSolver(preconditioner="diagonal")).fit((X, y))
    info = mi.damping_info()
    G = dense_ggn(net, X, y, l2)
    ev = torch.linalg.eigvalsh(G)
    # the rule: δ = 1e-3·λ_max − λ (the L2 floor only when every parameter is regularised: not here)
    assert info["chosen"] == "from the spectrum" and info["curvature"] == "ggn"
    assert info["lambda_max"] == pytest.approx(float(ev[-1]), rel=1e-6)
    assert mi.damping_ == pytest.approx(1e-3 * float(ev[-1]), rel=1e-6)
    Xt, yt = X[:5], y[:5]
    got = mi.pairwise((Xt, yt))
    Gt = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        torch.nn.functional.cross_entropy(net(Xt[i:i + 1]), yt[i:i + 1]), list(net.parameters()))])
        for i in range(5)])
    Gp = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        torch.nn.functional.cross_entropy(net(X[i:i + 1]), y[i:i + 1]), list(net.parameters()))])
        for i in range(len(y))])
    ref = -(Gt @ torch.linalg.lstsq(G + mi.damping_ * torch.eye(len(G), dtype=torch.float64), Gp.T).solution)
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-6, atol=1e-8 * float(ref.abs().max()))
    assert mi.direction_info_.converged and mi.direction_info_.extra["preconditioned"]
    assert b'"chosen": "from the spectrum"' in mi.score((Xt, yt)).schema.metadata[b"winnow.damping"]


def test_auto_damping_of_an_indefinite_hessian_lifts_its_smallest_eigenvalue():
    g = torch.Generator().manual_seed(4)
    Q, _ = torch.linalg.qr(torch.randn(60, 60, generator=g, dtype=torch.float64))
    ev = torch.cat([torch.tensor([-0.3, -0.05]), torch.linspace(0.01, 5.0, 58)]).double()
    op = MatrixOperator((Q * ev) @ Q.T)
    c = choose_damping(op, psd=False, steps=30)
    assert c.lambda_max == pytest.approx(5.0, rel=1e-6) and c.lambda_min == pytest.approx(-0.3, rel=1e-3)
    assert c.damping == pytest.approx(1e-3 * 5.0 + 1.5 * 0.3, rel=1e-3)
    assert float((ev + c.damping).min()) > 0.1  # not |λ_min|: far from singular
    assert "damping" in c.describe() and "Lanczos" in c.describe()


def test_preconditioned_cg_converges_where_plain_cg_needs_far_more_iterations():
    g = torch.Generator().manual_seed(5)
    P = 200
    scales = torch.logspace(-3, 3, P, dtype=torch.float64)
    A = torch.randn(P, P, generator=g, dtype=torch.float64) * 0.02
    H = torch.diag(scales) + A @ A.T * scales.sqrt()[:, None] * scales.sqrt()[None, :] * 0.1
    H = 0.5 * (H + H.T)

    class Op(MatrixOperator):
        def diagonal(self):
            return self.H.diagonal().clone()

    B = torch.randn(P, 2, generator=g, dtype=torch.float64)
    ref = torch.linalg.solve(H, B)
    pre = CGSolver(tol=1e-9, max_iter=400, preconditioner="auto").fit(Op(H))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        plain = CGSolver(tol=1e-9, max_iter=400, preconditioner=None).fit(Op(H))
        Xp = plain.solve(B)
    X = pre.solve(B)
    np.testing.assert_allclose(X.numpy(), ref.numpy(), rtol=1e-6, atol=1e-9 * float(ref.abs().max()))
    resid = float(((H @ X - B).norm(dim=0) / B.norm(dim=0)).max())
    assert pre.info_.converged and pre.info_.residual == pytest.approx(resid, rel=1e-3, abs=1e-15)
    assert pre.info_.residual <= 1e-9
    assert pre.info_.iterations < plain.info_.iterations
    true_plain = float(((H @ Xp - B).norm(dim=0) / B.norm(dim=0)).max())
    assert plain.info_.converged == (true_plain <= 1e-9)
    with pytest.raises(ValidationError, match="preconditioner"):
        CGSolver(preconditioner="jacobi")
    with pytest.raises(ValidationError, match="finite values > 0"):
        CGSolver(preconditioner=-torch.ones(P, dtype=torch.float64)).fit(Op(H))


def test_converged_means_the_solve_met_its_tolerance():
    g = torch.Generator().manual_seed(6)
    Q, _ = torch.linalg.qr(torch.randn(80, 80, generator=g, dtype=torch.float64))
    H = (Q * torch.logspace(1, -1, 80, dtype=torch.float64)) @ Q.T
    op = MatrixOperator(H, damping=0.1)
    B = torch.randn(80, 3, generator=g, dtype=torch.float64)

    def true_residual(X):
        return float(((H @ X - B).norm(dim=0) / B.norm(dim=0)).max())

    # a rank-5 model of a full-rank H: its Ritz pairs converge, its solve does not meet solve_tol
    lz = LanczosSolver(rank=5, n_iter=60, solve_tol=1e-3).fit(op)
    with pytest.warns(ConvergenceWarning, match="solve_tol"):
        X = lz.solve(B)
    assert lz.info_.residual == pytest.approx(true_residual(X), rel=1e-8)
    assert lz.info_.residual > 1e-3 and not lz.info_.converged and lz.info_.extra["ritz_converged"]
    # LiSSA stopped early
    li = LiSSASolver(tol=1e-10, max_iter=20).fit(op)
    with pytest.warns(ConvergenceWarning):
        X = li.solve(B)
    assert not li.info_.converged and li.info_.residual == pytest.approx(true_residual(X), rel=1e-8)
    # CG stopped by max_iter
    cg = CGSolver(tol=1e-12, max_iter=3)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        X = cg.fit(op).solve(B)
    assert not cg.info_.converged and cg.info_.residual == pytest.approx(true_residual(X), rel=1e-8)


def test_dense_indefinite_message_quotes_the_largest_eigenvalue_not_the_null_fill():
    g = torch.Generator().manual_seed(7)
    Q, _ = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=torch.float64))
    ev = torch.cat([torch.tensor([0.0, -0.2]), torch.linspace(0.1, 3.0, 28)]).double()
    H = (Q * ev) @ Q.T
    null = Q[:, :1]
    with pytest.raises(NotPositiveDefiniteError) as e:
        DenseSolver().fit(MatrixOperator(H, null=null))
    msg = str(e.value)
    assert "largest 3," in msg and "smallest -0.2," in msg and "1 eigenvalue(s) <= 0" in msg, msg


def test_dense_build_is_refused_before_it_runs_past_its_budget():
    net = trained_net(k=3)
    X, y = data(k=3)
    with pytest.raises(ValidationError, match=r"about .* above the limit of 0 s: lower max_dense below 53"):
        ModelInfluence(net, l2=1e-2, damping=1e-3, solver="dense", max_dense_seconds=0.0).fit((X, y))
    mi = ModelInfluence(net, l2=1e-2, damping=1e-3, solver="dense", max_dense_seconds=60).fit((X, y))
    assert mi.hessian_.dense_estimate_seconds < 60


def test_theorem1_reports_every_sweep_value_and_the_damping_it_needed():
    torch.manual_seed(0)
    net = Net(k=1).double().eval()  # untrained: not a minimum
    X, y = data()
    res = theorem1_check(net, "fc", (X, y), (X[:10], y[:10]), l2=0.0, n_train=20, n_test=4,
                         sweep=(0.0, 1e-9, 1.0))
    lo, hi = res.min_eigenvalue, res.max_eigenvalue
    assert lo < 0 and res.damping_added == pytest.approx(-lo + 1e-3 * hi, rel=1e-10)
    assert "1e-3" in res.damping_rule or "0.001" in res.damping_rule
    assert [d["damping"] for d in res.damping_sweep] == [0.0, 1e-9, 1.0]
    assert [d["used"] for d in res.damping_sweep] == [False, False, -lo < 1.0]
    assert "not positive definite" in res.damping_sweep[0]["reason"]
    assert np.isnan(res.damping_sweep[0]["spearman"]) and np.isfinite(res.damping_sweep[2]["spearman"])
    # the Lanczos path marks every sweep value it cannot use, with the damping chosen from the spectrum
    net = trained_net()
    lz = theorem1_check(net, "fc", (X, y), (X[:10], y[:10]), l2=1e-2, n_train=20, n_test=4, max_dense=10, rank=5,
                        sweep=(0.1,), curvature="ggn")
    assert lz.damping_added > 0 and "λ_max" in lz.damping_rule and lz.curvature == "ggn"
    assert lz.damping_sweep == [{"damping": 0.1, "used": False, "spearman": lz.damping_sweep[0]["spearman"],
                                 "sign_agreement": lz.damping_sweep[0]["sign_agreement"],
                                 "reason": lz.damping_sweep[0]["reason"]}]
    assert "dense" in lz.damping_sweep[0]["reason"]
    assert any("closed form" in n for n in lz.notes)


def _accuracy_and_loss(net, X, y):
    with torch.no_grad():
        z = net(X)[:, 0]
    loss = float(torch.nn.functional.binary_cross_entropy_with_logits(z, y.double()))
    return float(((z > 0).long() == y).double().mean()), loss


def test_refine_model_measures_accuracy_and_does_not_trade_it_away_silently():
    X, y = data(60)
    # valid = the training inputs with every label flipped: fitting the training data costs valid accuracy
    torch.manual_seed(2)
    net = Net(k=1).double().eval()
    acc0, loss0 = _accuracy_and_loss(net, X, 1 - y)
    with pytest.warns(UserWarning, match=r"accuracy on valid .* before"):
        res = refine_model(net, (X, y), l2=1e-2, valid=(X, 1 - y), max_iter=200, check_every=5,
                           max_accuracy_drop=0.05)
    acc1, loss1 = _accuracy_and_loss(net, X, 1 - y)  # the iterate left in the model
    assert res.accuracy_before == pytest.approx(acc0) and res.loss_before == pytest.approx(loss0, rel=1e-10)
    assert res.accuracy_after == pytest.approx(acc1) and res.loss_after == pytest.approx(loss1, rel=1e-10)
    assert acc1 >= acc0 - 0.05 and "accuracy fell" in res.stopped and res.monitored == "valid"
    # the float is the kept iterate's ‖∇R‖∞, against plain autograd
    R = torch.nn.functional.binary_cross_entropy_with_logits(net(X)[:, 0], y.double()) + 0.5e-2 * sum(
        (p * p).sum() for p in net.parameters() if p.ndim >= 2)
    g = max(float(t.abs().max()) for t in torch.autograd.grad(R, list(net.parameters())))
    assert float(res) == pytest.approx(g, rel=1e-6)
    # on the training data itself polishing reaches the tolerance and keeps the last iterate
    torch.manual_seed(2)
    net = Net(k=1).double().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        res = refine_model(net, (X, y), l2=1e-2, max_iter=300, tol=1e-9)
    assert float(res) <= 1e-9 and res.kept == "last" and res.accuracy_after >= res.accuracy_before
