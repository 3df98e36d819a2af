"""Kronecker-factored Gauss-Newton curvature (K-FAC) over the Linear and Conv2d layers of a model: full-model
influence for networks of 10⁵–10⁶ parameters at the cost of a pass over the data.

Layer l is a ``torch.nn.Linear`` with input a (d_in, a 1 appended when its bias is among the parameters) and
output o = W a. The per-example loss gradient is rank one, ∂ℓ_i/∂W = δ_i a_iᵀ with δ_i = ∂ℓ_i/∂o_i. The
Gauss-Newton block of the layer, (1/n) Σ_i J_iᵀ H_out,i J_i restricted to W, is approximated (Martens & Grosse
2015) by a Kronecker product, layers independent (block diagonal):

    G_l ≈ S_l ⊗ A_l,   A_l = (1/n) Σ_i a_i a_iᵀ,   S_l = (1/n) Σ_i Σ_c s_ic s_icᵀ,

where s_ic backpropagates column c of a square root L_i L_iᵀ = H_out,i of the loss Hessian with respect to the
logits (sigmoid: √(p(1 − p)); softmax: diag(√p) − p√pᵀ) to the layer's output, so Σ_c s_ic s_icᵀ is exactly
J_o,iᵀ H_out,i J_o,i (the Gauss-Newton "true" statistic, not the empirical Fisher). The curvature of
R(θ) = (1/n) Σ ℓ_i + (λ/2)‖θ‖² plus a damping d_l is formed with factored Tikhonov damping (Martens & Grosse 2015,
§6.3), μ_l = λ + d_l:

    C_l = (A_l + π_l √μ_l I) ⊗ (S_l + √μ_l / π_l I),   π_l = √((tr A_l / dim A_l) / (tr S_l / dim S_l)),

so C_l⁻¹ vec(G) = vec(S̃_l⁻¹ G Ã_l⁻¹) (row-major vec, as a weight is flattened) costs two small solves, and a
preconditioned per-example gradient stays rank one:

    I_loss(z_t, z_p) = −g_tᵀ C⁻¹ g_p = −Σ_l (δ_tᵀ S̃_l⁻¹ δ_p)(a_tᵀ Ã_l⁻¹ a_p)      (paper eq. 28 with H ≈ C),

O(d_in + d_out) per pair and layer instead of O(d_in·d_out). Signs as everywhere in winnow: I_loss > 0 means
up-weighting z_p raises the test loss (harmful).

A ``torch.nn.Conv2d`` layer (groups = 1) is factored as KFC does (Grosse & Martens 2016: spatially
uncorrelated derivatives, homogeneous statistics): with a_it the input patch at output position t of L (as
``unfold`` lays it out, a 1 appended for the bias) and s_ict the backpropagated columns at that position,

    A_l = (1/n) Σ_i (1/L) Σ_t a_it a_itᵀ,   S_l = (1/n) Σ_i Σ_c Σ_t s_ict s_ictᵀ

(a Linear layer is the case L = 1). A convolution's per-example gradient Σ_t δ_it a_itᵀ is not rank one: it is
kept as a (d_out, d_in') matrix, and its products are plain matrix products.

Damping: "auto" sets d_l = 0.1 × the mean eigenvalue of S_l ⊗ A_l = 0.1 (tr A_l / dim A_l)(tr S_l / dim S_l)
(the heuristic of Grosse et al. 2023, "Studying large language model generalization with influence functions");
a number sets the same d_l for every layer. λ (``l2``) and d_l act on every coordinate of the layer, its bias
included (the Kronecker form cannot exempt the bias).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ValidationError
from .solvers import InverseHVPSolver, SolveInfo

#: d_l = AUTO_FRACTION × the mean eigenvalue of S_l ⊗ A_l when damping is "auto"
AUTO_FRACTION = 0.1


@dataclass
class KfacLayer:
    """One Linear (or Conv2d: ``conv``, d_in = C_in·k_h·k_w) layer's factors: ``A`` (d_in' × d_in',
    d_in' = d_in + 1 with a bias), ``S`` (d_out × d_out), the damping ``damping`` (d_l), ``pi`` (π_l), the
    shifts of the damped factors ``shift_A`` = π_l√μ_l and ``shift_S`` = √μ_l/π_l, and their inverses
    ``A_inv`` = (A + shift_A·I)⁻¹ / ``S_inv``."""

    module: str
    weight: str
    bias: str | None
    d_in: int
    d_out: int
    conv: dict[str, Any] | None = None  # Conv2d: unfold's kernel_size, dilation, padding, stride
    A: torch.Tensor | None = None
    S: torch.Tensor | None = None
    damping: float = 0.0
    pi: float = 1.0
    shift_A: float = 0.0
    shift_S: float = 0.0
    A_inv: torch.Tensor | None = None
    S_inv: torch.Tensor | None = None

    @property
    def n_params(self) -> int:
        return self.d_out * (self.d_in + (self.bias is not None))


def kfac_layers(model: torch.nn.Module, names: Sequence[str]) -> list[KfacLayer]:
    """The Linear and Conv2d layers owning the parameters ``names`` (in their order), or a ValidationError
    naming ``params``: every chosen parameter must be the weight or bias of a ``torch.nn.Linear`` or a
    ``torch.nn.Conv2d`` (groups = 1, zero padding), a bias only with its weight."""
    modules = dict(model.named_modules())
    usable = [n for n, m in modules.items() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    layers: dict[str, KfacLayer] = {}
    chosen = set(names)
    for name in names:
        owner, _, leaf = name.rpartition(".")
        mod = modules.get(owner)
        if not isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)) or leaf not in ("weight", "bias"):
            kind = type(mod).__name__ if mod is not None else "module"
            raise ValidationError(
                f"params: the kfac curvature works on the parameters of Linear and Conv2d layers, but {name} belongs "
                f"to a {kind}; choose params among those layers ({', '.join(usable) or 'none in this model'}) or "
                "use the ggn curvature", parameters=("params",))
        if leaf == "bias" and f"{owner}.weight" not in chosen:
            raise ValidationError(f"params: {name} is chosen without {owner}.weight; the kfac curvature factors a "
                                  "layer's weight (with or without its bias): add the weight",
                                  parameters=("params",))
        if owner in layers:
            continue
        conv = None
        if isinstance(mod, torch.nn.Conv2d):
            if mod.groups != 1 or mod.padding_mode != "zeros" or isinstance(mod.padding, str):
                raise ValidationError(f"params: the kfac curvature handles Conv2d layers with groups=1 and explicit "
                                      f"zero padding; {owner} has groups {mod.groups}, padding {mod.padding!r} "
                                      f"({mod.padding_mode}): leave it out of params or use the ggn curvature",
                                      parameters=("params",))
            conv = {"kernel_size": mod.kernel_size, "dilation": mod.dilation, "padding": mod.padding,
                    "stride": mod.stride}
            d_in, d_out = mod.in_channels * int(np.prod(mod.kernel_size)), mod.out_channels
        else:
            d_in, d_out = mod.in_features, mod.out_features
        has_bias = mod.bias is not None and f"{owner}.bias" in chosen
        layers[owner] = KfacLayer(owner, f"{owner}.weight", f"{owner}.bias" if has_bias else None, d_in, d_out,
                                  conv)
    return list(layers.values())


def output_hessian_root(Z: torch.Tensor, loss: str) -> torch.Tensor:
    """L (c, K, K) with L_i L_iᵀ = H_out,i, the loss Hessian w.r.t. the logits Z (c, K): sigmoid (K = 1)
    √(p(1 − p)); softmax diag(√p) − p√pᵀ (whose product is diag(p) − ppᵀ since Σ p = 1)."""
    if loss == "logistic":
        p = torch.sigmoid(Z)
        return torch.sqrt(p * (1 - p))[:, :, None]
    p = torch.softmax(Z, 1)
    r = torch.sqrt(p)
    return torch.diag_embed(r) - p[:, :, None] * r[:, None, :]


def loss_logit_gradient(Z: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """∂ℓ_i/∂z_i (c, K): sigmoid σ(z) − y; softmax p − onehot(y)."""
    if loss == "logistic":
        return torch.sigmoid(Z) - y.to(Z.dtype)[:, None]
    g = torch.softmax(Z, 1)
    g[torch.arange(len(y), device=Z.device), y.long()] -= 1
    return g


class _Taps:
    """Forward hooks recording each layer's input (detached) and output (in the graph) for one forward pass."""

    def __init__(self, model: torch.nn.Module, layers: Sequence[KfacLayer]) -> None:
        mods = dict(model.named_modules())
        self.targets = [(lay.module, mods[lay.module]) for lay in layers]
        self.ndim = {lay.module: 4 if lay.conv else 2 for lay in layers}
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}

    def __enter__(self) -> _Taps:
        self.handles = [mod.register_forward_hook(self._hook(name)) for name, mod in self.targets]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()

    def _hook(self, name: str) -> Any:
        def hook(_m: torch.nn.Module, inputs: tuple[Any, ...], out: torch.Tensor) -> None:
            if name in self.outputs:
                raise ValidationError(f"curvature: the layer {name} runs more than once in a forward pass; the kfac "
                                      "curvature needs each layer once (use the ggn curvature)",
                                      parameters=("curvature",))
            if out.ndim != self.ndim[name]:
                want = "(batch, features)" if self.ndim[name] == 2 else "(batch, channels, height, width)"
                raise ValidationError(f"curvature: the layer {name} receives inputs of shape "
                                      f"{tuple(inputs[0].shape)}; the kfac curvature handles {want} inputs there "
                                      "(use the ggn curvature)", parameters=("curvature",))
            self.inputs[name] = inputs[0].detach()
            self.outputs[name] = out
        return hook


