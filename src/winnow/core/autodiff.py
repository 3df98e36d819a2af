"""Derivatives of any small ``nn.Module`` by ``torch.func``: the generic autodiff head.

``ModelFunction`` turns a module (or a subset of its parameters) into pure functions of a flat float64
parameter vector θ: logits, per-example losses, per-example gradients ``vmap(grad(ℓ))`` and Hessian-vector
products (forward-over-reverse, ``jvp(grad(·))``). The module itself is never modified: its parameters
and buffers are copied once (float64 by default, on ``device``) and passed through ``functional_call``.

``AutodiffHead`` is a :class:`winnow.core.heads.Head` whose derivatives come from ``ModelFunction``, so
``InfluenceAnalyzer``, ``fit_curvature`` and ``leave_one_out`` use it unchanged. Loss: sigmoid + BCE for
one output (labels {0, 1}), softmax + CE for K ≥ 2 outputs (labels 0..K−1), as the closed-form heads.
Objective R(θ) = (1/N) Σ w_i ℓ_i + (λ/2)‖θ_reg‖², θ_reg = the weights (parameters with ≥ 2 dimensions)
by default, like the closed-form heads, or every parameter (``regularize="all"``).
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.func import functional_call, grad, jvp, vmap

from ..errors import ValidationError
from .heads import DTYPE, Head, as_tensor, newton_minimize

LOSSES = ("auto", "logistic", "softmax")


def loss_from_logits(Z: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-example loss from logits Z (c, K): BCE-with-logits for K = 1 ("logistic"), CE otherwise."""
    if loss == "logistic":
        z = Z[:, 0]
        return torch.nn.functional.softplus(z) - y.to(Z.dtype) * z
    return -torch.log_softmax(Z, dim=1).gather(1, y.long()[:, None])[:, 0]


def check_labels_for(n_outputs: int, loss: str, y: Any, argument: str = "y", what: str = "the head") -> None:
    """Raise ValidationError when labels ``y`` do not fit a model with ``n_outputs`` logits."""
    y = np.asarray(y)
    if y.size == 0:
        return
    if loss == "logistic":
        bad = (y != 0) & (y != 1)
        if bad.any():
            raise ValidationError(
                f"{argument}: {what} has 1 output (sigmoid + BCE), which needs labels in {{0, 1}}, but the labels "
                f"include {np.unique(y[bad])[:5].tolist()} (max label {int(y.max())}): the head's output width "
                f"does not match the labels (a K-class problem needs a head with K outputs)",
                parameters=(argument.split()[0],))
    else:
        bad = (y < 0) | (y >= n_outputs)
        if bad.any():
            raise ValidationError(
                f"{argument}: {what} has {n_outputs} outputs (softmax + CE), which needs labels in "
                f"0..{n_outputs - 1}, but the labels include {np.unique(y[bad])[:5].tolist()}: the head's "
                f"output width does not match the labels", parameters=(argument.split()[0],))


def resolve_loss(loss: str, n_outputs: int) -> str:
    """"auto" -> "logistic" for one output, "softmax" for K ≥ 2; checks explicit choices."""
    if loss not in LOSSES:
        raise ValidationError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if loss == "auto":
        return "logistic" if n_outputs == 1 else "softmax"
    if loss == "logistic" and n_outputs != 1:
        raise ValidationError(f"loss='logistic' needs a module with 1 output, this one has {n_outputs}")
    if loss == "softmax" and n_outputs < 2:
        raise ValidationError("loss='softmax' needs a module with K >= 2 outputs, this one has 1")
    return loss


# torch.func transforms keep interpreter state that is not safe across threads: two threads of one process
# (a threaded Dask worker, say) running vmap/grad at once can fail or give wrong numbers, so they take turns
_FUNC_LOCK = threading.RLock()


