"""Report figures drawn from a run's tables, one colour per utility in every figure (SPEC S5).

Inputs are the bootstrap intervals of the oracle ratio (dot plot), the per-checkpoint statistics of
`summary.checkpoint_stats` (heatmap, lines over training step or q), the SummaryTable (per-layer
Spearman) and the common scope's units (scatter). Each function returns a `matplotlib.figure.Figure`
(None when the tables hold nothing to draw) on its own Agg canvas, never pyplot's, so drawing a
report leaves a notebook's backend and figures alone; `save` writes one as PNG or SVG.
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

from resetassay.names import ORACLE, POOLED_SCOPES, RANDOM, UTILITY_ORDER, utility_order
from resetassay.summary import spearman, with_checkpoint_info

DPI = 100
MARKERS = "os^Dv<>PX*"
LOG_SPAN = 100.0  # a positive axis spanning more than this factor is drawn on a log scale
RASTER_POINTS = 2000  # scatters with more points are rasterised inside the SVG (axes and text stay vector)
NA_SLOT = 0.025  # share of the oracle-ratio axis per family in its n/a strip
INK = 0.5  # text in a utility's colour is darkened to at most this luminance: pale tab20 colours stay readable


def utility_palette(utilities: list[str]) -> dict[str, tuple]:
    """One colour per utility, fixed by the registry order so it is the same in every figure (oracle black)."""
    names = [n for n in UTILITY_ORDER if n != ORACLE]
    colours = sns.color_palette("tab10" if len(names) <= 10 else "tab20", len(names))
    palette = {name: colours[i] for i, name in enumerate(names)}
    palette[ORACLE] = (0.0, 0.0, 0.0)
    return {u: palette.get(u, (0.5, 0.5, 0.5)) for u in utilities}


def _ink(colour: tuple) -> tuple:
    """A colour dark enough for text on white: scaled towards black to luminance INK, hue kept."""
    red, green, blue = colour[:3]
    luminance = 0.2126 * red + 0.7152 * green + 0.0722 * blue
    return tuple(c * INK / luminance for c in (red, green, blue)) if luminance > INK else (red, green, blue)


def save(figure: Figure, path: Path) -> Path:
    """The figure as `path`, drawn once in the format of its suffix: PNG at DPI, or SVG (vector, for papers; its
    rasterised scatters at DPI); returns `path`."""
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


def _na_slots(low: float, edge: float, count: int) -> tuple[float, np.ndarray]:
    """The n/a strip left of `low` on a log axis ending at `edge`: its left end and one x per family, side by side
    (NA_SLOT of the axis each), so the hollow markers of a row's missing families never overlap."""
    share = NA_SLOT * (count + 1)
    width = share * (np.log10(edge) - np.log10(low)) / (1 - share)
    return 10 ** (np.log10(low) - width), 10 ** (np.log10(low) - width * np.arange(count, 0, -1) / (count + 1))


def _fitted_legend(figure: Figure, handles: list, labels: list[str], columns: int, **kwargs) -> None:
    """A figure legend in as many columns (at most `columns`) as fit the figure's width: long labels are not
    clipped."""
    renderer = figure.canvas.get_renderer()
    for ncol in range(max(columns, 1), 0, -1):
        legend = figure.legend(handles, labels, ncol=ncol, **kwargs)
        if ncol == 1 or legend.get_window_extent(renderer).width <= 0.98 * figure.bbox.width:
            return
        legend.remove()


def _beyond(value: float) -> str:
    """A value past the axis' edge, in words: two significant digits below 10, whole numbers above."""
    return f"{value:.2g} ▸" if value < 10 else f"{value:.0f} ▸"


