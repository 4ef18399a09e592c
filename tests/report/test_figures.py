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

from resetassay.names import COMMON, UTILITY_ORDER
from resetassay.report import figures
from resetassay.stats.summary import checkpoint_summary, common_units


def _verdict(rows: list[tuple]) -> pd.DataFrame:
    """Verdict rows (family, utility, regret, indistinguishable, fails), kind neurons, metric l1."""
    frame = pd.DataFrame(rows, columns=["family", "utility", "regret", "indistinguishable", "fails"])
    return frame.assign(kind="neurons", metric="l1", n=2, regret_low=frame["regret"] * 0.5,
                        regret_high=frame["regret"] * 1.5, best=False, flags="")


def test_regret_dots_put_each_verdict_at_its_regret_filled_where_indistinguishable():
    verdict = _verdict([("A", "gxd", 0.02, True, False), ("A", "activation", 0.6, False, True),
                        ("A", "random", 1.0, False, False), ("A", "oracle", 0.0, False, False),
                        ("B", "gxd", 0.05, True, False), ("B", "activation", math.nan, False, False),
                        ("B", "random", 30.0, False, False)])
    verdict.loc[verdict.family == "A", "flags"] = "few units reset (k = 1)"
    figure = figures.regret_dots(verdict)
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["gxd", "activation", "random"]  # mean regret; random last
    edge = 1.5  # the axis ends past the contenders (at least at 1.5, beyond random's 1)
    points = [(float(x), float(y), line.get_markerfacecolor() == "white")
              for line in ax.lines if line.get_linestyle() == "None" and line.get_markerfacecolor() != "none"
              for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True)]
    hollow = sorted((round(x, 3), round(y, 2)) for x, y, white in points if white)
    assert hollow == [(0.6, 0.7)]  # A's activation: worse than the best (not ≈)
    filled = sorted(round(x, 3) for x, _, white in points if not white)
    assert filled == sorted([0.02, 0.05, 1.0, edge])  # B's random (30) at the edge
    assert "30 ▸" in [t.get_text() for t in ax.texts] and "✗" in [t.get_text() for t in ax.texts]
    (gone,) = [line for line in ax.lines if line.get_markerfacecolor() == "none"]  # B's activation: n/a
    assert gone.get_xdata()[0] > edge  # right of the axis, never left of 1
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert labels == ["A · neurons\n⚑ few units reset", "B · neurons"]
    assert ax.get_xscale() == "symlog" and ax.get_xlim()[0] == 0


def test_regret_dots_legend_fits_the_figure_with_long_family_names():
    families = [f"transformer-d64-l2+cbp-contribution@grammar-{i}" for i in range(4)]
    verdict = _verdict([(f, "gxd", 0.1, True, False) for f in families])
    verdict["flags"] = "few units reset (k = 1); one layer dominates (blocks.0.attn 76% of l1)"
    figure = figures.regret_dots(verdict)
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
    assert [t.get_text() for t in ax.texts] == [".25", ".85", ".30", ".900"]  # every value, row by row
    assert ax.patch.get_hatch()  # a cell without ρ is hatched, not white (which reads as ρ = 0)


def _cell_colours(ax) -> list[tuple]:
    """A heatmap's cell colours, row by row."""
    mesh = ax.collections[0]
    return [tuple(c) for c in mesh.to_rgba(np.ravel(mesh.get_array()))]


def test_rho_heatmaps_tell_9_from_99_and_write_every_value():
    rhos = [-0.7, 0.2, 0.6, 0.85, 0.9, 0.95, 0.99, 0.9996]  # one in each band
    summary = pd.DataFrame({"checkpoint": "c", "utility": "gxd", "scope": [f"L{i}" for i in range(len(rhos))],
                            "spearman": rhos, "metric": "l1"})
    ax = figures.layer_heatmap(summary, pd.DataFrame({"checkpoint": ["c"], "family": ["F"], "step": [1.0]})).axes[0]
    steps = np.linalg.norm(np.diff(np.array(_cell_colours(ax))[:, :3], axis=0), axis=1)
    assert steps.min() > 0.1  # each band clearly its own colour: .9, .95, .99, .999 (a linear -1..1 scale: < .06)
    assert [t.get_text() for t in ax.texts] == ["-.70", ".20", ".60", ".85", ".900", ".950", ".990", ">.999"]
    stats = pd.DataFrame({"utility": "gxd", "checkpoint": list("abcd"), "family": "F", "step": 1.0, "metric": "l1",
                          "spearman": [0.9, 0.99, -0.001, 1.0]})
    ax = figures.spearman_heatmap(stats).axes[0]
    assert [t.get_text() for t in ax.texts] == [".900", ".990", ".00", "1"]  # no "-.00"
    assert np.linalg.norm(np.subtract(*_cell_colours(ax)[:2])) > 0.1


