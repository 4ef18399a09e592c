"""Summary statistics over the UnitTable (SPEC S5): plain functions, no state.

Scopes: ALL pools the mature units of every layer where the utility applies; each layer is
also its own scope. `gap_ratio` is Shock@q(u) / Shock@q(oracle) (>= 1).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

ALL = "ALL"
SUMMARY_COLUMNS = [
    "checkpoint", "utility", "metric", "scope", "n_units", "spearman", "shock_at_q",
    "oracle_shock_at_q", "gap", "gap_ratio", "overlap", "joint_shock", "q", "note",
]


def spearman(utility: np.ndarray, shock: np.ndarray) -> tuple[float, str]:
    """Spearman rho with average ranks for ties; NaN with a reason when undefined (SPEC S5)."""
    if len(utility) < 2:
        return math.nan, "fewer than 2 mature units"
    if np.all(utility == utility[0]):
        return math.nan, "utility is constant over the units"
    if np.all(shock == shock[0]):
        return math.nan, "shock is constant over the units"
    if np.array_equal(utility, shock):  # the oracle: exactly 1, not 1 - 1e-16
        return 1.0, ""
    return float(spearmanr(utility, shock).statistic), ""


def k_at(n_units: int, q: float) -> int:
    """k_l = max(1, ceil(q * n_l)) (SPEC S5)."""
    return max(1, math.ceil(q * n_units - 1e-9))


def bottom_k(utility: np.ndarray, unit: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k lowest utilities, ties broken by unit index (SPEC S5)."""
    return np.lexsort((unit, utility))[:k]


def selection(layer_units: pd.DataFrame, column: str, q: float) -> np.ndarray:
    """Unit indices a utility `column` would reset in one layer's mature units."""
    pos = bottom_k(layer_units[column].to_numpy(), layer_units["unit"].to_numpy(),
                   k_at(len(layer_units), q))
    return layer_units["unit"].to_numpy()[pos]


def _mature_layers(units: pd.DataFrame, column: str) -> dict[str, pd.DataFrame]:
    """Mature units per layer, for the layers where `column` is defined."""
    mature = units[units["mature"]]
    return {name: g for name, g in mature.groupby("layer", sort=False) if g[column].notna().all()}


def selections(units: pd.DataFrame, column: str, q: float) -> dict[str, np.ndarray]:
    """Per-layer Shock@q selection of one checkpoint's UnitTable by `column`."""
    return {name: selection(g, column, q) for name, g in _mature_layers(units, column).items()}


def _scope_row(groups: dict[str, pd.DataFrame], column: str, shock: str, q: float) -> dict:
    chosen, oracle, overlaps = [], [], []
    for g in groups.values():
        mine = set(selection(g, column, q))
        best = set(selection(g, shock, q))
        by_unit = g.set_index("unit")[shock]
        chosen += [by_unit[u] for u in mine]
        oracle += [by_unit[u] for u in best]
        overlaps.append(len(mine & best) / len(mine))
    pooled = pd.concat(groups.values())
    rho, note = spearman(pooled[column].to_numpy(), pooled[shock].to_numpy())
    s, o = float(np.mean(chosen)), float(np.mean(oracle))
    return {
        "n_units": len(pooled), "spearman": rho, "shock_at_q": s, "oracle_shock_at_q": o,
        "gap": s - o, "gap_ratio": s / o if o > 0 else math.nan,
        "overlap": float(np.mean(overlaps)), "note": note,
    }


def utility_column(utility: str, metric: str) -> str:
    """The UnitTable column holding a utility; the oracle is the measured shock (SPEC S3)."""
    return f"shock_{metric}" if utility == "oracle" else utility


def checkpoint_summary(
    units: pd.DataFrame,
    utilities: list[str],
    metrics: list[str],
    q: float = 0.05,
    joint: dict[tuple[str, str], float] | None = None,
) -> pd.DataFrame:
    """SummaryTable rows of one checkpoint's UnitTable; `joint[(utility, metric)]` if measured."""
    checkpoint = units["checkpoint"].iloc[0]
    all_layers = list(dict.fromkeys(units["layer"]))
    rows = []
    for utility in utilities:
        for metric in metrics:
            column, shock = utility_column(utility, metric), f"shock_{metric}"
            groups = _mature_layers(units, column) if column in units else {}
            base = {"checkpoint": checkpoint, "utility": utility, "metric": metric, "q": q}
            if not groups:
                rows.append({**base, "scope": ALL, "n_units": 0, "note": "not applicable to any layer"})
                continue
            missing = [name for name in all_layers if name not in groups]
            row = _scope_row(groups, column, shock, q)
            if missing:
                row["note"] = "; ".join(filter(None, [row["note"], f"not applicable: {', '.join(missing)}"]))
            row["joint_shock"] = (joint or {}).get((utility, metric), math.nan)
            rows.append({**base, "scope": ALL, **row})
            for name, g in groups.items():
                rows.append({**base, "scope": name, **_scope_row({name: g}, column, shock, q),
                             "joint_shock": math.nan})
    return pd.DataFrame(rows).reindex(columns=SUMMARY_COLUMNS)


def mean_and_se(values: pd.Series) -> tuple[float, float, int]:
    """Mean, standard error (sd / sqrt(n)) and n over the non-NaN values (SPEC S5)."""
    v = values.dropna().to_numpy(dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, 0
    se = float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan
    return float(np.mean(v)), se, len(v)