def _one_thread(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with _FUNC_LOCK:
            return method(*args, **kwargs)

    return wrapped


class ModelFunction:
    """Pure functions of a flat parameter vector θ for ``module`` (all or the named ``params``).

    ``theta`` (P,) holds the chosen parameters (``names`` in ``named_parameters`` order, each flattened);
    the others are held fixed. ``reg_mask`` (P,) marks the regularised coordinates. Inputs are cast to
    ``dtype`` and moved to ``device``; ``input_shape`` reshapes flat rows (c, D) to (c, *input_shape).
    """

    def __init__(self, module: torch.nn.Module, names: Sequence[str] | None = None, *,
                 regularize: str = "weights", device: torch.device | str | None = None,
                 dtype: torch.dtype = DTYPE, input_shape: Sequence[int] | None = None) -> None:
        if not isinstance(module, torch.nn.Module):
            raise ValidationError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        if regularize not in ("weights", "all"):
            raise ValidationError(f"regularize must be 'weights' or 'all', got {regularize!r}")
        self.module = module
        all_params = dict(module.named_parameters())
        if not all_params:
            raise ValidationError(f"{type(module).__name__} has no parameters to differentiate")
        if device is None:
            device = next(iter(all_params.values())).device
        self.device = torch.device(device)
        self.dtype = dtype
        self.names = list(all_params) if names is None else list(names)
        missing = [n for n in self.names if n not in all_params]
        if missing:
            raise ValidationError(f"parameters {missing} are not in the module; it has {list(all_params)}")
        self.shapes = [tuple(all_params[n].shape) for n in self.names]
        self.sizes = [int(np.prod(s)) if s else 1 for s in self.shapes]
        self.n_params = int(sum(self.sizes))
        self.theta = torch.cat([all_params[n].detach().to(self.device, dtype).reshape(-1)
                                for n in self.names]).contiguous()
        chosen = set(self.names)
        self.fixed = {n: self._cast(p.detach()) for n, p in all_params.items() if n not in chosen}
        self.fixed.update({n: self._cast(b.detach()) for n, b in module.named_buffers()})
        mask = [torch.full((sz,), 1.0 if (regularize == "all" or len(sh) >= 2) else 0.0, dtype=dtype,
                           device=self.device) for sz, sh in zip(self.sizes, self.shapes)]
        self.reg_mask = torch.cat(mask)
        self.regularize = regularize
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        # offsets of each parameter inside θ
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)

    def _cast(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, self.dtype) if t.is_floating_point() else t.to(self.device)

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: theta[self.offsets[i]:self.offsets[i + 1]].reshape(self.shapes[i])
                for i, n in enumerate(self.names)}

    def slice_of(self, name: str) -> slice:
        """The coordinates of parameter ``name`` inside θ."""
        i = self.names.index(name)
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def prepare(self, x: Any) -> torch.Tensor:
        """Inputs as ``dtype`` tensors on ``device`` (reshaped to ``input_shape`` when set)."""
        t = torch.as_tensor(x)
        if t.is_floating_point() or t.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32):
            t = t.to(self.device, self.dtype)
        else:
            t = t.to(self.device)
        if self.input_shape is not None:
            t = t.reshape(t.shape[0], *self.input_shape)
        return t

    def logits(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Model outputs as (c, K)."""
        out = functional_call(self.module, {**self.fixed, **self.unflatten(theta)}, (x,))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.reshape(out.shape[0], -1)

    def losses(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
        return loss_from_logits(self.logits(theta, x), y, loss)

    @_one_thread
    def per_example_grads(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
        """G (c, P): row i = ∇θ ℓ(z_i, θ) (no regulariser), by ``vmap(grad(ℓ))``."""
        def one(th: torch.Tensor, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            return self.losses(th, xi[None], yi[None], loss)[0]

        return vmap(grad(one), in_dims=(None, 0, 0))(theta, x, y)

    @_one_thread
    def grad_sum(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, loss: str,
                 w: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(Σ w_i ℓ_i, Σ w_i g_i)."""
        def total(th: torch.Tensor) -> torch.Tensor:
            l_ = self.losses(th, x, y, loss)
            return (l_ * w).sum() if w is not None else l_.sum()

        g, val = torch.func.grad_and_value(total)(theta)
        return val, g

    @_one_thread
    def hvp_sum(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, V: torch.Tensor, loss: str,
                w: torch.Tensor | None = None, chunk_size: int | None = None, mode: str = "rev") -> torch.Tensor:
        """Σ_i w_i ∇²ℓ_i · V for V (P,) or (P, m).

        ``mode`` "fwd": forward-over-reverse, jvp(grad(Σ w ℓ)) per column; "rev": reverse-over-reverse,
        the gradient linearised once (vjp of grad) and applied to every column — the same numbers, and on
        CPU about 3× faster for many columns (the linearisation is shared; vmap over jvp is not).
        """
        def total(th: torch.Tensor) -> torch.Tensor:
            l_ = self.losses(th, x, y, loss)
            return (l_ * w).sum() if w is not None else l_.sum()

        if mode == "rev":
            _, pull = torch.func.vjp(grad(total), theta)

            def hv(v: torch.Tensor) -> torch.Tensor:
                return pull(v)[0]
        elif mode == "fwd":
            g = grad(total)

            def hv(v: torch.Tensor) -> torch.Tensor:
                return jvp(g, (theta,), (v,))[1]
        else:
            raise ValidationError(f"hvp mode must be 'fwd' or 'rev', got {mode!r}")
        if V.ndim == 1:
            return hv(V)
        return vmap(hv, in_dims=1, out_dims=1, chunk_size=chunk_size)(V)

    @_one_thread
    def hessian_sum(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, loss: str,
                    w: torch.Tensor | None = None, budget: int = 1 << 24) -> torch.Tensor:
        """Σ_i w_i ∇²ℓ_i, (P, P): HVPs on identity blocks, ``budget`` bounding block·rows·P."""
        P = self.n_params
        c = max(1, int(x.shape[0]))
        block = max(1, min(P, budget // (c * max(P, 64))))
        H = torch.empty(P, P, dtype=self.dtype, device=self.device)
        for s in range(0, P, block):
            e = min(P, s + block)
            E = torch.zeros(P, e - s, dtype=self.dtype, device=self.device)
            E[torch.arange(s, e), torch.arange(e - s)] = 1.0
            H[:, s:e] = self.hvp_sum(theta, x, y, E, loss, w)
        return 0.5 * (H + H.T)

    @_one_thread
    def null_directions(self, theta: torch.Tensor, x: torch.Tensor, loss: str) -> torch.Tensor:
        """(P, r) orthonormal directions that shift every softmax logit by the same amount (an unregularised
        bias feeding the logits directly): every loss is constant along them. Checked with one jvp on ``x``."""
        P = self.n_params
        none = torch.zeros(P, 0, dtype=self.dtype, device=self.device)
        if loss != "softmax" or x.shape[0] == 0:
            return none
        K = self.logits(theta, x[:1]).shape[1]
        dirs = []
        for i, sh in enumerate(self.shapes):
            if sh != (K,) or float(self.reg_mask[self.offsets[i]]) != 0.0:
                continue
            v = torch.zeros(P, dtype=self.dtype, device=self.device)
            v[self.offsets[i]:self.offsets[i + 1]] = 1.0 / math.sqrt(K)
            _, dz = jvp(lambda th: self.logits(th, x), (theta,), (v,))
            if torch.allclose(dz, torch.full_like(dz, 1.0 / math.sqrt(K)), rtol=0, atol=1e-10):
                dirs.append(v)
        return torch.stack(dirs, 1) if dirs else none


class AutodiffHead(Head):
    """A head of any small module (say Linear → ReLU → Linear) on features, differentiated by torch.func.

    ``module``: the head (copied into float64 θ; never modified). ``l2``: λ in (1/n)Σℓ + (λ/2)‖θ_reg‖².
    ``regularize``: "weights" (parameters with ≥ 2 dims, as the closed-form heads) or "all".
    ``loss``: "auto" (1 output: sigmoid + BCE; K outputs: softmax + CE), "logistic" or "softmax".
    ``n_features``: D (default: the first ``nn.Linear``'s in_features, or prod(``input_shape``)).
    ``input_shape``: the shape of one head input when features are stored flattened.
    ``theta_`` (P,) is the module's parameters in ``named_parameters`` order; ``fit`` refines it.
    """

    kind = "autodiff"

    def __init__(self, module: torch.nn.Module, l2: float = 1e-3, *, loss: str = "auto",
                 regularize: str = "weights", n_features: int | None = None,
                 input_shape: Sequence[int] | None = None, tol: float = 1e-9, max_iter: int = 100,
                 device: torch.device | str | None = None) -> None:
        if device is None and isinstance(module, torch.nn.Module):
            p = next(module.parameters(), None)
            device = p.device if p is not None else None
        super().__init__(l2, tol=tol, max_iter=max_iter, device=device)
        self.module = module
        self.regularize = regularize
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.fn = ModelFunction(module, regularize=regularize, device=self.device, input_shape=input_shape)
        if n_features is None:
            if self.input_shape is not None:
                n_features = int(np.prod(self.input_shape))
            else:
                first = next((m for m in module.modules() if isinstance(m, torch.nn.Linear)), None)
                if first is None:
                    raise ValidationError(f"cannot tell the feature dimension of {type(module).__name__}: pass "
                                          f"n_features= (or input_shape=)")
                n_features = int(first.in_features)
        self.n_features_ = int(n_features)
        self.theta_ = self.fn.theta.clone()
        with torch.no_grad():
            probe = self.fn.logits(self.theta_, self.fn.prepare(torch.zeros(1, self.n_features_)))
        self._n_out = int(probe.shape[1])
        self.loss = resolve_loss(loss, self._n_out)
        self.null_ = None

    # ------------------------------------------------------------------ shape
    @property
    def n_outputs(self) -> int:
        return self._n_out

    @property
    def n_params(self) -> int:
        return int(self.theta_.numel())

    @property
    def param_names(self) -> list[str]:
        return list(self.fn.names)

    @property
    def weight_(self) -> np.ndarray:
        raise ValidationError("an autodiff head has no single weight matrix; read theta_ (P,) or "
                              "parameters() for the module's tensors")

    @property
    def bias_(self) -> np.ndarray:
        raise ValidationError("an autodiff head has no single bias vector; read theta_ or parameters()")

    def parameters(self) -> dict[str, np.ndarray]:
        """The fitted parameters by name, as numpy arrays."""
        return {n: t.detach().cpu().numpy().copy() for n, t in self.fn.unflatten(self.theta_).items()}

    def to_module(self) -> torch.nn.Module:
        """A deep copy of the module carrying the fitted θ (in the module's own dtype and device)."""
        import copy

        m = copy.deepcopy(self.module)
        with torch.no_grad():
            for n, t in self.fn.unflatten(self.theta_).items():
                p = m.get_parameter(n)
                p.copy_(t.to(p.dtype))
        return m

    def weight_mask(self) -> torch.Tensor:
        return self.fn.reg_mask.clone()

    def null_directions(self) -> torch.Tensor:
        if self.null_ is None:
            x = self._prep(torch.randn(4, self.n_features_, generator=torch.Generator().manual_seed(0)))
            self.null_ = self.fn.null_directions(self.theta_, x, self.loss)
        return self.null_

    def check_labels(self, y: np.ndarray, argument: str = "y") -> None:
        check_labels_for(self._n_out, self.loss, y, argument)

    # -------------------------------------------------------- per-chunk maths
    def _prep(self, X: torch.Tensor) -> torch.Tensor:
        return self.fn.prepare(X)

    def logits(self, X: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        return self.fn.logits(self.theta_ if theta is None else theta, self._prep(X))

    def losses(self, X: torch.Tensor, y: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        return loss_from_logits(self.logits(X, theta), y.to(self.device), self.loss)

    def residuals(self, X: torch.Tensor, y: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        """∂ℓ/∂z (c, K_out) (for information: the gradient is not r ⊗ ũ for a nonlinear head)."""
        Z = self.logits(X, theta)
        if self.loss == "logistic":
            return torch.sigmoid(Z) - y.to(self.device, Z.dtype)[:, None]
        return torch.softmax(Z, 1) - torch.nn.functional.one_hot(y.long().to(self.device), Z.shape[1]).to(Z.dtype)

    def loss_from_logits(self, Z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss_from_logits(Z, y.to(Z.device), self.loss)

    def gradients(self, X: torch.Tensor, y: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        th = self.theta_ if theta is None else theta
        return self.fn.per_example_grads(th, self._prep(X), y.to(self.device), self.loss)

    def grad_dot(self, X: torch.Tensor, y: torch.Tensor, V: torch.Tensor,
                 theta: torch.Tensor | None = None) -> torch.Tensor:
        return self.gradients(X, y, theta) @ V

    def hessian_sum(self, X: torch.Tensor, theta: torch.Tensor | None = None,
                    weights: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        """Σ_i w_i ∇²ℓ_i (P, P). A nonlinear head's Hessian depends on the labels (the term Σ_k r_k ∇²z_k),
        so ``y`` is required; build a whole-data Curvature with :func:`autodiff_curvature`."""
        if y is None:
            raise ValidationError(
                "AutodiffHead.hessian_sum needs the labels y (the Hessian of a nonlinear head depends on them)")
        th = self.theta_ if theta is None else theta
        return self.fn.hessian_sum(th, self._prep(X), y.to(self.device), self.loss, weights)

    def objective_terms(self, X: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None,
                        theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, yt = self._prep(X), y.to(self.device)
        loss, g = self.fn.grad_sum(theta, x, yt, self.loss, w)
        return loss, g, self.fn.hessian_sum(theta, x, yt, self.loss, w)

    def regulariser(self, theta: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.l2 * (theta * theta * self.fn.reg_mask).sum()

    def predict_proba(self, X: Any) -> np.ndarray:
        Xt = as_tensor(X, self.device)
        self.check_features(Xt.reshape(Xt.shape[0], -1))
        with torch.no_grad():
            Z = self.logits(Xt)
        return (torch.sigmoid(Z[:, 0]) if self.loss == "logistic" else torch.softmax(Z, 1)).cpu().numpy()

    def check_features(self, X: np.ndarray | torch.Tensor, argument: str = "X") -> None:
        if X.ndim != 2 or X.shape[1] != self.n_features_:
            raise ValidationError(
                f"{argument} has {X.shape[1] if X.ndim == 2 else X.ndim} features per row but the head "
                f"expects D = {self.n_features_} (feature dimension mismatch between head and data)")

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, y: Any = None, *, sample_weight: Any = None, normalizer: float | None = None,
            init: torch.Tensor | None = None, n_classes: int | None = None,
            chunk_size: int = 65536, engine: Any = None) -> AutodiffHead:
        """Minimise (1/N) Σ w_i ℓ_i + (λ/2)‖θ_reg‖² from ``init`` (default: the current θ) by Newton with
        an eigenvalue shift where the Hessian is indefinite (a nonlinear head is non-convex) and a
        backtracking line search, to ‖∇R‖_∞ ≤ tol. Raises ConvergenceError otherwise."""
        from ..io.sources import open_source

        source = open_source((X, y) if y is not None else X)
        labels = source.labels()
        if len(labels) == 0:
            raise ValidationError("training data is empty")
        self.check_labels(labels)
        if source.n_features != self.n_features_:
            raise ValidationError(f"X has {source.n_features} features per row but the head expects "
                                  f"D = {self.n_features_}")
        theta = (self.theta_ if init is None else as_tensor(init, self.device)).clone()
        w_all = None
        if sample_weight is not None:
            w_all = np.asarray(sample_weight, dtype=np.float64).reshape(-1)
            if w_all.shape[0] != len(source) or not np.all(np.isfinite(w_all)) or np.any(w_all < 0):
                raise ValidationError(f"sample_weight must be {len(source)} finite values >= 0")
        N = float(normalizer) if normalizer is not None else (float(w_all.sum()) if w_all is not None
                                                              else float(len(source)))
        if N <= 0:
            raise ValidationError("the total sample weight must be > 0")

        from ..engine.passes import objective_pass

        evaluate = objective_pass(self, source, sample_weight=w_all, chunk_size=chunk_size, engine=engine)
        self.theta_ = newton_minimize(self, evaluate, N, theta, tol=self.tol, max_iter=self.max_iter)
        self.null_ = None
        return self

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write θ and the parameter names to an .npz (the module's architecture is not stored: rebuild
        the module and load with ``AutodiffHead(module).set_theta(np.load(path)['theta'])``)."""
        from ..io.outputs import save_npz

        return save_npz(path, overwrite=overwrite, argument="path", theta=self.theta_.cpu().numpy(),
                        names=np.array(self.fn.names), kind=np.array(self.kind), l2=np.array(self.l2))

    def set_theta(self, theta: Any) -> AutodiffHead:
        t = as_tensor(theta, self.device).reshape(-1)
        if t.numel() != self.n_params:
            raise ValidationError(f"theta has {t.numel()} entries, the head has P = {self.n_params}")
        self.theta_ = t.clone()
        self.null_ = None
        return self

    def __repr__(self) -> str:
        return (f"AutodiffHead({type(self.module).__name__}, l2={self.l2:g}, loss={self.loss}, D={self.n_features_}, "
                f"K_out={self._n_out}, P={self.n_params})")


def autodiff_curvature(head: Head, train: Any, *, damping: float = 0.0, chunk_size: int = 65536,
                       progress: bool = False) -> Any:
    """The exact damped Hessian H = (1/n) Σ ∇²ℓ_i + λ·mask + damping·I of ``head`` over ``train``, as a
    :class:`winnow.core.curvature.Curvature`: the same pass as :func:`winnow.engine.passes.fit_curvature`,
    which works for every head (an autodiff head's Hessian uses the labels)."""
    from ..engine.passes import fit_curvature

    return fit_curvature(head, train, damping=damping, chunk_size=chunk_size, progress=progress)
