"""PyTorch glue: split a trained model into featurizer + head, extract features, full-model influence.

- :func:`find_module` names the head (``"fc"``, ``"classifier.3"``, or a callable returning the module);
  a wrong name lists the candidates.
- :func:`extract_features` runs the model over a DataLoader (no grad, eval mode, chunked, on the model's
  device) and captures the head's input with a forward hook; the result is arrays, an ``.npz`` or a
  Parquet file with ``id``, ``label`` and a fixed-size-list ``features`` column (what
  :class:`winnow.io.sources.ParquetSource` reads).
- :func:`head_from_module` turns the head into a winnow Head: ``nn.Linear`` -> LogisticHead (1 output) /
  SoftmaxHead (K outputs) with closed forms; anything else -> :class:`winnow.core.autodiff.AutodiffHead`.
- :class:`ModelInfluence` is influence with respect to all parameters (or a named subset) of the model:
  per-example gradients by ``torch.func``, Hessian-vector products forward-over-reverse, inverse-HVPs by
  the solvers of :mod:`winnow.core.solvers`. Same conventions and columns as the head path:
  R(θ) = (1/n) Σ ℓ_i + (λ/2)‖θ_reg‖² (+ damping), influence = −ḡ_testᵀ H⁻¹ g_p (> 0 harmful),
  loss_change_if_removed = −influence/n, self_influence = g_pᵀ H⁻¹ g_p.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ..errors import NotFittedError, ValidationError
from ..progress import track
from .autodiff import _FUNC_LOCK, AutodiffHead, ModelFunction, check_labels_for, resolve_loss
from .curvature import Stationarity
from .heads import DTYPE, Head, head_from_torch
from .influence import SCORE_COLUMNS, SIGN_METADATA
from .solvers import DampingChoice, InverseHVPSolver, SolveInfo, choose_damping, make_solver, matvec_columns

HeadSpec = str | Callable[[torch.nn.Module], torch.nn.Module]


# ------------------------------------------------------------------------------------ finding the head
def find_module(model: torch.nn.Module, head: HeadSpec) -> tuple[str, torch.nn.Module]:
    """(name, module) of the head inside ``model``: a name from ``named_modules()`` or a callable
    ``model -> module``. Raises ValidationError listing the candidate names when it is not found."""
    if not isinstance(model, torch.nn.Module):
        raise ValidationError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    modules = dict(model.named_modules())
    if callable(head) and not isinstance(head, str):
        mod = head(model)
        for name, m in modules.items():
            if m is mod and name:
                return name, mod
        raise ValidationError(f"head callable returned {type(mod).__name__}, which is not a submodule of the "
                              f"model; candidates: {_candidates(model)}")
    if not isinstance(head, str) or not head:
        raise ValidationError(f"head must be a module name or a callable, got {head!r}")
    if head not in modules or head == "":
        raise ValidationError(f"head {head!r} is not a module of {type(model).__name__}; candidates: "
                              f"{_candidates(model)}")
    return head, modules[head]


def _candidates(model: torch.nn.Module, limit: int = 40) -> str:
    names = [f"{n} ({type(m).__name__})" for n, m in model.named_modules() if n]
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more if names else "(the model has no submodules)"


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer), CPU if it has none."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@contextmanager
def eval_mode(model: torch.nn.Module, what: str = "winnow", warn: bool = True) -> Iterator[torch.nn.Module]:
    """Run ``model`` in eval mode; a model found in train mode is switched (with a warning unless
    ``warn=False``) and switched back afterwards."""
    was_training = model.training
    if was_training and warn:
        warnings.warn(f"the model was in train mode; {what} switched it to eval mode (dropout off, batch-norm "
                      f"running statistics) and restores train mode afterwards", UserWarning, stacklevel=3)
    if was_training:
        model.eval()
    try:
        yield model
    finally:
        if was_training:
            model.train()


# -------------------------------------------------------------------------------------------- data
class ModelData:
    """Inputs for a model, read in batches: an ``(X, y)`` / ``(X, y, ids)`` tuple of arrays or tensors
    (X of any shape (n, ...)), a path to an ``.npz`` with arrays ``X``, ``y`` and optional ``id``, a
    ``torch.utils.data.Dataset`` yielding (x, y) or (x, y, id), or a ``DataLoader`` over one (it must not
    shuffle: ids are row positions unless the batches carry them)."""

    def __init__(self, data: Any, *, batch_size: int = 256, argument: str = "data") -> None:
        from torch.utils.data import DataLoader, Dataset, RandomSampler

        if isinstance(data, ModelData):
            self.__dict__.update(data.__dict__)
            return
        if batch_size < 1:
            raise ValidationError(f"batch_size must be >= 1, got {batch_size}")
        self.argument = argument
        self.batch_size = int(batch_size)
        self._tensors: tuple[torch.Tensor, torch.Tensor, np.ndarray] | None = None
        self._loader = None
        if isinstance(data, (str, Path)):
            p = Path(data)
            if p.suffix != ".npz" or not p.exists():
                raise ValidationError(f"{argument}: {p} must be an existing .npz file with arrays X, y (and id)")
            with np.load(p, allow_pickle=False) as z:
                if "X" not in z or "y" not in z:
                    raise ValidationError(f"{argument}: {p} needs arrays X and y; it has {list(z.keys())}")
                data = (z["X"], z["y"], z["id"]) if "id" in z else (z["X"], z["y"])
        if isinstance(data, tuple):
            if len(data) not in (2, 3):
                raise ValidationError(f"{argument}: a tuple must be (X, y) or (X, y, ids); got {len(data)} items")
            X = torch.as_tensor(np.asarray(data[0]) if not isinstance(data[0], torch.Tensor) else data[0])
            y = _labels(data[1], argument)
            ids = (np.asarray(data[2]).astype(np.int64) if len(data) == 3 else np.arange(len(y), dtype=np.int64))
            if X.ndim < 1 or X.shape[0] != len(y) or len(ids) != len(y):
                raise ValidationError(f"{argument}: X, y (and ids) must have the same number of rows; got "
                                      f"{X.shape[0] if X.ndim else 0}, {len(y)}, {len(ids)}")
            if X.is_floating_point() and not bool(torch.isfinite(X).all()):
                raise ValidationError(f"{argument}: X contains NaN or Inf")
            self._tensors = (X, torch.as_tensor(y), ids)
            self._n = len(y)
        elif isinstance(data, DataLoader):
            if isinstance(data.sampler, RandomSampler):
                raise ValidationError(f"{argument}: the DataLoader shuffles (RandomSampler); ids are row positions, "
                                      f"so pass a loader with shuffle=False")
            self._loader = data
            self._n = None
        elif isinstance(data, Dataset):
            self._loader = DataLoader(data, batch_size=self.batch_size, shuffle=False)
            self._n = None
        else:
            raise ValidationError(f"{argument}: expected (X, y[, ids]) arrays, an .npz path, a Dataset or a "
                                  f"DataLoader; got {type(data).__name__}")

    @property
    def in_memory(self) -> bool:
        return self._tensors is not None

    def __len__(self) -> int:
        if self._n is None:
            self._n = sum(len(b[1]) for b in self.batches())
        return int(self._n)

    def batches(self, batch_size: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
        """Yield (x (c, ...), y (c,) int64 tensor, ids (c,) int64) in a fixed order."""
        if self._tensors is not None:
            X, y, ids = self._tensors
            bs = batch_size or self.batch_size
            for s in range(0, len(y), bs):
                yield X[s:s + bs], y[s:s + bs], ids[s:s + bs]
            return
        start = 0
        for b in self._loader:  # type: ignore[union-attr]
            if isinstance(b, dict) or not isinstance(b, (list, tuple)) or len(b) not in (2, 3):
                raise ValidationError(f"{self.argument}: each batch must be (x, y) or (x, y, ids); got "
                                      f"{type(b).__name__}")
            x, y = b[0], torch.as_tensor(_labels(b[1], self.argument))
            ids = (np.asarray(torch.as_tensor(b[2]).cpu()).astype(np.int64) if len(b) == 3
                   else np.arange(start, start + len(y), dtype=np.int64))
            start += len(y)
            yield x, y, ids

    def take(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """The given row positions (in-memory data only)."""
        if self._tensors is None:
            raise ValidationError(f"{self.argument}: random access needs in-memory data (X, y) arrays")
        X, y, ids = self._tensors
        r = torch.as_tensor(rows, dtype=torch.long)
        return X[r], y[r], ids[np.asarray(rows)]

    def labels(self) -> np.ndarray:
        if self._tensors is not None:
            return self._tensors[1].cpu().numpy()
        return np.concatenate([b[1].cpu().numpy() for b in self.batches()])


def _labels(y: Any, argument: str) -> np.ndarray:
    a = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y)
    if a.ndim != 1:
        raise ValidationError(f"{argument}: labels must be 1-D (class indices), got shape {a.shape}")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise ValidationError(f"{argument}: labels must be integer class indices")
    elif a.dtype.kind not in "iub":
        raise ValidationError(f"{argument}: labels must be integer class indices, got dtype {a.dtype}")
    return a.astype(np.int64)


# ------------------------------------------------------------------------------------------ features
@dataclass
class Features:
    """Extracted head inputs: ``X`` (n, D) float32, ``y`` (n,) int64, ``ids`` (n,) int64; ``shape`` the
    head input shape of one row before flattening; ``head_name``; ``path`` when written to a file."""

    X: np.ndarray | None
    y: np.ndarray | None
    ids: np.ndarray | None
    shape: tuple[int, ...]
    head_name: str
    n: int
    path: Path | None = None

    def as_tuple(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(X (n, D), y (n,), ids (n,))``, the arrays in memory (raises when they were written to ``path``).
        Every winnow function that takes data also takes the Features object itself."""
        if self.X is None:
            raise ValidationError(f"features were written to {self.path}; read them with open_source(path)")
        return self.X, self.y, self.ids  # type: ignore[return-value]


