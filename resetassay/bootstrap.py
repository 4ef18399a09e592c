"""Bootstrap confidence intervals of the oracle ratio on the `common` scope (SPEC S5).

The ratio Shock@q(u) / Shock@q(oracle) ranks the utilities in the report's headline. Its
interval is a 95% percentile bootstrap (`scipy.stats.bootstrap`, seeded: the same tables give
the same intervals), resampling one of two things:

- **checkpoints**, when a family has at least `MIN_CHECKPOINTS` with a value: the family's mean
  of the per-checkpoint ratios, checkpoints drawn with replacement;
- **units**, with fewer checkpoints: in every checkpoint, the mature units of each `common` layer
  are drawn with replacement within that layer (a layer keeps its size n_l, so k_l too), both
  per-layer bottom-k selections (the utility's and the oracle's) are made again on the draw,
  and the family's value is the mean over its checkpoints of their ratios. A layer of one unit
  is the same in every draw.

Resamples are `RESAMPLES` and computed in batches, so rendering a report stays fast and bounded
in memory at ResNet scale (thousands of units).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from resetassay.names import COMMON, ORACLE, shock_column, utility_column
from resetassay.summary import common_units, k_at, with_checkpoint_info

MIN_CHECKPOINTS = 5
RESAMPLES = 999
LEVEL = 0.95
BATCH = 100  # resamples drawn at once


@dataclass(frozen=True)
class _Layer:
    """One layer's mature units, as ranks: selection order by utility and by shock (ties by unit index)."""

    by_utility: np.ndarray  # rank of each unit in the utility's order
    by_shock: np.ndarray  # rank of each unit in the oracle's order
    shock: np.ndarray
    k: int


def _layers(units: pd.DataFrame, utility: str, metric: str, q: float) -> list[_Layer]:
    column, shock = utility_column(utility, metric), shock_column(metric)
    layers = []
    for _, g in units.groupby("layer", sort=False):
        unit = g["unit"].to_numpy()
        values = g[shock].to_numpy(dtype=float)
        ranks = [np.empty(len(g), dtype=np.int64) for _ in range(2)]
        for r, key in zip(ranks, (g[column].to_numpy(dtype=float), values), strict=True):
            r[np.lexsort((unit, key))] = np.arange(len(g))
        layers.append(_Layer(ranks[0], ranks[1], values, k_at(len(g), q)))
    return layers


def _selected_sum(ranks: np.ndarray, shock: np.ndarray, k: int) -> np.ndarray:
    """Sum of the shocks of the k lowest-ranked draws, per row of `ranks` (B, n) / `shock` (B, n)."""
    if k >= ranks.shape[-1]:
        return shock.sum(axis=-1)
    chosen = np.argpartition(ranks, k - 1, axis=-1)[..., :k]
    return np.take_along_axis(shock, chosen, axis=-1).sum(axis=-1)


def _ratio(layers: list[_Layer], draws: list[np.ndarray | None]) -> np.ndarray:
    """Shock@q / oracle Shock@q of one checkpoint for each draw; `draws[j]` (B, n_j) holds unit positions of
    layer j (None: the layer as it is)."""
    chosen = oracle = 0.0
    for layer, idx in zip(layers, draws, strict=True):
        idx = np.arange(len(layer.shock))[None, :] if idx is None else idx
        shock = layer.shock[idx]
        chosen = chosen + _selected_sum(layer.by_utility[idx], shock, layer.k)
        oracle = oracle + _selected_sum(layer.by_shock[idx], shock, layer.k)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(oracle > 0, chosen / np.where(oracle > 0, oracle, 1.0), np.nan)


def _unit_interval(checkpoints: list[list[_Layer]], seed: int) -> tuple[float, float]:
    """The units scheme: samples are the unit positions of every layer with more than one unit."""
    slots = [(c, j) for c, layers in enumerate(checkpoints) for j, layer in enumerate(layers) if len(layer.shock) > 1]
    if not slots:
        return math.nan, math.nan

    def statistic(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        draws: list[list[np.ndarray | None]] = [[None] * len(layers) for layers in checkpoints]
        for (c, j), sample in zip(slots, samples, strict=True):
            draws[c][j] = np.moveaxis(sample, axis, -1).astype(np.int64)
        batch = next(iter(samples)).shape[:-1]
        ratios = [np.broadcast_to(_ratio(layers, d), batch) for layers, d in zip(checkpoints, draws, strict=True)]
        return np.mean(ratios, axis=0)

    data = tuple(np.arange(len(checkpoints[c][j].shock), dtype=float) for c, j in slots)
    return _percentile(data, statistic, seed)


def _percentile(data: tuple[np.ndarray, ...], statistic, seed: int) -> tuple[float, float]:
    from scipy.stats import DegenerateDataWarning, bootstrap

    with warnings.catch_warnings():  # resamples of undefined ratio (oracle Shock@q 0): no interval, said by NaN
        warnings.simplefilter("ignore", DegenerateDataWarning)
        result = bootstrap(data, statistic, vectorized=True, n_resamples=RESAMPLES, batch=BATCH,
                           confidence_level=LEVEL, method="percentile", rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return float(low), float(high)


def ratio_intervals(units: pd.DataFrame, summary: pd.DataFrame, checkpoints: pd.DataFrame, q: float,
                    seed: int = 0) -> pd.DataFrame:
    """Per family, utility and metric: the mean `common`-scope oracle ratio over checkpoints and its 95% interval.

    `summary` holds the `common` rows at fraction `q` (`summary.summary_at_q`); `units` the UnitTable.
    Columns: family, utility, metric, ratio, low, high, n (checkpoints with a value), resampled
    ("checkpoints" or "units"). The oracle's rows are left out (its ratio is 1 by definition).
    """
    common = with_checkpoint_info(summary[summary["scope"] == COMMON], checkpoints)
    shared = common_units(units, summary)
    rows = []
    for (family, utility, metric), g in common.groupby(["family", "utility", "metric"], sort=False):
        if utility == ORACLE:
            continue
        values = g.dropna(subset=["gap_ratio"])
        row = {"family": family, "utility": utility, "metric": metric, "n": len(values),
               "ratio": float(values["gap_ratio"].mean()) if len(values) else math.nan,
               "low": math.nan, "high": math.nan, "resampled": ""}
        if len(values) >= MIN_CHECKPOINTS:
            row["resampled"] = "checkpoints"
            ratios = values["gap_ratio"].to_numpy(dtype=float)
            row["low"], row["high"] = _percentile((ratios,), lambda x, axis=-1: np.mean(x, axis=axis), seed)
        elif len(values):
            row["resampled"] = "units"
            row["low"], row["high"] = _unit_interval(
                [_layers(shared[shared["checkpoint"] == ckpt], utility, metric, q) for ckpt in values["checkpoint"]],
                seed)
        rows.append(row)
    return pd.DataFrame(rows, columns=["family", "utility", "metric", "ratio", "low", "high", "n", "resampled"])
