"""AssayResult in a notebook (issue: results where researchers work): the first screen as HTML, the figures as
matplotlib Figures, the best utility per family, and typed tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from matplotlib.figure import Figure

from resetassay.errors import BadInputError
from resetassay.run import run_assay
from resetassay.rundir import read_run

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def result():
    return run_assay([FIXTURES / "relu_mlp", FIXTURES / "cnn"], utilities=["gxd", "activation", "random", "oracle"],
                     progress=False)


def test_repr_html_is_the_first_screen(result):
    page = result._repr_html_()
    assert page.startswith("<p><code>AssayResult(4 checkpoints") and '<section id="headline">' in page
    assert "ranks reset cost best" in page and "Rule: best = lowest oracle ratio" in page
    assert page.count("<table") == 2  # the ranking and the models, no detail tables, no figures
    assert "<img" not in page


def test_best_is_the_lowest_mean_common_scope_ratio_per_family(result):
    summary = result.summary.merge(result.checkpoints[["checkpoint", "family"]], on="checkpoint")
    common = summary[(summary.scope == "common") & (summary.metric == "l1") & ~summary.utility.isin(["random",
                                                                                                      "oracle"])]
    means = common.groupby(["family", "utility"])["gap_ratio"].mean()
    best = result.best().set_index("family")
    for family, ratios in means.groupby(level="family"):
        low = ratios.min()
        winners = sorted(u for (_, u), r in ratios.items() if abs(r - low) <= 1e-9 * low)
        assert sorted(best.loc[family, "utility"].split(", ")) == winners
        assert best.loc[family, "ratio"] == pytest.approx(low, rel=1e-12)
        assert best.loc[family, "low"] <= best.loc[family, "high"]
    assert set(result.best("kl").columns) == {"family", "utility", "ratio", "low", "high", "rho", "checkpoints"}
    with pytest.raises(BadInputError, match="metric 'x' was not measured"):
        result.best("x")


def test_plot_returns_the_reports_figures_unsaved(result, tmp_path):
    figures = result.plot()
    assert {"oracle_ratio", "spearman_heatmap", "scatter_l1", "scatter_kl", "layer_heatmap"} <= set(figures)
    assert all(isinstance(f, Figure) for f in figures.values())
    assert list(result.plot("layer_heatmap")) == ["layer_heatmap"]
    with pytest.raises(BadInputError, match="no figure shock_at_q"):
        result.plot("shock_at_q")


def test_tables_read_back_with_their_dtypes(result, tmp_path):
    result.save(tmp_path)
    units = read_run(tmp_path)["units"]
    assert units["unit"].dtype == "int64" and units["mature"].dtype == bool
    assert all(units[c].dtype == "float64" for c in ("gxd", "activation", "shock_l1", "shock_kl"))
    assert pd.api.types.is_string_dtype(units["layer"])
    pd.testing.assert_frame_equal(units, result.units, check_dtype=False, check_exact=True)
