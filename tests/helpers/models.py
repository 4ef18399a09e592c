"""Tiny models for tests: random float64 MLP and CNN with declared unit layers, and two models whose
graph the fast engine cannot split (it must fall back to the expanded-input path)."""

from __future__ import annotations

import torch
from torch import nn

from resetassay.discovery.units import UnitLayerSpec


def random_weights_(model: nn.Module, seed: int) -> None:
    """Every parameter drawn from N(0, 1), in `parameters()` order, from one seeded generator."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))


class TwoLayerMLP(nn.Module):
    """in -> hidden[0] (act1) -> hidden[1] (act2) -> out logits, random float64 weights (default 4 -> 5 -> 4 -> 3,
    ReLU then Tanh)."""

    def __init__(self, seed: int = 1, sizes: tuple[int, int, int, int] = (4, 5, 4, 3),
                 activations: tuple[type[nn.Module], type[nn.Module]] = (nn.ReLU, nn.Tanh)):
        super().__init__()
        n_in, n1, n2, n_out = sizes
        self.fc1, self.act1 = nn.Linear(n_in, n1), activations[0]()
        self.fc2, self.act2 = nn.Linear(n1, n2), activations[1]()
        self.head = nn.Linear(n2, n_out)
        random_weights_(self, seed)
        self.double().eval()

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))

    def unit_layer_specs(self):
        return [UnitLayerSpec("act1", "fc1", "fc2"), UnitLayerSpec("act2", "fc2", "head")]


class TinyCNN(nn.Module):
    """1x5x5 -> conv3x3 pad 1 (3 ch, act1) -> conv3x3 no pad (4 ch, act2) -> mean pool -> 3."""

    def __init__(self, seed: int = 2):
        super().__init__()
        self.conv1, self.act1 = nn.Conv2d(1, 3, 3, padding=1), nn.ReLU()
        self.conv2, self.act2 = nn.Conv2d(3, 4, 3), nn.SiLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4, 3)
        random_weights_(self, seed)
        self.double().eval()

    def forward(self, x):
        return self.head(self.pool(self.act2(self.conv2(self.act1(self.conv1(x))))).flatten(1))

    def unit_layer_specs(self):
        return [UnitLayerSpec("act1", "conv1", "conv2"), UnitLayerSpec("act2", "conv2", "head")]


class BranchyMLP(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act1, self.fc2 = nn.Linear(64, 16), nn.SiLU(), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act1(self.fc1(x))
        if h.sum() > 0:
            h = h * 1.0
        return self.fc2(h)

    def unit_layer_specs(self) -> list[UnitLayerSpec]:
        return [UnitLayerSpec("act1", "fc1", "fc2")]


class SizeReader(nn.Module):
    """Reads the batch size of an upstream tensor downstream: the split must fall back."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act1, self.fc2 = nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act1(self.fc1(x))
        return self.fc2(h.reshape(x.size(0), -1) * 2.0)

    def unit_layer_specs(self) -> list[UnitLayerSpec]:
        return [UnitLayerSpec("act1", "fc1", None)]
