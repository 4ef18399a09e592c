"""What a report holds, independent of its format (SPEC S5): `Block`s, and the tables and cells they show.

Per-checkpoint statistics (`summary.checkpoint_stats`) become utility x metric tables, a cell per
group of checkpoints (mean ± SE from three on, the values below that), with the unique best value
of each column marked; markdown.py and html.py render the same blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from resetassay.names import ORACLE, utility_order
from resetassay.stats.summary import mean_and_se

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
MIN_SE = 3  # checkpoints needed before a cell shows mean ± SE rather than the values


def q_label(q: float) -> str:
    """5% for 0.05."""
    return f"{100 * q:g}%"


@dataclass
class Block:
    """One piece of a report, rendered by `markdown.markdown_document` and `html.html_document`."""

    kind: str  # "h1" | "h2" | "h3" | "text" | "list" | "code" | "table" | "figure"
    text: str = ""  # heading, paragraph, code, or a figure's caption
    items: list[str] = field(default_factory=list)  # a list's entries
    table: pd.DataFrame | None = None
    best: pd.DataFrame | None = None  # same shape as `table`: True where a cell is best in its column
    keys: int = 1  # leading label columns of `table`
    path: Path | None = None  # a figure, relative to the run directory
    fold: bool = False  # an h2 whose section HTML shows folded (<details>), until the next h2


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


def stat_cell(values: np.ndarray, n_group: int) -> str:
    """A statistic over a group's checkpoints as the document shows it (SPEC S5): mean ± SE where at least
    `MIN_SE` checkpoints have a value, else the values themselves ("0.577 / 0.805"); "(n=k)" when only k of
    the group's `n_group` checkpoints have one; "n/a" when none has. aggregate.csv keeps every SE."""
    values = values[~np.isnan(values)]
    if len(values) >= MIN_SE:
        mean, se, n = mean_and_se(pd.Series(values))
        return mean_se_text(mean, se, n, n_group)
    if len(values) == 0:
        return "n/a"
    text = " / ".join(_number(v) for v in values)
    return text if len(values) == n_group else f"{text} (n={len(values)})"


def best_cells(means: np.ndarray, metrics: np.ndarray, utilities: np.ndarray, better: str | None
               ) -> tuple[np.ndarray, np.ndarray]:
    """(best, tied): True where a row's mean is the unique best of its metric (max or min); where several rows share
    the best value, none is best and those are tied. The oracle never competes."""
    best = np.zeros(len(means), dtype=bool)
    tied = np.zeros(len(means), dtype=bool)
    if better is None:
        return best, tied
    for metric in dict.fromkeys(metrics):
        candidates = (metrics == metric) & (utilities != ORACLE) & ~np.isnan(means)
        if candidates.any():
            target = means[candidates].max() if better == "max" else means[candidates].min()
            hits = candidates & np.isclose(means, target, rtol=1e-12, atol=0)
            (best if hits.sum() == 1 else tied)[hits] = True
    return best, tied


def _ordered(keys: pd.DataFrame) -> pd.DataFrame:
    """Rows grouped by metric (run order), utilities in registry order within each."""
    rank = {u: i for i, u in enumerate(utility_order(keys["utility"]))}
    metric_rank = {m: i for i, m in enumerate(dict.fromkeys(keys["metric"]))}
    key = keys["metric"].map(metric_rank) * len(rank) + keys["utility"].map(rank)
    return keys.assign(_key=key).sort_values("_key", kind="stable").drop(columns="_key").reset_index(drop=True)


def _column(keys: pd.DataFrame, stats: pd.DataFrame, stat: str, better: str | None
            ) -> tuple[list[str], np.ndarray]:
    """One table column: a cell per (utility, metric) row of `keys` over that row's checkpoints in `stats`, " tie"
    added to tied best cells, and where the unique best is."""
    groups = {key: g[stat].to_numpy(dtype=float) for key, g in stats.groupby(["utility", "metric"], sort=False)}
    empty = np.array([], dtype=float)
    values = [groups.get((u, m), empty) for u, m in zip(keys["utility"], keys["metric"], strict=True)]
    means = np.array([np.nanmean(v) if np.isfinite(v).any() else np.nan for v in values])
    best, tied = best_cells(means, keys["metric"].to_numpy(), keys["utility"].to_numpy(), better)
    cells = [stat_cell(v, len(v)) + (" tie" if t else "") for v, t in zip(values, tied, strict=True)]
    return cells, best


def family_table(stats: pd.DataFrame, q: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Utility x metric for one family's per-checkpoint `stats`: every COLUMN as `stat_cell`, and where each
    column's unique best is (the family's heading gives n)."""
    table = _ordered(stats[["utility", "metric"]].drop_duplicates())
    best = pd.DataFrame(False, index=table.index, columns=table.columns)
    for stat, (label, better) in COLUMNS.items():
        header = label.replace("@q", f"@{q_label(q)}")
        table[header], best[header] = _column(table[["utility", "metric"]], stats, stat, better)
    return table, best


def pivot_table(stats: pd.DataFrame, over: str, names: tuple[str, ...], header: str,
                q: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Utility x metric rows, one column per (stat, value of `over`) over per-checkpoint `stats`; `header` formats
    the column name from label, value and n (checkpoints), its "@q" becoming e.g. "@5%" when `q` is given."""
    table = _ordered(stats[["utility", "metric"]].drop_duplicates())
    keys = table.copy()
    best = pd.DataFrame(False, index=table.index, columns=table.columns)
    for stat in names:
        label, better = COLUMNS[stat]
        if q is not None:
            label = label.replace("@q", f"@{q_label(q)}")
        for value, g in stats.groupby(over, sort=True):
            name = header.format(label=label, value=value, n=g["checkpoint"].nunique())
            table[name], best[name] = _column(keys, g, stat, better)
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


