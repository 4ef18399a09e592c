"""How far a sequential run's summary statistics could move from the probe sampling alone (SPEC S4b, S5).

A sequential run (`sequential`, SPEC S4b) stops units before the full probe set; their shocks are estimates with a
standard error (units.csv `se_<metric>`). `probe_sampling_intervals` redraws every such shock from a normal around
its estimate with its SE (a unit that saw the whole probe set keeps its exact shock), recomputes the pooled S5
statistics with `checkpoint_summary` on each draw, and gives their percentile interval: the uncertainty that
comes from stopping early, beside the statistic itself. It does not include the sampling of units or checkpoints
(the verdict's bootstrap, S5b), and it assumes normal estimates, as the stopping rule does. Its cost is one
`checkpoint_summary` per draw and checkpoint (a second or two per checkpoint of the fixtures' size).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from resetassay.names import ALL, SET_SELECTORS, se_column, shock_column
from resetassay.stats.summary import checkpoint_summary

__all__ = ["SAMPLED_STATS", "probe_sampling_intervals"]

SAMPLED_STATS = ("spearman", "shock_at_q", "oracle_shock_at_q", "gap_ratio")
DRAWS = 100
LEVEL = 0.95


def probe_sampling_intervals(units: pd.DataFrame, summary: pd.DataFrame, q: float, draws: int = DRAWS,
                             seed: int = 0) -> pd.DataFrame:
    """Per checkpoint, utility, metric and statistic of `SAMPLED_STATS`: the pooled value of `summary` (scope ALL)
    and the `LEVEL` percentile interval over `draws` redraws of the early-stopped units' shocks (SPEC S4b). Empty
    where units.csv holds no standard errors (an exact run).

    Columns: checkpoint, utility, metric, statistic, value, low, high.
    """
    columns = ["checkpoint", "utility", "metric", "statistic", "value", "low", "high"]
    rng = np.random.default_rng(seed)
    rows = []
    for checkpoint, mine in units.groupby("checkpoint", sort=False):
        stored = summary[(summary["checkpoint"] == checkpoint) & (summary["scope"] == ALL)]
        metrics = [m for m in dict.fromkeys(stored["metric"])
                   if se_column(m) in mine and bool((mine[se_column(m)].fillna(0) > 0).any())]
        if not metrics:
            continue
        utilities = [u for u in dict.fromkeys(stored["utility"]) if u not in SET_SELECTORS]  # these need the model
        drawn = pd.concat([_pooled(_redrawn(mine, metrics, rng), utilities, metrics, q) for _ in range(draws)])
        for (utility, metric), sample in drawn.groupby(["utility", "metric"], sort=False):
            point = stored[(stored["utility"] == utility) & (stored["metric"] == metric)]
            for stat in SAMPLED_STATS:
                values = sample[stat].to_numpy(dtype=float)
                values = values[np.isfinite(values)]
                low, high = (np.percentile(values, [50 * (1 - LEVEL), 50 * (1 + LEVEL)]) if len(values)
                             else (np.nan, np.nan))
                value = float(point[stat].iloc[0]) if len(point) else np.nan
                rows.append([checkpoint, utility, metric, stat, value, float(low), float(high)])
    return pd.DataFrame(rows, columns=columns)


def _redrawn(units: pd.DataFrame, metrics: list[str], rng: np.random.Generator) -> pd.DataFrame:
    """`units` with each metric's shocks drawn from normals around them with their SE (0: kept as they are)."""
    redrawn = {}
    for m in metrics:
        se = np.nan_to_num(units[se_column(m)].to_numpy(dtype=float))
        redrawn[shock_column(m)] = units[shock_column(m)].to_numpy(dtype=float) + se * rng.standard_normal(len(se))
    return units.assign(**redrawn)


def _pooled(units: pd.DataFrame, utilities: list[str], metrics: list[str], q: float) -> pd.DataFrame:
    """The pooled (scope ALL) S5 rows of one checkpoint's UnitTable: utility, metric and `SAMPLED_STATS`."""
    table = checkpoint_summary(units, utilities, metrics, q)
    return table.loc[table["scope"] == ALL, ["utility", "metric", *SAMPLED_STATS]]
