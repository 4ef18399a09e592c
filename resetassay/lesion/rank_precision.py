"""Ranks to a stated precision (SPEC S4b): which units of a sequential run must see more probe examples so that a
layer's Spearman ρ of every utility is within ±`precision` of the exact run's.

    going = rank_open(mean, se, utilities, precision=0.01, confidence=0.95)

A unit's shock is an estimate `mean ± se`. How far the layer's ρ(u, shock) could be from the exact one is read off a
parametric bootstrap: `DRAWS` redraws of every estimate from a normal with its SE (seeded, the same draws for every
question asked of one layer), ρ recomputed on each; the `confidence` quantile of |ρ(redraw) - ρ(estimates)| is the
error bound (`rho_error`). When it exceeds `precision` for some utility, the units whose errors move ρ most go on:
units are ordered by their weight in a linearised ρ (a unit's error moves its rank by the units around it, each
weighted by how far apart their utility ranks are), and the fewest first units whose bound, once they are exact
(SE 0), fits every utility are taken, found by bisection.
"""

from __future__ import annotations

import torch

__all__ = ["DRAWS", "rank_open", "rho_error"]

DRAWS = 256


def _ranks(values: torch.Tensor) -> torch.Tensor:
    """Average ranks along the last dimension (ties share their mean rank), as Spearman's ρ uses them."""
    from scipy.stats import rankdata  # here: importing scipy.stats costs ~0.7 s

    return torch.from_numpy(rankdata(values.double().numpy(), axis=-1)).double()


def _centred(ranks: torch.Tensor) -> torch.Tensor:
    """Ranks minus their mean, scaled to unit norm along the last dimension (0 where they are all tied)."""
    c = ranks - ranks.mean(-1, keepdim=True)
    return c / c.norm(dim=-1, keepdim=True).clamp(min=1e-300)


def _rho_errors(mean: torch.Tensor, se: torch.Tensor, utilities: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """|ρ(u, mean + se · noise[m]) - ρ(u, mean)| `(U, M)` for the utilities `(U, n)` and the draws `(M, n)`."""
    u = _centred(_ranks(utilities))
    at = u @ _centred(_ranks(mean.unsqueeze(0))).T  # (U, 1)
    drawn = u @ _centred(_ranks(mean.unsqueeze(0) + se.unsqueeze(0) * noise)).T  # (U, M)
    return (drawn - at).abs()


def _noise(n: int, seed: int) -> torch.Tensor:
    return torch.randn(DRAWS, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def rho_error(mean: torch.Tensor, se: torch.Tensor, utilities: torch.Tensor, confidence: float,
              seed: int = 0) -> torch.Tensor:
    """The bound `(U,)` on how far each utility's Spearman ρ with the shocks estimated as `mean ± se` `(n,)` could
    be from the exact shocks': the `confidence` quantile of |ρ(redraw) - ρ(mean)| over `DRAWS` seeded redraws."""
    errors = _rho_errors(mean.double(), se.double(), utilities.double(), _noise(len(mean), seed))
    return torch.quantile(errors, confidence, dim=1)


def _weights(mean: torch.Tensor, se: torch.Tensor, utilities: torch.Tensor) -> torch.Tensor:
    """Each unit's weight `(n,)` in a linearised ρ: its SE times Σ_j φ_ij |r_i - r_j|, φ_ij the normal density of
    the pair's gap over its joint SE (how likely a small error swaps i and j), r a utility's ranks; the largest
    share of any utility's total."""
    var = se.double() ** 2
    joint = (var.unsqueeze(1) + var.unsqueeze(0)).sqrt()
    gap = mean.double().unsqueeze(1) - mean.double().unsqueeze(0)
    density = torch.where(joint > 0, torch.exp(-0.5 * (gap / joint.clamp(min=1e-300)) ** 2)
                          / joint.clamp(min=1e-300), 0.0)
    density.fill_diagonal_(0.0)
    r = _ranks(utilities)
    weight = torch.stack([se.double() * (density * (ru.unsqueeze(1) - ru.unsqueeze(0)).abs()).sum(1) for ru in r])
    return (weight / weight.sum(1, keepdim=True).clamp(min=1e-300)).amax(0)


def rank_open(mean: torch.Tensor, se: torch.Tensor, utilities: torch.Tensor, precision: float, confidence: float,
              seed: int = 0) -> torch.Tensor:
    """Units `(n,)` that must see more probe examples for every utility's ρ bound (`rho_error`) to be at most
    `precision` (rows of `utilities` `(U, n)` holding NaN are left out): the fewest, by weight in a linearised ρ,
    whose SE set to 0 makes it so. Units with SE 0 are never among them; `confidence` 1: every unit with SE > 0."""
    n = len(mean)
    open_ = se > 0
    rows = [u for u in utilities if not bool(torch.isnan(u).any())]
    if n < 2 or not rows or not bool(open_.any()):
        return torch.zeros(n, dtype=torch.bool)
    if confidence >= 1:
        return open_
    u, mean, se = torch.stack(rows).double(), mean.double(), se.double()
    noise = _noise(n, seed)
    candidates = open_.nonzero().flatten()
    order = candidates[torch.argsort(-_weights(mean, se, u)[candidates], stable=True)]

    def fits(k: int) -> bool:
        rest = se.clone()
        rest[order[:k]] = 0
        return bool((torch.quantile(_rho_errors(mean, rest, u, noise), confidence, dim=1) <= precision).all())

    lo, hi = 0, len(order)  # fits(len(order)): every open unit exact, no error left
    if fits(0):
        return torch.zeros(n, dtype=torch.bool)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    going = torch.zeros(n, dtype=torch.bool)
    going[order[:hi]] = True
    return going & open_

