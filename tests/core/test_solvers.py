"""Inverse-HVP solvers against an explicit dense solve (torch.linalg.solve on the matrix itself)."""

import warnings

import numpy as np
import pytest
import torch

from winnow.core.models import ModelInfluence, refine_model
from winnow.core.solvers import (
    CGSolver,
    ConvergenceWarning,
    DenseSolver,
    LanczosSolver,
    LiSSASolver,
    MatrixOperator,
    make_solver,
)
from winnow.errors import NotPositiveDefiniteError, ValidationError


def spd(P: int, seed: int = 0, rank: int | None = None, floor: float = 1e-2) -> torch.Tensor:
    """A symmetric positive definite matrix: low-rank spectrum + floor·I (like a damped network Hessian)."""
    g = torch.Generator().manual_seed(seed)
    r = rank or P
    A = torch.randn(P, r, generator=g, dtype=torch.float64)
    s = torch.logspace(1, -2, r, dtype=torch.float64)
    Q, _ = torch.linalg.qr(A)
    return (Q * s) @ Q.T + floor * torch.eye(P, dtype=torch.float64)


def test_dense_cg_lissa_exact_on_a_matrix():
    H = spd(120, seed=1, floor=0.5)  # condition number ~20: LiSSA needs ~cond·log(1/tol) steps
    B = torch.randn(120, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = torch.linalg.solve(H, B)
    op = MatrixOperator(H, damping=0.0)
    cases = [(DenseSolver(), 1e-10), (CGSolver(tol=1e-11), 1e-8), (CGSolver(tol=1e-11, block=False), 1e-8),
             (LiSSASolver(tol=1e-10, max_iter=5000), 1e-7)]
    for solver, rtol in cases:
        X = solver.fit(op).solve(B)
        np.testing.assert_allclose(X.numpy(), ref.numpy(), rtol=rtol, atol=rtol * float(ref.abs().max()))
        assert solver.info_.converged
        assert solver.info_.residual < 1e-6
    assert CGSolver(tol=1e-11).fit(op).solve(B[:, 0]).shape == (120,)


def test_lanczos_low_rank_plus_damping_is_exact_when_the_model_holds():
    # H = rank-10 + σ·I: the rank-10 Lanczos model with shift σ is H itself, so the solve is exact
    H = spd(150, seed=3, rank=10, floor=0.05)
    op = MatrixOperator(H, damping=0.05)
    B = torch.randn(150, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    s = LanczosSolver(rank=10, n_iter=40, tol=1e-8).fit(op)
    X = s.solve(B)
    np.testing.assert_allclose(X.numpy(), torch.linalg.solve(H, B).numpy(), rtol=1e-7, atol=1e-9)
    assert s.info_.rank == 10 and s.info_.converged
    np.testing.assert_allclose(np.sort(s.eigenvalues_.numpy()), np.sort(torch.linalg.eigvalsh(H)[-10:].numpy()),
                               rtol=1e-8)
    # whiten gives the same quadratic form gᵀĤ⁻¹g
    W = s.whiten(B.T)
    np.testing.assert_allclose((W * W).sum(0).numpy(), (B * X).sum(0).numpy(), rtol=1e-10)
    # without a shift the complement is dropped (projection), with a warning
    with pytest.warns(UserWarning, match="projected"):
        s0 = LanczosSolver(rank=10, n_iter=40, shift=None).fit(op)
    U = s0.eigenvectors_
    np.testing.assert_allclose((U.T @ s0.solve(B)).numpy(), (U.T @ X).numpy(), rtol=1e-6, atol=1e-9)


def test_block_cg_needs_fewer_rounds_and_survives_rank_deficiency():
    H = spd(100, seed=11, floor=5e-2)
    op = MatrixOperator(H)
    g = torch.Generator().manual_seed(12)
    B = torch.randn(100, 6, generator=g, dtype=torch.float64)
    B = torch.cat([B, B[:, :2] * 3.0, torch.zeros(100, 1, dtype=torch.float64)], 1)  # dependent + zero columns
    ref = torch.linalg.solve(H, B)
    blk, col = CGSolver(tol=1e-10), CGSolver(tol=1e-10, block=False)
    Xb, Xc = blk.fit(op).solve(B), col.fit(op).solve(B)
    for X in (Xb, Xc):
        np.testing.assert_allclose(X.numpy(), ref.numpy(), rtol=1e-7, atol=1e-7 * float(ref.abs().max()))
    assert blk.info_.converged and blk.info_.iterations < col.info_.iterations
    assert float(Xb[:, -1].abs().max()) == 0.0


def test_cg_not_converging_warns_with_residual():
    op = MatrixOperator(spd(200, seed=5, floor=1e-4))
    B = torch.randn(200, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    with pytest.warns(ConvergenceWarning, match="relative residual"):
        s = CGSolver(tol=1e-12, max_iter=3).fit(op)
        s.solve(B)
    assert not s.info_.converged and s.info_.iterations == 3 and s.info_.residual > 1e-6


def test_indefinite_matrix_cg_lissa_dense():
    H = spd(60, seed=7)
    H[0, 0] = -1.0
    op = MatrixOperator(H)
    B = torch.randn(60, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    with pytest.raises(NotPositiveDefiniteError, match="damping"):
        DenseSolver().fit(op)
    with pytest.warns(UserWarning, match="indefinite"):
        s = DenseSolver(on_indefinite="eigh").fit(op)
    np.testing.assert_allclose(s.solve(B).numpy(), torch.linalg.solve(H, B).numpy(), rtol=1e-8, atol=1e-10)
    with pytest.warns(ConvergenceWarning, match="LiSSA did not converge"):
        LiSSASolver(max_iter=400).fit(op).solve(B)


def test_dense_refuses_too_many_params_and_names_alternatives():
    op = MatrixOperator(torch.eye(30, dtype=torch.float64))
    with pytest.raises(ValidationError, match="solver 'dense' cannot take.*'cg'.*'lanczos'"):
        DenseSolver(max_params=20).fit(op)
    assert isinstance(make_solver("auto", 30, max_dense=20), CGSolver)
    assert isinstance(make_solver("auto", 10, max_dense=20), DenseSolver)
    with pytest.raises(ValidationError, match="unknown solver"):
        make_solver("newton", 10)
    with pytest.raises(ValidationError, match="fit"):
        CGSolver().solve(torch.zeros(3))


def test_null_direction_handled_by_dense():
    # H singular along v, right-hand sides orthogonal to v: the dense solver returns the pseudo-inverse
    H = spd(40, seed=9)
    v = torch.zeros(40, 1, dtype=torch.float64)
    v[:4] = 0.5
    Pr = torch.eye(40, dtype=torch.float64) - v @ v.T
    Hs = Pr @ H @ Pr
    B = Pr @ torch.randn(40, 3, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    X = DenseSolver().fit(MatrixOperator(Hs, null=v)).solve(B)
    np.testing.assert_allclose(X.numpy(), (torch.linalg.pinv(Hs, hermitian=True) @ B).numpy(), rtol=1e-8,
                               atol=1e-10)
    X2 = CGSolver(tol=1e-12).fit(MatrixOperator(Hs)).solve(B)
    np.testing.assert_allclose(X2.numpy(), X.numpy(), rtol=1e-7, atol=1e-9)


@pytest.mark.slow
def test_solvers_agree_with_dense_on_a_5k_parameter_model():
    """CG, LiSSA and Lanczos vs the dense solve of a trained ~4.5k-parameter MLP's damped Hessian.

    Stated tolerances (max relative error over the influence matrix): CG 1e-6, LiSSA 1e-4, Lanczos 2e-2
    (a rank-k model of H: exact only when the rest of the spectrum equals the damping + L2 floor)."""
    torch.manual_seed(0)
    n, d = 60, 20
    X = torch.randn(n, d, dtype=torch.float64)
    y = (X[:, 0] + X[:, 1] ** 2 - 1 > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(d, 64), torch.nn.Tanh(), torch.nn.Linear(64, 48), torch.nn.Tanh(),
                                torch.nn.Linear(48, 1)).double().eval()
    refine_model(model, (X, y), l2=1e-2, regularize="all", max_iter=200)
    kw = dict(l2=1e-2, regularize="all", damping=1e-2, batch_size=128)
    dense = ModelInfluence(model, solver="dense", **kw).fit((X, y))
    assert dense.n_params == 4513
    test = (X[:8], y[:8])
    ref = dense.pairwise(test)
    scale = np.abs(ref).max()
    errors = {}
    for name, solver, tol in [("cg", CGSolver(tol=1e-9), 1e-6), ("lissa", LiSSASolver(tol=1e-6, max_iter=3000), 1e-4),
                              ("lanczos", LanczosSolver(rank=120, n_iter=300), 2e-2)]:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConvergenceWarning)
            m = ModelInfluence(model, solver=solver, **kw).fit((X, y))
            got = m.pairwise(test)
        errors[name] = np.abs(got - ref).max() / scale
        assert errors[name] < tol, (name, errors[name], m.solve_info_)
    assert m.solve_info_.rank == 120