@dataclass
class FactoredGradients:
    """Per-example loss gradients of c rows, one entry per layer (in the order of :class:`KfacCurvature`): a
    Linear layer's block of row i is rank one, δ_i a_iᵀ, kept as the pair (a (c, d_in'), δ (c, d_out)); a
    convolution's is kept whole, a (c, d_out, d_in') tensor."""

    blocks: list[tuple[torch.Tensor, torch.Tensor] | torch.Tensor]

    def __len__(self) -> int:
        b = self.blocks[0]
        return int((b[0] if isinstance(b, tuple) else b).shape[0])

    @staticmethod
    def cat(parts: Sequence[FactoredGradients]) -> FactoredGradients:
        out: list[tuple[torch.Tensor, torch.Tensor] | torch.Tensor] = []
        for i, b in enumerate(parts[0].blocks):
            if isinstance(b, tuple):
                out.append((torch.cat([p.blocks[i][0] for p in parts]), torch.cat([p.blocks[i][1] for p in parts])))
            else:
                out.append(torch.cat([p.blocks[i] for p in parts]))
        return FactoredGradients(out)

    def absmax(self) -> torch.Tensor:
        """‖g_i‖∞ per row (c,): the largest entry of any layer's block (rank one: max|δ| · max|a|)."""
        return torch.stack([b[1].abs().amax(1) * b[0].abs().amax(1) if isinstance(b, tuple)
                            else b.abs().flatten(1).amax(1) for b in self.blocks]).amax(0)