FEATURE_METADATA = {"winnow.features": "input of the head module, captured by a forward hook in eval mode"}


def extract_features(model: torch.nn.Module, head: HeadSpec, data: Any, *, out: str | Path | None = None,
                     batch_size: int = 256, overwrite: bool = False, progress: bool = False,
                     dtype: np.dtype = np.float32) -> Features:
    """Run ``model`` over ``data`` and capture the head's input (the featurizer's output) for every row.

    No gradients, eval mode (a model in train mode is switched with a warning, and restored), batches
    moved to the model's device. ``out``: None -> arrays in memory; ``*.parquet`` -> streamed, one row
    group per batch (columns ``id``, ``label``, ``features`` fixed_size_list<float32>[D]); ``*.npz`` ->
    arrays ``X``, ``y``, ``id``. Head inputs of more than one dimension per row are flattened (``shape``
    keeps the original).
    """
    from ..io.outputs import ParquetStreamWriter, check_output_path, save_npz

    name, mod = find_module(model, head)
    src = ModelData(data, batch_size=batch_size)
    dev = model_device(model)
    suffix = Path(out).suffix.lower() if out is not None else None
    if out is not None:
        check_output_path(out, overwrite, argument="out", formats="features")
    captured: list[torch.Tensor] = []

    def hook(_m: torch.nn.Module, inputs: tuple[Any, ...], _out: Any) -> None:
        if not inputs or not isinstance(inputs[0], torch.Tensor):
            raise ValidationError(f"head {name!r} was called without a tensor input; cannot capture features")
        captured.append(inputs[0].detach())

    writer = None
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    shape: tuple[int, ...] | None = None
    n = 0
    handle = mod.register_forward_hook(hook)
    try:
        with eval_mode(model, "extract_features"), torch.no_grad():
            total = len(src) if src.in_memory else 0
            for x, y, ids in track(src.batches(), total, "features", "rows", count=lambda b: len(b[1]),
                                    enabled=progress):
                captured.clear()
                x = x.to(dev) if isinstance(x, torch.Tensor) else x
                model(x)
                if len(captured) != 1:
                    raise ValidationError(f"head {name!r} ran {len(captured)} times in one forward pass; "
                                          f"expected exactly once")
                f = captured[0]
                if f.shape[0] != len(y):
                    raise ValidationError(f"head {name!r} input has {f.shape[0]} rows for a batch of {len(y)}")
                if shape is None:
                    shape = tuple(f.shape[1:])
                F = f.reshape(f.shape[0], -1).to("cpu", torch.float64).numpy().astype(dtype)
                if not np.isfinite(F).all():
                    raise ValidationError(f"the features at head {name!r} contain NaN or Inf")
                yl = y.cpu().numpy().astype(np.int64)
                if suffix == ".parquet":
                    if writer is None:
                        D = F.shape[1]
                        schema = pa.schema([("id", pa.int64()), ("label", pa.int64()),
                                            ("features", pa.list_(pa.float32(), D))])
                        writer = ParquetStreamWriter(out, schema, overwrite=overwrite, argument="out",
                                                     metadata={**FEATURE_METADATA, "winnow.head": name})
                    writer.write(id=ids, label=yl, features=F.astype(np.float32))
                else:
                    parts.append((F, yl, ids))
                n += len(yl)
        if n == 0:
            raise ValidationError("data is empty: no rows to extract features from")
        if writer is not None:
            writer.close()
            return Features(None, None, None, shape or (), name, n, Path(out))  # type: ignore[arg-type]
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        handle.remove()
    X = np.concatenate([p[0] for p in parts])
    y_all = np.concatenate([p[1] for p in parts])
    ids_all = np.concatenate([p[2] for p in parts])
    if suffix == ".npz":
        path = save_npz(out, overwrite=overwrite, argument="out", X=X, y=y_all, id=ids_all)  # type: ignore[arg-type]
        return Features(X, y_all, ids_all, shape or (), name, n, path)
    return Features(X, y_all, ids_all, shape or (), name, n, None)


def head_from_module(module: torch.nn.Module, *, l2: float = 1e-3, loss: str = "auto",
                     input_shape: Sequence[int] | None = None, device: torch.device | str | None = None,
                     **kwargs: Any) -> Head:
    """A winnow Head for the head module: ``nn.Linear`` -> LogisticHead (1 output) / SoftmaxHead (K ≥ 2)
    with closed-form derivatives; any other module -> AutodiffHead (torch.func)."""
    if isinstance(module, torch.nn.Linear):
        if module.bias is None:
            warnings.warn("the head nn.Linear has no bias; winnow's linear heads always have one, so the head "
                          "gets a bias fixed at 0 (its influence is then that of a model with a bias)",
                          UserWarning, stacklevel=2)
        if loss not in ("auto", "logistic" if module.out_features == 1 else "softmax"):
            resolve_loss(loss, module.out_features)
        dev = device if device is not None else model_device(module)
        return head_from_torch(module, l2=l2, device=dev, **kwargs)
    return AutodiffHead(module, l2=l2, loss=loss, input_shape=input_shape, device=device, **kwargs)


