"""Ranks to a stated precision (SPEC S4b): which early-stopped units of a sequential run must be measured on the
whole probe set so that the pooled Spearman ρ of every utility is within ±`precision` of the exact run's.

    going = rank_open(mean, se, utilities, precision=0.01, confidence=0.95)   # units (n,) -> which must go on
    chosen = pooled_rank_open(units, utilities, metrics, precision, confidence)  # a UnitTable -> per layer
    settle_pooled_ranks(units, utilities, metrics, precision, confidence, exact, n_probe)  # measured, in place

A unit's shock is an estimate `mean ± se`. How far ρ(u, shock) over a set of units could be from the exact one is read
off a parametric bootstrap: `DRAWS` redraws of every estimate from a normal with its SE (seeded), ρ recomputed on each;
the `confidence` quantile of |ρ(redraw) - ρ(estimates)| is the bound (`rho_error`). When it exceeds `precision` for
some utility, units are ordered by their weight in a linearised ρ (a unit's error moves its rank by the units around
it, each weighted by how far apart their utility ranks are), and the fewest first units whose bound, once they are
exact (SE 0), fits every utility are taken, found by bisection. Each utility reads only the units it scores (NaN
elsewhere: a layer it does not apply to, an immature unit).
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import torch

from resetassay.lesion.sequential import BLOCKS, PROBES_COLUMN
from resetassay.names import se_column, shock_column
from resetassay.shapes import LayerName, Shocks

__all__ = ["DRAWS", "ROUNDS", "pooled_rank_open", "rank_open", "rho_error", "settle_pooled_ranks"]

DRAWS = 256
ROUNDS = 4  # checks of the pooled ranks, each on the shocks the last one made exact


def _ranks(values: torch.Tensor) -> torch.Tensor:
    """Average ranks along the last dimension (ties share their mean rank), as Spearman's ρ uses them."""
    from scipy.stats import rankdata  # here: importing scipy.stats costs ~0.7 s

    return torch.from_numpy(rankdata(values.double().numpy(), axis=-1)).double()


def _centred(ranks: torch.Tensor) -> torch.Tensor:
    """Ranks minus their mean, scaled to unit norm along the last dimension (0 where they are all tied)."""
    c = ranks - ranks.mean(-1, keepdim=True)
    return c / c.norm(dim=-1, keepdim=True).clamp(min=1e-300)


