"""ModelInfluence(curvature="kfac"): the Kronecker factors, the damped inverse and every score against numpy
written here — per-example gradients by plain autograd on one example at a time, the factors from the layers'
activations and the logits' Jacobians computed by hand, the damped Kronecker products built with np.kron and
solved densely — and the bad inputs (one line naming the parameter)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from winnow.core.models import ModelInfluence
from winnow.errors import ValidationError


def _net(k: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, k)).double().eval()


def _data(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 5))
    y = rng.integers(0, max(k, 2), size=n)
    return X, y


def _expected(net: torch.nn.Module, train, test, l2: float, damping):
    """(pairs (T, n) = −g_tᵀ C⁻¹ g_p, self-influence (n,), C (P, P) in the ModelInfluence parameter order)."""
    W1, b1, W2, b2 = (p.detach().numpy() for p in net.parameters())
    X, y = train
    K = W2.shape[0]

    def forward(x):
        h = np.tanh(x @ W1.T + b1)
        return h, h @ W2.T + b2

    H1, Z = forward(X)
    if K == 1:
        p = 1 / (1 + np.exp(-Z))
        Hout = (p * (1 - p))[:, :, None]
    else:
        e = np.exp(Z - Z.max(1, keepdims=True))
        p = e / e.sum(1, keepdims=True)
        Hout = np.stack([np.diag(q) - np.outer(q, q) for q in p])
    n = len(X)
    # layer 2: output o2 = logits, J_o2 = I; layer 1: J_o1 = W2 diag(1 − h²)
    a1 = np.hstack([X, np.ones((n, 1))])
    a2 = np.hstack([H1, np.ones((n, 1))])
    J1 = np.stack([W2 * (1 - h ** 2)[None, :] for h in H1])  # (n, K, 4)
    S1 = np.mean([J.T @ Ho @ J for J, Ho in zip(J1, Hout)], axis=0)
    S2 = Hout.mean(0)
    C = _dense_curvature([(a1.T @ a1 / n, S1, 4, 5), (a2.T @ a2 / n, S2, K, 4)], l2, damping)
    Gtr, Gte = _grads(net, *train, K), _grads(net, *test, K)
    V = np.linalg.solve(C, Gtr.T)
    return -(Gte @ V), (Gtr * V.T).sum(1), C, Gtr


def _dense_curvature(layers, l2: float, damping) -> np.ndarray:
    """The damped Kronecker curvature as one dense (P, P) matrix in the flat parameter order (weight row-major,
    then bias, layer after layer), from each layer's (A, S, d_out, d_in) with a bias."""
    P = sum(d_out * (d_in + 1) for _, _, d_out, d_in in layers)
    C = np.zeros((P, P))
    off = 0
    for A, S, d_out, d_in in layers:
        ma, ms = np.trace(A) / len(A), np.trace(S) / len(S)
        d = 0.1 * ma * ms if damping == "auto" else damping
        mu, pi = l2 + d, np.sqrt(ma / ms)
        block = np.kron(S + np.sqrt(mu) / pi * np.eye(len(S)), A + pi * np.sqrt(mu) * np.eye(len(A)))
        wb = np.empty((d_out, d_in + 1), dtype=int)  # the Kronecker block acts on the row-major (W | b) matrix
        wb[:, :d_in] = off + np.arange(d_out * d_in).reshape(d_out, d_in)
        wb[:, d_in] = off + d_out * d_in + np.arange(d_out)
        C[np.ix_(wb.ravel(), wb.ravel())] = block
        off += d_out * (d_in + 1)
    return C


def _grads(net: torch.nn.Module, Xs, ys, K: int) -> np.ndarray:
    """(m, P) per-example loss gradients in the flat parameter order — plain autograd, one row at a time."""
    out = []
    for x, t in zip(Xs, ys):
        net.zero_grad()
        z = net(torch.as_tensor(x)[None])
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0], torch.tensor([float(t)]).double())
                if K == 1 else torch.nn.functional.cross_entropy(z, torch.tensor([t])))
        loss.backward()
        out.append(np.concatenate([q.grad.numpy().ravel() for q in net.parameters()]))
    return np.array(out)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("damping", ["auto", 0.05])
