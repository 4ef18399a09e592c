"""Greedy set-aware selection (SPEC S5, "Set-aware selection"): GXD recomputed with the picked units clamped.

Shock@q resets each layer's `k_l` lowest-GXD mature units, all scored on the intact network. The
greedy selector `gxd_greedy` picks the same number of units per layer, in rounds: each round, with
every unit picked so far (in every layer) clamped to its reference, one calibration pass
recomputes GXD (`utilities.calibration_stats`, the clamp applied by `lesion.plain.clamped`), and
every layer still short of its `k_l` picks its next `m_l` lowest-scoring mature units not yet
picked (ties by unit index). `m_l` is `every` when given, else `ceil(k_l / ROUNDS)`: at most
ROUNDS calibration passes, whatever the width. With `m_l >= k_l` one round, on the intact network,
picks exactly gxd's Shock@q selection.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from torch import nn

from resetassay.discovery.units import UnitLayer
from resetassay.lesion.plain import clamped
from resetassay.scoring.calibration import calibration_stats
from resetassay.shapes import Refs
from resetassay.stats.summary import bottom_k, k_at

ROUNDS = 4  # without `every`: each layer's k_l picks spread over at most this many rounds
Picks = dict[str, np.ndarray]  # layer -> unit indices, in the order picked


def candidate_pool(units: pd.DataFrame) -> Picks:
    """Per layer of one checkpoint's UnitTable, its mature units: what Shock@q and the greedy pick from (SPEC S5)."""
    mature = units[units["mature"].astype(bool)]
    return {name: g["unit"].to_numpy() for name, g in mature.groupby("layer", sort=False)}


def picks_per_round(k: int, every: int | None) -> int:
    """m_l: units a layer with quota `k` picks per round (`every`, else ceil(k / ROUNDS))."""
    return every if every is not None else max(1, math.ceil(k / ROUNDS))


def _conditional_gxd(model: nn.Module, layers: list[UnitLayer], scored: list[UnitLayer], refs: Refs,
                    x: torch.Tensor, y: torch.Tensor, clamp: Picks, batch_size: int = 512) -> dict[str, torch.Tensor]:
    """GXD `(n_units,)` of each layer of `scored` on the calibration set `x`, `y`, with the units `clamp[layer]` of
    `layers` clamped to their references `refs` (SPEC S3, S4); a clamped unit's own GXD is 0 (h = r)."""
    device = next(model.parameters()).device
    by_name = {layer.name: layer for layer in layers}
    held = []
    for name, units in clamp.items():
        if len(units):
            idx = torch.as_tensor(units, device=device)
            held.append((by_name[name], idx, refs[name][idx]))
    with clamped(held):
        stats = calibration_stats(model, scored, x, y, refs, {"gxd"}, batch_size=batch_size)
    return {name: s.gxd.cpu() for name, s in stats.items()}


def greedy_selection(model: nn.Module, layers: list[UnitLayer], refs: Refs, x: torch.Tensor, y: torch.Tensor,
                     pool: Picks, q: float, every: int | None = None, batch_size: int = 512) -> Picks:
    """The greedy set of each layer of `pool` (its candidate units): k_l = max(1, ceil(q · n_l)) units, picked
    `picks_per_round` at a time by GXD conditional on every unit picked before, in all layers (module docstring).

    Args:
        model: in eval mode; `layers` its unit layers (those of `pool` among them); refs: r per layer (SPEC S2).
        x, y: the calibration set and its targets (as `utilities.calibration_stats` takes them).
        pool: layer -> candidate unit indices (the mature ones, `candidate_pool`).
        every: m, picks per layer between recomputations; None: ceil(k_l / ROUNDS).
        q: the fraction of each layer's units to pick.
        batch_size: examples per forward pass.
    """
    by_name = {layer.name: layer for layer in layers}
    quota = {name: k_at(len(units), q) for name, units in pool.items() if len(units)}
    picked: dict[str, list[int]] = {name: [] for name in quota}
    while short := [name for name in quota if len(picked[name]) < quota[name]]:
        scores = _conditional_gxd(model, layers, [by_name[name] for name in short], refs, x, y,
                                 {name: np.asarray(p, dtype=np.int64) for name, p in picked.items()}, batch_size)
        for name in short:
            rest = np.setdiff1d(pool[name], picked[name])
            take = min(picks_per_round(quota[name], every), quota[name] - len(picked[name]))
            picked[name] += rest[bottom_k(scores[name].numpy()[rest], rest, take)].tolist()
    return {name: np.asarray(p, dtype=np.int64) for name, p in picked.items()}
