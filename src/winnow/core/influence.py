"""Influence of training points on test losses, streamed chunk by chunk (DESIGN.md conventions).

Signs (paper eqs. 19, 20, 27, 28, 35, 36), with g = ∇θℓ at θ̂ and H the head Hessian (incl. λ):

- ``influence``  I_loss(z_t, z_p) = −g_tᵀ H⁻¹ g_p. Positive: up-weighting z_p *raises* the test loss, so
  z_p is harmful to z_t; negative: z_p helps. On a test set, g_t is the mean test gradient.
- ``loss_change_if_removed`` = −influence / n = +(1/n) g_tᵀ H⁻¹ g_p: predicted change of the (mean)
  test loss when z_p is left out (eq. 28). Positive: removing z_p hurts.
- ``self_influence`` = g_pᵀ H⁻¹ g_p ≥ 0.
- I_up(z_p) = −H⁻¹ g_p (eq. 19) and the predicted parameter change on removal (1/n) H⁻¹ g_p (eq. 20).

peers (pyDVL, Captum's TracIn, TRAK) often report the opposite sign; the column names above say which way
ours point.
"""

from __future__ import annotations

import numpy as np
import torch

from .._moved import moved_names
from .curvature import Curvature
from .heads import Head

SCORE_COLUMNS = ("id", "label", "influence", "loss_change_if_removed", "self_influence")

SIGN_METADATA = {
    "winnow.influence": "I_loss = -g_test^T H^-1 g_train averaged over the test set; > 0 means the training "
                        "point raises the test loss (harmful), < 0 means it lowers it (helpful)",
    "winnow.loss_change_if_removed": "= -influence / n: predicted change of mean test loss if the point is "
                                     "removed (paper eq. 28)",
    "winnow.self_influence": "g^T H^-1 g >= 0",
}


def score_chunk(head: Head, X: np.ndarray, y: np.ndarray, *, direction: torch.Tensor,
                curvature: Curvature | None, n_train: int,
                pair_factors: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """Scores for one chunk of training points (pure; the head's own ``score_chunk``).

    ``direction`` s = H⁻¹ḡ_t (P,); ``curvature`` for self-influence (None skips it); ``pair_factors``
    H⁻¹G_tᵀ (P, T) for the pairwise matrix. Returns numpy columns ``influence`` (c,),
    ``loss_change_if_removed`` (c,), ``self_influence`` (c,) and ``pairs`` (c, T) when asked.
    """
    return head.score_chunk(X, y, direction=direction, curvature=curvature, n_train=n_train,
                            pair_factors=pair_factors)


# the passes live in the engine, the analyzer and its outputs in the analyses layer
__getattr__ = moved_names(__name__, __package__, {
    "mean_test_gradient": "..engine.passes", "test_gradients": "..engine.passes",
    "ScoreColumns": "..engine.columns",
    "InfluenceAnalyzer": "..analyses.influence", "compute_influence": "..analyses.influence",
    "write_score_stream": "..analyses.influence", "SCORE_FIELDS": "..analyses.influence",
    "PAIR_SCHEMA": "..analyses.influence", "PAIR_METADATA": "..analyses.influence",
})
