"""The front door: ``from winnow import ...`` gives the public API, and the old import paths still work."""

import importlib
import subprocess
import sys

import pytest

import winnow


def test_every_public_name_imports_and_is_listed():
    assert len(winnow.__all__) == len(set(winnow.__all__))
    for name in winnow.__all__:
        assert getattr(winnow, name) is not None, name
    from winnow import InfluenceAnalyzer, LogisticHead, ModelInfluence, SoftmaxHead, split_model  # noqa: F401
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        winnow.nope  # noqa: B018


@pytest.mark.parametrize("old, new", [
    ("heads", "core.heads"), ("curvature", "core.curvature"), ("influence", "core.influence"),
    ("autodiff", "core.autodiff"), ("solvers", "core.solvers"), ("models", "core.models"),
    ("data", "io.sources"), ("outputs", "io.outputs"), ("partitions", "io.parts"),
    ("parallel", "engine.backends"), ("relative", "analyses.relative"),
    ("memorization", "analyses.memorization"), ("theorems", "analyses.theorems"),
    ("fidelity", "analyses.fidelity"), ("subsample", "analyses.subsample"), ("loo", "evaluation.loo"),
    ("lds", "evaluation.lds"), ("mislabel", "evaluation.mislabel"), ("diagnostics", "evaluation.theorem1"),
    ("demo_model", "demo.model"),
])
def test_old_import_paths_are_the_new_modules(old, new):
    assert importlib.import_module(f"winnow.{old}") is importlib.import_module(f"winnow.{new}")


def test_importing_winnow_loads_no_heavy_dependency():
    code = ("import sys, winnow; heavy = [m for m in ('torch', 'pyarrow', 'matplotlib', 'dask') if m in sys.modules];"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_not_fitted_is_a_clear_error():
    from winnow import InfluenceAnalyzer, LogisticHead, NotFittedError

    with pytest.raises(NotFittedError, match="not fitted"):
        LogisticHead().n_params  # noqa: B018
    import numpy as np

    an = InfluenceAnalyzer(LogisticHead.from_weights(np.ones(2), 0.0))
    with pytest.raises(NotFittedError, match="call fit"):
        an.self_influence()


def test_cli_version_matches_the_package(capsys):
    import importlib.metadata

    from winnow.cli import main

    main(["--version"])
    out = capsys.readouterr().out.strip()
    assert out == f"winnow {winnow.__version__}"
    assert winnow.__version__ == importlib.metadata.version("winnow")
