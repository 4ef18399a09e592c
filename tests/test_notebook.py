"""AssayResult in a notebook (issue: results where researchers work): the first screen as HTML, the figures as
matplotlib Figures, the best utility per family, and typed tables."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers.paths import FIXTURES
from matplotlib.figure import Figure

from resetassay.errors import BadInputError
from resetassay.io.rundir import read_run
from resetassay.pipeline.run import run_assay


@pytest.fixture(scope="module")
def result():
    return run_assay([FIXTURES / "relu_mlp", FIXTURES / "cnn"], utilities=["gxd", "activation", "random", "oracle"],
                     progress=False)


@pytest.mark.slow
def test_repr_html_is_the_first_screen(result):
    page = result._repr_html_()
    assert page.startswith("<p><code>AssayResult(4 checkpoints") and '<section id="headline">' in page
    assert "Lowest regret: " in page and "Rule (method S5b)" in page
    assert page.count("<table") == 2  # the ranking and the models, no detail tables, no figures
    assert "<img" not in page


@pytest.mark.slow
def test_best_is_the_indistinguishable_set_with_the_best_first_and_the_cheapest_marked(result):
    """`best()` (SPEC S5b): per family and unit kind, the utilities whose regret is indistinguishable from the lowest,
    one row each (never a comma-joined string), the best first, exactly one cheapest among them."""
    verdict = result._analysis.verdict
    best = result.best()
    assert list(best.columns) == ["family", "kind", "metric", "utility", "regret", "regret_low", "regret_high",
                                  "diff_low", "diff_high", "balanced_rho", "rho_low", "rho_high", "seconds", "best",
                                  "cheapest", "fails", "flags"]
    assert set(best["metric"]) == {"l1"} and not best["utility"].str.contains(",").any()
    assert {(f, k) for f, k in zip(best["family"], best["kind"], strict=True)} == {("mlp-relu@digits", "neurons"),
                                                                                  ("cnn-relu-bn@digits", "channels")}
    for (family, kind), rows in best.groupby(["family", "kind"], sort=False):
        mine = verdict[(verdict.family == family) & (verdict.kind == kind) & (verdict.metric == "l1")
                       & ~verdict.utility.isin(["random", "oracle"])]
        assert rows["best"].iloc[0] and rows["best"].sum() == 1
        assert rows["regret"].iloc[0] == mine["regret"].min()
        assert (rows["diff_low"] <= 0).all() and (rows["diff_high"] >= 0).all()  # the difference interval holds 0
        assert rows["cheapest"].sum() == 1 and rows.loc[rows["cheapest"], "seconds"].iloc[0] == rows["seconds"].min()
        assert "random" not in set(rows["utility"])
    assert set(result.best("kl")["metric"]) == {"kl"}
    with pytest.raises(BadInputError, match="metric 'x' was not measured"):
        result.best("x")


@pytest.mark.slow
def test_plot_returns_the_reports_figures_unsaved(result, tmp_path):
    figures = result.plot()
    assert {"regret", "spearman_heatmap", "scatter_l1", "scatter_kl", "layer_heatmap"} <= set(figures)
    assert all(isinstance(f, Figure) for f in figures.values())
    assert list(result.plot("layer_heatmap")) == ["layer_heatmap"]
    with pytest.raises(BadInputError, match="no figure shock_at_q"):
        result.plot("shock_at_q")


@pytest.mark.slow
def test_tables_read_back_with_their_dtypes(result, tmp_path):
    result.save(tmp_path)
    units = read_run(tmp_path)["units"]
    assert units["unit"].dtype == "int64" and units["mature"].dtype == bool
    assert all(units[c].dtype == "float64" for c in ("gxd", "activation", "shock_l1", "shock_kl"))
    assert pd.api.types.is_string_dtype(units["layer"])
    pd.testing.assert_frame_equal(units, result.units, check_dtype=False, check_exact=True)
