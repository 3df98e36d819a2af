"""PyTorch model commands: extract-features, model-influence, check-head (Theorem 1)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from . import app
from .options import ModelFactory, Overwrite, Quiet, TrustModelFile, import_function, polish_head, say

ModelArg = Annotated[Path, typer.Argument(help="The model's weights, saved with torch.save(model.state_dict(), "
                                               "path); --factory builds the model they go into. A whole "
                                               "pickled model only with --trust-model-file.")]
HeadName = Annotated[str, typer.Option("--head", help="Name of the head module inside the model, as in "
                                       "model.named_modules() (e.g. fc, classifier.3).")]
ModelData = Annotated[Path, typer.Option("--train", help="Model inputs: .npz with arrays X (n, ...), y (n,) and "
                                         "optional id.")]
TestData = Annotated[Path, typer.Option("--test", help="Test inputs, same format as --train.")]
# --l2 means two things: for a head that winnow polishes (extract-features --head-out) it is the λ of the
# head's objective, a choice (default 1e-3, as fit-head); for a whole network it describes how the network
# was trained (its weight decay), default 0: the torch optimisers' default is no weight decay
L2 = Annotated[float, typer.Option("--l2", min=0.0, help="λ of the whole model's training objective "
                                   "(1/n)Σℓ + (λ/2)‖θ_reg‖²: the weight decay the network was trained with "
                                   "(default 0, no weight decay, the torch optimisers' default).")]
HeadL2 = Annotated[float, typer.Option("--l2", min=0.0, help="λ of the saved head's objective (1/n)Σℓ + "
                                       "(λ/2)‖W‖² (as `winnow fit-head --l2`; default 1e-3); --refit polishes "
                                       "the head to its optimum with this λ.")]
RefitHead = Annotated[bool, typer.Option(
    "--refit/--no-refit", help="Polish the --head-out head to the optimum of its objective on the extracted "
                               "features (Newton from the network's weights, same --l2; default). With "
                               "--no-refit the raw weights are saved as they are, which the influence commands "
                               "refuse unless --allow-nonstationary (or --refit there).")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Rows per forward/backward pass.")]
Device = Annotated[str | None, typer.Option("--device", help="Where to run (cpu, cuda, cuda:1...); default: "
                                            "where the model's parameters are.")]


class Regularize(str, Enum):
    weights = "weights"
    all = "all"


class SolverName(str, Enum):
    auto = "auto"
    dense = "dense"
    cg = "cg"
    lissa = "lissa"
    lanczos = "lanczos"


class CurvatureName(str, Enum):
    hessian = "hessian"
    ggn = "ggn"


_CURVATURE_HELP = ("hessian: the exact Hessian (indefinite away from a minimum); ggn: the Gauss-Newton curvature "
                   "JᵀH_out J + λ, positive semi-definite by construction, for a trained network that is not at a "
                   "minimum")
CurvatureOpt = Annotated[CurvatureName, typer.Option("--curvature", help=_CURVATURE_HELP + ".")]


class ModelCurvatureName(str, Enum):
    hessian = "hessian"
    ggn = "ggn"
    kfac = "kfac"


ModelCurvatureOpt = Annotated[ModelCurvatureName, typer.Option(
    "--curvature", help=_CURVATURE_HELP + "; kfac: the Gauss-Newton curvature in Kronecker-factored form over the "
                        "Linear and Conv2d layers (one pass over the data, inverted exactly; seconds for 10⁵ "
                        "parameters; damping auto = 0.1 x each layer's mean eigenvalue).")]
ModelDamping = Annotated[str, typer.Option(
    "--damping", help="Added to the curvature's diagonal: a number >= 0, or auto (default): chosen from the "
                      "spectrum by a few Lanczos steps (smallest damped eigenvalue >= 1e-3·λ_max), and printed.")]
MaxDenseSeconds = Annotated[float, typer.Option(
    "--max-dense-seconds", min=0.0, help="Refuse a dense Hessian build whose time, estimated from its first block "
                                         "of columns, is above this many seconds.")]
ParamsOpt = Annotated[str | None, typer.Option("--params", help="Comma-separated module or parameter names to "
                                               "differentiate (default: all parameters).")]


def _damping(value: str) -> float | str:
    from ..core.models import check_model_damping

    return check_model_damping(value)


def _params(value: str | None) -> list[str] | None:
    return [p.strip() for p in value.split(",") if p.strip()] if value else None


RegOpt = Annotated[Regularize, typer.Option("--regularize", help="Which parameters the L2 applies to: weights "
                                            "(tensors with >= 2 dims, not biases) or all.")]


def _import_factory(spec: str) -> Any:
    """The callable named by ``module:name`` (``name`` may be dotted: ``module:Class.build``)."""
    return import_function(spec, "factory", example="mypkg.nets:make_cnn", classes=True)


def _state_dict(obj: Any) -> dict[str, Any] | None:
    """``obj`` as a state_dict: a dict of tensors, or a checkpoint holding one under ``state_dict`` /
    ``model_state_dict`` / ``model``; None if it is neither."""
    import torch

    if isinstance(obj, dict):
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return obj
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, dict) and _state_dict(inner) is not None:
                return inner
    return None


def load_model(path: Path, device: str | None = None, *, factory: str | None = None,
               trust_model_file: bool = False) -> Any:
    """The model to analyse, in eval mode on ``device``.

    Safe route (the default): ``path`` holds weights only (``torch.save(model.state_dict(), path)``, or a
    checkpoint dict holding one), read with ``torch.load(weights_only=True)``, which runs no code from the
    file, and ``factory`` (``module:function`` or ``module:Class``, called with no arguments) builds the
    model they are loaded into (in the weights' floating dtype). A whole pickled model
    (``torch.save(model, path)``) is read only with ``trust_model_file=True``: unpickling it can run any code
    the file holds.
    """
    import pickle

    import torch

    from ..validation import fail

    if not path.exists():
        raise fail(f"model: {path} does not exist", "model")
    build = _import_factory(factory) if factory is not None else None
    where = device or "cpu"
    try:
        torch.device(where)
    except (RuntimeError, ValueError):
        raise fail(f"device {device!r} is not a device torch knows; use cpu, cuda, cuda:1, mps...",
                   "device") from None
    if trust_model_file:
        try:
            obj = torch.load(path, map_location=where, weights_only=False)
        except Exception as e:  # unpickling errors come in many types
            raise fail(f"model: cannot load {path} with torch.load ({type(e).__name__}: {e}); keep the model's "
                       f"class importable", "model") from None
    else:
        try:
            obj = torch.load(path, map_location=where, weights_only=True)
        except pickle.UnpicklingError:
            raise fail(f"model: {path} is a whole pickled model, which can run code when it is loaded; save "
                       f"its weights with torch.save(model.state_dict(), path) and pass factory "
                       f"module:function that builds the model, or pass trust_model_file=True if you trust "
                       f"this file", "model", "factory", "trust_model_file=True") from None
        except Exception as e:
            raise fail(f"model: cannot load {path} with torch.load ({type(e).__name__}: {e})", "model") from None
    if isinstance(obj, torch.nn.Module):
        if build is not None:
            raise fail(f"model: {path} holds a whole model; factory is for a file of weights (a state_dict)",
                       "model", "factory")
        return obj.eval()  # a model read from a file is analysed as it predicts
    state = _state_dict(obj)
    if state is None:
        raise fail(f"model: {path} holds a {type(obj).__name__}, expected a state_dict (a dict of tensors) "
                   f"or a torch.nn.Module", "model")
    if build is None:
        raise fail(f"model: {path} holds weights only (a state_dict); pass factory module:function that "
                   f"builds the model to load them into", "model", "factory")
    try:
        model = build()
    except Exception as e:
        raise fail(f"factory {factory}: calling it failed ({type(e).__name__}: {e})", "factory") from None
    if not isinstance(model, torch.nn.Module):
        raise fail(f"factory {factory} returned a {type(model).__name__}, expected a torch.nn.Module",
                   "factory")
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(dtypes) == 1:  # the model computes in its weights' precision (float64 weights stay exact)
        model = model.to(dtypes.pop())
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # tensors of other shapes: another architecture
        shapes = "; ".join(ln.strip() for ln in str(e).splitlines()[1:3])
        raise fail(f"model: the weights in {path} do not fit the model factory {factory} builds: {shapes}",
                   "model", "factory") from None
    if result.missing_keys or result.unexpected_keys:
        raise fail(f"model: the weights in {path} do not fit the model factory {factory} builds: missing "
                   f"{list(result.missing_keys)[:5]}, unexpected {list(result.unexpected_keys)[:5]}",
                   "model", "factory")
    return model.to(where).eval()


def check_model_runs(model: Any, data: Path, argument: str) -> None:
    """Run ``model`` on the first row of the inputs in ``data`` (an .npz given as ``argument``), so that inputs
    of a shape the model cannot take are refused in one line before anything is computed or written."""
    import torch

    from ..core.models import ModelData
    from ..validation import fail

    first_row = next(ModelData(data, batch_size=1, argument=argument).batches(), None)
    if first_row is None:  # no rows: the computation says so
        return
    x = first_row[0]
    p = next((q for q in model.parameters() if q.is_floating_point()), None)
    if p is not None and x.is_floating_point():
        x = x.to(dtype=p.dtype, device=p.device)
    try:
        with torch.no_grad():
            model(x)
    except Exception as e:  # shape errors come as RuntimeError, ValueError, IndexError... from any layer
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise fail(f"{argument}: the model cannot run on the inputs in {data} ({first}); X must hold rows of "
                   f"the shape the model takes, (n, ...) with one input per row", argument) from None


@app.command("extract-features")
def extract_features_cmd(
    model: ModelArg,
    data: Annotated[Path, typer.Argument(help="Inputs: .npz with arrays X (n, ...), y (n,) and optional id.")],
    head: HeadName,
    out: Annotated[Path, typer.Option("--out", help="Features: .parquet (id, label, features list column) or "
                                      ".npz (X, y, id).")],
    head_out: Annotated[Path | None, typer.Option("--head-out", help="Also write the head's weights for `winnow "
                                                  "influence --head` (nn.Linear heads only, .npz).")] = None,
    l2: HeadL2 = 1e-3, refit: RefitHead = True, batch_size: BatchSize = 256, device: Device = None,
    factory: ModelFactory = None, trust_model_file: TrustModelFile = False,
    overwrite: Overwrite = False, quiet: Quiet = False,
) -> None:
    """Run MODEL over DATA and save the input of its head module (the featurizer's output) for every row.
    With --head-out also save the head, polished to the optimum of its objective on these features (its
    weights come from a network trained by SGD, which the influence formulas cannot use as they are)."""
    from ..core.models import check_head_labels, extract_features, find_module, head_from_module
    from ..errors import ValidationError
    from ..io.outputs import check_output_path

    check_output_path(out, overwrite, argument="out", formats="features")
    if head_out is not None:
        check_output_path(head_out, overwrite, argument="head_out")
    m = load_model(model, device, factory=factory, trust_model_file=trust_model_file)
    check_model_runs(m, data, "data")
    name, mod = find_module(m, head)
    h = None
    if head_out is not None:
        import torch

        if not isinstance(mod, torch.nn.Linear):
            raise ValidationError(f"--head-out: head {name!r} is a {type(mod).__name__}, not an nn.Linear; only "
                                  f"linear heads are saved as winnow head files")
        h = head_from_module(mod, l2=l2)
        from ..core.models import ModelData

        # before the features are written: a head that does not fit the labels leaves no output behind
        check_head_labels(h, ModelData(data, argument="data").labels(), "data", name)
    feats = extract_features(m, name, data, out=out, batch_size=batch_size, overwrite=overwrite,
                             progress=not quiet)
    if h is not None:
        h = _polish_saved_head(h, feats.path, refit, quiet)
        h.save(head_out, overwrite=overwrite)
        say(quiet, f"wrote {head_out} ({h!r})")
    import numpy as np

    say(quiet, f"wrote {feats.path}: {feats.n} rows, D = {int(np.prod(feats.shape))}")


def _polish_saved_head(head: Any, features: Path, refit: bool, quiet: bool) -> Any:
    """The head to save: polished to its optimum on ``features`` (said on stderr), or with ``refit`` False the
    raw head, whose ‖∇R(θ̂)‖∞ is measured and said (a ``warning:`` line above the threshold)."""
    if refit:
        return polish_head(head, features, True, quiet)
    from ..engine.passes import stationarity

    st = stationarity(head, features)
    if st.ok:
        say(quiet, f"the head's raw weights: {st.describe()}, at the optimum")
    else:
        typer.secho(f"warning: the head's raw weights are not at the optimum of its objective: {st.describe()} "
                    f"> {st.threshold:.0e}; the influence commands refuse this head unless --allow-nonstationary "
                    f"(or --refit there)", fg="yellow", err=True)
    return head


@app.command("model-influence")
def model_influence_cmd(
    model: ModelArg, train: ModelData, test: TestData,
    out: Annotated[Path, typer.Option("--out", help="Scores, one row per training point (.parquet or .csv): id, label, "
                                      "influence (>0 harmful), loss_change_if_removed, self_influence.")],
    params: ParamsOpt = None,
    solver: Annotated[SolverName, typer.Option("--solver", help="Inverse-HVP solver: dense (P <= --max-dense), "
                                               "cg (preconditioned by the curvature's diagonal), lissa, lanczos "
                                               "(low rank + damping); auto = dense if small enough else cg.")
                      ] = SolverName.auto,
    l2: L2 = 0.0, regularize: RegOpt = Regularize.weights, damping: ModelDamping = "auto",
    curvature: ModelCurvatureOpt = ModelCurvatureName.hessian, max_dense_seconds: MaxDenseSeconds = 600.0,
    pairs: Annotated[Path | None, typer.Option("--pairs", help="Also write pairwise influence (test_id, "
                                               "train_id, influence).")] = None,
    max_dense: Annotated[int, typer.Option("--max-dense", min=1, help="Largest P for the dense solver.")] = 20000,
    batch_size: BatchSize = 256, device: Device = None, factory: ModelFactory = None,
    trust_model_file: TrustModelFile = False, overwrite: Overwrite = False, quiet: Quiet = False,
) -> None:
    """Influence of every training point with respect to all (or --params) parameters of MODEL."""
    from ..core.models import ModelInfluence
    from ..io.outputs import check_output_path

    check_output_path(out, overwrite, argument="out", formats="table")
    if pairs is not None:
        check_output_path(pairs, overwrite, argument="pairs_out")
    m = load_model(model, device, factory=factory, trust_model_file=trust_model_file)
    check_model_runs(m, train, "train")
    check_model_runs(m, test, "test")
    mi = ModelInfluence(m, params=_params(params), l2=l2, regularize=regularize.value, damping=_damping(damping),
                        solver=solver.value, max_dense=max_dense, batch_size=batch_size, device=device,
                        progress=not quiet, curvature=curvature.value, max_dense_seconds=max_dense_seconds).fit(train)
    say(quiet, mi.describe_damping())
    mi.write_scores(test, out, pairs_out=pairs, overwrite=overwrite)
    info = mi.direction_info_
    say(quiet, f"{mi.n_params} parameters, {curvature.value} curvature, solver {mi.solver_!r}: iterations "
               f"{info.iterations}, relative residual {info.residual:.3g}"
               + (f", rank {info.rank}" if info.rank is not None else "")
               + ("" if info.converged else " (did not meet its tolerance: see the warning)"))
    say(quiet, f"stationarity of the model: {mi.stationarity_.describe()}, threshold {mi.stationarity_.threshold:.0e}")
    say(quiet, f"wrote {out}" + (f" and {pairs}" if pairs else ""))


@app.command("check-head")
def check_head_cmd(
    model: ModelArg, head: HeadName, train: ModelData, test: TestData,
    l2: L2 = 0.0, regularize: RegOpt = Regularize.weights, damping: ModelDamping = "auto",
    curvature: CurvatureOpt = CurvatureName.hessian, params: ParamsOpt = None,
    max_dense_seconds: MaxDenseSeconds = 600.0,
    pairs_train: Annotated[int, typer.Option("--pairs-train", min=2, help="Training points sampled.")] = 200,
    pairs_test: Annotated[int, typer.Option("--pairs-test", min=1, help="Test points sampled.")] = 20,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the sampled points.")] = 0,
    max_dense: Annotated[int, typer.Option("--max-dense", min=1, help="Above this many parameters the full "
                                           "Hessian is approximated by Lanczos.")] = 6000,
    rank: Annotated[int, typer.Option("--rank", min=1, help="Lanczos rank for big models.")] = 100,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the numbers to this JSON file.")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write an HTML report with the figures.")] = None,
    batch_size: BatchSize = 256, device: Device = None, factory: ModelFactory = None,
    trust_model_file: TrustModelFile = False, overwrite: Overwrite = False, quiet: Quiet = False,
) -> None:
    """Theorem 1 check: is influence on the head's parameters a good stand-in for influence on all of them?"""
    from ..evaluation.theorem1 import theorem1_check
    from ..io.outputs import check_output_path, write_json
    from ..report import theorem1_section as report_section

    for p, arg in ((json_out, "json_out"), (report, "report")):
        if p is not None:
            check_output_path(p, overwrite, argument=arg)
    m = load_model(model, device, factory=factory, trust_model_file=trust_model_file)
    check_model_runs(m, train, "train")
    check_model_runs(m, test, "test")
    res = theorem1_check(m, head, train, test, l2=l2, regularize=regularize.value, damping=_damping(damping),
                         n_train=pairs_train, n_test=pairs_test, seed=seed, max_dense=max_dense, rank=rank,
                         batch_size=batch_size, device=device, progress=not quiet, params=_params(params),
                         curvature=curvature.value, max_dense_seconds=max_dense_seconds)
    typer.echo(f"head {res.head_name!r}: {res.n_head_params} of {res.n_params} parameters ({res.method}, "
               f"{res.curvature} curvature, {res.seconds:.1f} s)")
    typer.echo(f"Pearson {res.pearson:.4f}, Spearman {res.spearman:.4f}, sign agreement {res.sign_agreement:.3f}, "
               f"I_head/I median {res.ratio_quantiles.get('q50', float('nan')):.3g}")
    if res.stationarity is not None:
        typer.echo(f"stationarity of the model: ‖∇R(θ̂)‖∞ = {res.gradient_norm:.2e} (relative "
                   f"{res.stationarity['relative']:.1e}, threshold {res.stationarity['threshold']:.0e})")
    typer.echo(f"inverse-Hessian mass on head coordinates {res.head_inverse_mass:.3g} (evenly: "
               f"{res.head_mass_baseline:.3g}); eigenvalues <= 0: {res.n_negative}; damping added "
               f"{res.damping_added:.3g} ({res.damping_rule})")
    if res.t1_relative is not None and res.t2_relative:
        typer.echo(f"‖T1‖/‖Q_CᵀΛ_CQ_C‖ = {res.t1_relative:.3g}; median |T2|/|main term| = "
                   f"{res.t2_relative.get('q50', float('nan')):.3g}")
    for note in res.notes:
        if note != res.stationarity_note:  # that one was said as a warning
            typer.echo(f"note: {note}")
    typer.echo(f"verdict: {res.verdict}")
    if json_out is not None:
        write_json(json_out, res.summary(), overwrite=overwrite, argument="json_out")
        say(quiet, f"wrote {json_out}")
    if report is not None:
        from ..report.html import Report

        rep = Report(f"winnow check-head: {model.name}, head {res.head_name!r}")
        report_section(rep, res).write(report, overwrite=overwrite)
        say(quiet, f"wrote {report}")
