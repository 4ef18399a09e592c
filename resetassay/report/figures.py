"""Report figures drawn from a run's tables, one colour per utility in every figure (SPEC S5).

Inputs are the verdict table (regret dot plot, SPEC S5b), the per-checkpoint statistics of
`summary.checkpoint_stats` (heatmap, lines over training step or q), the SummaryTable (per-layer and per-block
Spearman), the common scope's units (rank scatter, a row per family) and the UnitTable's ages (growth, a panel per
checkpoint). Each function returns a `matplotlib.figure.Figure` (None when the tables hold nothing to draw) on its
own Agg canvas, never pyplot's, so drawing a report leaves a notebook's backend and figures alone; `save` writes one
as PNG or SVG.

Over 500 lines: one function per figure of the report, sharing the palette and layout helpers.
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
from matplotlib.cm import ScalarMappable
from matplotlib.colorbar import Colorbar
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure, FigureBase
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

from resetassay.names import ORACLE, POOLED_SCOPES, RANDOM, UTILITY_ORDER, utility_order
from resetassay.report.headline import span
from resetassay.stats.summary import spearman, with_checkpoint_info

DPI = 100
MARKERS = "os^Dv<>PX*"
LOG_SPAN = 100.0  # a log axis spanning more than this factor gets no minor ticks
RASTER_POINTS = 2000  # scatters with more points are rasterised inside the SVG (axes and text stay vector)
MEDIANS = {"newborn": {"marker": "*", "ms": 15, "mfc": "white", "mec": "black", "mew": 1.2},  # growth: medians
           "mature": {"marker": "D", "ms": 8, "mfc": "white", "mec": "black", "mew": 1.2}}
NA_SLOT = 0.025  # share of the regret axis per verdict in its n/a strip
SIDE = 1.2  # inches right of a figure's rows for its colour bar and legend
LUMA = np.array([0.2126, 0.7152, 0.0722])  # a colour's luminance: these weights of its red, green, blue
INK = 0.5  # text in a utility's colour is darkened to at most this luminance: pale tab20 colours stay readable
# Spearman ρ heatmaps colour by band, not on a linear -1..1 scale (where .9 and .99 are one dark red): under -.5
# (ranks backwards) red, -.5 to .5 (no ranking to speak of) grey, then ever darker from .5 to .999 and up.
RHO_BANDS = (-1.0, -0.5, 0.5, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)
RHO_COLOURS = ListedColormap(["#d6604d", "#eeeeee", *sns.color_palette("viridis_r", len(RHO_BANDS) - 3)])
RHO_NORM = BoundaryNorm(RHO_BANDS, len(RHO_BANDS) - 1, clip=True)


def utility_palette(utilities: list[str]) -> dict[str, tuple]:
    """One colour per utility, fixed by the registry order so it is the same in every figure (oracle black)."""
    names = [n for n in UTILITY_ORDER if n != ORACLE]
    colours = sns.color_palette("tab10" if len(names) <= 10 else "tab20", len(names))
    palette = {name: colours[i] for i, name in enumerate(names)}
    palette[ORACLE] = (0.0, 0.0, 0.0)
    return {u: palette.get(u, (0.5, 0.5, 0.5)) for u in utilities}


def _ink(colour: tuple) -> tuple:
    """A colour dark enough for text on white: scaled towards black to luminance INK, hue kept."""
    rgb = np.asarray(colour[:3], dtype=float)
    luminance = float(rgb @ LUMA)
    return tuple(rgb * INK / luminance) if luminance > INK else tuple(rgb)


def save(figure: Figure, path: Path) -> Path:
    """The figure as `path`, drawn once in the format of its suffix: PNG at DPI, or SVG (vector, for papers; its
    rasterised scatters at DPI); returns `path`."""
    figure.savefig(path, dpi=DPI)
    return path


def _panels(rows: int, cols: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    """A grid of axes with constrained layout, on an Agg canvas of its own: `_fitted_legend` measures text, which a
    bare Figure's canvas cannot (the PNGs are those pyplot drew)."""
    figure = Figure(figsize=(width * cols, height * rows), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(rows, cols, squeeze=False)


def _rows(headings: list[str], cols: int, width: float, height: float, side: bool = False
          ) -> tuple[Figure, np.ndarray, FigureBase]:
    """A row of `cols` axes per heading, each row a subfigure headed by it in bold (a long family name is never
    clipped), on an Agg canvas of its own. Returns the figure, the axes (rows x cols) and where a colour bar goes:
    a strip SIDE inches wide right of the rows where `side`, else the figure."""
    figure = Figure(figsize=(width * cols + SIDE * side, height * len(headings)), layout="constrained")
    FigureCanvasAgg(figure)
    body, margin = figure.subfigures(1, 2, width_ratios=[width * cols, SIDE]) if side else (figure, figure)
    rows = body.subfigures(len(headings), 1, squeeze=False)[:, 0]
    for row, heading in zip(rows, headings, strict=True):
        row.suptitle(heading, fontsize=9, fontweight="bold")
    return figure, np.array([row.subplots(1, cols, squeeze=False)[0] for row in rows]), margin


def _side_bar(margin: FigureBase, points: ScalarMappable, label: str, **kwargs) -> Colorbar:
    """The colour bar of `points` in the middle of the strip right of the rows (`_rows(side=True)`)."""
    bar = margin.colorbar(points, cax=margin.add_axes((0.15, 0.3, 0.15, 0.4)), **kwargs)
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return bar


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


def regret_dots(verdict: pd.DataFrame) -> Figure | None:
    """The verdict as a picture (SPEC S5b): normalised regret per utility (rows, the best on top, random last) and
    verdict (family · kind: markers), one panel per metric. Dots at the mean over checkpoints, whiskers the 95%
    paired-bootstrap interval; filled where the utility is best or indistinguishable from it, hollow otherwise, a
    ✗ beside a failing one; 0 is the oracle, the dashed line at 1 a random pick, the dotted one at 0.5 the fail
    line. The axis is linear to 0.01 and logarithmic above (symlog), so 0.01 and 0.1 stay apart; values past the
    axis are written at its edge; a verdict without a value is a hollow marker in the n/a strip right of the axis.
    Legend entries carry the verdict's reliability flags (⚑)."""
    data = verdict[verdict["utility"] != ORACLE]
    if data["regret"].notna().sum() == 0:
        return None
    data = data.assign(verdict=data["family"] + " · " + data["kind"])
    mean_regret = data[data["utility"] != RANDOM].groupby("utility")["regret"].mean()
    registry = utility_order(data["utility"])
    utilities = sorted(registry, key=lambda u: (u == RANDOM, np.nan_to_num(mean_regret.get(u, np.inf), nan=np.inf),
                                                registry.index(u)))
    columns = list(dict.fromkeys(data.sort_values("family", kind="stable")["verdict"]))
    metrics = list(dict.fromkeys(data["metric"]))
    markers = {v: MARKERS[i % len(MARKERS)] for i, v in enumerate(columns)}
    colours = dict(zip(columns, sns.color_palette("dark", len(columns)), strict=True))
    offsets = dict(zip(columns, np.linspace(-0.3, 0.3, len(columns)) if len(columns) > 1 else [0.0], strict=True))
    flagged = {v: g["flags"].iloc[0] for v, g in data.groupby("verdict")}
    legend_lines = len(columns) * (2 if any(flagged.values()) else 1)  # below the panels (one column at worst)
    row = max(0.42, 0.07 * len(columns))  # each utility's row holds a marker per verdict
    figure, axes = _panels(1, len(metrics), 6.0, row * len(utilities) + 1.4 + 0.19 * legend_lines)
    edge = max(1.5, 1.15 * float(np.nanmax(data[data["utility"] != RANDOM][["regret", "regret_high"]]
                                           .to_numpy(dtype=float), initial=1.0)))
    edge = min(edge, 10.0)
    slots = edge * (1 + NA_SLOT * 4 * np.arange(1, len(columns) + 1))
    labels = utility_palette(utilities)
    legend: dict[str, Line2D] = {}
    for ax, metric in zip(axes[0], metrics, strict=True):
        panel = data[data["metric"] == metric]
        for column in columns:
            rows = panel[panel["verdict"] == column].set_index("utility").reindex(utilities)
            y = np.arange(len(utilities)) + offsets[column]
            mean = rows["regret"].to_numpy(dtype=float)
            low = np.minimum(np.where(np.isnan(rows["regret_low"]), mean, rows["regret_low"]), edge)
            top = np.minimum(np.where(np.isnan(rows["regret_high"]), mean, rows["regret_high"]), edge)
            shown = ~np.isnan(mean)
            ax.hlines(y[shown], low[shown], top[shown], color=colours[column], lw=1.1)
            close = (rows["indistinguishable"].fillna(False) | rows.index.isin([RANDOM])).to_numpy(dtype=bool)
            flags = "\n⚑ " + ", ".join(f.split(" (")[0].strip() for f in flagged[column].split(";")) if flagged.get(
                column) else ""
            legend[f"{column}{flags}"] = Line2D([], [], ls="", marker=markers[column], ms=5, color=colours[column])
            for filled in (True, False):
                pick = (close == filled) & shown
                if pick.any():  # (an empty unclipped line would stretch the layout to the figure's corner)
                    ax.plot(np.minimum(mean[pick], edge), y[pick], ls="", marker=markers[column], ms=5,
                            clip_on=False, color=colours[column], mfc=colours[column] if filled else "white")
            for k in np.flatnonzero(rows["fails"].fillna(False).to_numpy(dtype=bool)):
                ax.annotate("✗", (min(mean[k], edge), y[k]), fontsize=7, color=colours[column], va="center",
                            xytext=(5, 0), textcoords="offset points")
            for k in np.flatnonzero(mean > edge):
                ax.annotate(_beyond(mean[k]), (edge, y[k]), fontsize=7, color=colours[column], va="center",
                            ha="right", xytext=(-5, 0), textcoords="offset points", zorder=3,
                            bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.85})
            gone = np.isnan(mean) & rows["n"].notna().to_numpy()
            if gone.any():
                ax.plot(np.full(gone.sum(), slots[columns.index(column)]), y[gone], ls="", marker=markers[column],
                        ms=5, mfc="none", mec=colours[column], clip_on=False)
        ax.axvspan(edge, slots[-1] * (1 + NA_SLOT * 2), color="0.93", lw=0, zorder=0)
        ax.axvline(1.0, color="black", ls="--", lw=1)
        ax.axvline(0.5, color="0.4", ls=":", lw=1)
        ax.set_xscale("symlog", linthresh=0.01, linscale=0.5)
        ax.set_xlim(0, slots[-1] * (1 + NA_SLOT * 2))
        ticks = [t for t in (0, 0.01, 0.1, 0.5, 1, 2, 5, 10) if t <= edge]  # 0.5: the fail line
        ax.set_xticks([*ticks, float(np.sqrt(edge * slots[-1]))], [f"{t:g}" for t in ticks] + ["n/a"])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_yticks(np.arange(len(utilities)), utilities)
        for label in ax.get_yticklabels():
            label.set_color(_ink(labels[label.get_text()]))
        ax.set_ylim(len(utilities) - 0.5, -0.5)
        ax.grid(axis="x", which="major", color="0.85", lw=0.6)
        ax.set_title(f"{metric}: normalised regret", fontsize=10)
        ax.set_xlabel("regret (0 = the oracle's pick, 1 = a random pick; ✗ fails)", fontsize=8)
    _fitted_legend(figure, list(legend.values()), list(legend), min(len(columns), 2),
                   title="family · unit kind (filled: best or ≈)",
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


def _bare(number: str) -> str:
    """A number without the zero before its point, as correlations are written: .97, -.2."""
    return re.sub(r"^(-?)0\.", r"\1.", number)


def _rho_text(rho: float) -> str:
    """A ρ as the figures write it: two decimals, three from .9 on (so .99 and .999 differ), no leading zero; a ρ
    under 1 that would round to 1 is written >.999, not as a perfect ranking; empty without a ρ."""
    if np.isnan(rho):
        return ""
    text = f"{rho:z.{3 if rho >= 0.9 else 2}f}"  # z: no -.00
    if text == "1.000":
        return "1" if rho == 1 else ">.999"
    return _bare(text)


def _rho_heatmap(ax: Axes, grid: pd.DataFrame, label: str, bar: bool = True) -> None:
    """Spearman ρ cells (rows and columns as in `grid`) coloured by band (RHO_BANDS: .9, .95, .99 and .999 differ at
    a glance, negative ρ red), each value written in its cell, empty cells hatched; the band scale beside the axes
    where `bar`. Drawn directly: seaborn's heatmap draws the whole figure once per panel."""
    values = grid.to_numpy(dtype=float)
    mesh = ax.pcolormesh(np.ma.masked_invalid(values), cmap=RHO_COLOURS, norm=RHO_NORM, edgecolors="white", lw=0.4)
    ax.set(xlim=(0, values.shape[1]), ylim=(values.shape[0], 0))
    ax.set_xticks(np.arange(values.shape[1]) + 0.5, grid.columns)
    ax.set_yticks(np.arange(values.shape[0]) + 0.5, grid.index)
    ax.tick_params(length=0)
    ax.spines[:].set_visible(False)
    _hatch_missing(ax)
    dark = RHO_COLOURS(RHO_NORM(values))[..., :3] @ LUMA < 0.41
    for (i, j), rho in np.ndenumerate(values):  # cells, not units: a few hundred at most
        if not np.isnan(rho):
            ax.text(j + 0.5, i + 0.5, _rho_text(rho), ha="center", va="center", fontsize=7,
                    color="white" if dark[i, j] else "0.15")
    if bar:
        scale = ax.get_figure().colorbar(mesh, ax=ax, shrink=0.8, ticks=RHO_BANDS,
                                         format=FuncFormatter(lambda v, _: _bare(f"{v:g}")))
        scale.set_label(label)
        scale.outline.set_visible(False)


def spearman_heatmap(stats: pd.DataFrame) -> Figure | None:
    """Pooled Spearman ρ, utility x checkpoint, one panel per metric (checkpoints ordered by family, step); the
    oracle, whose ρ is 1 by definition, is left out. Values written in the cells, colours in RHO_BANDS."""
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
        _rho_heatmap(ax, grid, "Spearman ρ")
        ax.set_title(f"pooled Spearman ρ, {metric}")
        _rotate(ax)
        for label in ax.get_yticklabels():
            label.set_color(_ink(palette[label.get_text()]))
            label.set_fontweight("bold")
    return figure


def _latest(frame: pd.DataFrame) -> pd.Series:
    """Each family's latest checkpoint (highest step, then last name), indexed by family in name order."""
    order = frame.drop_duplicates("checkpoint").sort_values(["step", "checkpoint"], na_position="first")
    return order.groupby("family")["checkpoint"].last()


def _step(step: float) -> str:
    """A checkpoint's training step for a title, nothing where it has none."""
    return "" if np.isnan(step) else f" (step {step:g})"


def utility_scatter(units: pd.DataFrame, checkpoints: pd.DataFrame, metric: str) -> Figure | None:
    """Utility rank against unit-shock rank (0 lowest, 1 highest, ties averaged) on the common scope's units
    (`summary.common_units`) of each family's latest checkpoint: a row per family, a panel per utility, points
    coloured by their layer's depth, the diagonal a perfect ranking. Ranks are what Spearman's ρ correlates, so every
    panel has the same axes and shows every unit, and its title gives the ρ of exactly its points: that checkpoint's
    common-scope ρ in the tables (SPEC S5)."""
    shock = f"shock_{metric}"
    if shock not in units or units.empty:
        return None
    utilities = [u for u in utility_order(c for c in units.columns if c in UTILITY_ORDER)
                 if u != ORACLE and units[u].notna().any()]
    if not utilities:
        return None
    data = with_checkpoint_info(units, checkpoints)
    latest = _latest(data)
    data = data[data["checkpoint"].isin(latest)]
    layer = data.groupby("checkpoint", sort=False)["layer"]
    depth = layer.transform(lambda c: pd.factorize(c)[0]) / (layer.transform("nunique") - 1).clip(lower=1)
    data = data.assign(depth=depth).iloc[np.random.default_rng(0).permutation(len(data))]  # no layer hides another
    short = _short_names(list(latest))
    groups = dict(list(data.groupby("checkpoint")))
    headings = [f"{family}: {short[c]}{_step(groups[c]['step'].iloc[0])}, {len(groups[c])} units in "
                f"{groups[c]['layer'].nunique()} common layers" for family, c in latest.items()]
    figure, axes, margin = _rows(headings, len(utilities), 1.6, 2.0, side=True)
    palette = utility_palette(utilities)
    for (i, checkpoint), (j, utility) in itertools.product(enumerate(latest), enumerate(utilities)):
        ax, panel = axes[i, j], groups[checkpoint][[utility, shock, "depth"]].dropna()
        ranks = panel[[utility, shock]].rank(pct=True).to_numpy()
        points = ax.scatter(ranks[:, 0], ranks[:, 1], c=panel["depth"], cmap="viridis", vmin=0, vmax=1, s=5,
                            alpha=0.6, linewidths=0, rasterized=len(panel) > RASTER_POINTS)  # SVG: one bitmap
        rho, _ = spearman(panel[utility].to_numpy(dtype=float), panel[shock].to_numpy(dtype=float))
        ax.set_title(f"{utility}\nρ = {_rho_text(rho) or 'n/a'}", color=_ink(palette[utility]), fontsize=8,
                     fontweight="bold")
        if panel.empty:
            ax.text(0.5, 0.5, "not applicable", transform=ax.transAxes, ha="center", va="center", fontsize=7,
                    color="0.4")
        else:
            ax.plot((0, 1), (0, 1), color="0.7", lw=0.8, zorder=0)  # a perfect ranking
        ax.set(xlim=(-0.03, 1.03), ylim=(-0.03, 1.03), xticks=(0, 0.5, 1), yticks=(0, 0.5, 1))
        last = i == len(latest) - 1
        ax.tick_params(labelsize=6, labelleft=j == 0, labelbottom=last)  # inner labels cost time, add nothing
        ax.set_xlabel("utility rank" if last else "", fontsize=7)
        ax.set_ylabel(f"{metric} shock rank" if j == 0 else "", fontsize=7)
    bar = _side_bar(margin, points, "layer depth", ticks=[0, 1])
    bar.ax.set_yticklabels(["input", "output"])
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
    1), mean over the family's checkpoints, one panel per family, for the run's first metric (SPEC S5): every value
    written in its cell, colours in RHO_BANDS. Rows stay legible at 50 layers: the figure grows with the layers."""
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
        _rho_heatmap(ax, grid, f"Spearman ρ within the layer ({metric})", bar=ax is axes.flat[len(families) - 1])
        n = panel["checkpoint"].nunique()
        ax.set_title(f"{family} ({'mean of ' if n > 1 else ''}{n} checkpoint{'s' if n != 1 else ''})", fontsize=9)
        ax.set_ylabel("unit layer (input to output)" if ax in axes[:, 0] else "", fontsize=8)
        ax.tick_params(axis="y", labelsize=7 if depth <= 24 else 5, rotation=0)
        _rotate(ax, 7)
        for label in ax.get_xticklabels():
            label.set_color(_ink(palette[label.get_text()]))
    return figure


BLOCK = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")  # the block index in blocks.3.mlp.act, model.layers.3.self_attn.heads


def block_spearman(summary: pd.DataFrame, checkpoints: pd.DataFrame) -> Figure | None:
    """Spearman ρ within each block's MLP neurons and attention heads (SPEC S9) against the block index, one line
    per utility (the mean over a family's checkpoints; oracle left out), panels family x unit kind, for the run's
    first metric: does a utility stay reliable in deep blocks? Each panel says how many units (heads) every ρ is
    over; no error bars (a ρ over a few heads is noisy however many checkpoints agree). Only families with attention
    heads (`*.heads` layers, numbered blocks) are drawn; None when no family has two blocks."""
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
    data = data.assign(kind=np.where(data["scope"].str.endswith("heads"), "heads", "neurons"))
    utilities = utility_order(data["utility"])
    palette, families = utility_palette(utilities), sorted(families)
    figure, axes, _ = _rows(families, 2, 3.6, 3.1)
    for (i, family), (j, kind) in itertools.product(enumerate(families), enumerate(("neurons", "heads"))):
        ax, panel = axes[i, j], data[(data["family"] == family) & (data["kind"] == kind)]
        for utility, g in panel.groupby("utility", sort=False):
            line = g.groupby("block")["spearman"].mean()
            ax.plot(line.index, line.to_numpy(), color=palette[utility], marker="o", ms=3.5, lw=1.3, label=utility)
        ax.set_ylim(-1.05, 1.05)
        ax.axhline(0, color="0.8", lw=0.8, zorder=0)
        ax.set_xticks(sorted(data.loc[data["family"] == family, "block"].unique().astype(int)))
        ax.tick_params(labelsize=8)
        n = panel["checkpoint"].nunique()
        name = "MLP neurons" if kind == "neurons" else "attention heads"
        ax.set_title(f"{name}: ρ over {span(panel['n_units'])} per block\n"
                     f"{'mean of ' if n > 1 else ''}{n} checkpoint{'s' if n != 1 else ''}", fontsize=8)
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


def _median_markers(ax: Axes, panel: pd.DataFrame) -> list[str]:
    """Each age group's median forward activity and backward signal (over all its units, zeros too) as a large
    marker (MEDIANS) where both are positive (log axes); returns the title lines giving them."""
    mature = panel["mature"].astype(bool)
    lines = []
    for label, group in (("newborn", panel[~mature]), ("mature", panel[mature])):
        if len(group):
            forward, backward = group["deviation"].median(), group["loss_gradient"].median()
            if forward > 0 and backward > 0:
                ax.plot(forward, backward, ls="", label=f"{label} median", zorder=3, **MEDIANS[label])
            lines.append(f"{label} (n={len(group)}): median {forward:.2g} fwd, {backward:.2g} bwd")
    return lines


def growth_scatter(units: pd.DataFrame, checkpoints: pd.DataFrame) -> Figure | None:
    """Forward activity E|h - r| (`deviation`) against backward signal E|dL/dh| (`loss_gradient`) per unit, coloured
    by its age (one scale for all panels), one panel per checkpoint that stores ages (CBP), a row per family: are
    newborn units (age <= maturity) forward-active but backward-starved (SPEC S8)? An untrained checkpoint (step 0,
    or no unit older than 0) is left out: every unit is newborn there. The medians of newborn and mature units are
    drawn and written in the title. None without ages, without both utilities or without a trained checkpoint."""
    need = {"deviation", "loss_gradient", "age", "mature"}
    if not need <= set(units.columns) or units["age"].notna().sum() == 0:
        return None
    data = with_checkpoint_info(units.dropna(subset=["age", "deviation", "loss_gradient"]), checkpoints)
    data = data[(data["step"] != 0) & (data.groupby("checkpoint")["age"].transform("max") > 0)]
    if data.empty:
        return None
    order = data.drop_duplicates("checkpoint").sort_values(["family", "step", "checkpoint"])
    columns = order.groupby("family")["checkpoint"].agg(list)
    short = _short_names(list(order["checkpoint"]))
    figure, axes, margin = _rows(list(columns.index), max(map(len, columns)), 3.6, 3.5, side=True)
    ages = ListedColormap(sns.color_palette("magma_r", as_cmap=True)(np.linspace(0.25, 1.0, 256)))  # no near-white
    oldest = float(np.log10(data["age"].max() + 1))
    groups = dict(list(data.groupby("checkpoint")))
    for row, names in zip(axes, columns, strict=True):
        for ax in row[len(names):]:
            ax.set_visible(False)
        for ax, checkpoint in zip(row, names, strict=False):
            panel = groups[checkpoint]
            shown = panel[(panel["deviation"] > 0) & (panel["loss_gradient"] > 0)]
            shown = shown.sort_values("age", ascending=False, kind="stable")  # newborn on top
            points = ax.scatter(shown["deviation"], shown["loss_gradient"], c=np.log10(shown["age"] + 1), s=8,
                                cmap=ages, vmin=0, vmax=oldest, alpha=0.7, linewidths=0,
                                rasterized=len(shown) > RASTER_POINTS)
            ax.set_xscale("log")
            ax.set_yscale("log")
            for axis, values in ((ax.xaxis, shown["deviation"]), (ax.yaxis, shown["loss_gradient"])):
                _plain_log_ticks(axis, values.to_numpy(dtype=float))
            lines = _median_markers(ax, panel)
            if len(shown) < len(panel):
                ax.text(0.98, 0.02, f"{len(panel) - len(shown)} at 0 not drawn", transform=ax.transAxes,
                        ha="right", va="bottom", fontsize=7, color="0.3")
            ax.set_title("\n".join([f"{short[checkpoint]}{_step(panel['step'].iloc[0])}", *lines]), fontsize=8)
            ax.set_xlabel("forward activity E|h − r| (log)", fontsize=8)
            ax.set_ylabel("backward signal E|∂L/∂h| (log)", fontsize=8)
            ax.tick_params(labelsize=7)
    handles = [Line2D([], [], ls="", label=f"{label} median", **style) for label, style in MEDIANS.items()]
    margin.legend(handles=handles, loc="upper center", frameon=False, fontsize=7)
    _side_bar(margin, points, "unit age, log10(steps + 1)")
    return figure
