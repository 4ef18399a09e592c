"""CBP's reset operator (SPEC S7): where a reset of a unit layer writes (`reset_site`) and the reset itself
(`reset_weights`), in place. The trainer (`train/cbp.py`) resets with it and the `cbp-reset` intervention
(`lesion/reset.py`) applies it, so both perform the same reset; it lives here, beside the zoo whose unit-layer
specs declare the sites, so that neither the lesions nor the checkpoint loader import the trainer.

Where a reset applies, and what it writes, is described in `train/cbp.py`'s docstring.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from resetassay.discovery.units import WEIGHTED, UnitLayer


@dataclass
class ResetSite:
    """The modules a reset of one unit layer touches (SPEC S7)."""

    producer: nn.Linear | nn.Conv2d
    producer_norm: nn.LayerNorm | nn.BatchNorm2d | None
    consumer: nn.Linear | nn.Conv2d
    consumer_norm: nn.BatchNorm2d | None  # takes the compensation when the consumer has no bias


def reset_site(model: nn.Module, layer: UnitLayer) -> tuple[ResetSite | None, str]:
    """Where a reset of `layer` writes, as its unit-layer spec declares it (`units.UnitLayerSpec`), or None and
    why a reset is not well defined there."""
    n, consumer, spec = layer.n_units, layer.consumer, layer.spec
    if consumer is None:
        return None, layer.consumer_note or "no single Linear/Conv consumer"
    if not isinstance(consumer, WEIGHTED):
        return None, f"consumer {spec.consumer} is a {type(consumer).__name__}; a reset writes Linear/Conv2d weights"
    reads = consumer.in_features if isinstance(consumer, nn.Linear) else consumer.in_channels
    if reads != n or getattr(consumer, "groups", 1) != 1:
        return None, f"consumer {spec.consumer} does not read the {n} units one input each"
    if layer.producer is not None:
        producer, producer_norm = layer.producer, None
    elif spec is not None and spec.reset_producer is not None:
        producer = model.get_submodule(spec.reset_producer)
        producer_norm = model.get_submodule(spec.reset_norm) if spec.reset_norm else None
    else:
        return None, layer.producer_note or "no Linear/Conv producer"
    if not isinstance(producer, WEIGHTED):
        return None, f"producer {type(producer).__name__} is not Linear/Conv2d; a reset writes their weights"
    if producer.weight.shape[0] != n:
        return None, f"producer has {producer.weight.shape[0]} outputs for {n} units"
    consumer_norm = None
    if consumer.bias is None:
        if spec is None or spec.consumer_norm is None:
            return None, f"consumer {spec.consumer} has no bias and no BatchNorm to take the compensation"
        consumer_norm = model.get_submodule(spec.consumer_norm)
    return ResetSite(producer, producer_norm, consumer, consumer_norm), ""


def reset_weights(site: ResetSite, unit: int, reference: float, generator: torch.Generator) -> None:
    """CBP's reset of unit i, in place (SPEC S7): add `w_out[:, i] · r_i` (a Conv's summed over its kernel) to the
    consumer's bias, or subtract it from the running mean of the BatchNorm after a bias-free consumer; zero
    `w_out[:, i]`; draw the producer's row i Kaiming-uniform from `generator` as the zoo initialises it (zero
    bias); reset the producer norm's unit i to its init."""
    i = unit
    with torch.no_grad():
        w_out = site.consumer.weight[:, i]
        shift = w_out.reshape(len(w_out), -1).sum(dim=1) * reference
        if site.consumer.bias is not None:
            site.consumer.bias += shift
        else:
            site.consumer_norm.running_mean -= shift
        site.consumer.weight[:, i] = 0
        fresh = torch.empty(site.producer.weight[i:i + 1].shape, dtype=site.producer.weight.dtype)  # on the CPU
        nn.init.kaiming_uniform_(fresh, nonlinearity="relu", generator=generator)
        site.producer.weight[i] = fresh[0]
        if site.producer.bias is not None:
            site.producer.bias[i] = 0
        norm = site.producer_norm
        if norm is not None and norm.weight is not None:
            norm.weight[i] = 1
            norm.bias[i] = 0
        if isinstance(norm, nn.BatchNorm2d) and norm.running_mean is not None:
            norm.running_mean[i] = 0
            norm.running_var[i] = 1