def _rho_errors(mean: torch.Tensor, se: torch.Tensor, utility: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """|ρ(utility, mean + se · noise[m]) - ρ(utility, mean)| `(M,)` over the draws `noise` `(M, n)`."""
    u = _centred(_ranks(utility))
    at = _centred(_ranks(mean)) @ u
    return (_centred(_ranks(mean.unsqueeze(0) + se.unsqueeze(0) * noise)) @ u - at).abs()


def _noise(n: int, seed: int, dof: torch.Tensor | None = None) -> torch.Tensor:
    """`(DRAWS, n)` seeded draws: standard normal, or Student-t with each unit's degrees of freedom `dof` `(n,)`
    (the SE of a mean of few block means is itself uncertain: its estimate has `dof` degrees of freedom)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if dof is None:
        return torch.from_numpy(rng.standard_normal((DRAWS, n)))
    df = np.broadcast_to(np.nan_to_num(dof.double().clamp(min=1).numpy(), posinf=1e9), (DRAWS, n))
    return torch.from_numpy(rng.standard_t(df))


def _rows(utilities: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(scores, units it scores) of each utility row that scores at least 2 units."""
    rows = [(u.double(), torch.isfinite(u)) for u in utilities]
    return [(u, ok) for u, ok in rows if int(ok.sum()) >= 2]


def rho_error(mean: torch.Tensor, se: torch.Tensor, utilities: torch.Tensor, confidence: float,
              seed: int = 0, dof: torch.Tensor | None = None) -> torch.Tensor:
    """The bound `(U,)` on how far each utility's Spearman ρ with the shocks estimated as `mean ± se` `(n,)` could
    be from the exact shocks': the `confidence` quantile of |ρ(redraw) - ρ(mean)| over `DRAWS` seeded redraws
    (normal, or Student-t with `dof`), on the units the utility scores (NaN where it scores fewer than 2)."""
    noise = _noise(len(mean), seed, dof)
    out = torch.full((len(utilities),), torch.nan, dtype=torch.float64)
    for i, u in enumerate(utilities.double()):
        ok = torch.isfinite(u)
        if int(ok.sum()) >= 2:
            errors = _rho_errors(mean.double()[ok], se.double()[ok], u[ok], noise[:, ok])
            out[i] = torch.quantile(errors, confidence)
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


def rank_open(mean: torch.Tensor, se: torch.Tensor, utilities: torch.Tensor, precision: float, confidence: float,
              seed: int = 0, dof: torch.Tensor | None = None) -> torch.Tensor:
    """Units `(n,)` that must be made exact for every utility's ρ bound (`rho_error`, rows of `utilities` `(U, n)`,
    NaN where a utility scores no unit; `dof` the SE's degrees of freedom) to be at most `precision`: the fewest,
    by weight in a linearised ρ. Units with SE 0 are never among them; `confidence` 1: every unit with SE > 0 that
    some utility scores."""
    n = len(mean)
    rows, mean, se = _rows(utilities), mean.double(), se.double()
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
    noise = _noise(n, seed, dof)

    def fits(k: int) -> bool:
        rest = se.clone()
        rest[order[:k]] = 0
        return all(float(torch.quantile(_rho_errors(mean[ok], rest[ok], u[ok], noise[:, ok]), confidence))
                   <= precision for u, ok in rows)

    going = torch.zeros(n, dtype=torch.bool)
    if fits(0):
        return going
    lo, hi = 0, len(order)  # fits(len(order)): every candidate exact, no error left
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    going[order[:hi]] = True
    return going


def pooled_rank_open(units: pd.DataFrame, utilities: list[str], metrics: list[str], precision: float,
                     confidence: float, seed: int = 0, blocks: int = BLOCKS) -> dict[LayerName, torch.Tensor]:
    """The units of one checkpoint's sequential UnitTable (columns layer, unit, mature, the utilities,
    shock_<metric>, se_<metric> and probes) to measure on the whole probe set so that each utility's pooled
    Spearman ρ (SPEC S5's ALL scope: the mature units it scores, every layer) is within `precision` of the exact
    run's in every metric: unit indices per layer (only layers with some). A unit's SE has as many degrees of
    freedom as the probe blocks it saw (of min(`blocks`, P), `sequential.schedule`) less one."""
    mature = torch.tensor(units["mature"].to_numpy(dtype=bool))
    scores = torch.stack([torch.as_tensor(units[u].to_numpy(dtype=float)) for u in utilities if u in units]
                         or [torch.full((len(units),), float("nan"))])
    scores[:, ~mature] = float("nan")
    probes = torch.as_tensor(units[PROBES_COLUMN].to_numpy(dtype=float))
    n_blocks = min(blocks, int(probes.max()))
    dof = (probes / probes.max() * n_blocks).round() - 1
    going = torch.zeros(len(units), dtype=torch.bool)
    for m in metrics:
        going |= rank_open(torch.as_tensor(units[shock_column(m)].to_numpy(dtype=float)),
                           torch.as_tensor(units[se_column(m)].to_numpy(dtype=float)), scores, precision,
                           confidence, seed, dof)
    picked = units[going.numpy()]
    return {layer: torch.as_tensor(g["unit"].to_numpy(), dtype=torch.long)
            for layer, g in picked.groupby("layer", sort=False)}


def settle_pooled_ranks(units: pd.DataFrame, utilities: list[str], metrics: list[str], precision: float,
                        confidence: float, exact: Callable[[dict[LayerName, torch.Tensor]], Shocks], n_probe: int,
                        seed: int = 0, rounds: int = ROUNDS) -> None:
    """Measure on the whole probe set (`exact(chosen)`: the shocks per metric of the units `chosen[layer]`, in that
    order) the units `pooled_rank_open` picks, again on the new shocks until it picks none (at most `rounds`
    times); `units` updated in place: those shocks exact, SE 0, `n_probe` probes. `precision` 2: nothing to do."""
    for _ in range(rounds if precision < 2 else 0):
        chosen = pooled_rank_open(units, utilities, metrics, precision, confidence, seed)
        if not chosen:
            return
        shocks = exact(chosen)
        for name, picked in chosen.items():
            rows = units.index[(units["layer"] == name) & units["unit"].isin(picked.tolist())]
            order = units.loc[rows, "unit"].map({int(u): i for i, u in enumerate(picked.tolist())}).to_numpy()
            for m in metrics:
                units.loc[rows, shock_column(m)] = shocks[m][name].double().cpu().numpy()[order]
                units.loc[rows, se_column(m)] = 0.0
            units.loc[rows, PROBES_COLUMN] = n_probe
