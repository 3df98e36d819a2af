"""Independent reference maths for the tests: written from the paper's definitions, never from winnow.

Parameters use winnow's public layout only (θ = [W | b] flattened row-major, K_out rows of D + 1), so the
references can be compared with a head's ``theta_``. Everything else — the losses, the regulariser on the
weights only, gradients, Hessians, solves, eigenbases — is computed here with numpy / scipy / torch.autograd.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import logsumexp


def split(theta, k_out: int, d: int):
    """(W (k_out, d), b (k_out,)) from a flat θ in winnow's row-major [W | b] layout (numpy or torch)."""
    M = theta.reshape(k_out, d + 1)
    return M[:, :d], M[:, d]


def losses_np(kind: str, X: np.ndarray, y: np.ndarray, theta: np.ndarray, k_out: int) -> np.ndarray:
    """Per-example BCE (logistic) or CE (softmax) loss, float64 numpy."""
    W, b = split(np.asarray(theta, dtype=np.float64), k_out, X.shape[1])
    Z = X @ W.T + b
    if kind == "logistic":
        z = Z[:, 0]
        return np.logaddexp(0.0, z) - y * z  # −[y log σ(z) + (1 − y) log(1 − σ(z))]
    return logsumexp(Z, axis=1) - Z[np.arange(len(y)), y]


def losses_torch(kind: str, X: torch.Tensor, y: torch.Tensor, theta: torch.Tensor, k_out: int) -> torch.Tensor:
    """The same losses in torch (for autograd)."""
    W, b = split(theta, k_out, X.shape[1])
    Z = X @ W.T + b
    if kind == "logistic":
        z = Z[:, 0]
        # log(1 + e^z) − y z, written without softplus
        return torch.logaddexp(torch.zeros_like(z), z) - y.double() * z
    return torch.logsumexp(Z, dim=1) - Z[torch.arange(len(y)), y.long()]


def weight_penalty(theta, k_out: int, d: int, l2: float):
    """(λ/2)‖W‖²: the bias is not regularised."""
    W, _ = split(theta, k_out, d)
    return 0.5 * l2 * (W * W).sum()


def risk_torch(kind, X, y, theta, k_out, l2, weights=None, normalizer=None):
    """R(θ) = (1/N) Σ w_i ℓ_i + (λ/2)‖W‖²."""
    ls = losses_torch(kind, X, y, theta, k_out)
    if weights is not None:
        ls = ls * weights
    N = normalizer if normalizer is not None else (float(weights.sum()) if weights is not None else len(y))
    return ls.sum() / N + weight_penalty(theta, k_out, X.shape[1], l2)


def tt(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


def per_example_grads(kind, X, y, theta, k_out) -> np.ndarray:
    """g_i = ∇θ ℓ_i by autograd, one example at a time, (n, P)."""
    Xt, yt, th0 = tt(X), torch.as_tensor(np.asarray(y)), tt(theta)
    out = []
    for i in range(len(y)):
        th = th0.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(losses_torch(kind, Xt[i:i + 1], yt[i:i + 1], th, k_out).sum(), th)
        out.append(g.numpy())
    return np.array(out)


def loss_hessian_sum(kind, X, y, theta, k_out, weights=None) -> np.ndarray:
    """Σ_i w_i ∇²ℓ_i by autograd (no regulariser), (P, P)."""
    Xt, yt = tt(X), torch.as_tensor(np.asarray(y))
    w = tt(weights) if weights is not None else None

    def f(th):
        ls = losses_torch(kind, Xt, yt, th, k_out)
        return (ls * w).sum() if w is not None else ls.sum()

    return torch.autograd.functional.hessian(f, tt(theta)).numpy()


def risk_hessian(kind, X, y, theta, k_out, l2, damping=0.0) -> np.ndarray:
    """H = ∇²R at θ (autograd of the independent risk) + damping·I."""
    Xt, yt = tt(X), torch.as_tensor(np.asarray(y))
    H = torch.autograd.functional.hessian(lambda th: risk_torch(kind, Xt, yt, th, k_out, l2), tt(theta)).numpy()
    return H + damping * np.eye(H.shape[0])


def bias_shift_direction(k_out: int, d: int) -> np.ndarray:
    """The unit vector that adds the same constant to every softmax bias (a null direction of every loss)."""
    v = np.zeros((k_out, d + 1))
    v[:, d] = 1.0
    return v.reshape(-1) / np.sqrt(k_out)


def pinv_on_gradients(H: np.ndarray, null: np.ndarray | None = None) -> np.ndarray:
    """H⁻¹ on the orthogonal complement of the null directions (the Moore–Penrose pseudo-inverse there)."""
    if null is None:
        return np.linalg.inv(H)
    P = np.eye(H.shape[0]) - np.outer(null, null)
    return P @ np.linalg.pinv(P @ H @ P, hermitian=True) @ P


def eigen_memorization(H: np.ndarray, G: np.ndarray, null: np.ndarray | None = None) -> np.ndarray:
    """‖Λ⁻¹Qᵀg‖₁ for every row g of G, with H = QΛQᵀ (null direction removed), by numpy.linalg.eigh."""
    ev, Q = np.linalg.eigh(H)
    if null is not None:
        keep = np.abs(Q.T @ null) < 0.5
        ev, Q = ev[keep], Q[:, keep]
    return np.abs(G @ Q / ev).sum(1)


def fit_scipy(kind, X, y, k_out, l2, weights=None, normalizer=None) -> np.ndarray:
    """The minimiser of the independent risk by scipy.optimize (trust-region Newton with autograd derivatives,
    gradient tolerance 1e-11)."""
    from scipy.optimize import minimize

    Xt, yt = tt(X), torch.as_tensor(np.asarray(y))
    w = tt(weights) if weights is not None else None
    P = k_out * (X.shape[1] + 1)

    def R(th):
        return risk_torch(kind, Xt, yt, th, k_out, l2, w, normalizer)

    def fun(th_np):
        th = tt(th_np).requires_grad_(True)
        val = R(th)
        (g,) = torch.autograd.grad(val, th)
        return float(val.detach()), g.numpy()

    def hess(th_np):
        return torch.autograd.functional.hessian(R, tt(th_np)).numpy()

    res = minimize(fun, np.zeros(P), jac=True, hess=hess, method="trust-exact", options={"gtol": 1e-11})
    return res.x
