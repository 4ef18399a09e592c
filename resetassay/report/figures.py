"""Report figures: seaborn PNGs drawn from a run's tables, one colour per utility in every figure (SPEC S5).

Inputs are the per-checkpoint statistics of `summary.checkpoint_stats` (bars, heatmap, lines over
training step or q), the SummaryTable (per-layer Spearman) and the UnitTable (scatter). Error bars
are standard errors over checkpoints and seeds. Figures are `matplotlib.figure.Figure`s on their own
Agg canvas, never pyplot's, so drawing a report leaves a notebook's backend and figures alone.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator

from resetassay.names import ORACLE, POOLED_SCOPES, UTILITY_ORDER, utility_order
from resetassay.summary import with_checkpoint_info

DPI = 100
MARKERS = "os^Dv<>PX*"
LOG_SPAN = 100.0  # a positive axis spanning more than this factor is drawn on a log scale


def utility_palette(utilities: list[str]) -> dict[str, tuple]:
    """One colour per utility, fixed by the registry order so it is the same in every figure (oracle black)."""
    names = [n for n in UTILITY_ORDER if n != ORACLE]
    colours = sns.color_palette("tab10" if len(names) <= 10 else "tab20", len(names))
    palette = {name: colours[i] for i, name in enumerate(names)}
    palette[ORACLE] = (0.0, 0.0, 0.0)
    return {u: palette.get(u, (0.5, 0.5, 0.5)) for u in utilities}


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, dpi=DPI)
    return path


def _panels(rows: int, cols: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    """A grid of axes with constrained layout, on an Agg canvas of its own: seaborn's heatmap draws the figure
    to check its tick labels, which a bare Figure's canvas cannot (the PNGs are those pyplot drew)."""
    figure = Figure(figsize=(width * cols, height * rows), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(rows, cols, squeeze=False)


def _utility_legend(figure: Figure, utilities: list[str]) -> None:
    """One legend for the figure: a line per utility in its colour (the oracle dashed)."""
    palette = utility_palette(utilities)
    handles = [Line2D([], [], color=palette[u], lw=2, ls="--" if u == ORACLE else "-", label=u)
               for u in utilities]
    figure.legend(handles=handles, loc="outside right upper", frameon=False, fontsize=8, title="utility")


def _log_y(ax: Axes) -> None:
    """Log y axis; minor ticks only where the axis spans less than LOG_SPAN (they cost time and add little)."""
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    if low > 0 and high / low > LOG_SPAN:
        ax.yaxis.set_minor_locator(NullLocator())


def _rotate(ax: Axes, size: int = 8) -> None:
    ax.tick_params(axis="x", rotation=45, labelsize=size)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")


def shock_bars(stats: pd.DataFrame, path: Path, q_label: str) -> Path | None:
    """Shock@q per utility (mean ± SE bars) with the oracle as a dashed line, per family and metric (paper Fig. 2).

    The oracle is drawn over each bar at that row's oracle Shock@q: a utility not applicable to
    every layer is compared with the oracle on the same layers.
    """
    bars = stats[stats["utility"] != ORACLE].dropna(subset=["shock_at_q"])
    if bars.empty:
        return None
    utilities = utility_order(bars["utility"])
    palette = utility_palette(utilities)
    families, metrics = sorted(bars["family"].unique()), list(dict.fromkeys(bars["metric"]))
    figure, axes = _panels(len(families), len(metrics), 4.6, 2.9)
    for (i, family), (j, metric) in itertools.product(enumerate(families), enumerate(metrics)):
        ax = axes[i, j]
        panel = bars[(bars["family"] == family) & (bars["metric"] == metric)]
        sns.barplot(data=panel, x="utility", y="shock_at_q", hue="utility", order=utilities, hue_order=utilities,
                    palette=palette, errorbar="se", legend=False, ax=ax)
        oracle = panel.groupby("utility")["oracle_shock_at_q"].mean()
        x = [utilities.index(u) for u in oracle.index]
        ax.hlines(oracle.to_numpy(), np.subtract(x, 0.45), np.add(x, 0.45), colors="black", linestyles="--", lw=1.2,
                  label="oracle")
        ax.legend(loc="upper left", fontsize=8, frameon=False)
        _log_y(ax)
        ax.set_title(f"{family} | {metric}", fontsize=10)
        ax.set_xlabel("")
        ax.set_ylabel(f"Shock@{q_label} (log)" if j == 0 else "")
        _rotate(ax)
    return _save(figure, path)


def _short_names(names: list[str]) -> dict[str, str]:
    """Checkpoint names without their common directory prefix (`fixtures/cnn/task1` -> `cnn/task1`)."""
    if len(names) < 2:
        return {n: n for n in names}
    prefix = os.path.commonpath(names) if all("/" in n for n in names) else ""
    return {n: n[len(prefix):].lstrip("/") or n for n in names}


def spearman_heatmap(stats: pd.DataFrame, path: Path) -> Path | None:
    """Pooled Spearman ρ, utility x checkpoint, one panel per metric (checkpoints ordered by family, step)."""
    data = stats.dropna(subset=["spearman"])
    if data.empty:
        return None
    order = data.sort_values(["family", "step", "checkpoint"])["checkpoint"].unique().tolist()
    short = _short_names(order)
    utilities = utility_order(data["utility"])
    metrics = list(dict.fromkeys(data["metric"]))
    width = max(6.0, 0.75 * len(order) + 3.0)
    height = 0.42 * len(utilities) + 1.6
    figure, axes = _panels(len(metrics), 1, width, height)
    palette = utility_palette(utilities)
    for ax, metric in zip(axes[:, 0], metrics, strict=True):
        grid = (data[data["metric"] == metric].pivot_table(index="utility", columns="checkpoint", values="spearman")
                .reindex(index=utilities, columns=order).rename(columns=short))
        sns.heatmap(grid, ax=ax, vmin=-1, vmax=1, center=0, cmap="vlag", annot=len(order) <= 24, fmt=".2f",
                    annot_kws={"fontsize": 7}, linewidths=0.5, cbar_kws={"label": "Spearman ρ", "shrink": 0.8})
        ax.set_title(f"pooled Spearman ρ, {metric}")
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.tick_params(axis="x", rotation=45, labelsize=8)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
        for label in ax.get_yticklabels():
            label.set_color(palette[label.get_text()])
            label.set_fontweight("bold")
    return _save(figure, path)


def _wants_log(values: np.ndarray) -> bool:
    """Log axis where the positive values span more than LOG_SPAN and none is negative (zeros cannot be drawn)."""
    finite = values[np.isfinite(values)]
    positive = finite[finite > 0]
    return len(positive) >= 2 and positive.max() / positive.min() > LOG_SPAN and not (finite < 0).any()


def utility_scatter(units: pd.DataFrame, checkpoints: pd.DataFrame, stats: pd.DataFrame, metric: str,
                    path: Path) -> Path | None:
    """Utility vs unit shock, one panel per utility in its colour, markers per family; log axes where needed."""
    shock = f"shock_{metric}"
    if shock not in units:
        return None
    data = with_checkpoint_info(units[units["mature"].astype(bool)], checkpoints)
    utilities = [u for u in utility_order(c for c in units.columns if c in UTILITY_ORDER)
                 if u != ORACLE and data[u].notna().any()]
    if not utilities:
        return None
    families = sorted(data["family"].unique())
    markers = {f: MARKERS[i % len(MARKERS)] for i, f in enumerate(families)}
    palette = utility_palette(utilities)
    cols = min(len(utilities), 5)
    figure, axes = _panels(-(-len(utilities) // cols), cols, 3.0, 2.7)
    rho = stats[stats["metric"] == metric].groupby("utility")["spearman"].mean()
    for ax, utility in zip(axes.flat, utilities, strict=False):
        panel = data.dropna(subset=[utility, shock])
        log_x, log_y = _wants_log(panel[utility].to_numpy(dtype=float)), _wants_log(panel[shock].to_numpy(dtype=float))
        shown = panel[((panel[utility] > 0) | (not log_x)) & ((panel[shock] > 0) | (not log_y))]
        for family, g in shown.groupby("family"):
            ax.scatter(g[utility], g[shock], s=8, alpha=0.5, color=palette[utility], marker=markers[family],
                       linewidths=0, label=family)
        if len(shown) < len(panel):
            ax.text(0.98, 0.02, f"{len(panel) - len(shown)} at 0 not shown", transform=ax.transAxes,
                    ha="right", va="bottom", fontsize=7, color="0.4")
        if log_x:
            ax.set_xscale("log")
            ax.xaxis.set_minor_locator(NullLocator())  # decades only: minor ticks cost seconds, add nothing
        if log_y:
            ax.set_yscale("log")
            ax.yaxis.set_minor_locator(NullLocator())
        title = utility if utility not in rho or np.isnan(rho[utility]) else f"{utility} (ρ̄ = {rho[utility]:.2f})"
        ax.set_title(title, color=palette[utility], fontsize=10, fontweight="bold")
        ax.set_xlabel(f"utility{' (log)' if log_x else ''}", fontsize=8)
        ax.set_ylabel(f"unit shock, {metric}{' (log)' if log_y else ''}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(utilities):]:
        ax.set_visible(False)
    handles = [Line2D([], [], ls="", marker=markers[f], color="0.35", label=f) for f in families]
    figure.legend(handles=handles, title="family", loc="outside upper center", ncol=min(len(families), 6),
                  frameon=False, fontsize=8)
    return _save(figure, path)


def _lines_by_utility(stats: pd.DataFrame, x: str, y: str, path: Path, xlabel: str, ylabel: str,
                      log_y: bool) -> Path:
    """Mean ± SE of `y` against `x`, one line per utility (oracle dashed), panels family (columns) x metric (rows).

    A non-numeric `x` (layer names) is categorical, in order of appearance within each family.
    """
    utilities = utility_order(stats["utility"])
    palette = utility_palette(utilities)
    families, metrics = sorted(stats["family"].unique()), list(dict.fromkeys(stats["metric"]))
    numeric = pd.api.types.is_numeric_dtype(stats[x])
    figure, axes = _panels(len(metrics), len(families), 3.2, 2.7)
    for (i, metric), (j, family) in itertools.product(enumerate(metrics), enumerate(families)):
        ax = axes[i, j]
        panel = stats[(stats["family"] == family) & (stats["metric"] == metric)]
        for utility, g in panel.groupby("utility", sort=False):
            line = g.groupby(x, sort=numeric)[y].agg(["mean", "sem"]).reset_index()
            ax.errorbar(line[x] if numeric else line[x].astype(str), line["mean"], yerr=line["sem"].fillna(0),
                        color=palette[utility], marker="o", ms=3.5, lw=1.3, capsize=2,
                        ls="--" if utility == ORACLE else "-", label=utility)
        if log_y:
            _log_y(ax)
        ax.set_title(f"{family} | {metric}", fontsize=10)
        ax.set_xlabel(xlabel if i == len(metrics) - 1 else "", fontsize=9)
        ax.set_ylabel(ylabel if j == 0 else "", fontsize=9)
        if not numeric:
            _rotate(ax, 7)
            continue
        ax.tick_params(labelsize=8)
        if panel[x].nunique() <= 8:
            ax.set_xticks(sorted(panel[x].unique()))
    _utility_legend(figure, utilities)
    return _save(figure, path)


def shock_vs_step(stats: pd.DataFrame, path: Path, q_label: str) -> Path | None:
    """Shock@q against training step per family: does a utility degrade as the network ages? None if one step."""
    data = stats.dropna(subset=["shock_at_q", "step"])
    if data.empty or data.groupby("family")["step"].nunique().max() < 2:
        return None
    return _lines_by_utility(data, "step", "shock_at_q", path, "training step (task / epoch)",
                             f"Shock@{q_label} (log)", log_y=True)


def shock_vs_q(stats: pd.DataFrame, path: Path) -> Path | None:
    """Shock@q against q (the `--q` sweep), per family and metric. None for fewer than two q."""
    data = stats.dropna(subset=["shock_at_q"])
    if data["q"].nunique() < 2:
        return None
    return _lines_by_utility(data, "q", "shock_at_q", path, "q (fraction of units reset per layer)",
                             "Shock@q (log)", log_y=True)


def layer_spearman(summary: pd.DataFrame, checkpoints: pd.DataFrame, path: Path) -> Path | None:
    """Per-layer Spearman ρ (mean ± SE over checkpoints) along the depth of each family; oracle left out (ρ = 1)."""
    layers = summary[~summary["scope"].isin(POOLED_SCOPES) & (summary["utility"] != ORACLE)].dropna(subset=["spearman"])
    if layers.empty:
        return None
    data = with_checkpoint_info(layers, checkpoints).rename(columns={"scope": "layer"})
    return _lines_by_utility(data, "layer", "spearman", path, "unit layer (input to output)", "Spearman ρ",
                             log_y=False)
