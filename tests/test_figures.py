"""Report figures read at a glance (resetassay/report/figures.py): what each draws is what the tables say.

Each function returns its Figure; its artists are read back.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from scipy.stats import spearmanr

from resetassay.names import UTILITY_ORDER
from resetassay.report import figures


def test_ratio_dots_put_each_family_at_its_mean_ratio_and_mark_what_is_missing():
    intervals = pd.DataFrame({
        "family": ["A", "A", "A", "B", "B", "B"], "utility": ["gxd", "activation", "random"] * 2, "metric": "l1",
        "ratio": [1.02, 1.6, 3.0, 1.1, math.nan, 500.0], "low": [1.0, 1.3, 2.0, 1.05, math.nan, 300.0],
        "high": [1.05, 1.9, 4.0, 1.2, math.nan, 800.0], "n": 2, "resampled": "units"})
    ax = figures.ratio_dots(intervals, {"A": "3 layers, 90 units"}, "5%").axes[0]
    markers = {line.get_label(): line.get_xdata() for line in ax.lines if line.get_linestyle() == "None"}
    edge = ax.get_xlim()[1]
    assert edge == pytest.approx(1.3 * 1.9)  # the axis ends past the contenders; random's ratios are written at it
    np.testing.assert_allclose(markers["A (3 layers, 90 units)"], [1.6, 1.02, edge])  # registry order of rows
    np.testing.assert_allclose(markers["B (no common layer)"], [np.nan, 1.1, edge])
    (hollow,) = [line for line in ax.lines if line.get_markerfacecolor() == "none"]
    assert hollow.get_ydata()[0] == pytest.approx(0.3) and ax.get_xlim()[0] < hollow.get_xdata()[0] < 0.97
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == ["3 ▸", "500 ▸", "n/a"]
    assert ax.get_xscale() == "log" and [t.get_text() for t in ax.get_yticklabels()] == ["activation", "gxd",
                                                                                         "random"]


def test_ratio_dots_mark_a_row_of_missing_families_once_each_side_by_side():
    families = ["alpha", "beta", "gamma", "delta"]
    intervals = pd.DataFrame([(f, u, r) for f in families for u, r in (("gxd", 1.2), ("tracked", math.nan))]
                             + [("alpha", "tracked", 1.5)], columns=["family", "utility", "ratio"])
    intervals = intervals.drop_duplicates(["family", "utility"], keep="last").assign(
        metric="l1", low=intervals["ratio"] * 0.9, high=intervals["ratio"] * 1.1)
    ax = figures.ratio_dots(intervals, {}, "5%").axes[0]
    hollow = [line for line in ax.lines if line.get_markerfacecolor() == "none"]
    assert len(hollow) == 3  # beta, gamma, delta: one marker each in the n/a strip
    x = [float(line.get_xdata()[0]) for line in hollow]
    assert len(set(x)) == 3 and all(ax.get_xlim()[0] < v < 0.97 for v in x)
    assert [t.get_text() for t in ax.texts].count("n/a") == 1


def test_ratio_dots_legend_fits_the_figure_with_long_family_names():
    families = [f"transformer-d64-l2+cbp-contribution@grammar-{i}" for i in range(4)]
    intervals = pd.DataFrame({"family": families, "utility": "gxd", "metric": "l1", "ratio": 1.2, "low": 1.1,
                              "high": 1.3})
    figure = figures.ratio_dots(intervals, dict.fromkeys(families, "2 layers, 506–508 units"), "5%")
    figure.canvas.draw()
    (legend,) = figure.legends
    box = legend.get_window_extent()
    assert box.x0 >= 0 and box.x1 <= figure.bbox.width


def test_utility_names_are_written_dark_enough_to_read():
    utilities = [u for u in UTILITY_ORDER if u != "oracle"]
    stats = pd.DataFrame({"utility": utilities, "checkpoint": "c", "family": "F", "step": 1.0, "metric": "l1",
                          "spearman": 0.5})
    ax = figures.spearman_heatmap(stats).axes[0]
    for label in ax.get_yticklabels():
        red, green, blue, _ = to_rgba(label.get_color())
        assert 0.2126 * red + 0.7152 * green + 0.0722 * blue <= figures.INK + 1e-9, label.get_text()


def test_layer_heatmap_cells_are_the_mean_per_layer_rho_without_the_oracle():
    rows = [(c, u, layer, rho) for c, shift in (("c1", 0.0), ("c2", 0.1))
            for u, base in (("gxd", 0.8), ("activation", 0.2), ("oracle", 1.0))
            for layer, step in (("L0", 0.0), ("L1", 0.05)) for rho in [min(base + shift + step, 1.0)]]
    summary = pd.DataFrame(rows, columns=["checkpoint", "utility", "scope", "spearman"]).assign(metric="l1")
    checkpoints = pd.DataFrame({"checkpoint": ["c1", "c2"], "family": "F", "step": [1.0, 2.0]})
    ax = figures.layer_heatmap(summary, checkpoints).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["activation", "gxd"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["L0", "L1"]
    cells = np.asarray(ax.collections[0].get_array()).reshape(2, 2)
    np.testing.assert_allclose(cells, [[0.25, 0.85], [0.30, 0.90]], atol=1e-12)
    assert ax.patch.get_hatch()  # a cell without ρ is hatched, not white (which reads as ρ = 0)


def test_scatter_titles_give_the_rho_of_the_points_shown():
    rng = np.random.default_rng(0)
    shock = rng.gamma(2.0, 1.0, 60)
    units = pd.DataFrame({"checkpoint": "c", "layer": np.repeat(["a", "b", "c"], 20), "unit": np.tile(range(20), 3),
                          "mature": True, "gxd": shock + rng.normal(0, 0.5, 60), "random": rng.random(60),
                          "shock_l1": shock})
    figure = figures.utility_scatter(units, "l1")
    titles = {ax.get_title().split(":")[0]: ax.get_title() for ax in figure.axes if ax.get_title()}
    for utility in ("gxd", "random"):
        rho = spearmanr(units[utility], units["shock_l1"]).statistic
        assert titles[utility] == f"{utility}: ρ = {rho:.2f}"


def test_shock_vs_step_needs_three_steps():
    stats = pd.DataFrame({"family": "F", "utility": "gxd", "metric": "l1", "checkpoint": ["a", "b"],
                          "step": [1.0, 2.0], "shock_at_q": [0.1, 0.2], "q": 0.05})
    assert figures.shock_vs_step(stats, "5%") is None
    three = pd.concat([stats, stats.iloc[:1].assign(checkpoint="c", step=3.0)], ignore_index=True)
    assert figures.shock_vs_step(three, "5%") is not None


def test_block_spearman_draws_each_block_mean_for_mlp_neurons_and_heads():
    rows = [(c, u, f"blocks.{b}.{part}", rho) for c, shift in (("c1", 0.0), ("c2", 0.2))
            for u, base in (("gxd", 0.5), ("activation", 0.1), ("oracle", 1.0))
            for b in range(3) for part, offset in (("mlp.act", 0.0), ("attn.heads", -0.3))
            for rho in [min(base + shift + offset + 0.1 * b, 1.0)]]
    rows += [(c, "gxd", "ALL", 0.9) for c in ("c1", "c2", "m1")] + [("m1", "gxd", "layers.0.act", 0.4)]
    summary = pd.DataFrame(rows, columns=["checkpoint", "utility", "scope", "spearman"]).assign(metric="l1")
    checkpoints = pd.DataFrame({"checkpoint": ["c1", "c2", "m1"], "family": ["T", "T", "mlp"], "step": 1.0})
    figure = figures.block_spearman(summary, checkpoints)
    mlp, heads = figure.axes[:2]
    assert [ax.get_title() for ax in (mlp, heads)] == ["MLP neurons (2 checkpoints)", "attention heads (2 checkpoints)"]
    assert [row.get_suptitle() for row in figure.subfigs] == ["T"]  # the family heads its row, never clipped
    lines = {(ax.get_title().split(" (")[0], bars.get_label()): np.asarray(bars.lines[0].get_ydata(), float)
             for ax in (mlp, heads)
             for bars in ax.containers}
    assert set(lines) == {(kind, u) for kind in ("MLP neurons", "attention heads") for u in ("gxd", "activation")}
    np.testing.assert_allclose(lines[("MLP neurons", "gxd")], [0.6, 0.7, 0.8])
    np.testing.assert_allclose(lines[("attention heads", "activation")], [-0.1, 0.0, 0.1], atol=1e-12)
    assert len(figure.axes) == 2  # the MLP family (no heads) is not drawn
    assert figures.block_spearman(summary[summary["checkpoint"] == "m1"], checkpoints) is None


def test_scatters_of_many_units_are_rasterised_in_the_svg(tmp_path):
    rng = np.random.default_rng(1)
    for n, raster in ((60, False), (3000, True)):
        shock = rng.gamma(2.0, 1.0, n)
        units = pd.DataFrame({"checkpoint": "c", "layer": "a", "unit": range(n), "mature": True,
                              "gxd": shock + rng.normal(0, 0.5, n), "shock_l1": shock})
        figure = figures.utility_scatter(units, "l1")
        (points,) = [c for ax in figure.axes for c in ax.collections if len(c.get_offsets()) == n]
        assert points.get_rasterized() is raster
    assert figures.save(figure, tmp_path / "scatter.svg") == tmp_path / "scatter.svg"
    assert (tmp_path / "scatter.svg").stat().st_size < 2_000_000  # 3000 points as one bitmap, not 3000 paths
    assert not (tmp_path / "scatter.png").exists()  # drawn once, in the format asked for


def test_growth_scatter_compares_newborn_and_mature_units_of_checkpoints_with_ages():
    rng = np.random.default_rng(2)
    n = 40
    age = np.r_[rng.integers(0, 10, 10), rng.integers(200, 900, 30)]
    units = pd.DataFrame({"checkpoint": "c", "layer": "a", "unit": range(n), "age": age.astype(float),
                          "mature": age > 100, "deviation": rng.random(n) + 0.1,
                          "loss_gradient": 0.5 * rng.random(n) + 0.2, "shock_l1": rng.random(n)})
    checkpoints = pd.DataFrame({"checkpoint": ["c"], "family": ["F+cbp"], "step": [3.0]})
    ax = figures.growth_scatter(units, checkpoints).axes[0]
    newborn, mature = units[~units["mature"]], units[units["mature"]]
    assert ax.get_title().splitlines() == [
        "F+cbp",
        f"newborn (n=10): median {newborn['deviation'].median():.2g} fwd, {newborn['loss_gradient'].median():.2g} bwd",
        f"mature (n=30): median {mature['deviation'].median():.2g} fwd, {mature['loss_gradient'].median():.2g} bwd"]
    assert len(ax.collections[0].get_offsets()) == n
    low, high = ax.get_ylim()
    assert sum(low <= t <= high for t in ax.get_yticks()) >= 2  # a range under a decade still gets labelled ticks
    assert figures.growth_scatter(units.assign(age=np.nan), checkpoints) is None
