"""Lesions and shocks (SPEC S4): the plain reference engine.

A lesion clamps unit i of a unit layer to its reference r_i on every probe example (every
spatial position for Conv), all parameters unchanged. This engine runs one full forward of
the probe set per lesion; it is the ground truth every faster path is tested against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from resetassay.errors import BadInputError
from resetassay.units import UnitLayer

METRICS = ("l1", "kl")


def check_metrics(names: list[str]) -> list[str]:
    """Validate `--metrics`; the message lists the valid names."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise BadInputError(f"--metrics: unknown {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    return names


def example_shocks(z: torch.Tensor, z_lesioned: torch.Tensor, metric: str) -> torch.Tensor:
    """Per-example shock `(P,)` between logits `z` and `z_lesioned`, both `(P, C)` (SPEC S4)."""
    if metric == "l1":
        return (z - z_lesioned).abs().sum(dim=1)
    if metric == "kl":
        log_p, log_q = F.log_softmax(z.double(), dim=1), F.log_softmax(z_lesioned.double(), dim=1)
        return (log_p.exp() * (log_p - log_q)).sum(dim=1)
    raise BadInputError(f"unknown shock metric {metric!r}; choose from {', '.join(METRICS)}")


@contextmanager
def clamped(clamps: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Clamp units while inside: {module: (unit indices `(k,)`, values `(k,)`)} (SPEC S4).

    The hook returns a fresh tensor, so no in-place op downstream can touch a cached one.
    """
    def hook_for(idx: torch.Tensor, values: torch.Tensor):
        def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> torch.Tensor:
            out = out.clone()
            shape = (1, -1, 1, 1) if out.dim() == 4 else (1, -1)
            out[:, idx] = values.to(out.dtype).view(shape).expand_as(out[:, idx])
            return out
        return hook

    handles = [m.register_forward_hook(hook_for(idx, v)) for m, (idx, v) in clamps.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def probe_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits `(P, C)` of the probe set, computed in batches on the model's device."""
    if len(x) == 0:
        raise BadInputError("the probe set is empty; raise --probe-size")
    device = next(model.parameters()).device
    with torch.no_grad():
        return torch.cat([model(xb.to(device)) for xb in torch.split(x, batch_size)])


def mean_shocks(z: torch.Tensor, z_lesioned: torch.Tensor, metrics: list[str]) -> dict[str, float]:
    """Unit shock per metric: the mean over the probe set (SPEC S4)."""
    return {m: example_shocks(z, z_lesioned, m).double().mean().item() for m in metrics}


def unit_shocks(
    model: nn.Module,
    layers: list[UnitLayer],
    refs: dict[str, torch.Tensor],
    probe_x: torch.Tensor,
    metrics: list[str],
    batch_size: int = 512,
    advance: Callable[[int], None] | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Shocks[metric][layer] `(n_units,)`: one lesion per unit, one forward per lesion."""
    base = probe_logits(model, probe_x, batch_size)
    shocks = {m: {layer.name: torch.zeros(layer.n_units, dtype=torch.float64) for layer in layers}
              for m in metrics}
    for layer in layers:
        for i in range(layer.n_units):
            idx = torch.tensor([i], device=base.device)
            with clamped({layer.module: (idx, refs[layer.name][idx])}):
                lesioned = probe_logits(model, probe_x, batch_size)
            for m, value in mean_shocks(base, lesioned, metrics).items():
                shocks[m][layer.name][i] = value
            if advance:
                advance(1)
    return shocks


def joint_shock(
    model: nn.Module,
    layers: list[UnitLayer],
    refs: dict[str, torch.Tensor],
    selection: dict[str, torch.Tensor],
    probe_x: torch.Tensor,
    metrics: list[str],
    batch_size: int = 512,
) -> dict[str, float]:
    """Shock of clamping every selected unit at once, `selection[layer] = indices` (SPEC S4)."""
    base = probe_logits(model, probe_x, batch_size)
    clamps = {}
    for layer in layers:
        idx = selection.get(layer.name)
        if idx is not None and len(idx):
            idx = idx.to(base.device)
            clamps[layer.module] = (idx, refs[layer.name][idx])
    with clamped(clamps):
        lesioned = probe_logits(model, probe_x, batch_size)
    return mean_shocks(base, lesioned, metrics)
