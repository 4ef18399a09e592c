"""What a report holds, independent of its format (SPEC S5): `Block`s, and the tables and cells they show.

Aggregated statistics (`summary.aggregate`) become utility x metric tables of "mean ± SE" cells,
with the best value of each column marked; markdown.py and html.py render the same blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from resetassay.names import ORACLE, utility_order

COLUMNS = {
    "spearman": ("ρ pooled", "max"),
    "layer_spearman": ("ρ per layer", "max"),
    "shock_at_q": ("Shock@q", "min"),
    "oracle_shock_at_q": ("oracle Shock@q", None),
    "gap": ("gap", "min"),
    "gap_ratio": ("ratio", "min"),
    "overlap": ("top-k overlap", "max"),
    "joint_shock": ("joint Shock@q", "min"),
}
STEP_STATS = ("spearman", "shock_at_q")


def q_label(q: float) -> str:
    """5% for 0.05."""
    return f"{100 * q:g}%"


@dataclass
class Block:
    """One piece of a report, rendered by `markdown.markdown_document` and `html.html_document`."""

    kind: str  # "h1" | "h2" | "h3" | "text" | "code" | "table" | "figure"
    text: str = ""  # heading, paragraph, code, or a figure's caption
    table: pd.DataFrame | None = None
    best: pd.DataFrame | None = None  # same shape as `table`: True where a cell is best in its column
    keys: int = 1  # leading label columns of `table`
    path: Path | None = None  # a figure, relative to the run directory


def _number(value: float, digits: int = 3) -> str:
    """Fixed decimals for magnitudes in [0.01, 1000), scientific otherwise."""
    if value == 0 or 0.01 <= abs(value) < 1000:
        return f"{value:.{digits}f}"
    return f"{value:.{max(digits - 1, 1)}e}"


def mean_se_text(mean: float, se: float, n: int, n_group: int) -> str:
    """"0.987 ± 0.004" or "(4.47 ± 1.30)e-03" (SE to the mean's precision; "<0.001" when it rounds to 0);
    "(n=k)" when only k of the group's checkpoints have a value; "n/a" when none has."""
    if n == 0 or math.isnan(mean):
        return "n/a"
    text = _number(mean)
    if not math.isnan(se):
        if "e" in text:
            mantissa, exponent = text.split("e")
            text = f"({mantissa} ± {se / 10 ** int(exponent):.2f})e{exponent}"
        else:
            text += f" ± {se:.3f}" if se >= 0.0005 or se == 0 else " ± <0.001"
    return text if n == n_group else f"{text} (n={n})"


def _cells(agg: pd.DataFrame, stat: str) -> list[str]:
    return [mean_se_text(r[stat], r[f"{stat}_se"], int(r[f"{stat}_n"]), int(r["n"])) if not pd.isna(r["n"])
            else "n/a" for _, r in agg.iterrows()]


def best_cells(agg: pd.DataFrame, stat: str, better: str | None) -> np.ndarray:
    """True where a row's mean is the best of its metric (max or min, ties all marked); the oracle never competes."""
    marked = np.zeros(len(agg), dtype=bool)
    if better is None:
        return marked
    values = agg[stat].to_numpy(dtype=float)
    for metric in agg["metric"].unique():
        candidates = (agg["metric"] == metric).to_numpy() & (agg["utility"] != ORACLE).to_numpy() & ~np.isnan(values)
        if candidates.any():
            target = values[candidates].max() if better == "max" else values[candidates].min()
            marked |= candidates & np.isclose(values, target, rtol=1e-12, atol=0)
    return marked


def _ordered(agg: pd.DataFrame) -> pd.DataFrame:
    """Rows grouped by metric (run order), utilities in registry order within each."""
    rank = {u: i for i, u in enumerate(utility_order(agg["utility"]))}
    metric_rank = {m: i for i, m in enumerate(dict.fromkeys(agg["metric"]))}
    key = agg["metric"].map(metric_rank) * len(rank) + agg["utility"].map(rank)
    return agg.assign(_key=key).sort_values("_key", kind="stable").drop(columns="_key").reset_index(drop=True)


def family_table(agg: pd.DataFrame, q: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Utility x metric for one family: every COLUMN as mean ± SE, and where each column's best is."""
    agg = _ordered(agg)
    table = agg[["utility", "metric", "n"]].copy()
    best = pd.DataFrame(False, index=table.index, columns=table.columns)
    for stat, (label, better) in COLUMNS.items():
        header = label.replace("@q", f"@{q_label(q)}")
        table[header] = _cells(agg, stat)
        best[header] = best_cells(agg, stat, better)
    return table, best


def pivot_table(agg: pd.DataFrame, over: str, stats: tuple[str, ...], header: str,
                q: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Utility x metric rows, one column per (stat, value of `over`); `header` formats the column name,
    whose "@q" becomes e.g. "@5%" when `q` is given."""
    keys = _ordered(agg.drop_duplicates(["utility", "metric"]))[["utility", "metric"]]
    table = keys.copy()
    best = pd.DataFrame(False, index=table.index, columns=table.columns)
    for stat in stats:
        label, better = COLUMNS[stat]
        for value, g in agg.groupby(over, sort=True):
            g = keys.merge(g, on=["utility", "metric"], how="left")
            if q is not None:
                label = COLUMNS[stat][0].replace("@q", f"@{q_label(q)}")
            name = header.format(label=label, value=value, n=int(g["n"].max()))
            table[name] = _cells(g, stat)
            best[name] = best_cells(g, stat, better)
    return table, best


def checkpoint_rho_table(stats: pd.DataFrame) -> pd.DataFrame:
    """Pooled Spearman ρ per checkpoint and metric, one column per utility."""
    wide = stats.set_index(["family", "step", "checkpoint", "metric", "utility"])["spearman"].unstack("utility")
    wide = wide.reindex(columns=utility_order(stats["utility"])).reset_index()
    wide.columns.name = None
    metric_rank = {m: i for i, m in enumerate(dict.fromkeys(stats["metric"]))}
    wide = wide.sort_values(["family", "step", "checkpoint", "metric"], key=lambda c: c.map(metric_rank)
                            if c.name == "metric" else c, kind="stable")
    return wide.round(3).astype(object).where(wide.notna(), "")


def provenance_table(checkpoints: pd.DataFrame) -> pd.DataFrame:
    """Per checkpoint: where it is, what it is, which data and split (seeds, sizes) it was assayed on."""
    keep = [c for c in checkpoints.columns
            if c in ("checkpoint", "path", "family", "step") or c.startswith(("data_", "split_"))]
    table = checkpoints[keep].dropna(axis=1, how="all")
    return table.astype(object).where(table.notna(), "")


