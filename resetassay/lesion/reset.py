"""CBP's reset as the lesion (SPEC S4, S7): `--intervention cbp-reset`, a `LesionEngine` (engine.py) by its module
functions `unit_shocks` and `joint_shocks`.

The clamp of plain.py sets h_i to r_i and leaves every weight as it is. CBP's reset writes
weights instead (`models.reset.reset_weights`): unit i's incoming weights drawn afresh from the init
distribution, its outgoing weights zeroed and `w_out[:, i] · r_i` added to the consumer's bias
(or taken from the running mean of the BatchNorm after a bias-free consumer). Where a Linear
alone reads the unit the two give the same logits; they differ at a Conv consumer's zero-padded
border (the compensation adds the whole kernel's weight where the clamp reached only the taps
inside the image) and where the new incoming weights reach the logits by another path than the
zeroed consumer (a LayerNorm over the unit's layer). A layer whose producer or consumer is not
known cannot be reset (`models.reset.reset_site`); `reset_sites` says why.

Each reset is written into the model's own weights for one plain forward of the probe set and
undone after it (the touched tensors saved and copied back). A unit's fresh weights come from a
generator seeded by the run's seed, the layer's name and the unit: the same draw alone, within a
joint lesion and on every rerun.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from resetassay.discovery.units import UnitLayer
from resetassay.errors import BadInputError
from resetassay.lesion.engine import LesionRequest
from resetassay.lesion.plain import shocks_under
from resetassay.lesion.shocks import lesioned_units
from resetassay.models.reset import ResetSite, reset_site, reset_weights
from resetassay.shapes import Lesion, Refs, SetShocks, Shocks


def reset_sites(model: nn.Module, layers: list[UnitLayer]) -> tuple[dict[str, ResetSite], dict[str, str]]:
    """Where CBP's reset of each layer writes (SPEC S7), and, for the layers it cannot reset, why not."""
    sites, why_not = {}, {}
    for layer in layers:
        site, why = reset_site(model, layer)
        if site is None:
            why_not[layer.name] = why
        else:
            sites[layer.name] = site
    return sites, why_not


def resettable_layers(model: nn.Module, layers: list[UnitLayer], name: str
                      ) -> tuple[list[UnitLayer], dict[str, str]]:
    """The layers of checkpoint `name` that CBP's reset applies to, and why not for the others (SPEC S7); a
    `BadInputError` naming --intervention when there is none."""
    sites, why_not = reset_sites(model, layers)
    if not sites:
        reasons = "; ".join(f"{layer}: {why}" for layer, why in why_not.items())
        raise BadInputError(f"`intervention` cbp-reset: no unit layer of {name} can be reset ({reasons}); use "
                            "`intervention` clamp", field="intervention")
    return [layer for layer in layers if layer.name in sites], why_not


def unit_generator(seed: int, layer: str, unit: int) -> torch.Generator:
    """The generator of one unit's fresh incoming weights, seeded by the run's seed, the layer's name and the unit."""
    state = np.random.SeedSequence([seed, zlib.crc32(layer.encode()), unit]).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


def _written(site: ResetSite) -> list[torch.Tensor]:
    """Every tensor `reset_weights` may write at `site`: the parameters and buffers of its four modules."""
    modules = [m for m in (site.producer, site.producer_norm, site.consumer, site.consumer_norm) if m is not None]
    return [t for m in modules for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))]


@contextmanager
def reset(sites: dict[str, ResetSite], refs: Refs, lesion: Lesion, seed: int) -> Iterator[None]:
    """While inside: CBP's reset of every unit of `lesion` written into the model's weights, with the reference of
    `refs` as r_i; on exit every touched tensor is as before (SPEC S7)."""
    touched = list({id(t): t for name in lesion for t in _written(sites[name])}.values())
    saved = [t.detach().clone() for t in touched]
    try:
        for name, idx in lesion.items():
            for i in idx.tolist():
                reset_weights(sites[name], i, float(refs[name][i]), unit_generator(seed, name, i))
        yield
    finally:
        with torch.no_grad():
            for tensor, before in zip(touched, saved, strict=True):
                tensor.copy_(before)


def joint_shocks(request: LesionRequest, lesions: list[Lesion]) -> SetShocks:
    """Shock `(n_lesions,)` per metric of each lesion, all its units reset at once, one forward each (SPEC S4, S7).
    Every layer must be resettable (`reset_sites`)."""
    sites, why_not = reset_sites(request.model, request.layers)
    if why_not:
        raise ValueError("cbp-reset: cannot reset " + "; ".join(f"{name} ({why})" for name, why in why_not.items()))
    return shocks_under(lambda lesion: reset(sites, request.refs, lesion, request.seed), request, lesions)


def unit_shocks(request: LesionRequest) -> Shocks:
    """`Shocks[metric][layer]` `(n_units,)` (or one per index of `request.units[layer]`): each unit reset alone
    (SPEC S4, S7)."""
    shocks: Shocks = {m: {} for m in request.metrics}
    for layer in request.layers:
        alone = [{layer.name: i.view(1)} for i in lesioned_units(layer, request.units)]
        values = joint_shocks(replace(request, layers=[layer]), alone)
        for m in request.metrics:
            shocks[m][layer.name] = values[m]
    return shocks