def check_head_labels(head: Head, labels: Any, argument: str = "labels", name: str = "the head") -> None:
    """Raise a clear ValidationError when the head's output width does not fit the labels."""
    K = head.n_outputs
    loss = getattr(head, "loss", "logistic" if K == 1 else "softmax")
    check_labels_for(K, loss, labels, argument, what=f"head {name!r}" if name != "the head" else name)


@dataclass
class ModelSplit:
    """A model split at its head: the winnow ``head`` and the extracted ``train``/``test`` features."""

    head: Head
    head_name: str
    train: Features
    test: Features | None


def split_model(model: torch.nn.Module, head: HeadSpec, train: Any, test: Any = None, *, l2: float = 1e-3,
                loss: str = "auto", batch_size: int = 256, progress: bool = False) -> ModelSplit:
    """Find the head, extract train (and test) features and build the winnow Head, checking that the head's
    output width matches the labels."""
    name, mod = find_module(model, head)
    ftr = extract_features(model, name, train, batch_size=batch_size, progress=progress)
    fte = extract_features(model, name, test, batch_size=batch_size, progress=progress) if test is not None else None
    h = head_from_module(mod, l2=l2, loss=loss, input_shape=ftr.shape if len(ftr.shape) > 1 else None)
    check_head_labels(h, ftr.y, "train labels", name)
    if fte is not None:
        check_head_labels(h, fte.y, "test labels", name)
    return ModelSplit(h, name, ftr, fte)


# ----------------------------------------------------------------------------- parameter selection
def select_params(model: torch.nn.Module, params: str | Sequence[str] | None) -> list[str]:
    """Parameter names for ``params``: None -> every parameter that requires grad; a module name -> its
    parameters; a parameter name; or a list of either. Unknown names list the candidates."""
    named = [n for n, p in model.named_parameters() if p.requires_grad]
    if params is None:
        if not named:
            raise ValidationError("the model has no trainable parameters")
        return named
    items = [params] if isinstance(params, str) else list(params)
    modules = dict(model.named_modules())
    chosen: list[str] = []
    for it in items:
        if it in named:
            hits = [it]
        elif it in modules and it != "":
            prefix = it + "."
            hits = [n for n in named if n.startswith(prefix)]
        else:
            hits = []
        if not hits:
            raise ValidationError(f"params: {it!r} is neither a parameter nor a module with trainable parameters; "
                                  f"parameters: {', '.join(named[:40])}{' ...' if len(named) > 40 else ''}")
        chosen.extend(h for h in hits if h not in chosen)
    order = {n: i for i, n in enumerate(named)}
    return sorted(chosen, key=order.__getitem__)


# -------------------------------------------------------------------------------- the model Hessian
CURVATURES = ("hessian", "ggn")
#: what ModelInfluence accepts: also "kfac" (Kronecker-factored Gauss-Newton over Linear and Conv2d layers,
#: core/kfac.py)
MODEL_CURVATURES = (*CURVATURES, "kfac")
#: seconds a dense build may take by default before it is refused (estimated from its first block)
MAX_DENSE_SECONDS = 600.0


def check_curvature(curvature: Any, allowed: Sequence[str] = CURVATURES) -> str:
    """One of ``allowed`` ("hessian", "ggn" (the Gauss-Newton curvature), for ModelInfluence also "kfac"), else
    a ValidationError naming ``curvature``."""
    if curvature not in allowed:
        kfac = (", or 'kfac' (Kronecker-factored Gauss-Newton over the Linear and Conv2d layers)"
                if "kfac" in allowed else "")
        raise ValidationError(f"curvature must be 'hessian' (the exact Hessian) or 'ggn' (Gauss-Newton, positive "
                              f"semi-definite){kfac}, got {curvature!r}", parameters=("curvature",))
    return str(curvature)


def check_model_damping(damping: Any) -> float | str:
    """"auto" (chosen from the spectrum) or a finite number >= 0."""
    if isinstance(damping, str) and damping == "auto":
        return "auto"
    from ..validation import check_damping

    if isinstance(damping, str):
        try:
            damping = float(damping)
        except ValueError:
            raise ValidationError(f"damping must be 'auto' (chosen from the spectrum) or a number >= 0, got "
                                  f"{damping!r}", parameters=("damping",)) from None
    return check_damping(damping)


def _apply_out_hessian(Z: torch.Tensor, U: torch.Tensor, loss: str) -> torch.Tensor:
    """H_out·U per row: the loss Hessian w.r.t. the logits, sigmoid p(1 − p), softmax diag(p) − ppᵀ.
    Z (c, K) logits; U (c, K) or (c, K, m) (applied to every trailing column)."""
    extra = (None,) * (U.ndim - 2)
    if loss == "logistic":
        p = torch.sigmoid(Z)
        return (p * (1 - p))[(...,) + extra] * U
    p = torch.softmax(Z, 1)[(...,) + extra]
    return p * U - p * (p * U).sum(1, keepdim=True)


def ggn_sum(fn: ModelFunction, x: torch.Tensor, V: torch.Tensor, loss: str, chunk_size: int | None = None
            ) -> torch.Tensor:
    """Σ_i J_iᵀ H_out,i J_i · V, V (P,) or (P, m): the Gauss-Newton product over the rows of ``x``, matrix-free.

    J_i = ∂z_i/∂θ (K × P) at ``fn.theta``; J·v by forward mode (``jvp``), Jᵀ·u by the one reverse
    linearisation of the logits shared by every column (``vjp``); columns vectorised by ``vmap``."""
    with _FUNC_LOCK:
        def logits(th: torch.Tensor) -> torch.Tensor:
            return fn.logits(th, x)

        Z, pull = torch.func.vjp(logits, fn.theta)
        Z = Z.detach()

        def one(v: torch.Tensor) -> torch.Tensor:
            u = torch.func.jvp(logits, (fn.theta,), (v,))[1]
            return pull(_apply_out_hessian(Z, u, loss))[0]

        if V.ndim == 1:
            return one(V)
        return torch.func.vmap(one, in_dims=1, out_dims=1, chunk_size=chunk_size)(V)


