"""Reset references r_i, the value a reset unit is clamped to (SPEC S2)."""

from __future__ import annotations

import torch
from torch import nn

from resetassay.discovery.hooks import capture
from resetassay.discovery.sequences import padding_mask
from resetassay.discovery.units import UnitLayer, position_mask, reference_dims
from resetassay.errors import BadInputError
from resetassay.names import REFERENCES, ReferenceKind
from resetassay.shapes import Refs


def _unit_means(
    model: nn.Module, layers: list[UnitLayer], x: torch.Tensor, batch_size: int = 512
) -> Refs:
    """`calibration-mean` (SPEC S2, S9): mean of h_i over examples (and H, W for Conv, positions for tokens),
    `(n_units,)`; a head's mean vector `(n_units, d_head)`."""
    device = next(model.parameters()).device
    by_name = {layer.name: layer for layer in layers}
    sums: dict[str, torch.Tensor | float] = {layer.name: 0.0 for layer in layers}
    count = {layer.name: 0 for layer in layers}
    with capture(model, layers, every_call=True) as outputs, torch.no_grad():
        for xb in torch.split(x, batch_size):
            padding = padding_mask(xb.to(device))  # the real positions of the batch (padded tokens)
            outputs.clear()
            model(xb.to(device))
            for name, out in outputs.calls:
                layer = by_name[name]
                u = layer.view(out).double()
                dims = reference_dims(layer, u)
                real = position_mask(layer, u, padding)
                if real is None:
                    sums[name] = sums[name] + u.sum(dim=dims)
                    count[name] += u.numel() // (layer.n_units * layer.group)
                else:  # padded positions left out (SPEC S9)
                    sums[name] = sums[name] + (u * real).sum(dim=dims)
                    count[name] += int(real.sum())
    return {name: (s / count[name]).float() for name, s in sums.items()}


def unit_references(
    model: nn.Module,
    layers: list[UnitLayer],
    calib_x: torch.Tensor,
    kind: ReferenceKind = "calibration-mean",
    batch_size: int = 512,
) -> Refs:
    """The reference `(n_units,)` of every layer, on the model's device (SPEC S2)."""
    device = next(model.parameters()).device
    if kind == "calibration-mean":
        return _unit_means(model, layers, calib_x, batch_size)
    if kind == "zero":
        return {layer.name: torch.zeros(layer.n_units, *[layer.group] * (layer.kind == "head"), device=device)
                for layer in layers}
    if kind == "stored":
        refs = {}
        for layer in layers:
            if layer.stored_reference is None:
                raise BadInputError(
                    f"`reference` stored: the checkpoint stores no {layer.name}.reference; "
                    "use `reference` calibration-mean",
                    field="reference",
                )
            refs[layer.name] = layer.stored_reference.float().to(device)
        return refs
    raise BadInputError(f"`reference` {kind!r} is unknown; choose from {', '.join(REFERENCES)}", field="reference")
