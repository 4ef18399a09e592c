"""The assertion behind every fast-path test: the fast lesion engine equals the plain reference (SPEC S4).

Tolerance: per metric and layer, max |fast - plain| <= rel * max |plain| + floor (float32 models:
rel 1e-5; `floor` covers logit changes below a few ulp of |z|).
"""

from __future__ import annotations

import torch
from torch import nn

from resetassay.discovery.units import UnitLayer
from resetassay.lesion import unit_shocks
from resetassay.shapes import Refs, Shocks

REL = 1e-5


def assert_shocks_close(want: Shocks, got: Shocks, rel: float = REL, floor: float = 0.0) -> None:
    """`got` equals `want` for every metric and layer of `want`, to rel * (largest shock) + floor."""
    for metric, per_layer in want.items():
        for name, expected in per_layer.items():
            scale = max(float(expected.abs().max()), 1e-12)
            error = float((got[metric][name].double() - expected.double()).abs().max())
            assert error <= rel * scale + floor, f"{metric} {name}: max error {error:.3g}, scale {scale:.3g}"


def assert_fast_equals_plain(model: nn.Module, layers: list[UnitLayer], refs: Refs, probe_x: torch.Tensor,
                             metrics: tuple[str, ...] = ("l1", "kl"), *, plain: Shocks | None = None,
                             rel: float = REL, floor: float = 0.0, **fast_options: object) -> Shocks:
    """Run both engines (the plain one unless `plain` is given) and compare; returns the fast shocks.
    `fast_options` go to the fast engine (max_k, shortcut, max_memory; `units`, a sample, to both)."""
    metrics = list(metrics)
    if plain is None:
        plain = unit_shocks(model, layers, refs, probe_x, metrics, engine="plain", units=fast_options.get("units"))
    fast = unit_shocks(model, layers, refs, probe_x, metrics, engine="fast", **fast_options)
    assert_shocks_close(plain, fast, rel, floor)
    return fast