def _family_units(rng: np.random.Generator, checkpoint: str, noise: float, layers: int = 3, n: int = 20
                  ) -> pd.DataFrame:
    shock = rng.gamma(2.0, 1.0, layers * n)
    return pd.DataFrame({"checkpoint": checkpoint, "layer": np.repeat([f"L{i}" for i in range(layers)], n),
                         "unit": np.tile(range(n), layers), "mature": True, "shock_l1": shock,
                         "gxd": shock + rng.normal(0, noise, n * layers), "random": rng.random(n * layers)})


def test_scatters_draw_a_row_per_family_titled_with_the_rho_of_its_points_as_in_the_tables():
    rng = np.random.default_rng(0)
    units = pd.concat([_family_units(rng, c, noise) for c, noise in (("a1", 0.3), ("a2", 1.0), ("b1", 2.0))])
    checkpoints = pd.DataFrame({"checkpoint": ["a1", "a2", "b1"], "family": ["A", "A", "B"], "step": [2.0, 1.0, 1.0]})
    summary = pd.concat([checkpoint_summary(g, ["gxd", "random", "oracle"], ["l1"])
                         for _, g in units.groupby("checkpoint")])
    figure = figures.utility_scatter(common_units(units, summary), checkpoints, "l1")
    rows = figure.subfigs[0].subfigs  # the panels, then the strip with the colour bar
    assert [row.get_suptitle() for row in rows] == ["A: a1 (step 2), 60 units in 3 common layers",
                                                    "B: b1 (step 1), 60 units in 3 common layers"]  # latest step
    for row, checkpoint in zip(rows, ("a1", "b1"), strict=True):
        mine = units[units["checkpoint"] == checkpoint]
        for ax, utility in zip(row.axes, ("gxd", "random"), strict=True):
            (points,) = ax.collections
            x, y = np.asarray(points.get_offsets()).T
            assert len(x) == len(mine) and x.min() > 0 and x.max() == y.max() == 1  # ranks: every unit, same axes
            assert ax.get_xlim() == ax.get_ylim() == (-0.03, 1.03)
            drawn = spearmanr(x, y).statistic
            assert drawn == pytest.approx(spearmanr(mine[utility], mine["shock_l1"]).statistic, abs=1e-12)
            table = summary[(summary["checkpoint"] == checkpoint) & (summary["utility"] == utility)
                            & (summary["scope"] == COMMON)]["spearman"].item()  # the per-checkpoint tables' ρ
            assert ax.get_title() == f"{utility}\nρ = {figures._rho_text(table)}"
            assert ax.get_title() == f"{utility}\nρ = {figures._rho_text(drawn)}"


def test_scatter_panel_of_a_utility_with_no_value_in_a_family_says_so():
    rng = np.random.default_rng(3)
    units = pd.concat([_family_units(rng, "a", 0.5), _family_units(rng, "b", 0.5).assign(gxd=np.nan)])
    checkpoints = pd.DataFrame({"checkpoint": ["a", "b"], "family": ["A", "B"], "step": 1.0})
    gxd_in_b = figures.utility_scatter(units, checkpoints, "l1").subfigs[0].subfigs[1].axes[0]
    assert gxd_in_b.get_title() == "gxd\nρ = n/a" and [t.get_text() for t in gxd_in_b.texts] == ["not applicable"]


def test_shock_vs_step_needs_three_steps():
    stats = pd.DataFrame({"family": "F", "utility": "gxd", "metric": "l1", "checkpoint": ["a", "b"],
                          "step": [1.0, 2.0], "shock_at_q": [0.1, 0.2], "q": 0.05})
    assert figures.shock_vs_step(stats, "5%") is None
    three = pd.concat([stats, stats.iloc[:1].assign(checkpoint="c", step=3.0)], ignore_index=True)
    assert figures.shock_vs_step(three, "5%") is not None


def test_block_spearman_draws_each_block_mean_and_how_many_units_each_rho_is_over():
    rows = [(c, u, f"blocks.{b}.{part}", rho, n) for c, shift in (("c1", 0.0), ("c2", 0.2))
            for u, base in (("gxd", 0.5), ("activation", 0.1), ("oracle", 1.0))
            for b in range(3) for part, offset, n in (("mlp.act", 0.0, 64), ("attn.heads", -0.3, 4))
            for rho in [min(base + shift + offset + 0.1 * b, 1.0)]]
    rows += [(c, "gxd", "ALL", 0.9, 204) for c in ("c1", "c2", "m1")] + [("m1", "gxd", "layers.0.act", 0.4, 8)]
    summary = pd.DataFrame(rows, columns=["checkpoint", "utility", "scope", "spearman", "n_units"]).assign(metric="l1")
    checkpoints = pd.DataFrame({"checkpoint": ["c1", "c2", "m1"], "family": ["T", "T", "mlp"], "step": 1.0})
    figure = figures.block_spearman(summary, checkpoints)
    mlp, heads = figure.axes[:2]
    assert [ax.get_title() for ax in (mlp, heads)] == ["MLP neurons: ρ over 64 per block\nmean of 2 checkpoints",
                                                       "attention heads: ρ over 4 per block\nmean of 2 checkpoints"]
    assert [row.get_suptitle() for row in figure.subfigs] == ["T"]  # the family heads its row, never clipped
    lines = {(ax.get_title().split(":")[0], line.get_label()): line.get_ydata() for ax in (mlp, heads)
             for line in ax.lines if not line.get_label().startswith("_")}
    assert set(lines) == {(kind, u) for kind in ("MLP neurons", "attention heads") for u in ("gxd", "activation")}
    np.testing.assert_allclose(lines[("MLP neurons", "gxd")], [0.6, 0.7, 0.8])
    np.testing.assert_allclose(lines[("attention heads", "activation")], [-0.1, 0.0, 0.1], atol=1e-12)
    assert not mlp.containers and not heads.containers  # no error bars on a ρ over four heads
    assert len(figure.axes) == 2  # the MLP family (no heads) is not drawn
    assert figures.block_spearman(summary[summary["checkpoint"] == "m1"], checkpoints) is None