def ggn_diagonal_sum(fn: ModelFunction, x: torch.Tensor, loss: str, rows: int = 32) -> torch.Tensor:
    """Σ_i diag(J_iᵀ H_out,i J_i) (P,), exact: per-example Jacobians of the logits (``rows`` at a time)."""
    with _FUNC_LOCK:
        def one(th: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
            return fn.logits(th, xi[None])[0]

        jac = torch.func.vmap(torch.func.jacrev(one), in_dims=(None, 0))
        out = torch.zeros(fn.n_params, dtype=fn.dtype, device=fn.device)
        for s in range(0, int(x.shape[0]), rows):
            xs = x[s:s + rows]
            J = jac(fn.theta, xs)  # (r, K, P)
            with torch.no_grad():
                Z = fn.logits(fn.theta, xs)
                out += (J * _apply_out_hessian(Z, J, loss)).sum((0, 1))
        return out


class ModelHessian:
    """The damped curvature of R(θ) = (1/n) Σ ℓ_i + (λ/2)‖θ_reg‖² over the chosen parameters, as an operator.

    ``curvature``: "hessian" (the exact Hessian ∇²R; indefinite away from a minimum) or "ggn" (the
    Gauss-Newton curvature (1/n) Σ J_iᵀ H_out,i J_i + λ·mask, with J_i the Jacobian of the logits and H_out
    the loss Hessian w.r.t. them — sigmoid p(1 − p), softmax diag(p) − ppᵀ: positive semi-definite by
    construction, the exact Hessian without the term Σ_k ∂ℓ/∂z_k ∇²z_k; equal to it for a linear model).

    ``matvec(V)`` = (1/n) Σ_batches C·V + λ·mask·V + damping·V (one pass over the data per call, V (P,) or
    (P, m) with the m columns vectorised, ``col_chunk`` at a time when set: lower it to bound memory, which
    grows as m · batch · activations). ``sample_matvec`` uses a random minibatch (in-memory data) for
    stochastic LiSSA. ``diagonal()``: the Gauss-Newton diagonal (exact, one pass of per-example Jacobians)
    + λ·mask + damping — CG's Jacobi preconditioner for either curvature. ``head_block(name, coords)``:
    the block of a ``nn.Linear`` head whose output is the model's logits, in closed form (one forward pass).
    ``hvp_mode`` (exact Hessian): "rev" (reverse-over-reverse, the gradient linearised once per batch and
    shared by all columns; default, fastest measured on CPU) or "fwd" (forward-over-reverse, jvp(grad));
    both give the same products. ``max_dense_seconds``: a dense build (``dense()``) is timed on its first
    block of columns and refused when the estimate for all P columns is above it (None: no limit).
    """

    def __init__(self, fn: ModelFunction, data: ModelData, loss: str, *, l2: float, damping: float,
                 n: int, col_chunk: int | None = None, batch_size: int = 256, hvp_mode: str = "rev",
                 progress: bool = False, curvature: str = "hessian",
                 max_dense_seconds: float | None = None) -> None:
        if hvp_mode not in ("fwd", "rev"):
            raise ValidationError(f"hvp_mode must be 'fwd' or 'rev', got {hvp_mode!r}")
        self.hvp_mode = hvp_mode
        self.curvature = check_curvature(curvature)
        self.progress = bool(progress)  # bars over the dense columns, Lanczos steps, CG iterations
        self.max_dense_seconds = max_dense_seconds
        self.fn, self.data, self.loss = fn, data, loss
        self.l2, self.damping, self.n = float(l2), float(damping), int(n)
        self.n_params = fn.n_params
        self.device = fn.device
        self.dtype = fn.dtype
        self.col_chunk = col_chunk
        self.batch_size = int(batch_size)
        self.n_matvec = 0
        self._null: torch.Tensor | None = None
        self._diag: torch.Tensor | None = None
        # curvature every direction has at least: damping + λ when every chosen parameter is regularised
        self.spectrum_floor = self.l2 if bool((fn.reg_mask > 0).all()) else 0.0

    def _reg(self, V: torch.Tensor) -> torch.Tensor:
        m = self.fn.reg_mask if V.ndim == 1 else self.fn.reg_mask[:, None]
        return self.l2 * m * V + self.damping * V

    def _product(self, x: torch.Tensor, y: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        xt = self.fn.prepare(x)
        if self.curvature == "ggn":
            return ggn_sum(self.fn, xt, V, self.loss, chunk_size=self.col_chunk)
        return self.fn.hvp_sum(self.fn.theta, xt, y.to(self.device), V, self.loss, chunk_size=self.col_chunk,
                               mode=self.hvp_mode)

    def matvec(self, V: torch.Tensor) -> torch.Tensor:
        V = V.to(self.device, self.dtype)
        out = torch.zeros_like(V)
        for x, y, _ in self.data.batches(self.batch_size):
            out += self._product(x, y, V)
        self.n_matvec += 1 if V.ndim == 1 else V.shape[1]
        return out / self.n + self._reg(V)

    def sample_matvec(self, V: torch.Tensor, generator: torch.Generator, batch_size: int) -> torch.Tensor:
        rows = torch.randint(0, self.n, (min(batch_size, self.n),), generator=generator).numpy()
        x, y, _ = self.data.take(np.sort(rows))
        return self._product(x, y, V.to(self.device, self.dtype)) / len(rows) + self._reg(V)

    def diagonal(self) -> torch.Tensor:
        """diag of the Gauss-Newton curvature (1/n) Σ J_iᵀH_out,iJ_i + λ·mask + damping (P,), exact; the
        data pass is done once and kept. For the exact Hessian too this is the (positive) preconditioner."""
        if self._diag is None:
            d = torch.zeros(self.n_params, dtype=self.dtype, device=self.device)
            for x, _, _ in self.data.batches(self.batch_size):
                d += ggn_diagonal_sum(self.fn, self.fn.prepare(x), self.loss)
            self._diag = d / self.n
        return self._diag + self.l2 * self.fn.reg_mask + self.damping

    def null_directions(self) -> torch.Tensor:
        if self._null is None:
            x, _, _ = next(self.data.batches(min(8, self.batch_size)))
            self._null = self.fn.null_directions(self.fn.theta, self.fn.prepare(x), self.loss)
        return self._null

    def dense(self, block: int = 128) -> torch.Tensor:
        """The P×P matrix (P matvec columns, one data pass per block of ``block`` columns)."""
        H = matvec_columns(self, block)
        return 0.5 * (H + H.T)

    def head_block(self, head: str, coords: np.ndarray) -> torch.Tensor | None:
        """The block H[coords][:, coords] (damped) of a ``nn.Linear`` head module ``head`` in closed form, or
        None when it does not apply (another module, a head whose output is not the model's logits, or
        ``coords`` not exactly the head's parameters). For a linear head the exact Hessian and the
        Gauss-Newton curvature have the same block: (1/n) Σ_i H_out,i ⊗ ũ_iũ_iᵀ (ũ = [input, 1]) + λ·mask +
        damping; one forward pass instead of |coords| Hessian-vector products."""
        module = dict(self.fn.module.named_modules()).get(head)
        if not isinstance(module, torch.nn.Linear):
            return None
        wname, bname = f"{head}.weight", f"{head}.bias"
        has_bias = module.bias is not None and bname in self.fn.names
        if wname not in self.fn.names:
            return None
        K, D = module.out_features, module.in_features
        ws = self.fn.slice_of(wname)
        nat = [ws.start + k * D + d for k in range(K) for d in range(D)]  # (k, d) row-major, then the bias
        index = np.arange(K * D).reshape(K, D)
        if has_bias:
            bs = self.fn.slice_of(bname)
            index = np.concatenate([index, (K * D + np.arange(K))[:, None]], 1)  # natural order (k, d')
            nat += [bs.start + k for k in range(K)]
        nat_arr = np.asarray(nat)
        if sorted(nat_arr.tolist()) != sorted(np.asarray(coords).tolist()):
            return None
        Dp = D + int(has_bias)
        A = torch.zeros(K * Dp, K * Dp, dtype=self.dtype, device=self.device)
        captured: list[tuple[torch.Tensor, torch.Tensor]] = []

        def hook(_m: torch.nn.Module, inputs: tuple[Any, ...], out: Any) -> None:
            captured.append((inputs[0].detach(), out.detach()))

        handle = module.register_forward_hook(hook)
        try:
            for x, _, _ in self.data.batches(self.batch_size):
                captured.clear()
                with torch.no_grad():
                    Z = self.fn.logits(self.fn.theta, self.fn.prepare(x))
                if len(captured) != 1 or captured[0][0].ndim != 2:
                    return None
                U, out = captured[0]
                if out.reshape(Z.shape).shape != Z.shape or not torch.allclose(out.reshape(Z.shape), Z):
                    return None  # something follows the head: its block is not the closed form
                Ut = torch.cat([U, torch.ones(len(U), 1, dtype=U.dtype, device=U.device)], 1) if has_bias else U
                if self.loss == "logistic":
                    p = torch.sigmoid(Z[:, 0])
                    A += (Ut * (p * (1 - p))[:, None]).T @ Ut
                else:
                    p = torch.softmax(Z, 1)
                    for k in range(K):
                        A[k * Dp:(k + 1) * Dp, k * Dp:(k + 1) * Dp] += (Ut * p[:, k:k + 1]).T @ Ut
                    N = (p[:, :, None] * Ut[:, None, :]).reshape(len(Ut), K * Dp)
                    A -= N.T @ N
        finally:
            handle.remove()
        # natural position of every θ coordinate in ``coords``
        where = {int(t): i for i, t in enumerate(index.reshape(-1).tolist())}
        pos = {int(nat_arr[i]): where[i] for i in range(len(nat_arr))}
        order = torch.as_tensor([pos[int(c)] for c in coords], device=self.device)
        Hcc = A[order][:, order] / self.n
        ct = torch.as_tensor(np.asarray(coords), device=self.device)
        Hcc += torch.diag(self.l2 * self.fn.reg_mask[ct] + self.damping)
        return 0.5 * (Hcc + Hcc.T)


# ---------------------------------------------------------------------------- full-model influence
def _no_extra(extra: Sequence[Any]) -> None:
    if list(extra):
        raise ValidationError("extra column sets are computed on a head's features; they do not apply to "
                              "ModelInfluence (pass extra=())")


class _DenseOps:
    """The scoring loop's products for gradient rows held as a (c, P) tensor (the K-FAC curvature provides the
    same for rows in factored form)."""

    def __init__(self, mi: ModelInfluence) -> None:
        self.mi = mi

    def gradients(self, x: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
        fn = self.mi.fn_
        return fn.per_example_grads(fn.theta, x, y, loss)

    @staticmethod
    def cat(parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(parts))

    @staticmethod
    def dense(G: torch.Tensor) -> torch.Tensor:
        return G

    def test_factors(self, Gt: torch.Tensor) -> torch.Tensor:
        return self.mi.solve(Gt.T)  # (P, T): H⁻¹ g_t

    def sum(self, G: torch.Tensor) -> torch.Tensor:
        return G.sum(0)

    def absmax(self, G: torch.Tensor) -> torch.Tensor:
        return G.abs().amax(1)

    def dot(self, G: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return G @ v

    def pairs(self, G: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        return G @ factors

    def quadratic(self, G: torch.Tensor) -> torch.Tensor:
        return self.mi._self_influence(G)


class ModelInfluence:
    """Influence of every training point with respect to all (or some) parameters of a torch model.

    Parameters: ``model`` (any ``nn.Module`` mapping a batch of inputs to logits (c, K) or (c,)/(c, 1));
    ``params`` None (all trainable), a module name, a parameter name, or a list; ``l2`` λ and
    ``regularize`` ("weights": parameters with ≥ 2 dims; "all") of the training objective
    R(θ) = (1/n) Σ ℓ_i + (λ/2)‖θ_reg‖² — use what the model was trained with; ``curvature`` "hessian" (the
    exact Hessian, default), "ggn" (Gauss-Newton: positive semi-definite by construction, what a trained
    network that is not at a minimum needs; see :class:`ModelHessian`) or "kfac" (the Gauss-Newton curvature
    in Kronecker-factored form over Linear and Conv2d layers, :mod:`winnow.core.kfac`: one pass over the data, exact
    inverse, scores in factored form — full-model influence for 10⁵–10⁶ parameters on a CPU; its damping
    "auto" is 0.1 × each layer's mean eigenvalue, its solver the factors' inverse); ``damping`` added to the
    curvature:
    a number ≥ 0, or "auto" (default): chosen from the spectrum by a few Lanczos steps with the rule of
    :func:`winnow.core.solvers.choose_damping` (smallest damped eigenvalue ≥ 1e-3·λ_max), recorded in
    ``damping_`` / ``damping_choice_`` and in the scores' metadata (pass 0 for the undamped curvature);
    ``solver`` "auto" (dense up to ``max_dense`` parameters, else CG; ``CGSolver(preconditioner="diagonal")``
    preconditions by the Gauss-Newton diagonal), "dense", "cg", "lissa", "lanczos"/"arnoldi" or a solver instance;
    ``max_dense_seconds`` the time a dense build may take, estimated from its first block of columns
    before the rest starts (refused above it; None: no limit); ``loss`` "auto" (1 output: sigmoid + BCE,
    K: softmax + CE);
    ``batch_size`` rows per pass; ``hvp_mode`` "rev" (reverse-over-reverse, default) or "fwd"
    (forward-over-reverse) Hessian-vector products; ``device`` where the maths runs (default: the
    model's device; the model is not moved, its parameters are copied); ``dtype`` float64 by default
    (float32 halves memory).

    ``fit(train)`` prepares the Hessian operator (``hessian_``) and the solver (``solver_``); then
    ``score(test)``, ``pairwise(test)``, ``self_influence()``, ``influence_up(data)``, ``write_scores``.

    Stationarity: the scoring pass computes every training point's gradient anyway, so it also measures how
    far θ̂ is from a stationary point of R: ``stationarity_`` (a
    :class:`winnow.core.curvature.Stationarity`: ‖∇R(θ̂)‖∞ with ∇R = (1/n) Σ g_i + λ·mask·θ, relative to
    s = (1/n) Σ ‖g_i‖∞), written to the scores' ``winnow.stationarity`` metadata. A network trained by SGD
    is rarely at an exact optimum, so a figure above the threshold gives a UserWarning, not an error.
    """

    def __init__(self, model: torch.nn.Module, *, params: str | Sequence[str] | None = None, l2: float = 0.0,
                 regularize: str = "weights", damping: float | str = "auto", solver: str | InverseHVPSolver = "auto",
                 loss: str = "auto", batch_size: int = 256, max_dense: int = 20000,
                 device: torch.device | str | None = None, dtype: torch.dtype = DTYPE,
                 col_chunk: int | None = None, hvp_mode: str = "rev", progress: bool = False,
                 curvature: str = "hessian", max_dense_seconds: float | None = MAX_DENSE_SECONDS) -> None:
        if not isinstance(model, torch.nn.Module):
            raise ValidationError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        from ..validation import check_integer, check_number

        l2, damping = check_number(l2, "l2", minimum=0.0), check_model_damping(damping)
        batch_size = check_integer(batch_size, "batch_size", minimum=1)
        self.curvature = check_curvature(curvature, MODEL_CURVATURES)
        if max_dense_seconds is not None:
            max_dense_seconds = check_number(max_dense_seconds, "max_dense_seconds", minimum=0.0)
        self.max_dense_seconds = max_dense_seconds
        self.model = model
        self.params = params
        self.l2 = float(l2)
        self.regularize = regularize
        self.damping = damping
        self.solver = solver
        self.loss = loss
        self.batch_size = int(batch_size)
        self.max_dense = int(max_dense)
        self.device = device
        self.dtype = dtype
        self.col_chunk = col_chunk
        self.hvp_mode = hvp_mode
        self.progress = progress

    # ------------------------------------------------------------------ fit
    def fit(self, train: Any) -> ModelInfluence:
        """Prepare H over ``train`` (see :class:`ModelData` for accepted forms) and fit the solver."""
        names = select_params(self.model, self.params)
        with eval_mode(self.model, "ModelInfluence"):
            self.fn_ = ModelFunction(self.model, names, regularize=self.regularize,
                                     device=self.device if self.device is not None else model_device(self.model),
                                     dtype=self.dtype)
            self.train_ = ModelData(train, batch_size=self.batch_size, argument="train")
            self.n_train_ = len(self.train_)
            if self.n_train_ == 0:
                raise ValidationError("train is empty")
            x0, y0, _ = next(self.train_.batches(2))
            with torch.no_grad():
                K = self.fn_.logits(self.fn_.theta, self.fn_.prepare(x0)).shape[1]
            self.loss_ = resolve_loss(self.loss, K)
            self.n_outputs_ = K
            check_labels_for(K, self.loss_, self.train_.labels(), "train labels", what="the model")
            self.damping_choice_: DampingChoice | None = None
            if self.curvature == "kfac":
                self._fit_kfac(names)
                return self
            self.hessian_ = ModelHessian(self.fn_, self.train_, self.loss_, l2=self.l2, damping=0.0,
                                         n=self.n_train_, col_chunk=self.col_chunk, batch_size=self.batch_size,
                                         hvp_mode=self.hvp_mode, progress=self.progress, curvature=self.curvature,
                                         max_dense_seconds=self.max_dense_seconds)
            if self.damping == "auto":
                self.damping_choice_ = choose_damping(self.hessian_, psd=self.curvature == "ggn",
                                                      floor=self.hessian_.spectrum_floor)
                self.damping_ = self.damping_choice_.damping
            else:
                self.damping_ = float(self.damping)
            self.hessian_.damping = self.damping_
            self.solver_ = make_solver(self.solver, self.fn_.n_params, max_dense=self.max_dense)
            self.solver_.fit(self.hessian_)
        return self

    def _fit_kfac(self, names: list[str]) -> None:
        from .kfac import KfacCurvature, KfacSolver, kfac_layers

        if not (isinstance(self.solver, KfacSolver) or self.solver in ("auto", "kfac")):
            raise ValidationError(f"solver: the kfac curvature is inverted exactly through its Kronecker factors, "
                                  f"so it takes no other solver: leave it at 'auto' (got {self.solver!r}; dense, "
                                  "cg, lissa and lanczos work with the ggn and hessian curvatures)",
                                  parameters=("solver",))
        layers = kfac_layers(self.model, names)
        self.hessian_ = KfacCurvature(self.fn_, layers, l2=self.l2, damping=self.damping,
                                      progress=self.progress).fit(self.train_, self.loss_, self.n_train_)
        self.damping_ = max(lay.damping for lay in layers)
        self.solver_ = KfacSolver().fit(self.hessian_)

    @property
    def n_params(self) -> int:
        self._check()
        return self.fn_.n_params

    @property
    def param_names(self) -> list[str]:
        self._check()
        return list(self.fn_.names)

    def _check(self) -> None:
        if not hasattr(self, "solver_"):
            raise NotFittedError("this ModelInfluence is not fitted: call fit(train) first")

    # ------------------------------------------------------------ gradients
    def _grad_batches(self, data: Any, argument: str) -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
        """Per batch: (the rows' gradients: a (c, P) tensor, or FactoredGradients with curvature="kfac";
        ids (c,), labels (c,))."""
        self._check()
        ops = self._ops()
        src = ModelData(data, batch_size=self.batch_size, argument=argument)
        for x, y, ids in src.batches():
            check_labels_for(self.n_outputs_, self.loss_, y.numpy(), argument, what="the model")
            yield ops.gradients(self.fn_.prepare(x), y.to(self.fn_.device), self.loss_), ids, y.numpy()

    def _ops(self) -> Any:
        """The scoring loop's products on gradient batches (the K-FAC curvature for factored rows)."""
        return self.hessian_ if self.curvature == "kfac" else _DenseOps(self)

    def iter_gradients(self, data: Any, argument: str = "data"
                       ) -> Iterator[tuple[torch.Tensor, np.ndarray, np.ndarray]]:
        """Per batch: (G (c, P) per-example gradients at θ̂, ids (c,), labels (c,))."""
        ops = self._ops()
        for G, ids, y in self._grad_batches(data, argument):
            yield ops.dense(G), ids, y

    def _all_gradients(self, data: Any) -> tuple[Any, np.ndarray, np.ndarray]:
        """All rows' gradients (concatenated batches of :meth:`_grad_batches`) with ids and labels."""
        with eval_mode(self.model, "ModelInfluence", warn=False):
            parts = list(self._grad_batches(data, "data"))
        if not parts:
            raise ValidationError("data is empty")
        return (self._ops().cat([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                np.concatenate([p[2] for p in parts]))

    def gradients(self, data: Any) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """All per-example gradients (n, P) with ids and labels (moderate n only)."""
        G, ids, y = self._all_gradients(data)
        return self._ops().dense(G), ids, y

    def solve(self, B: torch.Tensor) -> torch.Tensor:
        """H⁻¹B with the fitted solver (``solve_info_`` records iterations / residual / rank)."""
        self._check()
        X = self.solver_.solve(B.to(self.fn_.device, self.fn_.dtype))
        self.solve_info_: SolveInfo = self.solver_.info_
        return X

    # ---------------------------------------------------------------- scores
    def iter_scores(self, test: Any, *, self_influence: bool | None = None, pairs: bool = False,
                    extra: Sequence[Any] = ()) -> Iterator[dict[str, np.ndarray]]:
        """Per training batch: ``id``, ``label``, ``influence``, ``loss_change_if_removed``,
        ``self_influence`` (NaN when not computed), and ``pairs`` (c, T) when asked. Extra column sets
        are computed on a head's features and do not apply to a whole model (``extra`` must be empty)."""
        self._check()
        _no_extra(extra)
        do_self = self.solver_.factorised if self_influence is None else bool(self_influence)
        ops = self._ops()
        with eval_mode(self.model, "ModelInfluence", warn=False):
            Gt, test_ids, _ = self._all_gradients(test)
            pair_factors = ops.test_factors(Gt) if pairs else None
            if pairs and self.curvature != "kfac":
                direction = pair_factors.mean(1)  # H⁻¹ḡ = mean of H⁻¹g_t: no second solve
            else:
                direction = self.solve(ops.sum(Gt) / len(Gt))
            self.direction_info_ = self.solve_info_
            n = self.n_train_
            first = True
            gsum = torch.zeros(self.fn_.n_params, dtype=self.fn_.dtype, device=self.fn_.device)
            scale = 0.0
            for G, ids, y in track(self._grad_batches(self.train_, "train"), n, "scoring pass", "rows",
                                   count=lambda b: len(b[1]), enabled=self.progress):
                gsum += ops.sum(G)
                scale += float(ops.absmax(G).sum())
                infl = -ops.dot(G, direction)
                cols: dict[str, np.ndarray] = {"id": ids, "label": y, "influence": infl.cpu().numpy(),
                                               "loss_change_if_removed": (-infl / n).cpu().numpy()}
                if do_self:
                    cols["self_influence"] = ops.quadratic(G).cpu().numpy()
                else:
                    cols["self_influence"] = np.full(len(ids), np.nan)
                if pair_factors is not None:
                    cols["pairs"] = (-ops.pairs(G, pair_factors)).cpu().numpy()
                    if first:
                        cols["test_ids"] = test_ids
                first = False
                yield cols
            self._set_stationarity(gsum, scale)

    def _set_stationarity(self, gradient_sum: torch.Tensor, scale_sum: float) -> None:
        """``stationarity_`` from the scoring pass's sums over all n training rows (Σ g_i (P,), Σ ‖g_i‖∞);
        warns above the threshold."""
        n = self.n_train_
        grad = gradient_sum / n + self.l2 * self.fn_.reg_mask.to(gradient_sum) * self.fn_.theta.to(gradient_sum)
        st = Stationarity(gradient_norm=float(grad.abs().max()), gradient_scale=scale_sum / n)
        self.stationarity_: Stationarity | None = st
        if not st.ok:
            warnings.warn(
                f"the model is not at a stationary point of its training objective: ‖∇R(θ̂)‖∞ = "
                f"{st.gradient_norm:.2e} (relative {st.relative:.1e} > {st.threshold:.0e}, with λ = {self.l2:g} "
                f"on {self.regularize}); influence assumes ∇R(θ̂) = 0, so the scores are approximate. Give the "
                "L2 strength the model was trained with (its weight decay), or polish the model first "
                "(winnow.refine_model)", UserWarning, stacklevel=3)

    def _self_influence(self, G: torch.Tensor) -> torch.Tensor:
        """g_iᵀ H⁻¹ g_i (c,) for dense rows G (c, P): by the solver's whitening when it has one."""
        s = self.solver_
        if hasattr(s, "whiten") and getattr(s, "cholesky_", True) is not None:
            try:
                W = s.whiten(G)
                return (W * W).sum(0)
            except ValidationError:
                pass
        V = self.solve(G.T)
        return (G.T * V).sum(0)

    def score(self, test: Any, *, self_influence: bool | None = None, extra: Sequence[Any] = ()) -> pa.Table:
        """One row per training point with the head path's columns (see module docstring for signs).

        ``self_influence``: None -> computed when the solver is factorised (dense, lanczos), else the
        column is NaN (n more solves with CG/LiSSA; pass True to pay for them)."""
        parts = list(self.iter_scores(test, self_influence=self_influence, extra=extra))
        cols = {k: np.concatenate([p[k] for p in parts]) for k in SCORE_COLUMNS}
        meta = {**SIGN_METADATA, **self.metadata(), **self.stationarity_.metadata()}
        return pa.table(cols).replace_schema_metadata(meta)

    def damping_info(self) -> dict[str, Any]:
        """How the damping was set: ``damping``, ``curvature`` and, when chosen from the spectrum, the
        Lanczos estimates and the rule (:class:`winnow.core.solvers.DampingChoice`)."""
        self._check()
        choice = self.damping_choice_
        if self.curvature == "kfac":
            d: dict[str, Any] = self.hessian_.damping_info()
        else:
            d = choice.as_dict() if choice is not None else {"damping": self.damping_, "chosen": "given"}
        d["curvature"] = self.curvature
        return d

    def describe_damping(self) -> str:
        """One line: the damping and how it was set."""
        self._check()
        if self.curvature == "kfac":
            info = self.hessian_.damping_info()
            layers = ", ".join(f"{k} {v:.3g}" for k, v in info["damping"].items())
            return f"K-FAC damping per layer: {layers} ({info['chosen']}), added to l2 {self.l2:g}"
        choice = self.damping_choice_
        return choice.describe() if choice is not None else f"damping {self.damping_:g} (given)"

    def metadata(self) -> dict[str, str]:
        """The scores' metadata: ``winnow.model_influence`` (a description) and ``winnow.damping`` (JSON)."""
        import json

        return {"winnow.model_influence": self._describe(), "winnow.damping": json.dumps(self.damping_info())}

    def pairwise(self, test: Any) -> np.ndarray:
        """I_loss(z_t, z_p) = −g_tᵀ H⁻¹ g_p, shape (T, n)."""
        parts = list(self.iter_scores(test, self_influence=False, pairs=True))
        return np.concatenate([p["pairs"] for p in parts], axis=0).T

    def self_influence(self) -> np.ndarray:
        """g_pᵀ H⁻¹ g_p for every training point (n,)."""
        self._check()
        ops = self._ops()
        with eval_mode(self.model, "ModelInfluence", warn=False):
            return np.concatenate([ops.quadratic(G).cpu().numpy()
                                   for G, _, _ in self._grad_batches(self.train_, "train")])

    def influence_up(self, X: Any, y: Any = None) -> np.ndarray:
        """I_up(z) = −H⁻¹ g_z for the points of ``X`` (inputs with labels ``y``, or any data form
        :class:`ModelData` accepts), shape (k, P) (paper eq. 19)."""
        G, _, _ = self.gradients(X if y is None else (X, y))
        return (-self.solve(G.T).T).cpu().numpy()

    def parameter_change_if_removed(self, X: Any, y: Any = None) -> np.ndarray:
        """Predicted θ̂₋ₚ − θ̂ ≈ +(1/n) H⁻¹ g_p (k, P) (eq. 20), in ``param_names`` order."""
        return -self.influence_up(X, y) / self.n_train_

    def write_scores(self, test: Any, out: str | Path, *, pairs_out: str | Path | None = None,
                     overwrite: bool = False, self_influence: bool | None = None, extra: Sequence[Any] = (),
                     parts: bool = False, resume: bool = False) -> Path:
        """Stream the scores (and long-format pairs) to Parquet, atomically (see InfluenceAnalyzer).
        Partitioned output (``parts``, ``resume``) is for heads: a whole model is scored in one file."""
        _no_extra(extra)
        if parts or resume:
            raise ValidationError("parts/resume (partitioned output) are available for a head "
                                  "(InfluenceAnalyzer); a whole model's scores are written to one file")
        from ..analyses.influence import SCORE_FIELDS, write_score_stream
        meta = {**SIGN_METADATA, **self.metadata()}
        chunks = self.iter_scores(test, self_influence=self_influence, pairs=pairs_out is not None)

        def measured() -> dict[str, str]:  # after the scoring pass: its ‖∇R(θ̂)‖∞
            st = getattr(self, "stationarity_", None)
            return st.metadata() if st is not None else {}

        return write_score_stream(chunks, out, SCORE_FIELDS, pairs_out=pairs_out, overwrite=overwrite,
                                  metadata=lambda: {**meta, **self.metadata()}, final_metadata=measured)

    def _describe(self) -> str:
        info = getattr(self, "direction_info_", None)
        how = "chosen from the spectrum" if self.damping_choice_ is not None else "given"
        if self.curvature == "kfac":
            how = "largest over layers, " + self.hessian_.damping_info()["chosen"]
        curv = {"ggn": "Gauss-Newton curvature", "kfac": "Kronecker-factored Gauss-Newton curvature (K-FAC)"}.get(
            self.curvature, "exact Hessian")
        s = (f"full-model influence over {self.fn_.n_params} parameters ({len(self.fn_.names)} tensors), {curv}, "
             f"solver {self.solver_!r}, l2 {self.l2:g} on {self.regularize}, damping {self.damping_:.3g} ({how})")
        if info is not None:
            s += (f"; test-direction solve: iterations {info.iterations}, relative residual {info.residual:.3g}, "
                  f"{'converged' if info.converged else 'NOT converged'}")
            if info.rank is not None:
                s += f", rank {info.rank}"
        return s


class RefineResult(float):
    """What :func:`refine_model` did. As a float it is the final ‖∇R‖∞ (so ``refine_model(...) < tol`` reads
    as before); the attributes: ``gradient_norm``; ``loss_before`` / ``loss_after`` (mean loss) and
    ``accuracy_before`` / ``accuracy_after`` on the monitored data (``valid`` when given, else train);
    ``iterations`` (L-BFGS iterations run); ``kept`` ("last" or "best": an earlier iterate was restored);
    ``stopped`` (why it stopped, in words)."""

    gradient_norm: float
    loss_before: float
    loss_after: float
    accuracy_before: float
    accuracy_after: float
    iterations: int
    kept: str
    stopped: str
    monitored: str

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("gradient_norm", "loss_before", "loss_after", "accuracy_before",
                                              "accuracy_after", "iterations", "kept", "stopped", "monitored")}


def refine_model(model: torch.nn.Module, train: Any, *, l2: float = 0.0, regularize: str = "weights",
                 params: str | Sequence[str] | None = None, loss: str = "auto", max_iter: int = 500,
                 tol: float = 1e-8, batch_size: int = 4096, valid: Any = None, check_every: int = 25,
                 max_accuracy_drop: float = 0.005) -> RefineResult:
    """Polish ``model`` in place towards a stationary point of R(θ) = (1/n) Σ ℓ_i + (λ/2)‖θ_reg‖² by
    full-batch L-BFGS (strong Wolfe) over ``params`` (default all), in the model's own dtype and eval mode.

    Influence functions assume θ̂ minimises R; a network stopped early by SGD is not there. Polishing can
    cost accuracy (with λ = 0 it fits the training data harder), so accuracy and mean loss are measured on
    ``valid`` (any :class:`ModelData` form; default: the training data) before and every ``check_every``
    iterations. An iterate whose accuracy is more than ``max_accuracy_drop`` below the start stops the
    polish; the iterate kept is the one with the smallest ‖∇R‖∞ among those within ``max_accuracy_drop``
    of the start (the start itself if none is). When the kept iterate's accuracy is below the start's a
    UserWarning gives both figures. Returns a :class:`RefineResult`: a float (the final ‖∇R‖∞ of the kept
    iterate; float64 models reach ~1e-8 and below) with the figures before and after.
    """
    from ..validation import check_integer, check_number

    check_every = check_integer(check_every, "check_every", minimum=1)
    max_accuracy_drop = check_number(max_accuracy_drop, "max_accuracy_drop", minimum=0.0)
    names = select_params(model, params)
    data = ModelData(train, batch_size=batch_size, argument="train")
    watch = ModelData(valid, batch_size=batch_size, argument="valid") if valid is not None else data
    n = len(data)
    named = dict(model.named_parameters())
    ps = [named[k] for k in names]
    reg = [p for p in ps if regularize == "all" or p.ndim >= 2]
    dev = model_device(model)
    with eval_mode(model, "refine_model"):
        x0, _, _ = next(data.batches(2))
        with torch.no_grad():
            out0 = model(x0.to(dev))
        K = out0.reshape(out0.shape[0], -1).shape[1]
        lname = resolve_loss(loss, K)
        check_labels_for(K, lname, data.labels(), "train labels", what="the model")
        if valid is not None:
            check_labels_for(K, lname, watch.labels(), "valid labels", what="the model")
        from .autodiff import loss_from_logits

        def measure() -> tuple[float, float]:
            total, right, count = 0.0, 0, 0
            with torch.no_grad():
                for x, y, _ in watch.batches():
                    out = model(x.to(dev))
                    out = out.reshape(out.shape[0], -1)
                    yt = y.to(dev)
                    total += float(loss_from_logits(out, yt, lname).sum())
                    pred = (out[:, 0] > 0).long() if lname == "logistic" else out.argmax(1)
                    right += int((pred == yt).sum())
                    count += len(y)
            return total / max(count, 1), right / max(count, 1)

        opt = torch.optim.LBFGS(ps, lr=1, max_iter=min(check_every, max_iter), tolerance_grad=tol,
                                tolerance_change=0, history_size=50, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            total = 0.0
            for x, y, _ in data.batches():
                out = model(x.to(dev))
                out = out.reshape(out.shape[0], -1)
                ls = loss_from_logits(out, y.to(dev), lname).sum() / n
                ls.backward()
                total += float(ls.detach())
            r = 0.5 * l2 * sum((p * p).sum() for p in reg) if reg and l2 > 0 else None
            if r is not None:
                r.backward()
                total += float(r.detach())
            return torch.tensor(total, dtype=torch.float64)  # float64: a float32 loss stalls the line search

        def gradient_norm() -> float:
            closure()
            g = max(float(p.grad.abs().max()) for p in ps if p.grad is not None)
            opt.zero_grad()
            return g

        loss0, acc0 = measure()
        g0 = gradient_norm()
        best = (g0, [p.detach().clone() for p in ps], loss0, acc0)
        done, stopped = 0, f"max_iter = {max_iter} iterations"
        while done < max_iter:
            before = opt.state[opt._params[0]].get("n_iter", 0) if opt._params else 0
            opt.param_groups[0]["max_iter"] = min(check_every, max_iter - done)
            opt.step(closure)
            ran = opt.state[opt._params[0]].get("n_iter", 0) - before
            done += max(ran, 1)
            g = gradient_norm()
            lo, acc = measure()
            if acc >= acc0 - max_accuracy_drop and g < best[0]:
                best = (g, [p.detach().clone() for p in ps], lo, acc)
            if acc < acc0 - max_accuracy_drop:
                stopped = (f"the accuracy fell from {acc0:.4f} to {acc:.4f}, more than max_accuracy_drop = "
                           f"{max_accuracy_drop:g}")
                break
            if g <= tol:
                stopped = f"‖∇R‖∞ = {g:.2e} <= tol {tol:g}"
                break
            if ran <= 1 and g >= best[0]:
                stopped = "L-BFGS made no further progress"
                break
        g_last = g if done else g0
        kept = "last" if best[0] == g_last and done else ("start" if best[0] == g0 else "best")
        with torch.no_grad():
            for p, t in zip(ps, best[1]):
                p.copy_(t)
        opt.zero_grad()
    monitored = "valid" if valid is not None else "train"
    res = RefineResult(best[0])
    res.gradient_norm, res.loss_before, res.loss_after = best[0], loss0, best[2]
    res.accuracy_before, res.accuracy_after, res.iterations = acc0, best[3], done
    res.kept, res.stopped, res.monitored = kept, stopped, monitored
    if best[3] < acc0 or kept != "last":
        warnings.warn(f"refine_model: accuracy on {monitored} {acc0:.4f} before, {best[3]:.4f} after (mean loss "
                      f"{loss0:.4g} -> {best[2]:.4g}); stopped: {stopped}; kept the {kept} iterate, ‖∇R‖∞ = "
                      f"{best[0]:.2e} (from {g0:.2e})", UserWarning, stacklevel=2)
    return res