class KfacCurvature:
    """The damped K-FAC curvature C over the Linear and Conv2d layers owning ``fn``'s parameters (see the module
    docstring).

    ``fit(data, loss)`` accumulates A_l and S_l in one pass over ``data`` (a :class:`ModelData`): one forward
    and 1 + K backward passes per batch (K logits), memory O(Σ d_in² + d_out²). Then ``solve(B)`` gives C⁻¹B for
    flat parameter vectors B (P,) or (P, m), ``matvec`` C·V, ``batch_gradients(x, y)`` the rows' gradients in
    factored form, and ``precondition`` / ``pairs`` / ``quadratic`` the influence products in that form.
    """

    curvature = "kfac"

    def __init__(self, fn: Any, layers: Sequence[KfacLayer], *, l2: float, damping: float | str = "auto",
                 progress: bool = False) -> None:
        self.fn = fn
        self.layers = list(layers)
        self.l2 = float(l2)
        self.damping = damping
        self.progress = progress
        self.n_params = fn.n_params
        self.dtype = fn.dtype
        self.device = fn.device
        covered = {lay.weight for lay in self.layers} | {lay.bias for lay in self.layers if lay.bias}
        if covered != set(fn.names):  # kfac_layers built the layers from the same names
            raise ValidationError("params: every parameter must belong to one of the K-FAC layers",
                                  parameters=("params",))

    # ------------------------------------------------------------------ statistics
    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """(logits, each layer's inputs — Linear (c, d_in'), Conv2d patches (c, L, d_in') — and outputs)."""
        theta = self.fn.theta.detach().requires_grad_(True)
        with torch.enable_grad(), _Taps(self.fn.module, self.layers) as taps:
            Z = self.fn.logits(theta, x)
        missing = [lay.module for lay in self.layers if lay.module not in taps.outputs]
        if missing:
            raise ValidationError(f"params: the layers {missing} do not run in the model's forward pass",
                                  parameters=("params",))
        A = []
        for lay in self.layers:
            a = taps.inputs[lay.module].to(self.dtype)
            if lay.conv is not None:
                a = torch.nn.functional.unfold(a, **lay.conv).transpose(1, 2)  # (c, L, C_in·k_h·k_w)
            if lay.bias is not None:
                a = torch.cat([a, torch.ones(*a.shape[:-1], 1, dtype=a.dtype, device=a.device)], -1)
            A.append(a)
        return Z, A, [taps.outputs[lay.module] for lay in self.layers]

    @staticmethod
    def _positions(lay: KfacLayer, g: torch.Tensor) -> torch.Tensor:
        """A layer output's gradient per row: Linear (c, d_out); Conv2d (c, L, d_out)."""
        return g if lay.conv is None else g.flatten(2).transpose(1, 2)

    def batch_gradients(self, x: torch.Tensor, y: torch.Tensor, loss: str, *, factors: bool = False
                        ) -> tuple[FactoredGradients, tuple[list[torch.Tensor], list[torch.Tensor]] | None]:
        """(the rows' loss gradients in factored form, and with ``factors`` the sums over the rows that make
        A_l and S_l: Σ_i a_iaᵢᵀ (Conv2d: Σ_i (1/L) Σ_t a_it a_itᵀ) and Σ_i Σ_c (Σ_t) s_ic s_icᵀ)."""
        Z, A, outs = self._forward(x)
        g = loss_logit_gradient(Z.detach(), y.to(Z.device), loss)
        blocks: list[tuple[torch.Tensor, torch.Tensor] | torch.Tensor] = []
        for lay, a, d in zip(self.layers, A, torch.autograd.grad(Z, outs, g, retain_graph=factors)):
            d = self._positions(lay, d.to(self.dtype))
            blocks.append((a, d) if lay.conv is None else torch.einsum("cld,cle->cde", d, a))
        sums = None
        if factors:
            a_sums = [(a.T @ a) if lay.conv is None else torch.einsum("cld,cle->de", a, a) / a.shape[1]
                      for lay, a in zip(self.layers, A)]
            L = output_hessian_root(Z.detach(), loss)
            K = L.shape[2]
            s_sums = [torch.zeros(lay.d_out, lay.d_out, dtype=self.dtype, device=self.device) for lay in self.layers]
            for c in range(K):
                for i, sc in enumerate(torch.autograd.grad(Z, outs, L[:, :, c], retain_graph=c < K - 1)):
                    sc = self._positions(self.layers[i], sc.to(self.dtype)).reshape(-1, self.layers[i].d_out)
                    s_sums[i] += sc.T @ sc
            sums = (a_sums, s_sums)
        return FactoredGradients(blocks), sums

    def gradients(self, x: torch.Tensor, y: torch.Tensor, loss: str) -> FactoredGradients:
        """The rows' loss gradients in factored form (what the scoring loop reads per batch)."""
        return self.batch_gradients(x, y, loss)[0]

    @staticmethod
    def cat(parts: Sequence[FactoredGradients]) -> FactoredGradients:
        return FactoredGradients.cat(parts)

    def fit(self, data: Any, loss: str, n: int) -> KfacCurvature:
        """A_l, S_l over the n rows of ``data`` (a :class:`ModelData`), then the damped inverses."""
        from ..progress import track

        for lay in self.layers:
            dim = lay.d_in + (lay.bias is not None)
            lay.A = torch.zeros(dim, dim, dtype=self.dtype, device=self.device)
            lay.S = torch.zeros(lay.d_out, lay.d_out, dtype=self.dtype, device=self.device)
        for x, y, _ in track(data.batches(), n, "K-FAC factors", "rows", count=lambda b: len(b[2]),
                             enabled=self.progress):
            _, (a_sums, s_sums) = self.batch_gradients(self.fn.prepare(x), y, loss, factors=True)
            for lay, a, sc in zip(self.layers, a_sums, s_sums):
                lay.A += a
                lay.S += sc
        for lay in self.layers:
            lay.A /= n
            lay.S /= n
        self.set_damping(self.damping)
        return self

    def set_damping(self, damping: float | str) -> None:
        """d_l per layer ("auto": 0.1 × mean eigenvalue of S_l ⊗ A_l; a number: that value) and the inverses."""
        self.damping = damping
        for lay in self.layers:
            mean_a = float(torch.diagonal(lay.A).mean())
            mean_s = float(torch.diagonal(lay.S).mean())
            lay.damping = AUTO_FRACTION * mean_a * mean_s if damping == "auto" else float(damping)
            mu = self.l2 + lay.damping
            if not mu > 0:
                raise ValidationError(
                    f"damping: the kfac curvature needs l2 + damping > 0 (layer {lay.module} has l2 {self.l2:g} "
                    f"and damping {lay.damping:g}; its factors are singular when an input is constant): give l2 "
                    "(the weight decay the model was trained with), a damping > 0, or damping 'auto'",
                    parameters=("damping", "l2"))
            lay.pi = float(np.sqrt(mean_a / mean_s)) if mean_a > 0 and mean_s > 0 else 1.0
            root = float(np.sqrt(mu))
            lay.shift_A, lay.shift_S = lay.pi * root, root / lay.pi
            lay.A_inv = _spd_inverse(lay.A, lay.shift_A)
            lay.S_inv = _spd_inverse(lay.S, lay.shift_S)

    # ------------------------------------------------------------------ flat <-> layer blocks
    def _blocks(self, B: torch.Tensor) -> list[torch.Tensor]:
        """(P, m) flat columns -> per layer (d_out, d_in', m), the bias as the last input column."""
        out = []
        m = B.shape[1]
        for lay in self.layers:
            W = B[self.fn.slice_of(lay.weight)].reshape(lay.d_out, lay.d_in, m)
            if lay.bias is not None:
                W = torch.cat([W, B[self.fn.slice_of(lay.bias)].reshape(lay.d_out, 1, m)], 1)
            out.append(W)
        return out

    def _flat(self, blocks: Sequence[torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`_blocks`: per layer (d_out, d_in', m) -> (P, m)."""
        m = blocks[0].shape[2]
        out = torch.empty(self.n_params, m, dtype=blocks[0].dtype, device=blocks[0].device)
        for lay, W in zip(self.layers, blocks):
            out[self.fn.slice_of(lay.weight)] = W[:, :lay.d_in].reshape(-1, m)
            if lay.bias is not None:
                out[self.fn.slice_of(lay.bias)] = W[:, lay.d_in]
        return out

    # ------------------------------------------------------------------ products
    def solve(self, B: torch.Tensor) -> torch.Tensor:
        """C⁻¹B for flat B (P,) or (P, m): per layer S̃⁻¹ G Ã⁻¹."""
        vec = B.ndim == 1
        M = B[:, None] if vec else B
        X = self._flat([torch.einsum("ij,jkm,kl->ilm", lay.S_inv, W, lay.A_inv)
                        for lay, W in zip(self.layers, self._blocks(M.to(self.dtype)))])
        return X[:, 0] if vec else X

    def matvec(self, V: torch.Tensor) -> torch.Tensor:
        """C·V for flat V (P,) or (P, m) (the damped Kronecker factors applied as products)."""
        vec = V.ndim == 1
        M = V[:, None] if vec else V
        out = []
        for lay, W in zip(self.layers, self._blocks(M.to(self.dtype))):
            out.append(torch.einsum("ij,jkm,kl->ilm", _shifted(lay.S, lay.shift_S), W, _shifted(lay.A, lay.shift_A)))
        X = self._flat(out)
        return X[:, 0] if vec else X

    def precondition(self, F: FactoredGradients) -> FactoredGradients:
        """The rows' C⁻¹g in the same form: rank one (a Ã⁻¹, δ S̃⁻¹) per Linear layer (both factors
        symmetric), S̃⁻¹ G Ã⁻¹ per convolution."""
        return FactoredGradients([(b[0] @ lay.A_inv, b[1] @ lay.S_inv) if isinstance(b, tuple)
                                  else torch.einsum("ij,cjk,kl->cil", lay.S_inv, b, lay.A_inv)
                                  for lay, b in zip(self.layers, F.blocks)])

    def test_factors(self, F: FactoredGradients) -> FactoredGradients:
        """What :meth:`pairs` takes for the test rows: their preconditioned gradients."""
        return self.precondition(F)

    def absmax(self, F: FactoredGradients) -> torch.Tensor:
        """‖g_i‖∞ per row (c,)."""
        return F.absmax()

    def pairs(self, F: FactoredGradients, P: FactoredGradients) -> torch.Tensor:
        """g_iᵀ C⁻¹ g_t (c, T) for rows F and preconditioned rows P = precondition(test gradients)."""
        return sum((b[1] @ p[1].T) * (b[0] @ p[0].T) if isinstance(b, tuple) else b.flatten(1) @ p.flatten(1).T
                   for b, p in zip(F.blocks, P.blocks))

    def quadratic(self, F: FactoredGradients) -> torch.Tensor:
        """g_iᵀ C⁻¹ g_i per row (c,): Σ_l (δ S̃⁻¹ δ)(a Ã⁻¹ a) for Linear layers, ⟨G, S̃⁻¹GÃ⁻¹⟩ for convolutions."""
        return sum(((b[1] @ lay.S_inv) * b[1]).sum(1) * ((b[0] @ lay.A_inv) * b[0]).sum(1) if isinstance(b, tuple)
                   else (b * torch.einsum("ij,cjk,kl->cil", lay.S_inv, b, lay.A_inv)).flatten(1).sum(1)
                   for lay, b in zip(self.layers, F.blocks))

    def dot(self, F: FactoredGradients, v: torch.Tensor) -> torch.Tensor:
        """g_iᵀ v per row (c,) for a flat vector v (P,)."""
        return sum(torch.einsum("cj,jk,ck->c", b[1], W[:, :, 0], b[0]) if isinstance(b, tuple)
                   else torch.einsum("cjk,jk->c", b, W[:, :, 0])
                   for b, W in zip(F.blocks, self._blocks(v[:, None].to(self.dtype))))

    def _matrices(self, F: FactoredGradients) -> list[torch.Tensor]:
        """Each layer's per-row blocks as (d_out, d_in', c) matrices."""
        return [torch.einsum("cj,ck->jkc", b[1], b[0]) if isinstance(b, tuple) else b.permute(1, 2, 0)
                for b in F.blocks]

    def sum(self, F: FactoredGradients) -> torch.Tensor:
        """Σ_i g_i as a flat vector (P,)."""
        return self._flat([(b[1].T @ b[0])[:, :, None] if isinstance(b, tuple) else b.sum(0)[:, :, None]
                           for b in F.blocks])[:, 0]

    def dense(self, F: FactoredGradients) -> torch.Tensor:
        """The rows' gradients as a flat (c, P) matrix."""
        return self._flat(self._matrices(F)).T

    def damping_info(self) -> dict[str, Any]:
        """Per layer: d_l, π_l, the factors' sizes; and the rule."""
        return {"damping": {lay.module: lay.damping for lay in self.layers},
                "chosen": (f"{AUTO_FRACTION:g} x the mean eigenvalue of each layer's Kronecker factors"
                           if self.damping == "auto" else "given"),
                "pi": {lay.module: lay.pi for lay in self.layers},
                "factors": {lay.module: [lay.d_out, lay.d_in + (lay.bias is not None)] for lay in self.layers}}


def _shifted(M: torch.Tensor, shift: float) -> torch.Tensor:
    return M + shift * torch.eye(M.shape[0], dtype=M.dtype, device=M.device)


def _spd_inverse(M: torch.Tensor, shift: float) -> torch.Tensor:
    """(M + shift·I)⁻¹ for a symmetric positive semi-definite M and shift > 0 (Cholesky)."""
    return torch.cholesky_inverse(torch.linalg.cholesky(_shifted(M, shift)))


def _spd_power(M: torch.Tensor, shift: float, power: float) -> torch.Tensor:
    """(M + shift·I)^power for a symmetric positive semi-definite M and shift > 0 (eigendecomposition)."""
    w, Q = torch.linalg.eigh(_shifted(M, shift))
    return (Q * w.clamp_min(shift) ** power) @ Q.T


class KfacPreconditioner:
    """M = the damped K-FAC curvature C as a preconditioner for CG on a model's exact curvature: ``half_inv``
    applies C^{-1/2} = ⊕_l S̃_l^{-1/2} ⊗ Ã_l^{-1/2}, ``half`` C^{1/2}, to flat (P, m) columns."""

    def __init__(self, curvature: KfacCurvature) -> None:
        self.curvature = curvature
        self.powers = {p: [(_spd_power(lay.S, lay.shift_S, p), _spd_power(lay.A, lay.shift_A, p))
                           for lay in curvature.layers] for p in (-0.5, 0.5)}

    def _apply(self, V: torch.Tensor, power: float) -> torch.Tensor:
        c = self.curvature
        return c._flat([torch.einsum("ij,jkm,kl->ilm", S, W, A)
                        for (S, A), W in zip(self.powers[power], c._blocks(V.to(c.dtype)))])

    def half_inv(self, V: torch.Tensor) -> torch.Tensor:
        return self._apply(V, -0.5)

    def half(self, V: torch.Tensor) -> torch.Tensor:
        return self._apply(V, 0.5)


def kfac_preconditioner(op: Any) -> KfacPreconditioner:
    """The K-FAC preconditioner of a model's curvature operator (:class:`winnow.core.models.ModelHessian`): its
    factors over the same data, with the operator's l2 and damping (damping "auto" when both are 0)."""
    if not all(hasattr(op, a) for a in ("fn", "data", "loss", "l2", "damping", "n")):
        raise ValidationError("preconditioner: 'kfac' needs a model's curvature (ModelInfluence or ModelHessian); "
                              "use 'diagonal' or a (P,) tensor for another operator", parameters=("preconditioner",))
    layers = kfac_layers(op.fn.module, op.fn.names)
    damping: float | str = op.damping if op.l2 + op.damping > 0 else "auto"
    curvature = KfacCurvature(op.fn, layers, l2=op.l2, damping=damping).fit(op.data, op.loss, op.n)
    return KfacPreconditioner(curvature)


class KfacSolver(InverseHVPSolver):
    """C⁻¹B exactly for the K-FAC curvature (:class:`KfacCurvature`): two small inverses per layer, no
    iterations; ``factorised`` (self-influence of every point costs one product each)."""

    name = "kfac"

    @property
    def factorised(self) -> bool:
        return True

    def _fit(self, op: Any) -> None:
        if not isinstance(op, KfacCurvature):
            raise ValidationError("solver: the K-FAC solver inverts K-FAC factors; use it with the kfac curvature",
                                  parameters=("solver",))

    def _solve(self, B: torch.Tensor) -> torch.Tensor:
        X = self.op_.solve(B)
        self.info_ = SolveInfo("kfac", iterations=0, residual=0.0, converged=True,
                               extra={"exact": "inverse of the damped Kronecker factors"})
        return X
