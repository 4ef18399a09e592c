"""Ranks to a stated precision (SPEC S4b): which early-stopped units of a sequential run must be measured on the
whole probe set so that the pooled Spearman ρ of every utility is within ±`precision` of the exact run's.

    going = rank_open(mean, se, redraws, utilities, precision=0.01, confidence=0.95)  # units (n,) -> which go on
    chosen = pooled_rank_open(units, utilities, metrics, precision, confidence, redraws)  # a UnitTable -> per layer
    settle_pooled_ranks(units, utilities, metrics, precision, confidence, exact, n_probe, redraws)  # in place

A unit's shock is an estimate `mean ± se`, and its `redraws` `(DRAWS,)` say how far it moves when the probe examples
behind it are redrawn (`sequential.block_redraws`: one bootstrap of the examples shared by every unit, so estimates
made on the same examples move together, as they do). How far ρ(u, shock) over a set of units could be from the
exact one is read off them: ρ recomputed on each redraw, the `confidence` quantile of |ρ(redraw) - ρ(estimates)| is
the bound (`rho_error`). When it exceeds `precision` for
some utility, units are ordered by their weight in a linearised ρ (a unit's error moves its rank by the units around
it, each weighted by how far apart their utility ranks are), and the fewest first units whose bound, once they are
exact (no redraws), fits every utility are taken, found by bisection. Each utility reads only the units it scores (NaN
elsewhere: a layer it does not apply to, an immature unit).
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import torch

from resetassay.lesion.sequential import PROBES_COLUMN
from resetassay.names import se_column, shock_column
from resetassay.shapes import LayerName, Shocks

__all__ = ["ROUNDS", "pooled_rank_open", "rank_open", "rho_error", "settle_pooled_ranks"]

ROUNDS = 4  # checks of the pooled ranks, each on the shocks the last one made exact


def _ranks(values: torch.Tensor) -> torch.Tensor:
    """Average ranks along the last dimension (ties share their mean rank), as Spearman's ρ uses them."""
    from scipy.stats import rankdata  # here: importing scipy.stats costs ~0.7 s

    return torch.from_numpy(rankdata(values.double().numpy(), axis=-1)).double()


def _centred(ranks: torch.Tensor) -> torch.Tensor:
    """Ranks minus their mean, scaled to unit norm along the last dimension (0 where they are all tied)."""
    c = ranks - ranks.mean(-1, keepdim=True)
    return c / c.norm(dim=-1, keepdim=True).clamp(min=1e-300)


def _rho_errors(mean: torch.Tensor, redraws: torch.Tensor, utility: torch.Tensor) -> torch.Tensor:
    """|ρ(utility, mean + redraws[:, d]) - ρ(utility, mean)| `(D,)` over the redraws `(n, D)`."""
    u = _centred(_ranks(utility))
    at = _centred(_ranks(mean)) @ u
    return (_centred(_ranks(mean.unsqueeze(0) + redraws.T)) @ u - at).abs()


