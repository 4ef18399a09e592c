"""The report's first screen (resetassay/report/headline.py): sentences derived by the stated rule, the
ranking table, the models table; and a rendered report opening with them (SPEC S5)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from resetassay.report.headline import FAIL_RATIO, FAIL_RHO, answer_sentences, models_table, ranking_table


def _ranking(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["family", "utility", "ratio", "rho"])
    return frame.assign(metric="l1", low=frame["ratio"] * 0.9, high=frame["ratio"] * 1.1, n=2, resampled="units")


RANKING = _ranking([
    ("A", "gxd", 1.01, 0.95), ("A", "activation", 1.5, 0.3), ("A", "random", 3.0, 0.0),
    ("B", "gxd", 1.10, 0.90), ("B", "activation", 2.5, 0.8), ("B", "random", 4.0, 0.1),
    ("C", "gxd", 1.20, 0.90), ("C", "activation", 1.05, 0.9), ("C", "random", 0.9, 0.1),
    ("D", "gxd", math.nan, math.nan), ("D", "activation", 1.3, 0.9), ("D", "random", 2.0, 0.0),
])


def test_sentences_follow_the_rule_best_lowest_ratio_fails_low_rho_or_high_ratio():
    lines = answer_sentences(RANKING)
    # equal counts: registry order; random never competes (C)
    assert lines[0] == "**activation** ranks reset cost best in 2 of 4 families: C, D."
    assert lines[1] == "**gxd** ranks reset cost best in 2 of 4 families: A, B."
    # activation: A has rho 0.3 < FAIL_RHO; B has ratio 2.5 > FAIL_RATIO; random is never said to fail
    assert FAIL_RHO > 0.3 and FAIL_RATIO < 2.5
    assert lines[2] == "Fails (✗ in the table): **activation** in 2 of 4 families."
    assert lines[3].startswith("No value (") and lines[3].endswith("**gxd** in D.")
    assert len(lines) == 4
    table, _ = ranking_table(RANKING)
    activation = table.set_index("utility").loc["activation"]
    assert activation["A (n=2)"] == "1.50 [1.35, 1.65] ✗ ρ 0.30"  # failing by ρ: the ρ is shown
    assert activation["B (n=2)"] == "2.50 [2.25, 2.75] ✗"  # failing by its ratio, which the cell shows
    assert not activation["C (n=2)"].endswith("✗") and "✗" not in table.set_index("utility").loc["random"].sum()


def test_a_tie_is_said_and_not_bolded():
    ranking = _ranking([("A", "gxd", 1.02, 0.9), ("A", "gxi", 1.02, 0.9), ("A", "activation", 1.4, 0.9)])
    assert answer_sentences(ranking)[:2] == ["**gxi** ranks reset cost best in 1 of 1 family: A (tie).",
                                             "**gxd** ranks reset cost best in 1 of 1 family: A (tie)."]
    table, best = ranking_table(ranking)
    assert not best.to_numpy().any()
    assert table.iloc[0, 1] == "1.02 [0.92, 1.12] tie" and table.iloc[1, 1].endswith(" tie")
    assert not table.iloc[2, 1].endswith("tie")


def test_ranking_table_orders_by_mean_rank_with_random_last_and_bolds_each_familys_unique_best():
    table, best = ranking_table(RANKING)
    assert list(table.columns) == ["utility", "A (n=2)", "B (n=2)", "C (n=2)", "D (n=2)"]
    # ranks among gxd/activation/random: gxd 1,1,3,- ; activation 2,2,2,1 -> gxd 1.67, activation 1.75
    assert table["utility"].tolist() == ["gxd", "activation", "random"]
    assert table.loc[0, "A (n=2)"] == "1.01 [0.91, 1.11]" and table.loc[0, "D (n=2)"] == "n/a"
    assert best.loc[0, "A (n=2)"] and best.loc[1, "C (n=2)"] and not best.loc[2, "C (n=2)"]


def test_models_table_shows_probe_accuracy_coverage_and_sizes():
    stats = pd.DataFrame({"checkpoint": ["a", "b"], "family": "F", "step": [1.0, 2.0], "utility": "oracle",
                          "metric": "l1", "n_layers": [7, 7], "n_units": [120, 120]})
    common = stats.assign(n_layers=[4, 4], n_units=[88, 80])
    checkpoints = pd.DataFrame({"checkpoint": ["a", "b"], "probe_accuracy": [0.9, 0.95],
                                "split_calib_size": [449, 449], "split_probe_size": [449, 449]})
    row = models_table(stats, common, checkpoints).iloc[0]
    assert row["probe accuracy"] == "90.0%–95.0%" and row["steps"] == "1, 2"
    assert row["layers (common / all)"] == "4 / 7" and row["units (common / all)"] == "80–88 / 120"
    assert row["calibration / probe"] == "449 / 449"
    bare = models_table(stats, common, pd.DataFrame()).iloc[0]
    assert bare["probe accuracy"] == "n/a" and bare["calibration / probe"] == "n/a"


@pytest.mark.parametrize("family", ["mlp-relu@digits", "mlp-silu@digits"])
def test_rendered_report_opens_with_the_answer_and_its_ratios_are_the_common_scope_means(run_dir, family):
    """The first screen of report.md (before "## Figures") holds the question, the answer, the rule and the
    ranking; each ratio shown is the mean over the family's checkpoints of summary.csv's common-scope ratio."""
    text = (run_dir / "report.md").read_text()
    first = text.split("## Figures")[0]
    assert "**Question.**" in first and "Rule: best = lowest oracle ratio" in first
    assert "| utility | metric |" not in first  # the detail tables come later
    summary = pd.read_csv(run_dir / "summary.csv")
    families = pd.read_csv(run_dir / "checkpoints.csv").set_index("checkpoint")["family"]
    common = summary[(summary.scope == "common") & (summary.metric == "l1")]
    common = common[common.checkpoint.map(families) == family]
    header = next(line for line in first.splitlines() if line.startswith("| utility | "))
    columns = [c.strip() for c in header.strip("|").split("|")]
    col = columns.index(f"{family} (n=2)")
    checked = 0
    for line in first.splitlines():
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        if len(cells) == len(columns) and cells[0] in set(common.utility) - {"oracle"}:
            want = common[common.utility == cells[0]]["gap_ratio"].mean()
            assert float(cells[col].split(" ")[0]) == pytest.approx(want, rel=5e-3, abs=6e-3), cells[0]
            low, high = (float(v) for v in cells[col].split("[")[1].split("]")[0].split(", "))
            assert low <= float(cells[col].split(" ")[0]) <= high
            checked += 1
    assert checked == len(set(common.utility) - {"oracle"}) >= 3
    assert np.isfinite(common["gap_ratio"]).all()


def test_rendered_models_table_shows_the_probe_accuracy_of_checkpoints_csv(run_dir):
    """checkpoints.csv records each checkpoint's probe accuracy (argmax of its logits against the labels); the
    headline's models table shows each family's range of it."""
    checkpoints = pd.read_csv(run_dir / "checkpoints.csv")
    assert checkpoints["probe_accuracy"].between(0.5, 1).all()  # trained on digits: far above chance (0.1)
    first = (run_dir / "report.md").read_text().split("## Figures")[0]
    for family, g in checkpoints.groupby("family"):
        row = next(line for line in first.splitlines() if line.startswith(f"| {family} |"))
        shown = sorted({f"{v:.1%}" for v in g["probe_accuracy"]})
        assert ("–".join(shown) if len(shown) > 1 else shown[0]) in row
