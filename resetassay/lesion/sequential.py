"""Sequential probes (SPEC S4b): unit shocks that spend probe examples only where a layer's oracle bottom-k set is
still open.

    out = sequential_unit_shocks(request, confidence=0.95, q=0.05)
    out.shocks["l1"]["layers.0.act"], out.se["l1"]["layers.0.act"], out.probes["layers.0.act"], out.forwards

The probe set is cut, in an order drawn with `seed`, into `blocks` blocks of (nearly) equal size. Every unit is
first lesioned on the first eighth of the blocks; rounds then double the prefix (a quarter, a half, all), nested so
that a later round extends the earlier one. After each round a unit's shock is the mean over the examples of its
blocks so far (exact once it has every block) and its standard error comes from the spread of its block means,
with the finite-population correction (0 at the full set). A unit gets the next round only while its membership
in its layer's bottom-k set (k = k_at(n, q), SPEC S5) is not settled, in some metric, by intervals at the
layer's Bonferroni-corrected level (`settled`). Any engine measures a round's blocks in one pass (`unit_shocks_of`
on a sub-request whose probe examples are grouped by block, `LesionRequest.groups`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from resetassay.errors import BadInputError
from resetassay.lesion import unit_shocks_of
from resetassay.lesion.engine import LesionRequest
from resetassay.lesion.shocks import lesioned_units, probe_logits
from resetassay.shapes import LayerName, Shocks
from resetassay.stats.summary import k_at

__all__ = ["BLOCKS", "PROBES_COLUMN", "SequentialShocks", "schedule", "sequential_shocks",
           "sequential_unit_shocks", "settled"]

PROBES_COLUMN = "probes"  # the UnitTable column of a sequential run: probe examples the unit was lesioned on

BLOCKS = 64  # probe blocks (at most one per example): the first round has 8, so its SE has 7 degrees of freedom


@dataclass
class SequentialShocks:
    """What a sequential run measures: the shock and its standard error per metric and unit (as `Shocks`, float64;
    SE 0 where the unit saw the whole probe set), the probe examples each unit was lesioned on `probes[layer]`
    `(n,)`, and `forwards`: lesioned probe-example forwards in all (an exact run's is units x P)."""

    shocks: Shocks
    se: Shocks
    probes: dict[LayerName, torch.Tensor]
    forwards: int


def schedule(n_blocks: int) -> list[int]:
    """Blocks seen after each round: an eighth (at least 2), a quarter, a half, all."""
    ends = sorted({min(n_blocks, max(2, math.ceil(n_blocks / d))) for d in (8, 4, 2, 1)})
    return ends


def settled(mean: torch.Tensor, half: torch.Tensor, k: int) -> torch.Tensor:
    """Which units' membership in the bottom-k set by shock is settled by intervals `mean ± half` `(n,)`.

    Unit i is settled *in* when its upper end lies below the lower end of at least n - k other units (it is then
    below them, so among the k smallest, whatever the true values inside the intervals), and settled *out* when its
    lower end lies above the upper end of at least k others. If every interval covers its unit's true shock, every
    settled unit is classified as in the true bottom-k set. k = 0 or n: everyone is settled.
    """
    n = len(mean)
    if k <= 0 or k >= n:
        return torch.ones(n, dtype=torch.bool)
    lo, hi = mean - half, mean + half
    lo_sorted, hi_sorted = torch.sort(lo).values, torch.sort(hi).values
    above = n - torch.searchsorted(lo_sorted, hi, right=True)  # units j with lo_j > hi_i (never i itself)
    below = torch.searchsorted(hi_sorted, lo, right=False)  # units j with hi_j < lo_i
    return (above >= n - k) | (below >= k)


def _quantile(level: float, dof: torch.Tensor) -> torch.Tensor:
    """Two-sided Student-t quantile at `level` for each unit's degrees of freedom."""
    from scipy.stats import t  # here: importing scipy.stats costs ~0.7 s

    return torch.from_numpy(t.ppf(0.5 + level / 2, dof.clamp(min=1).numpy())).double()


def sequential_unit_shocks(request: LesionRequest, confidence: float, q: float, seed: int = 0,
                           blocks: int = BLOCKS) -> SequentialShocks:
    """Unit shocks of `request` (SPEC S4) by sequential probes (SPEC S4b) at `confidence` for each layer's
    bottom-k set, k = k_at(n, q) of its lesioned units (S5). A unit that reaches the full probe set is exact (to
    float rounding of its block sums); `confidence` 1 takes every unit there. Any engine measures the blocks.

    Raises:
        BadInputError: `confidence` outside (0, 1].
    """
    r = request
    base = r.base if r.base is not None else probe_logits(r.model, r.probe_x, r.batch_size)
    chosen = {layer.name: lesioned_units(layer, r.units) for layer in r.layers}

    def measure(idx: torch.Tensor, groups: torch.Tensor, which: dict[LayerName, torch.Tensor]) -> Shocks:
        layers = [layer for layer in r.layers if layer.name in which]
        sub = replace(r, layers=layers, probe_x=r.probe_x[idx], base=base[idx.to(base.device)],
                      targets=None if r.targets is None else r.targets[idx],
                      units={name: chosen[name][w] for name, w in which.items()}, advance=None, groups=groups)
        return unit_shocks_of(sub)

    out = sequential_shocks(measure, {name: len(u) for name, u in chosen.items()}, len(r.probe_x), r.metrics,
                            confidence, q, seed, blocks)
    if r.advance:
        r.advance(sum(len(u) for u in chosen.values()))
    return out


Measure = Callable[[torch.Tensor, torch.Tensor, dict[LayerName, torch.Tensor]], Shocks]


def sequential_shocks(measure: Measure, n_units: dict[LayerName, int], n_probe: int, metrics: list[str],
                      confidence: float, q: float, seed: int = 0, blocks: int = BLOCKS) -> SequentialShocks:
    """The stopping rule of SPEC S4b over any measurement: `measure(idx, groups, which)` gives, per metric and
    layer, the mean shock `(len(which[layer]), G)` over each group of the probe examples `idx` (`groups`, one per
    example, 0..G-1: a round's blocks, measured in one pass) of the units at positions `which[layer]` of each open
    layer (`n_units[layer]` units). Every unit starts on the first round; a unit continues while its membership in its
    layer's bottom-k set (k = k_at(n, q)) is not `settled` in some metric at the layer's Bonferroni level
    1 - (1 - confidence) / (n x rounds), intervals mean ± t x SE with t of (blocks seen - 1) degrees of freedom."""
    if not 0 < confidence <= 1:
        raise BadInputError(f"`sequential` {confidence}: must be in (0, 1]", field="sequential")
    perm = torch.randperm(n_probe, generator=torch.Generator().manual_seed(seed))
    parts = list(torch.tensor_split(perm, min(blocks, n_probe)))
    sizes = torch.tensor([len(p) for p in parts], dtype=torch.float64)
    ends = schedule(len(parts))
    # block means [metric][layer] (n, blocks); the blocks each unit has seen [layer] (n,)
    means = {m: {name: torch.zeros(n, len(parts), dtype=torch.float64) for name, n in n_units.items()}
             for m in metrics}
    done = {name: torch.zeros(n, dtype=torch.long) for name, n in n_units.items()}
    active = {name: torch.ones(n, dtype=torch.bool) for name, n in n_units.items()}
    start = 0
    for end in ends:
        which = {name: a.nonzero().flatten() for name, a in active.items() if bool(a.any())}
        if not which:
            break
        idx = torch.cat(parts[start:end])
        groups = torch.repeat_interleave(torch.arange(end - start), sizes[start:end].long())
        for m, per_layer in measure(idx, groups, which).items():
            for name, values in per_layer.items():
                means[m][name][which[name], start:end] = values.double().cpu()
        start = end
        for name, w in which.items():
            done[name][w] = end
            n = n_units[name]
            mean, err = _estimates(means, name, done[name], sizes, n_probe, metrics)
            level = 1 - (1 - confidence) / (n * len(ends))
            half_width = _quantile(level, done[name] - 1)
            unsettled = torch.zeros(n, dtype=torch.bool)
            for m in metrics:
                unsettled |= ~settled(mean[m], half_width * err[m], k_at(n, q))
            active[name] = unsettled & (done[name] < len(parts))
    shocks: Shocks = {m: {} for m in metrics}
    se: Shocks = {m: {} for m in metrics}
    for name in n_units:
        mean, err = _estimates(means, name, done[name], sizes, n_probe, metrics)
        for m in metrics:
            shocks[m][name], se[m][name] = mean[m], err[m]
    cumulative = torch.cat([torch.zeros(1, dtype=torch.float64), sizes.cumsum(0)]).long()
    probes = {name: cumulative[d] for name, d in done.items()}
    return SequentialShocks(shocks, se, probes, int(sum(int(p.sum()) for p in probes.values())))


def _estimates(means: Shocks, name: str, done: torch.Tensor, sizes: torch.Tensor, n_probe: int,
               metrics: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Each unit's shock (the example-weighted mean of its block means so far) and its standard error (the spread
    of its block means over sqrt(blocks), with the finite-population correction: 0 at the full probe set)."""
    seen = torch.arange(len(sizes)).unsqueeze(0) < done.unsqueeze(1)  # (n, blocks)
    weights = sizes.unsqueeze(0) * seen
    n_seen = weights.sum(1)
    nb = seen.sum(1).double()
    fpc = (1 - n_seen / n_probe).clamp(min=0)
    mean, err = {}, {}
    for m in metrics:
        bm = means[m][name]
        mean[m] = (bm * weights).sum(1) / n_seen.clamp(min=1)
        centred = (bm - ((bm * seen).sum(1) / nb.clamp(min=1)).unsqueeze(1)) * seen
        var = (centred ** 2).sum(1) / (nb - 1).clamp(min=1)
        err[m] = (var / nb.clamp(min=1) * fpc).sqrt()
    return mean, err
