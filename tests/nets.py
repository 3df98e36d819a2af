"""Small torch models and data shared by the model tests (tests/core, tests/evaluation)."""

import torch

from winnow.core.models import refine_model


class Net(torch.nn.Module):
    def __init__(self, d: int = 6, h: int = 5, k: int = 1, dropout: float = 0.0):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.Tanh(), torch.nn.Dropout(dropout))
        self.fc = torch.nn.Linear(h, k)

    def forward(self, x):
        return self.fc(self.body(x))


def small_mlp() -> torch.nn.Module:
    """Linear(4, 3) → tanh → Linear(3, 1): a model factory for the command-line tests (MODEL holds its weights)."""
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))


def data(n: int = 80, d: int = 6, k: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    s = X[:, 0] + 0.7 * X[:, 1] * X[:, 2] + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    y = (s > 0).long() if k == 2 else torch.bucketize(s, torch.tensor([-0.5, 0.5], dtype=torch.float64))
    return X, y


def trained_net(k: int = 1, seed: int = 0, l2: float = 1e-2, regularize: str = "weights", **kw) -> Net:
    torch.manual_seed(seed)
    net = Net(k=k, **kw).double().eval()
    X, y = data(k=2 if k == 1 else k, seed=seed)
    refine_model(net, (X, y), l2=l2, regularize=regularize, max_iter=300)
    return net