def ratio_dots(intervals: pd.DataFrame, coverage: dict[str, str], q_label: str) -> Figure | None:
    """The oracle ratio Shock@q / oracle Shock@q per utility (rows) and family (markers), one panel per metric, on
    the common scope (SPEC S5): dots at the mean over checkpoints, whiskers the 95% bootstrap interval, a log x axis
    from 1 (the oracle, dashed line); values past the axis written at its edge; a family without a value is a hollow
    marker in the shaded n/a strip left of 1, one slot per family. `coverage[family]` says what the common scope
    covers there."""
    data = intervals[intervals["utility"] != ORACLE]
    if data["ratio"].notna().sum() == 0:
        return None
    utilities = utility_order(data["utility"])
    families = sorted(data["family"].unique())
    metrics = list(dict.fromkeys(data["metric"]))
    markers = {f: MARKERS[i % len(MARKERS)] for i, f in enumerate(families)}
    colours = dict(zip(families, sns.color_palette("dark", len(families)), strict=True))
    offsets = dict(zip(families, np.linspace(-0.3, 0.3, len(families)) if len(families) > 1 else [0.0], strict=True))
    figure, axes = _panels(1, len(metrics), 4.8, 0.42 * len(utilities) + 1.4)
    contenders = data[data["utility"] != RANDOM]
    edge = max(2.0, 1.3 * float(np.nanmax(contenders[["ratio", "high"]].to_numpy(dtype=float), initial=1.0)))
    values = data[["ratio", "low"]].to_numpy(dtype=float)
    floor = min(0.97, 0.97 * float(np.nanmin(values[values > 0], initial=1.0)))
    shown = data.dropna(subset=["ratio"]).groupby(["metric", "family", "utility"]).ngroups
    missing = shown < len(metrics) * len(families) * len(utilities)
    left, slots = _na_slots(floor, edge, len(families)) if missing else (floor, np.array([]))
    labels = utility_palette(utilities)
    for ax, metric in zip(axes[0], metrics, strict=True):
        panel = data[data["metric"] == metric]
        for i, family in enumerate(families):
            rows = panel[panel["family"] == family].set_index("utility").reindex(utilities)
            y = np.arange(len(utilities)) + offsets[family]
            mean = rows["ratio"].to_numpy(dtype=float)
            low = np.minimum(np.where(np.isnan(rows["low"]), mean, rows["low"]), edge)
            top = np.minimum(np.where(np.isnan(rows["high"]), mean, rows["high"]), edge)
            ax.hlines(y, low, top, color=colours[family], lw=1.1)  # the interval (it need not contain the mean)
            ax.plot(np.minimum(mean, edge), y, ls="", marker=markers[family], color=colours[family], ms=5,
                    clip_on=False, label=f"{family} ({coverage.get(family, 'no common layer')})")
            for k in np.flatnonzero(mean > edge):  # beyond the axis (the random floor, mostly): the value, in words
                ax.annotate(_beyond(mean[k]), (edge, y[k]), fontsize=7, color=colours[family], va="center",
                            ha="right", xytext=(-5, 0), textcoords="offset points", zorder=3,
                            bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.85})
            gone = np.isnan(mean)
            if gone.any():
                ax.plot(np.full(gone.sum(), slots[i]), y[gone], ls="", marker=markers[family], ms=5, mfc="none",
                        mec=colours[family], label="_n/a")
        if missing:
            ax.axvspan(left, floor, color="0.93", lw=0, zorder=0)
            ax.annotate("n/a", (float(np.sqrt(left * floor)), 0), xycoords=("data", "axes fraction"),
                        xytext=(0, -4), textcoords="offset points", ha="center", va="top", fontsize=9, color="0.3")
        ax.axvline(1.0, color="black", ls="--", lw=1)
        ax.set_xscale("log")
        ax.set_xlim(left, edge)
        plain = FuncFormatter(lambda v, _: f"{v:g}" if v >= floor * 0.999 else "")  # nothing in the n/a strip
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain if edge < 20 else NullFormatter())  # 2, 3, ... only where they fit
        ax.set_yticks(np.arange(len(utilities)), utilities)
        for label in ax.get_yticklabels():
            label.set_color(_ink(labels[label.get_text()]))
        ax.set_ylim(len(utilities) - 0.5, -0.5)  # registry order top down, half a row of room at each end
        ax.grid(axis="x", which="major", color="0.85", lw=0.6)
        ax.set_title(f"{metric}: Shock@{q_label} / oracle Shock@{q_label}", fontsize=10)
        ax.set_xlabel("oracle ratio (log; 1 = the oracle's units)", fontsize=8)
    handles, names = axes[0, 0].get_legend_handles_labels()
    _fitted_legend(figure, handles, names, min(len(families), 3), title="family (common scope)",
                   loc="outside lower center", frameon=False, fontsize=8, title_fontsize=8)
    return figure


