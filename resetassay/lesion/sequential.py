"""Sequential probes (SPEC S4b): unit shocks that spend probe examples only where a layer's oracle bottom-k set is
still open.

    out = sequential_unit_shocks(request, confidence=0.95, q=0.05)
    out.shocks["l1"]["layers.0.act"], out.se["l1"]["layers.0.act"], out.probes["layers.0.act"], out.forwards

The probe set is cut, in an order drawn with `seed`, into `blocks` blocks of (nearly) equal size. Every unit is
first lesioned on the first eighth of the blocks; each round then extends the prefix √2 times (`schedule`), nested so
that a later round extends the earlier one. After each round a unit's shock is the mean over the examples of its
blocks so far (exact once it has every block) and its standard error comes from the spread of its block means,
with the finite-population correction (0 at the full set). The units among their layer's k lowest estimates
(k = k_at(n, q), SPEC S5) in some metric, and, given the layer's utility scores, the units a utility would reset,
go on to every probe example at once: the set read out and every utility's Shock@q are then exact, and the other
units are judged against exact shocks. Any other unit gets the next round until its lower bound lies above the
k-th lowest exact shock in every metric (`ruled_out`), at a level Bonferroni-corrected over the set's k members,
the metrics and the rounds. The pooled ranks are settled over the whole model afterwards (`rank_precision`, from
each estimate's `block_redraws`). Any engine measures a round's blocks in one pass
(`unit_shocks_of` on a sub-request whose probe examples are grouped by block, `LesionRequest.groups`).
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

__all__ = ["BLOCKS", "DRAWS", "FIRST", "PROBES_COLUMN", "SequentialShocks", "block_redraws", "block_weights",
           "ruled_out", "schedule", "sequential_shocks", "sequential_unit_shocks"]

PROBES_COLUMN = "probes"  # the UnitTable column of a sequential run: probe examples the unit was lesioned on

DRAWS = 256  # redraws of the probe blocks behind each estimate (`SequentialShocks.redraws`)
FIRST = 8  # the first round sees 1/FIRST of the probe set
BLOCKS = 1024  # probe blocks (at most one per example): the first round has 128, so its SE has 127 degrees of freedom


@dataclass
class SequentialShocks:
    """What a sequential run measures: the shock and its standard error per metric and unit (as `Shocks`, float64;
    SE 0 where the unit saw the whole probe set), the probe examples each unit was lesioned on `probes[layer]`
    `(n,)`, `forwards`: lesioned probe-example forwards in all (an exact run's is units x P), and `redraws[metric]
    [layer]` `(n, DRAWS)`: how far each estimate moves when the probe blocks it saw are redrawn (`block_redraws`)."""

    shocks: Shocks
    se: Shocks
    probes: dict[LayerName, torch.Tensor]
    forwards: int
    redraws: Shocks


def schedule(n_blocks: int, first: int = FIRST) -> list[int]:
    """Blocks seen after each round: a `first`-th (at least 2), then √2 times more each round up to all (seven rounds
    from an eighth: a unit stops at most √2 times later than it could have)."""
    rounds = round(2 * math.log2(first))
    return sorted({min(n_blocks, max(2, math.ceil(n_blocks / 2 ** (j / 2)))) for j in range(rounds, -1, -1)})


def ruled_out(mean: torch.Tensor, half: torch.Tensor, exact: torch.Tensor, k: int) -> torch.Tensor:
    """Which units are ruled *out* of the bottom-k set by shock: those whose lower end `mean - half` `(n,)` lies
    above the k-th lowest of the `exact` shocks (of other units, measured on every probe example). At least k units
    then lie below them, so a unit truly among the k lowest can be ruled out only if its lower end lies above its
    own true shock. Fewer than k exact shocks: none is ruled out."""
    if len(exact) < k:
        return torch.zeros(len(mean), dtype=torch.bool)
    return mean - half > torch.kthvalue(exact.double(), k).values


def _quantile(alpha: float, dof: torch.Tensor) -> torch.Tensor:
    """The upper `alpha` quantile of Student's t for each unit's degrees of freedom (a one-sided bound)."""
    from scipy.stats import t  # here: importing scipy.stats costs ~0.7 s

    return torch.from_numpy(t.isf(alpha, dof.clamp(min=1).numpy())).double()


def sequential_unit_shocks(request: LesionRequest, confidence: float, q: float, seed: int = 0,
                           blocks: int = BLOCKS, utilities: dict[LayerName, torch.Tensor] | None = None,
                           mature: dict[LayerName, torch.Tensor] | None = None) -> SequentialShocks:
    """Unit shocks of `request` (SPEC S4) by sequential probes (SPEC S4b) at `confidence` for each layer's
    bottom-k set, k = k_at(n, q) of its lesioned units, or of those `mature[layer]` marks `(n lesioned units,)`
    (S5); given each layer's utility scores `utilities[layer]` `(U, n lesioned units)`, with the units each utility
    would reset exact. A unit that reaches the full probe set is exact (to float rounding of its block sums);
    `confidence` 1 takes every unit there. Any engine measures the blocks.

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
                            confidence, q, seed, blocks, utilities, mature=mature)
    if r.advance:
        r.advance(sum(len(u) for u in chosen.values()))
    return out


Measure = Callable[[torch.Tensor, torch.Tensor, dict[LayerName, torch.Tensor]], Shocks]


def sequential_shocks(measure: Measure, n_units: dict[LayerName, int], n_probe: int, metrics: list[str],  # noqa: PLR0913 — the rule's inputs: a measurement, S5's sets and the schedule
                      confidence: float, q: float, seed: int = 0, blocks: int = BLOCKS,
                      utilities: dict[LayerName, torch.Tensor] | None = None, first: int = FIRST,
                      mature: dict[LayerName, torch.Tensor] | None = None) -> SequentialShocks:
    """The stopping rule of SPEC S4b over any measurement: `measure(idx, groups, which)` gives, per metric and
    layer, the mean shock `(len(which[layer]), G)` over each group of the probe examples `idx` (`groups`, one per
    example, 0..G-1: a round's blocks, measured in one pass) of the units at positions `which[layer]` of each open
    layer (`n_units[layer]` units). Every unit starts on the first round; after each round the units among their
    layer's k lowest estimates (k = k_at(n, q)) in some metric, and with the layers' utility scores
    `utilities[layer]` `(U, n)` the units each utility would reset (its k lowest), go on to the full probe set; any
    other unit continues until it is `ruled_out` of the bottom-k set in every metric: its lower bound mean - t x SE,
    t the upper (1 - confidence) / (k x metrics x rounds) quantile of Student's t with (blocks seen - 1) degrees of
    freedom, above the k-th lowest exact shock. The first round sees a `first`-th of the probe set (`schedule`).
    With `mature[layer]` (a mask), the sets, k and the comparisons are those of the mature units, as S5 reads them;
    the others stop after the first round."""
    if not 0 < confidence <= 1:
        raise BadInputError(f"`sequential` {confidence}: must be in (0, 1]", field="sequential")
    perm = torch.randperm(n_probe, generator=torch.Generator().manual_seed(seed))
    state = _Rounds(measure, n_units, n_probe, metrics, q, list(torch.tensor_split(perm, min(blocks, n_probe))),
                    utilities, mature, seed)
    ends = schedule(len(state.parts), first)
    active = {name: torch.ones(n, dtype=torch.bool) for name, n in n_units.items()}
    for end in ends:
        open_layers = [name for name, a in active.items() if bool(a.any())]
        if not open_layers:
            break
        state.extend(active, end)
        # The units now among their layer's k lowest estimates, or that a utility would reset, go on to every
        # probe example at once: exact, their intervals have no width, and every other unit is judged against them.
        state.extend({name: state.in_sets(name) | state.selected(name) for name in open_layers}, len(state.parts))
        for name in open_layers:
            active[name] = state.going_on(name, (1 - confidence) / (state.k(name) * len(metrics) * len(ends)))
    # The set is read from the final shocks: a unit that stopped early and whose estimate now falls among its
    # layer's k lowest (others' estimates moved as they went on) is measured on the rest of the probe set.
    while short := {name: s for name in n_units if bool((s := state.in_sets(name) | state.selected(name)).any())}:
        state.extend(short, len(state.parts))
    return state.result()


@dataclass
class _Rounds:
    """A sequential run's state: the probe blocks, each unit's block means and the blocks it has seen."""

    measure: Measure
    n_units: dict[LayerName, int]
    n_probe: int
    metrics: list[str]
    q: float
    parts: list[torch.Tensor]
    utilities: dict[LayerName, torch.Tensor] | None = None
    mature: dict[LayerName, torch.Tensor] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.sizes = torch.tensor([len(p) for p in self.parts], dtype=torch.float64)
        # block means [metric][layer] (n, blocks); the blocks each unit has seen [layer] (n,)
        self.means = {m: {name: torch.zeros(n, len(self.parts), dtype=torch.float64)
                          for name, n in self.n_units.items()} for m in self.metrics}
        self.done = {name: torch.zeros(n, dtype=torch.long) for name, n in self.n_units.items()}

    def run(self, which: dict[LayerName, torch.Tensor], start: int, end: int) -> None:
        """Blocks start..end-1 of the units `which[layer]`, each of which has seen the first `start`."""
        idx = torch.cat(self.parts[start:end])
        groups = torch.repeat_interleave(torch.arange(end - start), self.sizes[start:end].long())
        for m, per_layer in self.measure(idx, groups, which).items():
            for name, values in per_layer.items():
                self.means[m][name][which[name], start:end] = values.double().cpu()
        for name, w in which.items():
            self.done[name][w] = end

    def extend(self, going: dict[LayerName, torch.Tensor], end: int) -> None:
        """The units `going[layer]` (a mask) measured up to block `end` from wherever each has got to (a unit that
        stopped in an earlier round and is wanted again catches up): one pass per starting block."""
        for d in sorted({int(v) for name, g in going.items() for v in self.done[name][g]}):
            which = {name: w for name, g in going.items()
                     if len(w := (g & (self.done[name] == d)).nonzero().flatten())}
            if d < end:
                self.run(which, d, end)

    def estimates(self, name: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Each unit's shock and standard error per metric so far (`_estimates`)."""
        return _estimates(self.means, name, self.done[name], self.sizes, self.n_probe, self.metrics)

    def pool(self, name: str) -> torch.Tensor:
        """The units S5's statistics read (`mature[layer]`; every unit without it): the sets are drawn from them."""
        return self.mature[name] if self.mature and name in self.mature else torch.ones(self.n_units[name],
                                                                                        dtype=torch.bool)

    def k(self, name: str) -> int:
        """The size of the layer's sets: k_at of its pool (SPEC S5)."""
        return k_at(int(self.pool(name).sum()), self.q)

    def in_sets(self, name: str, mean: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Units among their layer's k lowest estimated shocks `mean` (default: the current ones) in some metric,
        not yet on every block."""
        mean = self.estimates(name)[0] if mean is None else mean
        pool = self.pool(name)
        found = torch.zeros(self.n_units[name], dtype=torch.bool)
        for m in self.metrics:
            found |= _lowest(mean[m], pool, self.k(name))
        return found & (self.done[name] < len(self.parts))

    def going_on(self, name: str, alpha: float) -> torch.Tensor:
        """Units that get the next round: not yet `ruled_out` in some metric by a lower bound at `alpha` (one-sided),
        or now among the layer's k lowest, and not yet on every block. Units outside the pool stop."""
        mean, err = self.estimates(name)
        half_width = _quantile(alpha, self.done[name] - 1)
        pool = self.pool(name)
        exact = pool & (self.done[name] == len(self.parts))
        going = self.in_sets(name, mean) | self.selected(name)
        for m in self.metrics:
            going[pool] |= ~ruled_out(mean[m][pool], (half_width * err[m])[pool], mean[m][exact], self.k(name))
        return going & (self.done[name] < len(self.parts))

    def selected(self, name: str) -> torch.Tensor:
        """Units some utility would reset (its k lowest scores among the layer's pool, ties by position: S5's
        selection), not yet on every block: their shocks make its Shock@q, so they go on to every probe example."""
        pool = self.pool(name)
        chosen = torch.zeros(self.n_units[name], dtype=torch.bool)
        for row in (self.utilities or {}).get(name, []):
            if not bool(torch.isnan(row[pool]).any()):
                chosen |= _lowest(row, pool, self.k(name))
        return chosen & (self.done[name] < len(self.parts))

    def result(self) -> SequentialShocks:
        """The shocks, their SEs, the probe examples each unit saw and the forwards in all."""
        shocks: Shocks = {m: {} for m in self.metrics}
        se: Shocks = {m: {} for m in self.metrics}
        redraws: Shocks = {m: {} for m in self.metrics}
        weights = block_weights(len(self.parts), self.seed)
        for name in self.n_units:
            mean, err = self.estimates(name)
            for m in self.metrics:
                shocks[m][name], se[m][name] = mean[m], err[m]
                redraws[m][name] = block_redraws(self.means[m][name], self.done[name], self.sizes, weights)
        cumulative = torch.cat([torch.zeros(1, dtype=torch.float64), self.sizes.cumsum(0)]).long()
        probes = {name: cumulative[d] for name, d in self.done.items()}
        return SequentialShocks(shocks, se, probes, int(sum(int(p.sum()) for p in probes.values())), redraws)


def _lowest(values: torch.Tensor, pool: torch.Tensor, k: int) -> torch.Tensor:
    """The k lowest `values` among the units of `pool` (a mask), ties by position, as a mask."""
    among = pool.nonzero().flatten()
    out = torch.zeros(len(pool), dtype=torch.bool)
    out[among[torch.argsort(values[among], stable=True)[:k]]] = True
    return out


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


def block_weights(n_blocks: int, seed: int) -> torch.Tensor:
    """`(DRAWS, n_blocks)` Poisson(1) weights of the probe blocks, seeded: one redraw of the probe examples per row,
    the same for every unit and layer of a run (they share the block order), so that estimates made on the same
    examples move together, as they do."""
    return torch.poisson(torch.ones(DRAWS, n_blocks, dtype=torch.float64),
                         generator=torch.Generator().manual_seed(seed))


def block_redraws(means: torch.Tensor, done: torch.Tensor, sizes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """How far each unit's estimate moves `(n, DRAWS)` when the blocks it saw are redrawn: the example-weighted mean
    of its block means `means` `(n, blocks)` over its first `done` blocks under each row of `weights` (a Poisson
    bootstrap of the examples, shared by all units), less the estimate, times the finite-population correction
    √(1 - seen / P) (0 for a unit that saw every block). Unlike independent draws from each SE, the redraws keep
    what estimates on the same examples have in common, and the skew of a mean of skewed shocks."""
    out = torch.zeros(len(means), len(weights), dtype=torch.float64)
    total = float(sizes.sum())
    for d in sorted({int(v) for v in done if v < len(sizes)}):  # a unit on every block moves by 0
        rows = (done == d).nonzero().flatten()
        x, w, seen = means[rows, :d] * sizes[:d], weights[:, :d], float(sizes[:d].sum())
        mass = w @ sizes[:d]
        estimate = x.sum(1, keepdim=True) / seen
        redrawn = torch.where(mass > 0, (x @ w.T) / mass.clamp(min=1e-300), estimate)
        out[rows] = (redrawn - estimate) * math.sqrt(max(0.0, 1 - seen / total))
    return out
