"""The CI gate: `resetassay baseline` and `resetassay check` (DESIGN "check.py") on a synthetic run.

The run's tables are built from a seeded, hand-designed UnitTable through the real
`checkpoint_summary`, then edited to plant regressions whose size is chosen against the rules
(Spearman drop > tolerance, Shock@q rise > relative tolerance, ...). Exit codes: 0 pass, 1
regression, 2 bad input.
"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from resetassay.check import compare, family_means, make_baseline, parse_floor, read_baseline, write_baseline
from resetassay.cli import app
from resetassay.errors import BadInputError
from resetassay.names import ALL
from resetassay.rundir import write_run
from resetassay.summary import checkpoint_summary

runner = CliRunner()
UTILITIES = ["gxd", "activation", "random", "oracle"]
CHECKPOINTS = {"silu/a": ("mlp-silu", 1.0), "silu/b": ("mlp-silu", 3.0), "relu/a": ("mlp-relu", 1.0),
               "relu/b": ("mlp-relu", 3.0)}


def _units(name: str, rng: np.random.Generator) -> pd.DataFrame:
    """Two layers of 40 units; gxd tracks the shock closely, activation loosely, random not at all."""
    n = 40
    frames = []
    for layer in ("L0", "L1"):
        shock = np.exp(rng.normal(size=n))
        frames.append(pd.DataFrame({
            "checkpoint": name, "layer": layer, "unit": np.arange(n), "mature": True,
            "gxd": shock * np.exp(0.05 * rng.normal(size=n)), "activation": shock * np.exp(rng.normal(size=n)),
            "random": rng.uniform(size=n), "shock_l1": shock, "shock_kl": shock**2 / 10,
        }))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    units = [_units(name, rng) for name in CHECKPOINTS]
    summary = pd.concat([checkpoint_summary(u, UTILITIES, ["l1", "kl"], 0.05) for u in units], ignore_index=True)
    checkpoints = pd.DataFrame([{"checkpoint": k, "family": f, "step": s} for k, (f, s) in CHECKPOINTS.items()])
    notes = pd.DataFrame(columns=["checkpoint", "utility", "layer", "reason"])
    out = tmp_path_factory.mktemp("clean")
    write_run(out, {"units": pd.concat(units), "summary": summary, "notes": notes, "checkpoints": checkpoints},
              {"config": {"q": 0.05, "reference": "calibration-mean", "device": "cpu"}, "versions": {}})
    return out


@pytest.fixture(scope="module")
def baseline_file(clean_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("baseline") / "baseline.json"
    result = runner.invoke(app, ["baseline", str(clean_run), "-o", str(path), "--floor", "gxd:l1:spearman>=0.9"])
    assert result.exit_code == 0, result.output
    return path


def _perturbed(clean_run: Path, tmp_path: Path, checkpoint: str, utility: str, metric: str, column: str,
               change) -> Path:
    """A copy of the run with one pooled SummaryTable cell changed."""
    copy = tmp_path / "run"
    shutil.copytree(clean_run, copy)
    summary = pd.read_csv(copy / "summary.csv")
    row = ((summary["checkpoint"] == checkpoint) & (summary["utility"] == utility) & (summary["metric"] == metric)
           & (summary["scope"] == ALL))
    assert row.sum() == 1
    summary.loc[row, column] = change(summary.loc[row, column])
    summary.to_csv(copy / "summary.csv", index=False)
    return copy


def test_run_checked_against_its_own_baseline_passes_with_a_junit_case_per_comparison(clean_run, baseline_file,
                                                                                        tmp_path):
    junit = tmp_path / "check.xml"
    result = runner.invoke(app, ["check", str(clean_run), "--baseline", str(baseline_file), "--junit", str(junit)])
    assert result.exit_code == 0, result.output
    assert "0 failed" in result.output
    baseline = json.loads(baseline_file.read_text())
    # 2 families x 3 gated utilities (random is not gated) x 2 metrics, 3 statistics each, + 2 floors
    assert len(baseline["rows"]) == 12 and {r["utility"] for r in baseline["rows"]} == {"gxd", "activation", "oracle"}
    assert len(baseline["floors"]) == 2
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("tests") == str(12 * 3 + 2) and suite.get("failures") == "0"
    assert suite.find("testcase").get("classname").startswith("resetassay.check.")


def test_lowered_spearman_fails_with_exit_1_and_names_the_row(clean_run, baseline_file, tmp_path):
    # one of two silu checkpoints loses 0.1 -> the family mean drops by 0.05 > tolerance 0.02
    run = _perturbed(clean_run, tmp_path, "silu/a", "activation", "kl", "spearman", lambda v: v - 0.1)
    junit = tmp_path / "check.xml"
    result = runner.invoke(app, ["check", str(run), "--baseline", str(baseline_file), "--junit", str(junit)])
    assert result.exit_code == 1, result.output
    failing = [line for line in result.output.splitlines() if line.startswith("FAIL")]
    assert len(failing) == 1 and failing[0].split()[1:5] == ["mlp-silu", "activation", "kl", "spearman"]
    assert "1 failed" in result.output
    failures = [c for c in ET.parse(junit).iter("testcase") if c.find("failure") is not None]
    assert [(c.get("classname"), c.get("name")) for c in failures] == [
        ("resetassay.check.mlp-silu", "activation kl spearman")]


def test_spearman_drop_within_tolerance_passes_and_is_listed_as_moved(clean_run, baseline_file, tmp_path):
    run = _perturbed(clean_run, tmp_path, "silu/a", "activation", "kl", "spearman", lambda v: v - 0.03)
    result = runner.invoke(app, ["check", str(run), "--baseline", str(baseline_file)])  # mean drops by 0.015
    assert result.exit_code == 0, result.output
    assert "1 moved by more than 1e-04 within tolerance" in result.output
    assert any(line.startswith("ok") and "activation" in line for line in result.output.splitlines())


@pytest.mark.parametrize(("factor", "code"), [(1.15, 0), (1.25, 1)])
def test_shock_at_q_may_rise_by_the_relative_tolerance_only(clean_run, baseline_file, tmp_path, factor, code):
    # one of two checkpoints x factor -> the family mean rises by less or more than 10 %
    run = _perturbed(clean_run, tmp_path, "relu/a", "gxd", "l1", "shock_at_q", lambda v: v * factor)
    means, _, _ = family_means(run)
    base, _, _ = family_means(clean_run)
    key = (means["family"] == "mlp-relu") & (means["utility"] == "gxd") & (means["metric"] == "l1")
    rise = means.loc[key, "shock_at_q"].iloc[0] / base.loc[key, "shock_at_q"].iloc[0] - 1
    assert (rise > 0.10) == bool(code)  # the planted change is on the intended side of the rule
    result = runner.invoke(app, ["check", str(run), "--baseline", str(baseline_file)])
    assert result.exit_code == code, result.output


def test_gap_may_rise_by_the_relative_tolerance_times_baseline_shock():
    means = pd.DataFrame({"family": ["F"], "utility": ["u"], "metric": ["l1"], "spearman": [0.9],
                          "shock_at_q": [2.0], "gap": [0.25]})
    baseline = {"rows": [{"family": "F", "utility": "u", "metric": "l1", "spearman": None, "shock_at_q": None,
                          "gap": 0.0}], "floors": []}
    assert not compare(means, baseline, rel_tolerance=0.1)[0].passed  # limit 0 + 0.1 x gap scale 0 -> 0
    baseline["rows"][0]["shock_at_q"] = 2.0
    (gap,) = [c for c in compare(means, baseline, rel_tolerance=0.1) if c.stat == "gap"]
    assert gap.limit == pytest.approx(0.2) and not gap.passed  # 0.25 > 0 + 0.1 x 2.0
    (gap,) = [c for c in compare(means, baseline, rel_tolerance=0.2) if c.stat == "gap"]
    assert gap.passed  # 0.25 <= 0 + 0.2 x 2.0


def test_floor_is_absolute_and_fails_even_when_the_baseline_moved_with_it(clean_run, tmp_path):
    baseline = tmp_path / "floors.json"
    baseline.write_text(json.dumps({"format": "resetassay.baseline/1", "q": 0.05, "rows": [], "floors": [
        {"family": "mlp-*", "utility": "gxd", "metric": "l1", "stat": "spearman", "min": 0.999},
        {"family": "mlp-silu", "utility": "random", "metric": "l1", "stat": "gap_ratio", "max": 1000.0},
    ]}))
    result = runner.invoke(app, ["check", str(clean_run), "--baseline", str(baseline)])
    assert result.exit_code == 1, result.output
    failing = [line.split()[1:6] for line in result.output.splitlines() if line.startswith("FAIL")]
    assert sorted(failing) == [["mlp-relu", "gxd", "l1", "spearman", "floor"],
                               ["mlp-silu", "gxd", "l1", "spearman", "floor"]]


def test_baseline_writes_a_floor_only_where_the_run_clears_it_by_the_margin(clean_run):
    means, _, _ = family_means(clean_run)
    rho = means[(means["utility"] == "activation") & (means["metric"] == "l1")].set_index("family")["spearman"]
    floor = float(rho.min() + rho.max()) / 2  # between the two families
    baseline, skipped = make_baseline(clean_run, [f"activation:l1:spearman>={floor}"], margin=0.0)
    assert [f["family"] for f in baseline["floors"]] == [rho.idxmax()]
    assert len(skipped) == 1 and rho.idxmin() in skipped[0]
    baseline, skipped = make_baseline(clean_run, [f"activation:l1:spearman>={rho.max() - 0.01}"], margin=0.02)
    assert baseline["floors"] == [] and len(skipped) == 2


def test_a_run_missing_a_baseline_row_fails(clean_run, baseline_file, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(clean_run, run)
    summary = pd.read_csv(run / "summary.csv")
    summary[summary["utility"] != "activation"].to_csv(run / "summary.csv", index=False)
    result = runner.invoke(app, ["check", str(run), "--baseline", str(baseline_file)])
    assert result.exit_code == 1
    assert result.output.count("FAIL") == 2 * 2 * 3  # 2 families x 2 metrics x 3 statistics


@pytest.mark.parametrize("content", [
    "{not json",
    json.dumps({"format": "something/else", "q": 0.05, "rows": []}),
    json.dumps({"format": "resetassay.baseline/1", "q": 5, "rows": []}),
    json.dumps({"format": "resetassay.baseline/1", "q": 0.05, "rows": []}),
    json.dumps({"format": "resetassay.baseline/1", "q": 0.05, "rows": [{"family": "F", "utility": "u"}]}),
    json.dumps({"format": "resetassay.baseline/1", "q": 0.05,
                "rows": [{"family": "F", "utility": "u", "metric": "l1", "spearman": "high"}]}),
    json.dumps({"format": "resetassay.baseline/1", "q": 0.05,
                "floors": [{"family": "F", "utility": "u", "metric": "l1", "stat": "spearman"}]}),
    json.dumps({"format": "resetassay.baseline/1", "q": 0.05,
                "floors": [{"family": "F", "utility": "u", "metric": "l1", "stat": "rho", "min": 0.9}]}),
])
def test_malformed_baseline_exits_2_naming_the_file(clean_run, tmp_path, content):
    path = tmp_path / "broken.json"
    path.write_text(content)
    result = runner.invoke(app, ["check", str(clean_run), "--baseline", str(path)])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "broken.json" in result.output.replace("\n", "")


def test_missing_baseline_and_missing_run_exit_2_naming_the_path(clean_run, baseline_file, tmp_path):
    result = runner.invoke(app, ["check", str(clean_run), "--baseline", str(tmp_path / "none.json")])
    assert result.exit_code == 2 and "none.json" in result.output
    result = runner.invoke(app, ["check", str(tmp_path / "norun"), "--baseline", str(baseline_file)])
    assert result.exit_code == 2 and "summary.csv" in result.output.replace("\n", "")


def test_run_at_another_q_is_bad_input(clean_run, baseline_file, tmp_path):
    baseline = read_baseline(baseline_file)
    path = write_baseline({**baseline, "q": 0.1}, tmp_path / "q10.json")
    result = runner.invoke(app, ["check", str(clean_run), "--baseline", str(path)])
    assert result.exit_code == 2 and "q = 0.05" in result.output


def test_config_that_changes_numbers_is_noted_but_does_not_fail(clean_run, baseline_file, tmp_path):
    baseline = read_baseline(baseline_file)
    source = {**baseline["source"], "config": {"q": 0.05, "reference": "zero", "device": "cuda"}}
    path = write_baseline({**baseline, "source": source}, tmp_path / "other.json")
    result = runner.invoke(app, ["check", str(clean_run), "--baseline", str(path)])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "reference" in notes[0] and "'zero'" in notes[0]  # the device changes no number


@pytest.mark.parametrize("text", ["gxd:l1>=0.9", "gxd:l1:rho>=0.9", "gxd:l1:spearman>0.9", "gxd:l1:spearman>=x"])
def test_bad_floor_is_refused_naming_the_flag(text):
    with pytest.raises(BadInputError, match="--floor"):
        parse_floor(text)


def test_floor_parses_family_glob_and_bound():
    assert parse_floor("mlp-*:gxd:kl:gap<=0.01") == {"family": "mlp-*", "utility": "gxd", "metric": "kl",
                                                     "stat": "gap", "max": 0.01}
    assert parse_floor("gxd:l1:spearman >= 0.9")["family"] == "*"


def test_negative_tolerance_is_bad_input(clean_run, baseline_file):
    result = runner.invoke(app, ["check", str(clean_run), "--baseline", str(baseline_file), "--tolerance", "-1"])
    assert result.exit_code == 2 and "--tolerance" in result.output