def _short_names(names: list[str]) -> dict[str, str]:
    """Checkpoint names without their common directory prefix (`fixtures/cnn/task2` -> `cnn/task2`)."""
    if len(names) < 2:
        return {n: n for n in names}
    prefix = os.path.commonpath(names) if all("/" in n for n in names) else ""
    return {n: n[len(prefix):].lstrip("/") or n for n in names}


def _hatch_missing(ax: Axes) -> None:
    """A heatmap's empty cells (no ρ: not applicable, or constant units) hatched grey, not read as white ρ ≈ 0."""
    ax.patch.set_facecolor("white")
    ax.patch.set_edgecolor("0.75")
    ax.patch.set_hatch("////")


def spearman_heatmap(stats: pd.DataFrame) -> Figure | None:
    """Pooled Spearman ρ, utility x checkpoint, one panel per metric (checkpoints ordered by family, step); the
    oracle, whose ρ is 1 by definition, is left out."""
    data = stats[stats["utility"] != ORACLE].dropna(subset=["spearman"])
    if data.empty:
        return None
    order = data.sort_values(["family", "step", "checkpoint"])["checkpoint"].unique().tolist()
    short = _short_names(order)
    utilities = utility_order(data["utility"])
    metrics = list(dict.fromkeys(data["metric"]))
    width = max(4.5, 0.75 * len(order) + 3.0)
    height = 0.42 * len(utilities) + 1.6
    figure, axes = _panels(len(metrics), 1, width, height)
    palette = utility_palette(utilities)
    for ax, metric in zip(axes[:, 0], metrics, strict=True):
        grid = (data[data["metric"] == metric].pivot_table(index="utility", columns="checkpoint", values="spearman")
                .reindex(index=utilities, columns=order).rename(columns=short))
        sns.heatmap(grid, ax=ax, vmin=-1, vmax=1, center=0, cmap="vlag", annot=len(order) <= 24, fmt=".2f",
                    annot_kws={"fontsize": 7}, linewidths=0.5, cbar_kws={"label": "Spearman ρ", "shrink": 0.8})
        _hatch_missing(ax)
        ax.set_title(f"pooled Spearman ρ, {metric}")
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.tick_params(axis="x", rotation=45, labelsize=8)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
        for label in ax.get_yticklabels():
            label.set_color(_ink(palette[label.get_text()]))
            label.set_fontweight("bold")
    return figure


def _wants_log(values: np.ndarray) -> bool:
    """Log axis where the positive values span more than LOG_SPAN and none is negative (zeros cannot be drawn)."""
    finite = values[np.isfinite(values)]
    positive = finite[finite > 0]
    return len(positive) >= 2 and positive.max() / positive.min() > LOG_SPAN and not (finite < 0).any()


