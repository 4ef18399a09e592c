"""A network of the loss-of-plasticity code's shape (`lop/nets/deep_ffnn.py`: its `layers` ModuleList alternates
Linear and activation modules, which is the `net` its `GnT` holds: hidden layer i is `layers[2 * i]`), with a
`forward` that runs them in order, for `--model helpers.lop_nets:deep_ffnn` in tests."""

from __future__ import annotations

import torch
from torch import nn


class DeepFFNN(nn.Module):
    """input -> [Linear, ReLU] x num_hidden_layers -> Linear, all in `self.layers`."""

    def __init__(self, input_size: int = 64, num_features: int = 12, num_outputs: int = 10,
                 num_hidden_layers: int = 2):
        super().__init__()
        self.layers = nn.ModuleList()
        width = input_size
        for _ in range(num_hidden_layers):
            self.layers.append(nn.Linear(width, num_features))
            self.layers.append(nn.ReLU())
            width = num_features
        self.layers.append(nn.Linear(width, num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def deep_ffnn(seed: int = 0, **kwargs: object) -> DeepFFNN:
    torch.manual_seed(seed)
    return DeepFFNN(**kwargs).eval()