def test_scatters_of_many_units_are_rasterised_in_the_svg(tmp_path):
    rng = np.random.default_rng(1)
    for n, raster in ((60, False), (3000, True)):
        shock = rng.gamma(2.0, 1.0, n)
        units = pd.DataFrame({"checkpoint": "c", "layer": "a", "unit": range(n), "mature": True,
                              "gxd": shock + rng.normal(0, 0.5, n), "shock_l1": shock})
        figure = figures.utility_scatter(units, pd.DataFrame({"checkpoint": ["c"], "family": ["F"]}), "l1")
        (points,) = [c for ax in figure.axes for c in ax.collections if len(c.get_offsets()) == n]
        assert points.get_rasterized() is raster
    assert figures.save(figure, tmp_path / "scatter.svg") == tmp_path / "scatter.svg"
    assert (tmp_path / "scatter.svg").stat().st_size < 2_000_000  # 3000 points as one bitmap, not 3000 paths
    assert not (tmp_path / "scatter.png").exists()  # drawn once, in the format asked for


def test_growth_scatter_draws_each_trained_checkpoint_with_its_newborn_and_mature_medians():
    rng = np.random.default_rng(2)
    n = 40
    age = np.r_[rng.integers(0, 10, 10), rng.integers(200, 900, 30)].astype(float)
    trained = pd.DataFrame({"layer": "a", "unit": range(n), "age": age, "mature": age > 100,
                            "deviation": rng.random(n) + 0.1, "loss_gradient": 0.5 * rng.random(n) + 0.2,
                            "shock_l1": rng.random(n)})
    untrained = trained.assign(checkpoint="run/step0", age=0.0, mature=False)
    units = pd.concat([untrained, trained.assign(checkpoint="run/step3"),
                       trained.assign(checkpoint="run/step5", loss_gradient=trained["loss_gradient"] * 2)],
                      ignore_index=True)
    units.loc[[n, n + 1], "deviation"] = 0.0  # two dead units in step 3: counted, not drawn on the log axis
    checkpoints = pd.DataFrame({"checkpoint": ["run/step0", "run/step3", "run/step5"], "family": "F+cbp",
                                "step": [0.0, 3.0, 5.0]})
    figure = figures.growth_scatter(units, checkpoints)
    assert [row.get_suptitle() for row in figure.subfigs[0].subfigs] == ["F+cbp"]
    axes = [ax for ax in figure.subfigs[0].subfigs[0].axes if ax.get_visible()]
    assert [ax.get_title().splitlines()[0] for ax in axes] == ["step3 (step 3)", "step5 (step 5)"]  # step 0 left out
    for ax, checkpoint in zip(axes, ("run/step3", "run/step5"), strict=True):
        mine = units[units["checkpoint"] == checkpoint]
        medians = {line.get_label(): (line.get_xdata()[0], line.get_ydata()[0]) for line in ax.lines}
        groups = {"newborn": mine[~mine["mature"]], "mature": mine[mine["mature"]]}
        assert ax.get_title().splitlines()[1:] == [
            f"{label} (n={len(g)}): median {g['deviation'].median():.2g} fwd, {g['loss_gradient'].median():.2g} bwd"
            for label, g in groups.items()]
        for label, g in groups.items():  # drawn where the title says, over all units (the dead ones too)
            assert medians[f"{label} median"] == pytest.approx((g["deviation"].median(), g["loss_gradient"].median()))
    assert [len(ax.collections[0].get_offsets()) for ax in axes] == [n - 2, n]
    assert [t.get_text() for t in axes[0].texts] == ["2 at 0 not drawn"] and not axes[1].texts
    low, high = axes[0].get_ylim()
    assert sum(low <= t <= high for t in axes[0].get_yticks()) >= 2  # a range under a decade gets labelled ticks
    assert figures.growth_scatter(units.assign(age=np.nan), checkpoints) is None
    assert figures.growth_scatter(untrained, checkpoints) is None  # only the untrained network: nothing to compare
