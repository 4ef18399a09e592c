"""The report's first screen (resetassay/report/headline.py): sentences derived from the verdict by the stated rule,
the ranking table, the models table; and a rendered report opening with them (SPEC S5b)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from resetassay.report.headline import answer_sentences, models_table, ranking_table
from resetassay.stats.verdict import FAIL_AT, FLAG_COLUMNS, VERDICT_COLUMNS


def _verdict(rows: list[tuple]) -> pd.DataFrame:
    """Verdict rows (family, utility, regret, rho, best, indistinguishable, cheapest, seconds), kind neurons."""
    frame = pd.DataFrame(rows, columns=["family", "utility", "regret", "balanced_rho", "best", "indistinguishable",
                                        "cheapest", "seconds"])
    frame = frame.assign(kind="neurons", metric="l1", n=2, regret_low=frame["regret"] * 0.5,
                         regret_high=frame["regret"] * 1.5 + 0.01, rho_low=frame["balanced_rho"] - 0.05,
                         rho_high=frame["balanced_rho"] + 0.05, flags="")
    frame["fail_reason"] = np.where(frame["regret_low"] > FAIL_AT, "regret", np.where(
        frame["rho_high"] < FAIL_AT, "ρ ≤ x", ""))
    frame["fails"] = (frame["fail_reason"] != "") & ~frame["utility"].isin(["random", "oracle"])
    frame.loc[frame["utility"].isin(["random", "oracle"]), "fail_reason"] = ""
    return frame.reindex(columns=VERDICT_COLUMNS)


VERDICT = _verdict([
    ("A", "gxd_all", 0.01, 0.99, True, True, False, 2.0), ("A", "gxd", 0.02, 0.98, False, True, True, 0.1),
    ("A", "activation", 0.6, 0.3, False, False, False, 0.05), ("A", "random", 1.0, 0.0, False, False, False, 0.0),
    ("B", "gxd_all", 0.05, 0.95, False, True, False, 2.0), ("B", "gxd", 0.03, 0.96, True, True, True, 0.1),
    ("B", "activation", 0.2, 0.8, False, False, False, 0.05), ("B", "random", 1.1, 0.0, False, False, False, 0.0),
])
NO_FLAGS = pd.DataFrame(columns=FLAG_COLUMNS)


def test_sentences_name_the_best_the_cheaper_equal_and_the_failing():
    lines = answer_sentences(VERDICT, NO_FLAGS)
    assert lines[0] == "Lowest regret: **gxd** in 1 (B · neurons), **gxd_all** in 1 (A · neurons) of 2 verdicts."
    assert lines[1] == ("As good as the best (≈) and cheaper (the table's `cheapest`): **gxd** in 1 of 2 verdicts "
                        "(largest saving: A · neurons: 0.1 s against gxd_all's 2 s).")
    assert lines[2] == "Fails (✗ in the table): **activation** in 1 of 2 verdicts."
    assert len(lines) == 3  # random (regret 1.1, ρ 0) never fails, never wins


def test_ranking_table_marks_best_indistinguishable_cheapest_and_fails_with_random_last():
    table, best = ranking_table(VERDICT)
    assert list(table.columns) == ["utility", "A · neurons (n=2)", "B · neurons (n=2)"]
    assert table["utility"].tolist() == ["gxd", "gxd_all", "activation", "random"]  # ranks 1.5, 1.5 (registry), 3
    cells = table.set_index("utility")
    assert cells.loc["gxd", "A · neurons (n=2)"] == "0.020 ≈ cheapest"
    assert cells.loc["gxd_all", "A · neurons (n=2)"] == "0.010" and best.iloc[1, 1]
    assert cells.loc["activation", "A · neurons (n=2)"] == "0.60 ✗ ρ 0.30"  # failing by its ρ
    assert "✗" not in "".join(cells.loc["random"])
    assert best.to_numpy()[:, 1:].sum() == 2


def test_a_utility_failing_by_its_regret_alone_is_marked_without_a_rho():
    verdict = VERDICT.copy()
    mine = verdict["utility"].eq("activation") & verdict["family"].eq("A")
    verdict.loc[mine, ["regret", "regret_low", "regret_high", "balanced_rho"]] = [0.8, 0.6, 1.0, 0.7]
    verdict.loc[mine, "fail_reason"] = "regret ≥ 0.60 > 0.5"
    table, _ = ranking_table(verdict)
    assert table.set_index("utility").loc["activation", "A · neurons (n=2)"] == "0.80 ✗"


def test_flags_are_named_per_verdict_beside_the_answer():
    flags = pd.DataFrame([{"family": "A", "kind": "neurons", "metric": "", "checkpoint": "a/1", "layer": "",
                           "flag": "few units reset", "detail": "k = 1–2", "message": "..."},
                          {"family": "A", "kind": "", "metric": "", "checkpoint": "a/0", "layer": "",
                           "flag": "no mature units", "detail": "a/0", "message": "..."}], columns=FLAG_COLUMNS)
    last = answer_sentences(VERDICT, flags)[-1]
    assert last.startswith("Flags") and "few units reset: A · neurons (k = 1–2)" in last
    assert "no mature units: A (a/0)" in last


def test_models_table_shows_probe_accuracy_the_verdict_scopes_and_sizes():
    stats = pd.DataFrame({"checkpoint": ["a", "b"], "family": "F", "step": [1.0, 2.0], "utility": "oracle",
                          "metric": "l1", "n_layers": [7, 7], "n_units": [120, 120]})
    verdict = pd.DataFrame({"family": "F", "kind": ["channels", "heads"], "utility": "oracle", "n_layers": ["4", "2"],
                            "n_units": ["80–88", "8"]})
    checkpoints = pd.DataFrame({"checkpoint": ["a", "b"], "probe_accuracy": [0.9, 0.95],
                                "split_calib_size": [449, 449], "split_probe_size": [449, 449]})
    row = models_table(stats, verdict, checkpoints).iloc[0]
    assert row["probe accuracy"] == "90.0%–95.0%" and row["steps"] == "1, 2"
    assert row["verdict scopes"] == "channels: 4 layers, 80–88 units; heads: 2 layers, 8 units"
    assert row["assayed"] == "7 layers, 120 units" and row["calibration / probe"] == "449 / 449"
    bare = models_table(stats, verdict, pd.DataFrame()).iloc[0]
    assert bare["probe accuracy"] == "n/a" and bare["calibration / probe"] == "n/a"


def _layer_regret(units: pd.DataFrame, summary: pd.DataFrame, checkpoint: str, utility: str, metric: str) -> float:
    """Regret of one checkpoint recomputed from summary.csv's per-layer rows (SPEC S5b, by hand): per layer
    (Shock@q - oracle Shock@q) / (mean shock - oracle Shock@q), weighted by k_l."""
    rows = summary[(summary.checkpoint == checkpoint) & (summary.utility == utility) & (summary.metric == metric)
                   & ~summary.scope.isin(["ALL", "common"])]
    total = weight = 0.0
    for _, row in rows.iterrows():
        mine = units[(units.checkpoint == checkpoint) & (units.layer == row["scope"]) & units.mature]
        mean = mine[f"shock_{metric}"].mean()
        k = math.ceil(0.05 * len(mine) - 1e-9)
        if mean - row["oracle_shock_at_q"] > 1e-6 * mean:
            total += k * (row["shock_at_q"] - row["oracle_shock_at_q"]) / (mean - row["oracle_shock_at_q"])
            weight += k
    return total / weight


@pytest.mark.slow
@pytest.mark.parametrize("family", ["mlp-relu@digits", "mlp-silu@digits"])
def test_rendered_report_opens_with_the_verdict_whose_regrets_are_recomputed_by_hand(run_dir, family):
    """The first screen of report.md (before "## Figures") holds the question, the answer, the rule and the
    ranking; each regret shown is the mean over the family's checkpoints of the regret recomputed here from the
    per-layer rows of summary.csv and units.csv."""
    first = (run_dir / "report.md").read_text().split("## Figures")[0]
    assert "**Question.**" in first and "Rule (method S5b)" in first
    assert "| utility | metric |" not in first  # the detail tables come later
    summary, units = pd.read_csv(run_dir / "summary.csv"), pd.read_csv(run_dir / "units.csv")
    families = pd.read_csv(run_dir / "checkpoints.csv").set_index("checkpoint")["family"]
    names = [c for c in families.index if families[c] == family]
    header = next(line for line in first.splitlines() if line.startswith("| utility | "))
    columns = [c.strip() for c in header.strip("|").split("|")]
    col = columns.index(f"{family} · neurons (n=2)")
    checked = 0
    for line in first.splitlines():
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        if len(cells) == len(columns) and cells[0] in {"gxd", "activation", "random"}:
            want = np.mean([_layer_regret(units, summary, c, cells[0], "l1") for c in names])
            assert float(cells[col].split(" ")[0]) == pytest.approx(want, abs=6e-3 if want >= 0.1 else 6e-4)
            checked += 1
    assert checked == 3


@pytest.mark.slow
def test_rendered_models_table_shows_the_probe_accuracy_of_checkpoints_csv(run_dir):
    """checkpoints.csv records each checkpoint's probe accuracy (argmax of its logits against the labels) and the
    number of classes; the headline's models table shows each family's range of the accuracy."""
    checkpoints = pd.read_csv(run_dir / "checkpoints.csv")
    assert checkpoints["probe_accuracy"].between(0.5, 1).all() and (checkpoints["n_classes"] == 10).all()
    first = (run_dir / "report.md").read_text().split("## Figures")[0]
    for family, g in checkpoints.groupby("family"):
        row = next(line for line in first.splitlines() if line.startswith(f"| {family} |"))
        shown = sorted({f"{v:.1%}" for v in g["probe_accuracy"]})
        assert ("–".join(shown) if len(shown) > 1 else shown[0]) in row
