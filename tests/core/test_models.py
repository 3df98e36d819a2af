"""PyTorch glue: head lookup, feature extraction, full-model influence vs autograd, closed forms and retraining."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from nets import Net, data, trained_net

from winnow.core.autodiff import AutodiffHead
from winnow.core.heads import LogisticHead, SoftmaxHead
from winnow.core.influence import InfluenceAnalyzer
from winnow.core.models import (
    ModelData,
    ModelInfluence,
    extract_features,
    find_module,
    head_from_module,
    select_params,
    split_model,
)
from winnow.core.solvers import CGSolver, ConvergenceWarning
from winnow.errors import NotPositiveDefiniteError, ValidationError
from winnow.io.sources import open_source


def test_find_module_lists_candidates():
    net = Net()
    assert find_module(net, "fc")[0] == "fc"
    assert find_module(net, lambda m: m.body[0])[0] == "body.0"
    with pytest.raises(ValidationError, match=r"'head' is not a module of Net; candidates: body \(Sequential\).*fc"):
        find_module(net, "head")
    with pytest.raises(ValidationError, match="not a submodule"):
        find_module(net, lambda m: torch.nn.Linear(2, 2))
    with pytest.raises(ValidationError, match="neither a parameter nor a module"):
        select_params(net, ["fc", "nope"])
    assert select_params(net, "fc") == ["fc.weight", "fc.bias"]
    assert select_params(net, ["fc.bias", "body.0"]) == ["body.0.weight", "body.0.bias", "fc.bias"]


def test_extract_features_hook_eval_mode_and_formats(tmp_path):
    net = Net(dropout=0.5).double()
    net.train()
    X, y = data(50)
    with pytest.warns(UserWarning, match="train mode"):
        f = extract_features(net, "fc", (X, y), batch_size=16, dtype=np.float64)
    assert net.training  # restored
    net.eval()
    with torch.no_grad():
        expected = net.body(X).numpy()
    np.testing.assert_allclose(f.X, expected, rtol=1e-14)  # eval mode: no dropout
    np.testing.assert_array_equal(f.y, y.numpy())
    np.testing.assert_array_equal(f.ids, np.arange(50))
    # Parquet: what ParquetSource reads, via a non-shuffling DataLoader with explicit ids
    ds = torch.utils.data.TensorDataset(X, y, torch.arange(100, 150))
    loader = torch.utils.data.DataLoader(ds, batch_size=7)
    fp = extract_features(net, "fc", loader, out=tmp_path / "f.parquet")
    src = open_source(fp.path)
    ch = next(src.chunks(100))
    np.testing.assert_allclose(ch.X, expected.astype(np.float32))
    np.testing.assert_array_equal(ch.ids, np.arange(100, 150))
    assert pq.read_schema(fp.path).metadata[b"winnow.head"] == b"fc"
    with pytest.raises(Exception, match="exists"):
        extract_features(net, "fc", (X, y), out=tmp_path / "f.parquet")
    fz = extract_features(net, "fc", (X, y), out=tmp_path / "f.npz")
    np.testing.assert_allclose(np.load(fz.path)["X"], expected.astype(np.float32))
    with pytest.raises(ValidationError, match="shuffle"):
        extract_features(net, "fc", torch.utils.data.DataLoader(ds, batch_size=7, shuffle=True))
    with pytest.raises(ValidationError, match=r"\.parquet or \.npz"):
        extract_features(net, "fc", (X, y), out=tmp_path / "f.csv")


def test_head_from_module_kinds_and_label_mismatch():
    assert isinstance(head_from_module(torch.nn.Linear(4, 1)), LogisticHead)
    assert isinstance(head_from_module(torch.nn.Linear(4, 3)), SoftmaxHead)
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    assert isinstance(head_from_module(mlp), AutodiffHead)
    net = Net(k=1).double().eval()
    X, y3 = data(60, k=3)
    with pytest.raises(ValidationError, match="1 output.*labels in \\{0, 1\\}.*does not match"):
        split_model(net, "fc", (X, y3))
    net2 = Net(k=2).double().eval()
    X, y3 = data(60, k=3)
    with pytest.raises(ValidationError, match="2 outputs.*0..1.*does not match"):
        split_model(net2, "fc", (X, y3))
    with pytest.raises(ValidationError, match="1 output"):
        ModelInfluence(net).fit((X, y3))


@pytest.mark.parametrize("k", [1, 3])
def test_head_only_torch_path_equals_closed_form_head_path(k):
    """ModelInfluence restricted to the head's parameters == InfluenceAnalyzer on the extracted features."""
    net = trained_net(k=k)
    X, y = data(k=2 if k == 1 else k)
    Xte, yte = data(20, k=2 if k == 1 else k, seed=5)
    sp = split_model(net, "fc", (X, y), (Xte, yte), l2=1e-2)
    head = sp.head
    ftr = extract_features(net, "fc", (X, y), dtype=np.float64)
    fte = extract_features(net, "fc", (Xte, yte), dtype=np.float64)
    a = InfluenceAnalyzer(head).fit((ftr.X, ftr.y))
    sa = a.score((fte.X, fte.y))
    mi = ModelInfluence(net, params="fc", l2=1e-2, damping=0.0, solver="dense").fit((X, y))
    sb = mi.score((Xte, yte))
    assert mi.n_params == head.n_params
    for col in ("influence", "loss_change_if_removed", "self_influence"):
        np.testing.assert_allclose(sb[col].to_numpy(), sa[col].to_numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(mi.pairwise((Xte, yte)), a.pairwise((fte.X, fte.y)), rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(sb["id"].to_numpy(), np.arange(len(y)))


def test_per_example_gradients_and_hvps_against_autograd():
    net = trained_net(k=3, regularize="all")
    X, y = data(30, k=3)
    mi = ModelInfluence(net, l2=1e-2, regularize="all", damping=1e-3, solver="cg").fit((X, y))
    G, ids, labels = mi.gradients((X, y))
    params = [p for _, p in net.named_parameters()]
    for i in range(0, 30, 7):
        loss = torch.nn.functional.cross_entropy(net(X[i:i + 1]), y[i:i + 1])
        ref = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
        np.testing.assert_allclose(G[i].numpy(), ref.numpy(), rtol=1e-11, atol=1e-13)
    # the dense Hessian of the objective by double backward (reverse-over-reverse), independent of the HVPs
    theta0 = torch.cat([p.detach().reshape(-1) for p in params])
    shapes = [p.shape for p in params]
    names = [n for n, _ in net.named_parameters()]

    def risk(theta):
        parts, o = {}, 0
        for n_, s in zip(names, shapes):
            parts[n_] = theta[o:o + s.numel()].reshape(s)
            o += s.numel()
        out = torch.func.functional_call(net, parts, (X,))
        return torch.nn.functional.cross_entropy(out, y) + 0.5e-2 * (theta * theta).sum()

    H = torch.autograd.functional.hessian(risk, theta0) + 1e-3 * torch.eye(theta0.numel(), dtype=torch.float64)
    V = torch.randn(theta0.numel(), 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for mode in ("rev", "fwd"):  # reverse-over-reverse and forward-over-reverse products
        mi.hessian_.hvp_mode = mode
        np.testing.assert_allclose(mi.hessian_.matvec(V).numpy(), (H @ V).numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(mi.hessian_.matvec(V[:, 0]).numpy(), (H @ V[:, 0]).numpy(), rtol=1e-10,
                                   atol=1e-12)
    np.testing.assert_allclose(mi.hessian_.dense().numpy(), H.numpy(), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValidationError, match="hvp_mode"):
        ModelInfluence(net, hvp_mode="both").fit((X, y))


@pytest.mark.slow
def test_full_model_influence_predicts_leave_one_out_retraining():
    """All parameters of a tiny MLP, L2 on all of them, float64; retrain each time by Newton to 1e-11."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double().eval()
    X, y = data(60, d=3, seed=7)
    Xte, yte = data(40, d=3, seed=8)
    l2 = 0.05
    # the same objective for both sides: (1/n) Σ ℓ_i + (λ/2)‖θ‖², θ = every parameter
    ref = AutodiffHead(net, l2=l2, regularize="all", tol=1e-11, max_iter=300).fit(X.numpy(), y.numpy())
    with torch.no_grad():
        for p, t in zip(net.parameters(), ref.fn.unflatten(ref.theta_).values()):
            p.copy_(t)
    mi = ModelInfluence(net, l2=l2, regularize="all", damping=0.0, solver="dense").fit((X, y))
    pred = mi.score((Xte, yte))["loss_change_if_removed"].to_numpy()
    rows = np.arange(0, 60, 3)
    Xte_n, yte_n = Xte.numpy(), torch.as_tensor(yte)
    base = float(ref.losses(torch.as_tensor(Xte_n), yte_n).mean())
    actual = []
    for p in rows:
        w = np.ones(60)
        w[p] = 0.0
        h = AutodiffHead(net, l2=l2, regularize="all", tol=1e-11, max_iter=300)
        h.fit(X.numpy(), y.numpy(), sample_weight=w, normalizer=60, init=ref.theta_)
        actual.append(float(h.losses(torch.as_tensor(Xte_n), yte_n, h.theta_).mean()) - base)
    pearson = np.corrcoef(pred[rows], actual)[0, 1]
    assert pearson >= 0.9, pearson
    assert np.all(np.isfinite(mi.score((Xte, yte))["self_influence"].to_numpy()))


def test_solver_choice_errors_and_warnings(tmp_path):
    net = trained_net()
    X, y = data()
    with pytest.raises(ValidationError, match="solver 'dense' cannot take P = .*use 'cg'"):
        ModelInfluence(net, l2=1e-2, solver="dense", max_dense=10).fit((X, y))
    with pytest.warns(ConvergenceWarning, match="relative residual"):
        mi = ModelInfluence(net, l2=1e-2, damping=1e-3, solver=CGSolver(max_iter=2)).fit((X, y))
        s = mi.score((X[:5], y[:5]))
    assert np.isnan(s["self_influence"].to_numpy()).all()  # CG: not computed unless asked
    assert mi.direction_info_.iterations == 2
    untrained = Net().double().eval()
    torch.manual_seed(0)
    with pytest.raises((NotPositiveDefiniteError, ValidationError)):
        ModelInfluence(untrained, damping=0.0, solver="dense").fit((X, y))
    out = mi.write_scores((X[:5], y[:5]), tmp_path / "s.parquet", pairs_out=tmp_path / "p.parquet")
    t = pq.read_table(out)
    assert t.column_names == ["id", "label", "influence", "loss_change_if_removed", "self_influence"]
    assert b"full-model influence" in t.schema.metadata[b"winnow.model_influence"]
    assert pq.read_table(tmp_path / "p.parquet").num_rows == 5 * len(y)
    with pytest.raises(ValidationError, match="l2"):
        ModelInfluence(net, l2=-1.0)
    with pytest.raises(ValidationError):
        ModelData((X, y[:5]))


def test_device_argument_cpu_and_float32():
    net = trained_net()
    X, y = data()
    a = ModelInfluence(net, l2=1e-2, damping=1e-3, device="cpu").fit((X, y)).score((X[:4], y[:4]))
    b = ModelInfluence(net, l2=1e-2, damping=1e-3, dtype=torch.float32).fit((X, y)).score((X[:4], y[:4]))
    np.testing.assert_allclose(b["influence"].to_numpy(), a["influence"].to_numpy(), rtol=1e-3, atol=1e-3)


def test_cli_extract_features_model_influence_check_head(tmp_path):
    import winnow.cli.models  # noqa: F401  (registers the commands until cli/__init__ imports it)
    from winnow.cli import main

    net = trained_net()
    X, y = data()
    factory = ["--factory", "nets:Net"]
    torch.save(net.state_dict(), tmp_path / "model.pt")  # weights; --factory builds the Net
    np.savez(tmp_path / "train.npz", X=X.numpy(), y=y.numpy())
    np.savez(tmp_path / "test.npz", X=X[:10].numpy(), y=y[:10].numpy())
    main(["extract-features", str(tmp_path / "model.pt"), str(tmp_path / "train.npz"), "--head", "fc",
          "--out", str(tmp_path / "f.parquet"), "--head-out", str(tmp_path / "h.npz"), "--l2", "0.01", "--quiet",
          *factory])
    assert open_source(tmp_path / "f.parquet").n_features == 5
    main(["model-influence", str(tmp_path / "model.pt"), "--train", str(tmp_path / "train.npz"), "--test",
          str(tmp_path / "test.npz"), "--out", str(tmp_path / "s.parquet"), "--l2", "0.01", "--quiet",
          *factory])
    assert pq.read_table(tmp_path / "s.parquet").num_rows == len(y)
    main(["check-head", str(tmp_path / "model.pt"), "--head", "fc", "--train", str(tmp_path / "train.npz"),
          "--test", str(tmp_path / "test.npz"), "--l2", "0.01", "--damping", "1e-3", "--pairs-train", "20",
          "--pairs-test", "5", "--json", str(tmp_path / "t1.json"), "--report", str(tmp_path / "t1.html"), "--quiet",
          *factory])
    assert (tmp_path / "t1.html").exists() and "spearman" in (tmp_path / "t1.json").read_text()
    with pytest.raises(SystemExit) as e:
        main(["check-head", str(tmp_path / "model.pt"), "--head", "nope", "--train", str(tmp_path / "train.npz"),
              "--test", str(tmp_path / "test.npz"), *factory])
    assert e.value.code == 2
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(SystemExit):
        main(["extract-features", str(tmp_path / "sd.pt"), str(tmp_path / "train.npz"), "--head", "fc",
              "--out", str(tmp_path / "g.parquet")])


def test_refine_model_reaches_a_float64_stationary_point():
    """L-BFGS must see the loss in float64: a float32 loss stalls its line search near 1e-6 relative."""
    from sklearn.datasets import load_digits

    from winnow.core.models import refine_model

    d = load_digits()
    X = torch.as_tensor(d.data[:600] / 16.0)
    y = torch.as_tensor((d.target[:600] >= 5).astype(np.int64))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 12), torch.nn.Tanh(), torch.nn.Linear(12, 1)).double()
    l2 = 1e-3
    net.eval()
    gnorm = refine_model(net, (X, y), l2=l2, regularize="weights", max_iter=1000, tol=1e-10)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(net(X)[:, 0], y.double())
    loss = loss + 0.5 * l2 * sum((p * p).sum() for p in net.parameters() if p.ndim >= 2)
    grads = torch.autograd.grad(loss, list(net.parameters()))
    expected = max(float(g.abs().max()) for g in grads)
    assert gnorm == pytest.approx(expected, rel=1e-6, abs=1e-15)
    assert expected < 1e-7