def test_scores_match_the_dense_kronecker_inverse(k, damping):
    net = _net(k)
    train, test = _data(40, k, 1), _data(7, k, 2)
    l2 = 1e-3
    pairs, self_inf, C, Gtr = _expected(net, train, test, l2, damping)
    with pytest.warns(UserWarning, match="not at a stationary point"):
        mi = ModelInfluence(net, curvature="kfac", l2=l2, regularize="all", damping=damping,
                            batch_size=16).fit(train)
        got = mi.pairwise(test)
        tab = mi.score(test)
    np.testing.assert_allclose(got, pairs, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(tab["influence"].to_numpy(), pairs.mean(0), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(tab["self_influence"].to_numpy(), self_inf, rtol=1e-8)
    np.testing.assert_allclose(mi.self_influence(), self_inf, rtol=1e-8)
    # the flat solve and product (used by influence_up and any solver) against the same C
    B = np.random.default_rng(3).standard_normal((C.shape[0], 2))
    np.testing.assert_allclose(mi.solve(torch.as_tensor(B)).numpy(), np.linalg.solve(C, B), rtol=1e-8)
    np.testing.assert_allclose(mi.hessian_.matvec(torch.as_tensor(B)).numpy(), C @ B, rtol=1e-10)
    v = torch.as_tensor(B[:, 0])  # one vector in, one vector out
    np.testing.assert_allclose(mi.solve(v).numpy(), np.linalg.solve(C, B[:, 0]), rtol=1e-8)
    np.testing.assert_allclose(mi.hessian_.matvec(v).numpy(), C @ B[:, 0], rtol=1e-10)
    np.testing.assert_allclose(mi.gradients(train)[0].numpy(), Gtr, rtol=1e-10, atol=1e-14)
    # the stationarity measured from the factored gradients: ∇R = mean g + λθ
    theta = np.concatenate([q.detach().numpy().ravel() for q in net.parameters()])
    assert mi.stationarity_.gradient_norm == pytest.approx(np.abs(Gtr.mean(0) + l2 * theta).max(), rel=1e-10)
    assert mi.stationarity_.gradient_scale == pytest.approx(np.abs(Gtr).max(1).mean(), rel=1e-10)
    info = mi.damping_info()
    assert info["curvature"] == "kfac" and set(info["damping"]) == {"0", "2"}
    assert info["factors"] == {"0": [4, 6], "2": [k, 5]}
    assert info["chosen"] == ("given" if damping != "auto" else "0.1 x the mean eigenvalue of each layer's Kronecker "
                                                                 "factors")
    solve = mi.direction_info_
    assert (solve.solver, solve.iterations, solve.residual, solve.converged) == ("kfac", 0, 0.0, True)
    assert "K-FAC damping per layer" in mi.describe_damping()


def test_params_subset_factors_only_the_chosen_layer():
    """The last layer alone (softmax): A = mean aaᵀ of its inputs, S = mean (diag p − ppᵀ)."""
    net = _net(3)
    X, y = _data(30, 3, 4)
    mi = ModelInfluence(net, curvature="kfac", params="2", l2=0.0, damping=0.01).fit((X, y))
    with torch.no_grad():
        h = torch.tanh(net[0](torch.as_tensor(X))).numpy()
        p = torch.softmax(net(torch.as_tensor(X)), 1).numpy()
    a = np.hstack([h, np.ones((30, 1))])
    (lay,) = mi.hessian_.layers
    np.testing.assert_allclose(lay.A.numpy(), a.T @ a / 30, rtol=1e-12)
    np.testing.assert_allclose(lay.S.numpy(), np.mean([np.diag(q) - np.outer(q, q) for q in p], 0), rtol=1e-10)
    assert mi.n_params == 3 * 5


def test_weight_without_bias_has_no_ones_column():
    net = _net(3)
    mi = ModelInfluence(net, curvature="kfac", params=["2.weight"], damping=0.01).fit(_data(20, 3, 5))
    (lay,) = mi.hessian_.layers
    assert lay.A.shape == (4, 4) and mi.n_params == 12


class _Scaled(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(5, 3)
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.fc(x) * self.scale


class _Conv(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(1, 2, 3)
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.conv(x[:, None, :]).flatten(1))


class _Twice(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(5, 5)
        self.out = torch.nn.Linear(5, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.fc(torch.tanh(self.fc(x)))))


class _Sequence(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(x[:, None, :].repeat(1, 2, 1)).mean(1)


@pytest.mark.parametrize("model, kw, match, parameter", [
    (_Scaled, {}, "scale belongs to a _Scaled.*choose params among those layers \\(fc\\)", "params"),
    (lambda: _net(3), {"params": ["0.bias"]}, "0.bias is chosen without 0.weight", "params"),
    (_Conv, {"params": ["conv.weight", "fc.weight"]}, "conv.weight belongs to a Conv1d.*among those layers \\(fc\\)",
     "params"),
    (lambda: _net(3), {"solver": "cg"}, "kfac curvature is inverted exactly.*leave it at 'auto'", "solver"),
    (lambda: _net(3), {"damping": 0.0}, "needs l2 \\+ damping > 0", "damping"),
    (_Twice, {"params": ["fc.weight", "fc.bias"]}, "layer fc runs more than once", "curvature"),
    (_Sequence, {}, "receives inputs of shape \\(16, 2, 5\\)", "curvature"),
])
def test_bad_inputs_name_the_parameter(model, kw, match, parameter):
    with pytest.raises(ValidationError, match=match) as e:
        ModelInfluence(model().double().eval(), curvature="kfac", **kw).fit(_data(16, 3, 6))
    assert e.value.parameters[0] == parameter
    assert "\n" not in str(e.value)


def test_curvature_name_lists_kfac():
    with pytest.raises(ValidationError, match="or 'kfac'"):
        ModelInfluence(_net(3), curvature="fisher")


def test_kfac_preconditioned_cg_solves_the_exact_gauss_newton_system_in_fewer_iterations():
    """CG on the exact Gauss-Newton curvature, preconditioned by K-FAC, meets the dense solve of the same
    system (built here from per-example Jacobians of the logits) and needs fewer iterations than plain CG."""
    from torch.func import functional_call, jacrev

    from winnow.core.solvers import CGSolver

    net = _net(3, seed=2)
    X, y = _data(60, 3, 7)
    X = X * np.array([1.0, 30.0, 0.03, 3.0, 0.3])  # features on different scales: a badly conditioned curvature
    l2, damping = 1e-4, 1e-4
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def logits(th, x):
        parts, off = {}, 0
        for nm, sh in zip(names, shapes):
            k = int(np.prod(sh))
            parts[nm] = th[off:off + k].reshape(sh)
            off += k
        return functional_call(net, parts, (x[None],))[0]

    Xt = torch.as_tensor(X)
    G = np.zeros((len(theta), len(theta)))
    for x in Xt:
        J = jacrev(logits)(theta, x).numpy()              # (K, P)
        p = torch.softmax(logits(theta, x), 0).detach().numpy()
        G += J.T @ (np.diag(p) - np.outer(p, p)) @ J
    G = G / len(X) + (l2 + damping) * np.eye(len(theta))
    B = np.random.default_rng(8).standard_normal((len(theta), 3))
    expected = np.linalg.solve(G, B)
    iterations = {}
    for pre in (None, "kfac"):
        mi = ModelInfluence(net, curvature="ggn", l2=l2, regularize="all", damping=damping,
                            solver=CGSolver(tol=1e-10, preconditioner=pre)).fit((X, y))
        got = mi.solve(torch.as_tensor(B)).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-9)
        assert mi.solve_info_.converged and mi.solve_info_.extra["preconditioned"] == (pre is not None)
        iterations[pre] = mi.solve_info_.iterations
    assert iterations["kfac"] < iterations[None], iterations


def test_kfac_preconditioner_refuses_a_model_with_other_layers():
    from winnow.core.solvers import CGSolver

    with pytest.raises(ValidationError, match="scale belongs to a _Scaled") as e:
        ModelInfluence(_Scaled().double().eval(), curvature="ggn", damping=0.1,
                       solver=CGSolver(preconditioner="kfac")).fit(_data(16, 3, 6))
    assert e.value.parameters == ("params",)


class _ConvNet(torch.nn.Module):
    """Conv2d(2 → 3, 2×2, stride 2, padding 1) on 2×4×4 images → tanh → Linear(3·3·3 → 3)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.conv = torch.nn.Conv2d(2, 3, 2, stride=2, padding=1)
        self.fc = torch.nn.Linear(27, 3)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x.reshape(-1, 2, 4, 4))).flatten(1))


def test_conv2d_factors_and_scores_match_numpy():
    """KFC factors of a convolution from patches cut out here by slicing, the output Jacobians by autograd of
    the layers above it, and every score against the dense Kronecker inverse."""
    from torch.func import jacrev

    net = _ConvNet().double().eval()
    rng = np.random.default_rng(11)
    X, y = rng.standard_normal((25, 32)), rng.integers(0, 3, size=25)
    Xte, yte = rng.standard_normal((4, 32)), rng.integers(0, 3, size=4)
    W, b = net.conv.weight.detach().numpy(), net.conv.bias.detach().numpy()
    A1, S1, A2, S2 = np.zeros((9, 9)), np.zeros((3, 3)), np.zeros((28, 28)), np.zeros((3, 3))
    for x in X:
        img = np.pad(x.reshape(2, 4, 4), ((0, 0), (1, 1), (1, 1)))
        patches = np.array([np.append(img[:, 2 * r:2 * r + 2, 2 * c:2 * c + 2].ravel(), 1.0)
                            for r in range(3) for c in range(3)])            # (L = 9, 2·2·2 + 1)
        o = (patches[:, :8] @ W.reshape(3, 8).T + b).T.reshape(3, 3, 3)     # the convolution's output
        A1 += patches.T @ patches / 9

        def above(out):
            return net.fc(torch.tanh(out).flatten())

        ot = torch.as_tensor(o)
        J = jacrev(above)(ot).detach().numpy().reshape(3, 3, 9)                       # (K, C_out, L)
        h = np.append(np.tanh(o).ravel(), 1.0)
        z = above(ot).detach().numpy()
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        root = np.diag(np.sqrt(p)) - np.outer(p, np.sqrt(p))                 # L Lᵀ = diag p − ppᵀ
        for c in range(3):
            s_c = np.einsum("k,kjt->jt", root[:, c], J)                      # (C_out, L)
            S1 += s_c @ s_c.T
        A2 += np.outer(h, h)
        S2 += np.diag(p) - np.outer(p, p)
    n = len(X)
    A1, S1, A2, S2 = A1 / n, S1 / n, A2 / n, S2 / n
    mi = ModelInfluence(net, curvature="kfac", l2=1e-3, regularize="all", batch_size=10).fit((X, y))
    conv, fc = mi.hessian_.layers
    np.testing.assert_allclose(conv.A.numpy(), A1, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(conv.S.numpy(), S1, rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(fc.A.numpy(), A2, rtol=1e-10)
    np.testing.assert_allclose(fc.S.numpy(), S2, rtol=1e-8, atol=1e-14)
    C = _dense_curvature([(A1, S1, 3, 8), (A2, S2, 3, 27)], 1e-3, "auto")
    Gtr, Gte = _grads(net, X, y, 3), _grads(net, Xte, yte, 3)
    V = np.linalg.solve(C, Gtr.T)
    with pytest.warns(UserWarning, match="not at a stationary point"):
        np.testing.assert_allclose(mi.pairwise((Xte, yte)), -(Gte @ V), rtol=1e-8, atol=1e-12)
        tab = mi.score((Xte, yte))
    np.testing.assert_allclose(tab["influence"].to_numpy(), -(Gte @ V).mean(0), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(tab["self_influence"].to_numpy(), (Gtr * V.T).sum(1), rtol=1e-8)
    np.testing.assert_allclose(mi.gradients((X, y))[0].numpy(), Gtr, rtol=1e-10, atol=1e-14)
    assert mi.stationarity_.gradient_scale == pytest.approx(np.abs(Gtr).max(1).mean(), rel=1e-10)


def test_conv2d_with_groups_is_refused():
    net = torch.nn.Sequential(torch.nn.Unflatten(1, (2, 4, 4)), torch.nn.Conv2d(2, 2, 2, groups=2),
                              torch.nn.Flatten(), torch.nn.Linear(18, 3)).double().eval()
    with pytest.raises(ValidationError, match="groups=1 and explicit zero padding; 1 has groups 2") as e:
        ModelInfluence(net, curvature="kfac", damping=0.1).fit((np.zeros((8, 32)), np.zeros(8, int)))
    assert e.value.parameters == ("params",)


def test_kfac_preconditioner_without_l2_or_damping_uses_the_automatic_damping():
    """A model curvature with l2 = damping = 0 still gets a positive definite preconditioner."""
    from winnow.core.solvers import CGSolver

    net = _net(3)
    X, y = _data(40, 3, 9)
    mi = ModelInfluence(net, curvature="ggn", l2=0.0, damping=0.0,
                        solver=CGSolver(tol=1e-6, preconditioner="kfac")).fit((X, y))
    assert all(lay.damping > 0 for lay in mi.solver_.pre_.curvature.layers)


def test_a_layer_whose_inputs_are_all_zero_keeps_finite_factors():
    """A = 0 (every input 0, no bias): the damping split π falls back to 1 and the scores are 0, not NaN."""
    net = torch.nn.Sequential(torch.nn.Linear(5, 3, bias=False)).double().eval()
    X, y = np.zeros((12, 5)), np.arange(12) % 3
    mi = ModelInfluence(net, curvature="kfac", damping=0.1).fit((X, y))
    (lay,) = mi.hessian_.layers
    assert lay.pi == 1.0 and torch.isfinite(lay.S_inv).all() and torch.isfinite(lay.A_inv).all()
    np.testing.assert_array_equal(mi.self_influence(), np.zeros(12))