def utility_scatter(units: pd.DataFrame, metric: str) -> Figure | None:
    """Utility vs unit shock on the common scope's units (`summary.common_units`), one panel per utility, points
    coloured by their layer's depth (input to output); each panel titled with the Spearman ρ of exactly the
    points it shows (all checkpoints pooled); log axes where the values span more than LOG_SPAN."""
    shock = f"shock_{metric}"
    if shock not in units or units.empty:
        return None
    utilities = [u for u in utility_order(c for c in units.columns if c in UTILITY_ORDER)
                 if u != ORACLE and units[u].notna().any()]
    if not utilities:
        return None
    order = units.groupby("checkpoint", sort=False)["layer"].transform(lambda c: pd.factorize(c)[0])
    count = units.groupby("checkpoint", sort=False)["layer"].transform("nunique")
    depth = (order / (count - 1).clip(lower=1)).to_numpy(dtype=float)
    cmap = sns.color_palette("viridis", as_cmap=True)
    cols = min(len(utilities), 5)
    figure, axes = _panels(-(-len(utilities) // cols), cols, 3.0, 2.7)
    palette = utility_palette(utilities)
    mixed = np.random.default_rng(0).permutation(len(units))  # drawn in mixed order: no layer hides the others
    for ax, utility in zip(axes.flat, utilities, strict=False):
        keep = units[utility].notna().to_numpy()[mixed] & units[shock].notna().to_numpy()[mixed]
        x = units[utility].to_numpy(dtype=float)[mixed][keep]
        y, c = units[shock].to_numpy(dtype=float)[mixed][keep], depth[mixed][keep]
        log_x, log_y = _wants_log(x), _wants_log(y)
        shown = ((x > 0) | (not log_x)) & ((y > 0) | (not log_y))
        points = ax.scatter(x[shown], y[shown], c=c[shown], cmap=cmap, vmin=0, vmax=1, s=8, alpha=0.6, linewidths=0,
                            rasterized=int(shown.sum()) > RASTER_POINTS)  # SVG: a bitmap of many points, not 1e5 paths
        if (~shown).any():
            ax.text(0.98, 0.02, f"{int((~shown).sum())} at 0 not shown", transform=ax.transAxes, ha="right",
                    va="bottom", fontsize=7, color="0.3", zorder=3,
                    bbox={"boxstyle": "square,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8})
        if log_x:
            ax.set_xscale("log")
            ax.xaxis.set_minor_locator(NullLocator())  # decades only: minor ticks cost seconds, add nothing
        if log_y:
            ax.set_yscale("log")
            ax.yaxis.set_minor_locator(NullLocator())
        rho, _ = spearman(x[shown], y[shown])
        title = utility if np.isnan(rho) else f"{utility}: ρ = {rho:.2f}"
        ax.set_title(title, color=_ink(palette[utility]), fontsize=10, fontweight="bold")
        ax.set_xlabel(f"utility{' (log)' if log_x else ''}", fontsize=8)
        ax.set_ylabel(f"unit shock, {metric}{' (log)' if log_y else ''}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(utilities):]:
        ax.set_visible(False)
    bar = figure.colorbar(points, ax=axes, shrink=0.6, ticks=[0, 1])
    bar.ax.set_yticklabels(["input", "output"], fontsize=7)
    bar.set_label("layer depth", fontsize=8)
    return figure


def _lines_by_utility(stats: pd.DataFrame, x: str, y: str, xlabel: str, ylabel: str, log_y: bool) -> Figure:
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
        ax.set_title(f"{family}\n{metric}", fontsize=8)  # two lines: long family names stay inside the panel
        ax.set_xlabel(xlabel if i == len(metrics) - 1 else "", fontsize=9)
        ax.set_ylabel(ylabel if j == 0 else "", fontsize=9)
        if not numeric:
            _rotate(ax, 7)
            continue
        ax.tick_params(labelsize=8)
        if panel[x].nunique() <= 8:
            ax.set_xticks(sorted(panel[x].unique()))
    _utility_legend(figure, utilities)
    return figure


def shock_vs_step(stats: pd.DataFrame, q_label: str) -> Figure | None:
    """Shock@q against training step per family: does a utility degrade as the network ages? None unless a family
    has at least 3 steps (two points make no trend); error bars where a step has several checkpoints (seeds)."""
    data = stats.dropna(subset=["shock_at_q", "step"])
    if data.empty or data.groupby("family")["step"].nunique().max() < 3:
        return None
    return _lines_by_utility(data, "step", "shock_at_q", "training step (task / epoch)",
                             f"Shock@{q_label} (log)", log_y=True)


def shock_vs_q(stats: pd.DataFrame) -> Figure | None:
    """Shock@q against q (the `--q` sweep), per family and metric. None for fewer than two q."""
    data = stats.dropna(subset=["shock_at_q"])
    if data["q"].nunique() < 2:
        return None
    return _lines_by_utility(data, "q", "shock_at_q", "q (fraction of units reset per layer)",
                             "Shock@q (log)", log_y=True)


def layer_heatmap(summary: pd.DataFrame, checkpoints: pd.DataFrame) -> Figure | None:
    """Spearman ρ within each unit layer (rows, input to output) per utility (columns; the oracle left out, its ρ is
    1), mean over the family's checkpoints, one panel per family, for the run's first metric. Rows stay legible at
    50 layers: the figure grows with the layers, values are written in the cells only while they fit."""
    layers = summary[~summary["scope"].isin(POOLED_SCOPES) & (summary["utility"] != ORACLE)]
    if layers["spearman"].notna().sum() == 0:
        return None
    metric = layers["metric"].iloc[0]
    data = with_checkpoint_info(layers[layers["metric"] == metric], checkpoints).rename(columns={"scope": "layer"})
    families = sorted(data["family"].unique())
    utilities = utility_order(data["utility"])
    depth = max(data.groupby("family")["layer"].nunique())
    cell = 0.26 if depth <= 24 else 0.17
    cols = min(len(families), 3)
    figure, axes = _panels(-(-len(families) // cols), cols, 0.4 * len(utilities) + 2.4, cell * depth + 1.6)
    palette = utility_palette(utilities)
    for ax in axes.flat[len(families):]:
        ax.set_visible(False)
    for ax, family in zip(axes.flat, families, strict=False):
        panel = data[data["family"] == family]
        order = list(dict.fromkeys(panel["layer"]))
        grid = (panel.pivot_table(index="layer", columns="utility", values="spearman", dropna=False)
                .reindex(index=order, columns=utilities))
        sns.heatmap(grid, ax=ax, vmin=-1, vmax=1, center=0, cmap="vlag", annot=depth <= 24 and len(utilities) <= 10,
                    fmt=".2f", annot_kws={"fontsize": 6}, linewidths=0.3, cbar=ax is axes.flat[len(families) - 1],
                    cbar_kws={"label": f"Spearman ρ within the layer ({metric})", "shrink": 0.6})
        _hatch_missing(ax)
        n = panel["checkpoint"].nunique()
        ax.set_title(f"{family} ({n} checkpoint{'s' if n != 1 else ''})", fontsize=9)
        ax.set_xlabel("")
        ax.set_ylabel("unit layer (input to output)" if ax in axes[:, 0] else "", fontsize=8)
        ax.tick_params(axis="y", labelsize=7 if depth <= 24 else 5, rotation=0)
        _rotate(ax, 7)
        for label in ax.get_xticklabels():
            label.set_color(_ink(palette[label.get_text()]))
    return figure


BLOCK = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")  # the block index in blocks.3.mlp.act, model.layers.3.self_attn.heads


def block_spearman(summary: pd.DataFrame, checkpoints: pd.DataFrame) -> Figure | None:
    """Spearman ρ within each block's MLP neurons and attention heads (SPEC S9) against the block index, one line
    per utility (mean ± SE over a family's checkpoints; oracle left out), panels family x unit kind, for the run's
    first metric: does a utility stay reliable in deep blocks? Only families with attention heads (`*.heads`
    layers, numbered blocks) are drawn; None when no family has two blocks."""
    layers = summary[~summary["scope"].isin(POOLED_SCOPES) & (summary["utility"] != ORACLE)].copy()
    layers = layers[layers["metric"] == summary["metric"].iloc[0]]
    blocks = layers["scope"].str.extract(BLOCK, expand=False)
    layers = with_checkpoint_info(layers.assign(block=pd.to_numeric(blocks)).dropna(subset=["block", "spearman"]),
                                  checkpoints)
    heads = layers["scope"].str.endswith("heads")
    families = layers.loc[heads, "family"].unique()
    data = layers[layers["family"].isin(families)]
    if data.empty or data.groupby("family")["block"].nunique().max() < 2:
        return None
    data = data.assign(kind=np.where(data["scope"].str.endswith("heads"), "attention heads", "MLP neurons"))
    utilities = utility_order(data["utility"])
    palette, kinds, families = utility_palette(utilities), ["MLP neurons", "attention heads"], sorted(families)
    figure = Figure(figsize=(7.2, 3.1 * len(families)), layout="constrained")
    FigureCanvasAgg(figure)
    rows = figure.subfigures(len(families), 1, squeeze=False)[:, 0]  # a row per family, headed by its full name
    axes = np.array([row.subplots(1, 2) for row in rows])
    for row, family in zip(rows, families, strict=True):
        row.suptitle(family, fontsize=9, fontweight="bold")
    for (i, family), (j, kind) in itertools.product(enumerate(families), enumerate(kinds)):
        ax, panel = axes[i, j], data[(data["family"] == family) & (data["kind"] == kind)]
        for utility, g in panel.groupby("utility", sort=False):
            line = g.groupby("block")["spearman"].agg(["mean", "sem"]).reset_index()
            ax.errorbar(line["block"], line["mean"], yerr=line["sem"].fillna(0), color=palette[utility], marker="o",
                        ms=3.5, lw=1.3, capsize=2, label=utility)
        ax.set_ylim(-1.05, 1.05)
        ax.axhline(0, color="0.8", lw=0.8, zorder=0)
        ax.set_xticks(sorted(data.loc[data["family"] == family, "block"].unique().astype(int)))
        ax.tick_params(labelsize=8)
        n = panel["checkpoint"].nunique()
        ax.set_title(f"{kind} ({n} checkpoint{'s' if n != 1 else ''})", fontsize=9)
        ax.set_ylabel("Spearman ρ in the layer" if j == 0 else "", fontsize=8)
        ax.set_xlabel("block (input to output)" if i == len(families) - 1 else "", fontsize=8)
    _utility_legend(figure, utilities)
    return figure


def _plain_log_ticks(axis: Axis, values: np.ndarray) -> None:
    """Labelled log ticks at 1, 2, 5 x 10^k where the values span under two decades (a narrow range keeps some
    labels), else at decades; plain numbers, no minor ticks."""
    narrow = np.log10(values.max() / values.min()) < 2
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if narrow else (1.0,)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(NullLocator())


def growth_scatter(units: pd.DataFrame, checkpoints: pd.DataFrame) -> Figure | None:
    """Forward activity E|h - r| (`deviation`) against backward signal E|dL/dh| (`loss_gradient`) per unit, coloured
    by its age, one panel per family whose checkpoints store ages (CBP): are newborn units (age <= maturity)
    forward-active but backward-starved (SPEC S8)? Each panel gives the median of both for newborn and mature units.
    None without ages or without both utilities."""
    need = {"deviation", "loss_gradient", "age", "mature"}
    if not need <= set(units.columns) or units["age"].notna().sum() == 0:
        return None
    data = with_checkpoint_info(units.dropna(subset=["age", "deviation", "loss_gradient"]), checkpoints)
    data = data[(data["deviation"] > 0) & (data["loss_gradient"] > 0)]
    families = sorted(data["family"].unique())
    if not families:
        return None
    figure, axes = _panels(1, len(families), 4.2, 3.4)
    ages = ListedColormap(sns.color_palette("magma_r", as_cmap=True)(np.linspace(0.25, 1.0, 256)))  # no near-white
    for ax, family in zip(axes.flat, families, strict=True):
        panel = data[data["family"] == family].sort_values("age", ascending=False, kind="stable")  # newborn on top
        points = ax.scatter(panel["deviation"], panel["loss_gradient"], c=np.log10(panel["age"] + 1), s=8,
                            cmap=ages, alpha=0.7, linewidths=0, rasterized=len(panel) > RASTER_POINTS)
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis, values in ((ax.xaxis, panel["deviation"]), (ax.yaxis, panel["loss_gradient"])):
            _plain_log_ticks(axis, values.to_numpy(dtype=float))
        mature = panel["mature"].astype(bool)
        lines = [f"{label} (n={len(g)}): median {g['deviation'].median():.2g} fwd, "
                 f"{g['loss_gradient'].median():.2g} bwd"
                 for label, g in (("newborn", panel[~mature]), ("mature", panel[mature])) if len(g)]
        ax.set_title("\n".join([family, *lines]), fontsize=8)
        ax.set_xlabel("forward activity E|h − r| (log)", fontsize=8)
        ax.set_ylabel("backward signal E|∂L/∂h| (log)", fontsize=8)
        ax.tick_params(labelsize=7)
    bar = figure.colorbar(points, ax=axes, shrink=0.7)
    bar.set_label("unit age, log10(steps + 1)", fontsize=8)
    return figure

