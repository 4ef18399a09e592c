"""The plain lesion engine (SPEC S4): one full forward of the probe set per lesion, a hook clamping it; a
`LesionEngine` (engine.py) by its module functions `unit_shocks` and `joint_shocks`.

A lesion clamps unit i of a unit layer to its reference r_i on every probe example (every
position for Conv and tokens; a head's d features to its mean vector), all parameters
unchanged. This engine is the ground truth that every faster path is tested against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import torch
from torch import nn

from resetassay.discovery.hooks import forward_hooks
from resetassay.discovery.sequences import padding_mask
from resetassay.discovery.units import UnitLayer, per_unit
from resetassay.lesion.engine import LesionRequest
from resetassay.lesion.shocks import group_shape, lesioned_units, mean_shocks, probe_logits
from resetassay.shapes import Lesion, SetShocks, Shocks


@contextmanager
def clamped(clamps: list[tuple[UnitLayer, torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Clamp units while inside: (unit layer, unit indices `(k,)`, values `(k,)` or a head's `(k, d)`) (SPEC S4).

    The hook returns a fresh tensor, so no in-place op downstream can touch a cached one.
    """
    def hook_for(layer: UnitLayer, idx: torch.Tensor, values: torch.Tensor):
        def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> torch.Tensor:
            out = out.clone()
            u = layer.view(out)
            u[:, idx] = per_unit(values.to(out.dtype), u).expand_as(u[:, idx])
            return out
        return hook

    with forward_hooks({layer.module: hook_for(layer, idx, v) for layer, idx, v in clamps}):
        yield


def unit_shocks(request: LesionRequest) -> Shocks:
    """`Shocks[metric][layer]` `(n_units,)` (or one per index of `request.units[layer]`): one lesion per unit, one
    forward per lesion."""
    r = request
    chosen = {layer.name: lesioned_units(layer, r.units) for layer in r.layers}
    padding = padding_mask(r.probe_x)
    shape = group_shape(r.groups)
    shocks = {m: {layer.name: torch.zeros(len(chosen[layer.name]), *shape, dtype=torch.float64)
                  for layer in r.layers} for m in r.metrics}
    for layer in r.layers:
        for i, unit in enumerate(chosen[layer.name].tolist()):
            idx = torch.tensor([unit], device=r.base.device)
            with clamped([(layer, idx, r.refs[layer.name][idx])]):
                lesioned = probe_logits(r.model, r.probe_x, r.batch_size)
            for m, value in mean_shocks(r.base, lesioned, r.metrics, padding, r.targets, r.groups).items():
                shocks[m][layer.name][i] = value
            if r.advance:
                r.advance(1)
    return shocks


def joint_shocks(request: LesionRequest, lesions: list[Lesion]) -> SetShocks:
    """Shock `(n_lesions,)` per metric of each lesion, every unit of a lesion clamped at once (SPEC S4)."""
    by_name = {layer.name: layer for layer in request.layers}

    def clamp(lesion: Lesion) -> AbstractContextManager[None]:
        idx = {name: i.to(request.base.device) for name, i in lesion.items() if len(i)}
        return clamped([(by_name[name], i, request.refs[name][i]) for name, i in idx.items()])

    return shocks_under(clamp, request, lesions)


def shocks_under(intervene: Callable[[Lesion], AbstractContextManager[None]], request: LesionRequest,
                 lesions: list[Lesion]) -> SetShocks:
    """Shock `(n_lesions,)` per metric of each lesion, one forward of the probe set inside `intervene(lesion)`
    (a clamp here, CBP's reset in reset.py) (SPEC S4)."""
    r = request
    padding = padding_mask(r.probe_x)
    out = {m: torch.zeros(len(lesions), *group_shape(r.groups), dtype=torch.float64) for m in r.metrics}
    for k, lesion in enumerate(lesions):
        with intervene(lesion):
            lesioned = probe_logits(r.model, r.probe_x, r.batch_size)
        for m, value in mean_shocks(r.base, lesioned, r.metrics, padding, r.targets, r.groups).items():
            out[m][k] = value
        if r.advance:
            r.advance(1)
    return out