def _rows(utilities: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(scores, units it scores) of each utility row that scores at least 2 units."""
    rows = [(u.double(), torch.isfinite(u)) for u in utilities]
    return [(u, ok) for u, ok in rows if int(ok.sum()) >= 2]


def rho_error(mean: torch.Tensor, redraws: torch.Tensor, utilities: torch.Tensor, confidence: float) -> torch.Tensor:
    """The bound `(U,)` on how far each utility's Spearman ρ with the estimated shocks `mean` `(n,)` could be from
    the exact shocks': the `confidence` quantile of |ρ(redraw) - ρ(mean)| over the `redraws` `(n, D)` (module
    docstring), on the units the utility scores (NaN where it scores fewer than 2)."""
    out = torch.full((len(utilities),), torch.nan, dtype=torch.float64)
    for i, u in enumerate(utilities.double()):
        ok = torch.isfinite(u)
        if int(ok.sum()) >= 2:
            out[i] = torch.quantile(_rho_errors(mean.double()[ok], redraws.double()[ok], u[ok]), confidence)
    return out


def _weights(mean: torch.Tensor, se: torch.Tensor, utility: torch.Tensor, rows: int = 512) -> torch.Tensor:
    """Each unit's weight `(n,)` in a linearised ρ(utility, shock): its SE times Σ_j φ_ij |r_i - r_j|, φ_ij the
    normal density of the pair's gap over its joint SE (how likely a small error swaps i and j), r the utility's
    ranks. Computed `rows` units at a time (memory rows x n, not n x n)."""
    var, mean, r = se.double() ** 2, mean.double(), _ranks(utility)
    weight = torch.zeros_like(r)
    for start in range(0, len(mean), rows):
        i = slice(start, start + rows)
        joint = (var[i].unsqueeze(1) + var.unsqueeze(0)).sqrt()
        gap = mean[i].unsqueeze(1) - mean.unsqueeze(0)
        density = torch.where(joint > 0, torch.exp(-0.5 * (gap / joint.clamp(min=1e-300)) ** 2)
                              / joint.clamp(min=1e-300), 0.0)  # the diagonal adds nothing: |r_i - r_i| = 0
        weight[i] = se.double()[i] * (density * (r[i].unsqueeze(1) - r.unsqueeze(0)).abs()).sum(1)
    return weight


def rank_open(mean: torch.Tensor, se: torch.Tensor, redraws: torch.Tensor, utilities: torch.Tensor,  # noqa: PLR0913 — estimates, their spread and the rule's three settings
              precision: float, confidence: float) -> torch.Tensor:
    """Units `(n,)` that must be made exact (their `redraws` `(n, D)` then 0) for every utility's ρ bound
    (`rho_error`, rows of `utilities` `(U, n)`, NaN where a utility scores no unit) to be at most `precision`: the
    fewest, by weight in a linearised ρ (from the SEs `se`). Units with SE 0 are never among them; `confidence` 1:
    every unit with SE > 0 that some utility scores."""
    n = len(mean)
    rows, mean, se, redraws = _rows(utilities), mean.double(), se.double(), redraws.double()
    scored = torch.zeros(n, dtype=torch.bool)
    for _, ok in rows:
        scored |= ok
    candidates = ((se > 0) & scored).nonzero().flatten()
    if not len(candidates):
        return torch.zeros(n, dtype=torch.bool)
    if confidence >= 1:
        return (se > 0) & scored
    share = torch.zeros(n, dtype=torch.float64)
    for u, ok in rows:
        w = _weights(mean[ok], se[ok], u[ok])
        share[ok] = torch.maximum(share[ok], w / w.sum().clamp(min=1e-300))
    order = candidates[torch.argsort(-share[candidates], stable=True)]

    def fits(k: int) -> bool:
        rest = redraws.clone()
        rest[order[:k]] = 0
        return all(float(torch.quantile(_rho_errors(mean[ok], rest[ok], u[ok]), confidence)) <= precision
                   for u, ok in rows)

    going = torch.zeros(n, dtype=torch.bool)
    if fits(0):
        return going
    lo, hi = 0, len(order)  # fits(len(order)): every candidate exact, no error left
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    going[order[:hi]] = True
    return going


def pooled_rank_open(units: pd.DataFrame, utilities: list[str], metrics: list[str], precision: float,  # noqa: PLR0913 — a UnitTable, the rule's settings and the redraws
                     confidence: float, redraws: dict[str, torch.Tensor]) -> dict[LayerName, torch.Tensor]:
    """The units of one checkpoint's sequential UnitTable (columns layer, unit, mature, the utilities,
    shock_<metric> and se_<metric>; `redraws[metric]` `(rows, D)` in its row order) to measure on the whole probe
    set so that each utility's pooled Spearman ρ (SPEC S5's ALL scope: the mature units it scores, every layer) is
    within `precision` of the exact run's in every metric: unit indices per layer (only layers with some)."""
    mature = torch.tensor(units["mature"].to_numpy(dtype=bool))
    scores = torch.stack([torch.as_tensor(units[u].to_numpy(dtype=float, copy=True)) for u in utilities if u in units]
                         or [torch.full((len(units),), float("nan"))])
    scores[:, ~mature] = float("nan")
    going = torch.zeros(len(units), dtype=torch.bool)
    for m in metrics:
        going |= rank_open(torch.as_tensor(units[shock_column(m)].to_numpy(dtype=float, copy=True)),
                           torch.as_tensor(units[se_column(m)].to_numpy(dtype=float, copy=True)), redraws[m], scores,
                           precision, confidence)
    picked = units[going.numpy()]
    return {layer: torch.as_tensor(g["unit"].to_numpy(copy=True), dtype=torch.long)
            for layer, g in picked.groupby("layer", sort=False)}


def settle_pooled_ranks(units: pd.DataFrame, utilities: list[str], metrics: list[str], precision: float,  # noqa: PLR0913 — the rule's inputs
                        confidence: float, exact: Callable[[dict[LayerName, torch.Tensor]], Shocks], n_probe: int,
                        redraws: dict[str, torch.Tensor], rounds: int = ROUNDS) -> None:
    """Measure on the whole probe set (`exact(chosen)`: the shocks per metric of the units `chosen[layer]`, in that
    order) the units `pooled_rank_open` picks, again on the new shocks until it picks none (at most `rounds`
    times); `units` and `redraws` updated in place: those shocks exact, SE 0, `n_probe` probes, redraws 0.
    `precision` 2: nothing to do."""
    for _ in range(rounds if precision < 2 else 0):
        chosen = pooled_rank_open(units, utilities, metrics, precision, confidence, redraws)
        if not chosen:
            return
        shocks = exact(chosen)
        for name, picked in chosen.items():
            at = ((units["layer"] == name) & units["unit"].isin(picked.tolist())).to_numpy(copy=True)
            rows = units.index[at]
            order = units.loc[rows, "unit"].map({int(u): i for i, u in enumerate(picked.tolist())}).to_numpy()
            for m in metrics:
                units.loc[rows, shock_column(m)] = shocks[m][name].double().cpu().numpy()[order]
                units.loc[rows, se_column(m)] = 0.0
                redraws[m][torch.from_numpy(at)] = 0.0
            units.loc[rows, PROBES_COLUMN] = n_probe
