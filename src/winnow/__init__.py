"""winnow: exact, streaming influence functions for classifier heads and whole models.

The public API, by layer (see docs/development.md for the module map)::

    from winnow import LogisticHead, SoftmaxHead, InfluenceAnalyzer, ModelInfluence, split_model

Names are imported on first use, so ``import winnow`` (and the ``winnow`` command's ``--help``) does not pay
for torch, pyarrow or matplotlib until they are needed.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

# public name -> module that defines it (relative to this package)
_EXPORTS: dict[str, str] = {
    # errors
    "WinnowError": "errors", "ValidationError": "errors", "NotFittedError": "errors",
    "NotPositiveDefiniteError": "errors", "ConvergenceError": "errors", "OutputExistsError": "errors",
    "ClusterError": "errors", "NotStationaryError": "errors",
    # core maths
    "Head": "core.heads", "LogisticHead": "core.heads", "SoftmaxHead": "core.heads", "load_head": "core.heads",
    "head_from_torch": "core.heads", "AutodiffHead": "core.autodiff",
    "Curvature": "core.curvature", "fit_curvature": "engine.passes",
    "InfluenceAnalyzer": "analyses.influence", "compute_influence": "analyses.influence",
    "InfluenceEstimator": "analyses.influence",
    "ModelInfluence": "core.models", "split_model": "core.models", "extract_features": "core.models",
    "refine_model": "core.models", "Features": "core.models",
    "DenseSolver": "core.solvers", "CGSolver": "core.solvers", "LiSSASolver": "core.solvers",
    "LanczosSolver": "core.solvers",
    # data in and out
    "DataSource": "io.sources", "ArraySource": "io.sources", "NpzSource": "io.sources",
    "ParquetSource": "io.sources", "open_source": "io.sources",
    "CsvSource": "io.tables", "ArrowSource": "io.tables", "DataColumns": "io.columns",
    # the engine
    "Engine": "engine.engine", "ScoreColumns": "engine.columns", "ColumnFunction": "engine.columns",
    "make_backend": "engine.backends", "write_influence_parts": "analyses.influence",
    # analyses
    "RelativeHessian": "analyses.relative", "lep_check": "analyses.relative",
    "two_sample_search": "analyses.relative", "leverage_scores": "analyses.relative",
    "MemorizationAnalyzer": "analyses.memorization", "MemorizationColumns": "analyses.memorization",
    "check_theorems": "analyses.theorems",
    "NewtonColumns": "analyses.fidelity", "compare_removal_methods": "analyses.fidelity",
    "group_effect": "analyses.fidelity",
    "Subsampler": "analyses.subsample", "evaluate_subset": "analyses.subsample",
    # evaluation against retraining
    "leave_one_out": "evaluation.loo", "linear_datamodeling_score": "evaluation.lds",
    "evaluate_mislabel": "evaluation.mislabel", "theorem1_check": "evaluation.theorem1",
    # front-door helpers, report, demo
    "fit_head": "api", "Report": "report", "run_demo": "demo",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'winnow' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
