"""The CI gate: `resetassay baseline` and `resetassay check` (DESIGN "The CI gate") on a synthetic run.

The run's tables are built from a seeded, hand-designed UnitTable through the real
`checkpoint_summary`, then edited to plant regressions whose size is chosen against the rules
(Spearman drop > tolerance, Shock@q rise > relative tolerance, ...). Exit codes: 0 pass, 1
regression, 2 bad input.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from resetassay.cli import app
from resetassay.errors import BadInputError
from resetassay.io.rundir import write_run
from resetassay.names import ALL, COMMON
from resetassay.report.gate import (
    check_run,
    compare,
    config_differences,
    family_means,
    make_baseline,
    markdown_report,
    parse_floor,
    read_baseline,
    write_baseline,
)
from resetassay.stats.summary import checkpoint_summary

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
               change, scope: str = ALL) -> Path:
    """A copy of the run with one pooled SummaryTable cell (of `scope`) changed."""
    copy = tmp_path / "run"
    shutil.copytree(clean_run, copy)
    summary = pd.read_csv(copy / "summary.csv")
    row = ((summary["checkpoint"] == checkpoint) & (summary["utility"] == utility) & (summary["metric"] == metric)
           & (summary["scope"] == scope))
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
    # 2 families x 3 gated utilities (random is not gated) x 2 metrics x 2 pooled scopes, 3 statistics each,
    # + the same on the one unit kind (a table without kinds: "units"), regret and balanced ρ, + 2 floors (on ALL)
    assert len(baseline["rows"]) == 36 and {r["utility"] for r in baseline["rows"]} == {"gxd", "activation", "oracle"}
    scopes = [r["scope"] for r in baseline["rows"]]
    assert scopes.count(COMMON) == 12 and scopes.count("units") == 12
    assert all(set(r) >= {"regret", "balanced_rho"} for r in baseline["rows"] if r["scope"] == "units")
    assert len(baseline["floors"]) == 2 and {f["scope"] for f in baseline["floors"]} == {ALL}
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("tests") == str(24 * 3 + 12 * 2 + 2) and suite.get("failures") == "0"
    assert suite.find("testcase").get("classname").startswith("resetassay.check.")


def test_lowered_spearman_fails_with_exit_1_and_names_the_row(clean_run, baseline_file, tmp_path):
    # one of two silu checkpoints loses 0.1 -> the family mean drops by 0.05 > tolerance 0.02
    run = _perturbed(clean_run, tmp_path, "silu/a", "activation", "kl", "spearman", lambda v: v - 0.1)
    junit = tmp_path / "check.xml"
    result = runner.invoke(app, ["check", str(run), "--baseline", str(baseline_file), "--junit", str(junit)])
    assert result.exit_code == 1, result.output
    failing = [line for line in result.output.splitlines() if line.startswith("FAIL")]
    assert len(failing) == 1 and failing[0].split()[1:5] == ["mlp-silu", "activation", "kl", "spearman"]
    assert any(line.split() == ["status", "family", "utility", "metric", "stat", "baseline", "run", "change", "limit",
                                "rule", "/", "why"] for line in result.output.splitlines())
    assert "1 failed" in result.output
    failures = [c for c in ET.parse(junit).iter("testcase") if c.find("failure") is not None]
    assert [(c.get("classname"), c.get("name")) for c in failures] == [
        ("resetassay.check.mlp-silu", "activation kl spearman")]
    assert failures[0].find("failure").get("type") == "regression"
    text = failures[0].find("failure").text
    assert text.startswith("baseline ") and ", run " in text and ", limit " in text and text.endswith(")")
    assert junit.read_text().startswith("<?xml")  # a declaration, as JUnit readers expect
    floors = [c.get("name") for c in ET.parse(junit).iter("testcase") if c.get("name").endswith(" floor")]
    assert len(floors) == 2  # the floors are cases of their own, named as such


def test_a_regression_on_the_common_scope_alone_fails_naming_the_scope(clean_run, baseline_file, tmp_path):
    """The comparison between utilities (the common scope, SPEC S5) is gated too: a utility whose own rows hold but
    whose common-scope Shock@q rose fails, named "(common)" in the diff and the JUnit case."""
    run = _perturbed(clean_run, tmp_path, "relu/b", "gxd", "l1", "shock_at_q", lambda v: v * 1.5, scope=COMMON)
    junit = tmp_path / "check.xml"
    result = runner.invoke(app, ["check", str(run), "--baseline", str(baseline_file), "--junit", str(junit)])
    assert result.exit_code == 1, result.output
    (failing,) = [line for line in result.output.splitlines() if line.startswith("FAIL")]
    assert failing.split()[1:6] == ["mlp-relu", "gxd", "(common)", "l1", "shock_at_q"]
    failures = [c.get("name") for c in ET.parse(junit).iter("testcase") if c.find("failure") is not None]
    assert failures == ["gxd (common) l1 shock_at_q"]


def test_a_baseline_of_format_2_gates_the_all_scope_only(clean_run, baseline_file, tmp_path):
    """Rows without a scope (format /2, written before the common scope was gated) read as ALL rows."""
    old = json.loads(baseline_file.read_text())
    old["format"] = "resetassay.baseline/2"
    old["rows"] = [{k: v for k, v in r.items() if k != "scope"} for r in old["rows"] if r["scope"] == ALL]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    comparisons, _ = check_run(clean_run, path)
    assert len(comparisons) == 12 * 3 + 2 and {c.scope for c in comparisons} == {ALL}
    assert all(c.passed for c in comparisons)
    run = _perturbed(clean_run, tmp_path, "relu/b", "gxd", "l1", "shock_at_q", lambda v: v * 1.5, scope=COMMON)
    assert all(c.passed for c in check_run(run, path)[0])  # nothing gates the common scope there


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


def test_a_floor_the_run_does_not_clear_is_an_error_naming_the_families_unless_forced(clean_run, tmp_path):
    """A requested floor is never dropped (SPEC S5b gate): where some family misses it, `baseline` refuses (exit 2)
    naming that family; --force-floors writes it for every family with a warning, and the check then fails there."""
    means, _, _ = family_means(clean_run)
    rho = means[(means["utility"] == "activation") & (means["metric"] == "l1") & (means["scope"] == ALL)].set_index(
        "family")["spearman"]
    floor = float(rho.min() + rho.max()) / 2  # between the two families
    with pytest.raises(BadInputError, match=re.escape(rho.idxmin())) as caught:
        make_baseline(clean_run, [f"activation:l1:spearman>={floor}"], margin=0.0)
    assert rho.idxmax() + " has" not in str(caught.value)
    baseline, warned = make_baseline(clean_run, [f"activation:l1:spearman>={floor}"], margin=0.0, force_floors=True)
    assert sorted(f["family"] for f in baseline["floors"]) == sorted(rho.index)
    assert len(warned) == 1 and rho.idxmin() in warned[0] and "`force_floors`" in warned[0]
    path = tmp_path / "forced.json"
    result = runner.invoke(app, ["baseline", str(clean_run), "-o", str(path), "--floor",
                                 f"activation:l1:spearman>={floor}"])
    assert result.exit_code == 2 and "0 floors" not in result.output and not path.exists()
    result = runner.invoke(app, ["baseline", str(clean_run), "-o", str(path), "--floor",
                                 f"activation:l1:spearman>={floor}", "--force-floors"])
    assert result.exit_code == 0 and "warning:" in result.output and "2 floors" in result.output
    result = runner.invoke(app, ["check", str(clean_run), "--baseline", str(path)])
    assert result.exit_code == 1 and f"{rho.idxmin()}  activation" in result.output
    baseline, warned = make_baseline(clean_run, [f"activation:l1:spearman>={rho.min() - 0.01}"], margin=0.0)
    assert len(baseline["floors"]) == 2 and not warned  # both clear it without a margin ...
    with pytest.raises(BadInputError, match=f"{rho.idxmin()} has .* not clear of"):  # ... but not by 0.02
        make_baseline(clean_run, [f"activation:l1:spearman>={rho.min() - 0.01}"], margin=0.02)


def test_a_floor_on_the_verdict_statistics_holds_on_every_unit_kind(clean_run):
    baseline, _ = make_baseline(clean_run, ["gxd:l1:regret<=0.5", "gxd:l1:balanced_rho>=0.5"])
    assert {(f["stat"], f["scope"]) for f in baseline["floors"]} == {("regret", "units"), ("balanced_rho", "units")}
    with pytest.raises(BadInputError, match="regret"):
        make_baseline(clean_run, ["random:l1:regret<=0.1"], utilities=["gxd"])


def test_a_run_missing_a_baseline_row_fails(clean_run, baseline_file, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(clean_run, run)
    summary = pd.read_csv(run / "summary.csv")
    summary[summary["utility"] != "activation"].to_csv(run / "summary.csv", index=False)
    result = runner.invoke(app, ["check", str(run), "--baseline", str(baseline_file)])
    assert result.exit_code == 1
    # 2 families x 2 metrics x (2 pooled scopes x 3 statistics + 1 kind x regret and balanced ρ)
    assert result.output.count("FAIL") == 2 * 2 * (2 * 3 + 2)


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
    with pytest.raises(BadInputError, match="`floor`"):
        parse_floor(text)


def test_floor_parses_family_glob_and_bound():
    assert parse_floor("mlp-*:gxd:kl:gap<=0.01") == {"family": "mlp-*", "utility": "gxd", "metric": "kl",
                                                     "scope": ALL, "stat": "gap", "max": 0.01}
    assert parse_floor("gxd:l1:spearman >= 0.9")["family"] == "*"


def test_negative_tolerance_is_bad_input(clean_run, baseline_file):
    result = runner.invoke(app, ["check", str(clean_run), "--baseline", str(baseline_file), "--tolerance", "-1"])
    assert result.exit_code == 2 and "--tolerance" in result.output


# --- "Nothing silently wrong": NaN, empty runs, fewer checkpoints, output paths --------------------------------


def _edit_summary(run: Path, tmp_path: Path, edit) -> Path:
    """A copy of `run` whose summary.csv is `edit(summary)`."""
    copy = tmp_path / "edited"
    shutil.copytree(run, copy)
    summary = pd.read_csv(copy / "summary.csv", keep_default_na=False, na_values=[""], dtype={"note": object})
    edit(summary).to_csv(copy / "summary.csv", index=False)
    return copy


def _pooled(summary: pd.DataFrame, checkpoint: str, utility: str, metric: str = "l1") -> pd.Series:
    return ((summary["checkpoint"] == checkpoint) & (summary["utility"] == utility) & (summary["metric"] == metric)
            & (summary["scope"] == ALL))


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize(("args", "flag"), [
    (["--tolerance", "nan"], "--tolerance"), (["--tolerance", "inf"], "--tolerance"),
    (["--rel-tolerance", "nan"], "--rel-tolerance"), (["--rel-tolerance", "inf"], "--rel-tolerance"),
])
def test_nan_or_inf_tolerance_is_bad_input_not_a_pass(clean_run, baseline_file, tmp_path, args, flag):
    """A NaN limit would pass every comparison: the regression below fails by default, so it must not pass here."""
    run = _perturbed(clean_run, tmp_path, "silu/a", "activation", "kl", "spearman", lambda v: v - 0.1)
    run = _perturbed(run, tmp_path / "x", "silu/a", "gxd", "l1", "shock_at_q", lambda v: v * 3)
    assert runner.invoke(app, ["check", str(run), "--baseline", str(baseline_file)]).exit_code == 1
    result = runner.invoke(app, ["check", str(run), "--baseline", str(baseline_file), *args])
    assert result.exit_code == 2, result.output
    assert _error_lines(result.output)[0].startswith(f"error: {flag} ")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_compare_and_make_baseline_refuse_a_tolerance_or_margin_that_is_not_finite(clean_run, value):
    means, _, _ = family_means(clean_run)
    baseline, _ = make_baseline(clean_run)
    for kwargs, flag in (({"tolerance": value}, "tolerance"), ({"rel_tolerance": value}, "rel_tolerance")):
        with pytest.raises(BadInputError) as caught:
            compare(means, baseline, **kwargs)
        assert caught.value.field == flag
    with pytest.raises(BadInputError) as caught:
        make_baseline(clean_run, margin=value)
    assert caught.value.field == "margin"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_floor_value_must_be_finite(value):
    with pytest.raises(BadInputError, match="`floor`") as caught:
        parse_floor(f"gxd:l1:spearman>={value}")
    assert caught.value.field == "floor"


@pytest.mark.parametrize(("section", "entry", "named"), [
    ("rows", '{"family": "mlp-silu", "utility": "gxd", "metric": "l1", "n": 2, "spearman": NaN}', "'spearman'"),
    ("rows", '{"family": "mlp-silu", "utility": "gxd", "metric": "l1", "shock_at_q": Infinity}', "'shock_at_q'"),
    ("rows", '{"family": "mlp-silu", "utility": "gxd", "metric": "l1", "gap": -Infinity}', "'gap'"),
    ("floors", '{"family": "*", "utility": "gxd", "metric": "l1", "stat": "spearman", "min": NaN}', "'min'"),
    ("floors", '{"family": "*", "utility": "gxd", "metric": "l1", "stat": "gap", "max": Infinity}', "'max'"),
])
def test_nan_or_infinity_in_a_baseline_is_bad_input_naming_file_and_entry(clean_run, tmp_path, section, entry,
                                                                          named):
    path = tmp_path / "nan.json"
    path.write_text(f'{{"format": "resetassay.baseline/2", "q": 0.05, "{section}": [{entry}]}}')
    result = runner.invoke(app, ["check", str(clean_run), "--baseline", str(path)])
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.output.replace("\n", " ").replace(" error:", "\nerror:"))
    assert "nan.json" in line and f"{section}[0]" in line and named in line
    with pytest.raises(BadInputError, match=rf"{section}\[0\]"):  # nor is such a baseline written
        write_baseline(json.loads(path.read_text()), tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


def test_nan_q_in_a_baseline_is_bad_input(clean_run, tmp_path):
    path = tmp_path / "q.json"
    path.write_text('{"format": "resetassay.baseline/2", "q": NaN, "rows": [{"family": "mlp-silu", '
                    '"utility": "gxd", "metric": "l1", "spearman": 0.9}]}')
    result = runner.invoke(app, ["check", str(clean_run), "--baseline", str(path)])
    assert result.exit_code == 2 and "'q'" in result.output and "q.json" in result.output


def test_a_run_nan_fails_against_a_finite_baseline_value(clean_run, baseline_file, tmp_path):
    def blank(summary: pd.DataFrame) -> pd.DataFrame:
        for checkpoint in ("silu/a", "silu/b"):
            summary.loc[_pooled(summary, checkpoint, "gxd"), "spearman"] = np.nan
        return summary

    result = runner.invoke(app, ["check", str(_edit_summary(clean_run, tmp_path, blank)),
                                 "--baseline", str(baseline_file)])
    assert result.exit_code == 1, result.output
    failing = [line for line in result.output.splitlines() if line.startswith("FAIL")]
    assert [line.split()[1:5] for line in failing] == [["mlp-silu", "gxd", "l1", "spearman"]] * 2
    assert "spearman floor" in failing[1]  # the floor gxd:l1:spearman>=0.9 fails on it too
    assert all("no value in the run (NaN)" in line for line in failing)


def test_a_nan_in_one_checkpoint_fails_even_when_the_others_mean_matches_the_baseline(clean_run, baseline_file,
                                                                                      tmp_path):
    """The family mean skips NaN: without this rule silu/a's NaN would pass as silu/b's value alone."""
    rho = json.loads(baseline_file.read_text())["rows"]
    (base,) = [r["spearman"] for r in rho if (r["family"], r["utility"], r["metric"], r["scope"]) ==
               ("mlp-silu", "gxd", "l1", ALL)]

    def one_blank(summary: pd.DataFrame) -> pd.DataFrame:
        summary.loc[_pooled(summary, "silu/a", "gxd"), ["spearman", "note"]] = [np.nan, "shock is constant"]
        summary.loc[_pooled(summary, "silu/b", "gxd"), "spearman"] = base
        return summary

    run = _edit_summary(clean_run, tmp_path, one_blank)
    means, _, _ = family_means(run)
    row = means[(means["family"] == "mlp-silu") & (means["utility"] == "gxd") & (means["metric"] == "l1")].iloc[0]
    assert row["spearman"] == pytest.approx(base) and row["spearman_n"] == 1  # the mean alone looks fine
    result = runner.invoke(app, ["check", str(run), "--baseline", str(baseline_file)])
    assert result.exit_code == 1, result.output
    failing = [line for line in result.output.splitlines() if line.startswith("FAIL")]
    assert len(failing) == 2  # the baseline row and the floor
    assert all("mlp-silu  gxd" in line and "no value in 1 of 2 checkpoints (NaN: shock is constant)" in line
               for line in failing)


@pytest.fixture(scope="module")
def flat_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The clean run plus a utility `flat`, constant over the units (Spearman NaN with a reason, SPEC S5) in every
    mlp-silu checkpoint and in relu/a only (relu/b ranks the units)."""
    rng = np.random.default_rng(0)
    units = []
    for name in CHECKPOINTS:
        u = _units(name, rng)
        u["flat"] = 1.0 if name != "relu/b" else u["shock_l1"]
        units.append(u)
    summary = pd.concat([checkpoint_summary(u, [*UTILITIES, "flat"], ["l1", "kl"], 0.05) for u in units],
                        ignore_index=True)
    checkpoints = pd.DataFrame([{"checkpoint": k, "family": f, "step": s} for k, (f, s) in CHECKPOINTS.items()])
    notes = pd.DataFrame(columns=["checkpoint", "utility", "layer", "reason"])
    out = tmp_path_factory.mktemp("flat")
    write_run(out, {"units": pd.concat(units), "summary": summary, "notes": notes, "checkpoints": checkpoints},
              {"config": {"q": 0.05}, "versions": {}})
    return out


def _row(baseline: dict, family: str, utility: str = "flat", metric: str = "l1", scope: str = ALL) -> dict:
    (row,) = [r for r in baseline["rows"] if (r["family"], r["utility"], r["metric"], r["scope"]) ==
              (family, utility, metric, scope)]
    return row


def test_a_nan_the_method_defines_is_stored_as_null_with_its_reason_and_passes(flat_run, tmp_path):
    path = tmp_path / "flat.json"
    result = runner.invoke(app, ["baseline", str(flat_run), "-o", str(path)])
    assert result.exit_code == 0, result.output
    baseline = json.loads(path.read_text())
    assert baseline["format"] == "resetassay.baseline/4"
    silu, relu = _row(baseline, "mlp-silu"), _row(baseline, "mlp-relu")
    assert silu["spearman"] is None and silu["spearman_note"] == "utility is constant over the units"
    assert "spearman_n" not in silu and "shock_at_q_note" not in silu  # Shock@q is defined (ties by unit index)
    assert relu["spearman"] is not None and relu["spearman_n"] == 1  # relu/b has a value, relu/a has none
    assert relu["spearman_note"] == "utility is constant over the units"
    result = runner.invoke(app, ["check", str(flat_run), "--baseline", str(path), "--all"])
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.output.splitlines() if line.split()[1:5] == ["mlp-silu", "flat", "l1",
                                                                                      "spearman"]]
    assert line.startswith("ok") and "NaN allowed (utility is constant over the units)" in line


@pytest.mark.parametrize(("edit", "why"), [
    # silu: the run's NaN has lost its reason
    (lambda s: s.assign(note=s["note"].where(~(s["utility"].eq("flat") & s["checkpoint"].str.startswith("silu")))),
     "no value in the run (NaN) and no reason"),
    # relu: relu/b's value is gone too, so no checkpoint has one where the baseline had a value
    (lambda s: s.assign(spearman=s["spearman"].where(~(s["utility"].eq("flat") & s["checkpoint"].eq("relu/b")))),
     "no value in the run (NaN: utility is constant over the units)"),
])
def test_a_method_nan_fails_without_its_reason_or_where_the_baseline_has_a_value(flat_run, tmp_path, edit, why):
    path = write_baseline(make_baseline(flat_run)[0], tmp_path / "flat.json")
    result = runner.invoke(app, ["check", str(_edit_summary(flat_run, tmp_path, edit)), "--baseline", str(path)])
    assert result.exit_code == 1, result.output
    failing = [line for line in result.output.splitlines() if line.startswith("FAIL")]
    assert failing and all(why in line and " flat " in line and "spearman" in line for line in failing)


def test_a_run_nan_with_a_reason_fails_against_a_finite_baseline_naming_the_reason(flat_run, tmp_path):
    baseline = make_baseline(flat_run)[0]
    _row(baseline, "mlp-silu").update(spearman=0.5)
    del _row(baseline, "mlp-silu")["spearman_note"]
    path = write_baseline(baseline, tmp_path / "finite.json")
    result = runner.invoke(app, ["check", str(flat_run), "--baseline", str(path)])
    assert result.exit_code == 1, result.output
    failing = [line for line in result.output.splitlines() if line.startswith("FAIL")]
    assert len(failing) == 1  # only l1 was made finite; kl stays null with its reason and passes
    assert "mlp-silu  flat" in failing[0]
    assert "no value in the run (NaN: utility is constant over the units)" in failing[0]


def test_null_without_a_reason_is_not_gated_and_format_1_is_still_read(flat_run, tmp_path):
    baseline = make_baseline(flat_run)[0]
    baseline["rows"] = [row for row in baseline["rows"] if row["scope"] in (ALL, COMMON)]  # /1 has no verdict rows
    for row in baseline["rows"]:
        for stat in ("spearman", "shock_at_q", "gap"):
            row.pop(f"{stat}_note", None)
            row.pop(f"{stat}_n", None)
            if row["utility"] == "flat":
                row[stat] = None
    path = tmp_path / "v1.json"
    path.write_text(json.dumps({**baseline, "format": "resetassay.baseline/1"}))
    comparisons = check_run(flat_run, path)[0]
    assert comparisons and all(c.passed for c in comparisons)
    assert not [c for c in comparisons if c.utility == "flat"]


@pytest.mark.parametrize("command", ["check", "baseline"])
def test_an_empty_summary_is_bad_input_naming_the_file(clean_run, baseline_file, tmp_path, command):
    run = _edit_summary(clean_run, tmp_path, lambda s: s.iloc[:0])
    args = ["--baseline", str(baseline_file)] if command == "check" else ["-o", str(tmp_path / "b.json")]
    result = runner.invoke(app, [command, str(run), *args])
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.output)
    assert "summary.csv" in line and "no rows" in line and str(run) in line.replace("\n", "")


def test_a_run_of_none_of_the_baseline_families_is_reported_as_such(clean_run, baseline_file, tmp_path):
    run = tmp_path / "other"
    shutil.copytree(clean_run, run)
    checkpoints = pd.read_csv(run / "checkpoints.csv")
    checkpoints["family"] = "cnn-relu"
    checkpoints.to_csv(run / "checkpoints.csv", index=False)
    result = runner.invoke(app, ["check", str(run), "--baseline", str(baseline_file)])
    assert result.exit_code == 2, result.output
    text = result.output.replace("\n", "")
    assert "summary.csv: none of its model families (cnn-relu)" in text and "mlp-relu, mlp-silu" in text


def test_fewer_checkpoints_than_the_baseline_is_a_note(clean_run, baseline_file, tmp_path):
    run = _edit_summary(clean_run, tmp_path, lambda s: s[s["checkpoint"] != "silu/b"])
    units = pd.read_csv(run / "units.csv")
    units[units["checkpoint"] != "silu/b"].to_csv(run / "units.csv", index=False)  # the checkpoint left out whole
    comparisons, notes = check_run(run, baseline_file, tolerance=1.0, rel_tolerance=10.0)
    assert all(c.passed for c in comparisons)
    assert notes == ["mlp-silu has 1 checkpoints in the run and 2 in the baseline (the run's means are over fewer)"]
    result = runner.invoke(app, ["check", str(run), "--baseline", str(baseline_file), "--tolerance", "1",
                                 "--rel-tolerance", "10"])
    assert result.exit_code == 0 and "mlp-silu has 1 checkpoints in the run and 2 in the baseline" in result.output
    assert check_run(clean_run, baseline_file)[1] == []


@pytest.mark.parametrize("where", ["directory", "under a file"])
@pytest.mark.parametrize(("command", "flag"), [("check", "--junit"), ("check", "--markdown"), ("baseline", "--output")])
def test_an_output_path_that_cannot_be_a_file_is_bad_input_naming_flag_and_path(clean_run, baseline_file, tmp_path,
                                                                                where, command, flag):
    (tmp_path / "a-file").write_text("keep me")
    target = tmp_path / "a-dir" if where == "directory" else tmp_path / "a-file" / "out.xml"
    (tmp_path / "a-dir").mkdir()
    args = ["--baseline", str(baseline_file)] if command == "check" else []
    result = runner.invoke(app, [command, str(clean_run), *args, flag, str(target)])
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.output.replace("\n", " ").replace(" error:", "\nerror:"))
    assert line.startswith(f"error: {flag} {target}")
    assert (tmp_path / "a-file").read_text() == "keep me" and not list((tmp_path / "a-dir").iterdir())


def test_junit_path_is_checked_before_the_run_is_read(tmp_path, baseline_file):
    with pytest.raises(BadInputError) as caught:
        check_run(tmp_path / "no-run", baseline_file, junit=tmp_path)
    assert caught.value.field == "junit"


def test_baseline_is_written_atomically(clean_run, baseline_file, tmp_path, monkeypatch):
    """A write that fails (here: the disk fills at the flush) leaves the old baseline whole and no temporary file."""
    path = tmp_path / "baseline.json"
    shutil.copy(baseline_file, path)
    before = path.read_text()
    baseline, _ = make_baseline(clean_run, utilities=["gxd"])

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(BadInputError, match="`output`") as caught:
        write_baseline(baseline, path)
    assert caught.value.field == "output" and str(path) in str(caught.value)
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["baseline.json"]


def _md_tables(text: str) -> list[list[list[str]]]:
    """The markdown tables of a document: rows of cells, the header row first, the |---| row dropped."""
    tables, rows = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            if not line.startswith("|---"):
                rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
        elif rows:
            tables.append(rows)
            rows = []
    return tables


def _family_stat(run: Path, family: str, utility: str, metric: str, stat: str) -> float:
    means, _, _ = family_means(run)
    row = means[(means["family"] == family) & (means["utility"] == utility) & (means["metric"] == metric)]
    return float(row[stat].iloc[0])


def test_markdown_of_a_failing_check_shows_verdict_failures_notes_then_what_moved_folded(clean_run, baseline_file,
                                                                                        tmp_path):
    run = _perturbed(clean_run, tmp_path, "silu/a", "activation", "kl", "spearman", lambda v: v - 0.1)  # fails
    run = _perturbed(run, tmp_path / "x", "relu/a", "gxd", "l1", "shock_at_q", lambda v: v * 1.1)  # moves, passes
    baseline = read_baseline(baseline_file)
    source = {**baseline["source"], "config": {**baseline["source"]["config"], "reference": "zero"}}
    other = write_baseline({**baseline, "source": source}, tmp_path / "other.json")
    markdown, junit = tmp_path / "pr" / "check.md", tmp_path / "check.xml"
    result = runner.invoke(app, ["check", str(run), "--baseline", str(other), "--markdown", str(markdown),
                                 "--junit", str(junit)])
    assert result.exit_code == 1, result.output
    text = markdown.read_text()
    lines = text.splitlines()
    assert lines[0] == ("**resetassay check ❌ failed**: 98 comparisons: 97 passed (1 moved by more than 1e-04 "
                        "within tolerance), 1 failed")
    assert lines[0].split(": ", 1)[1] == result.output.strip().splitlines()[-1]  # the diff table's counts line
    assert text.index("### 1 failed") < text.index("### Notes") < text.index("<details>") < text.index("</details>")
    failures, moved = _md_tables(text)
    base = next(r for r in baseline["rows"] if (r["family"], r["utility"], r["metric"]) ==
                ("mlp-silu", "activation", "kl"))["spearman"]
    now = _family_stat(run, "mlp-silu", "activation", "kl", "spearman")
    assert failures[0] == ["family", "utility", "metric", "stat", "baseline", "now", "moved by", "tolerance", "limit",
                           "why"]
    assert failures[1:] == [["mlp-silu", "activation", "kl", "spearman", f"{base:.4g}", f"{now:.4g}",
                             f"{now - base:+.3g} ({100 * (now - base) / abs(base):+.2g}%)", "drop ≤ 0.02",
                             f"{base - 0.02:.4g}", f"{now:.4g} &lt; {base - 0.02:.4g} (drop ≤ 0.02)"]]
    assert "- config differs from the baseline's run: reference: run 'calibration-mean', baseline 'zero'" in lines
    assert "<summary>1 passed and moved by more than 1e-04</summary>" in lines
    shock = next(r for r in baseline["rows"] if (r["family"], r["utility"], r["metric"]) ==
                 ("mlp-relu", "gxd", "l1"))["shock_at_q"]
    now = _family_stat(run, "mlp-relu", "gxd", "l1", "shock_at_q")
    assert moved[1:] == [["mlp-relu", "gxd", "l1", "shock_at_q", f"{shock:.4g}", f"{now:.4g}",
                          f"{now - shock:+.3g} ({100 * (now - shock) / shock:+.2g}%)", "rise ≤ 0.1 × baseline",
                          f"{shock * 1.1:.4g}"]]
    failed = [c for c in ET.parse(junit).iter("testcase") if c.find("failure") is not None]
    assert len(failed) == len(failures) - 1  # the same comparisons in both files


def test_markdown_of_a_passing_check_says_so_and_lists_nothing_that_did_not_move(clean_run, baseline_file, tmp_path):
    markdown = tmp_path / "check.md"
    comparisons, notes = check_run(clean_run, baseline_file, markdown=markdown)
    text = markdown.read_text()
    assert text.splitlines()[0] == ("**resetassay check ✅ passed**: 98 comparisons: 98 passed (0 moved by more than "
                                    "1e-04 within tolerance), 0 failed")
    assert "No comparison failed." in text and "### Notes" not in text and "<details>" not in text
    assert "No passing value moved by more than 1e-04." in text and _md_tables(text) == []
    check_run(clean_run, baseline_file, markdown=markdown, show_all=True)  # --all: every comparison, folded
    text = markdown.read_text()
    (table,) = _md_tables(text)
    assert "<summary>0 passed and moved by more than 1e-04, 98 did not move</summary>" in text
    assert len(table) == 1 + 98 and {row[6] for row in table[1:]} <= {"+0 (+0%)", "+0", ""}
    assert [row[3] for row in table[1:]].count("spearman floor") == 2


def test_markdown_cells_escape_pipes_and_html():
    means = pd.DataFrame({"family": ["a|b<i>"], "utility": ["u"], "metric": ["l1"], "spearman": [0.5],
                          "shock_at_q": [1.0], "gap": [0.0], "n": [1]})
    baseline = {"rows": [{"family": "a|b<i>", "utility": "u", "metric": "l1", "spearman": 0.9, "shock_at_q": 1.0,
                          "gap": 0.0}], "floors": []}
    text = markdown_report(compare(means, baseline), ["a note with | and <b>"])
    (failures,) = _md_tables(text)
    assert failures[1][0] == "a\\|b&lt;i&gt;" and "- a note with \\| and &lt;b&gt;" in text.splitlines()
    assert "\n### Notes\n\n- a note" in text  # a blank line before the list, as markdown wants


def test_an_intervention_a_recorded_baseline_predates_counts_as_the_clamp_it_used():
    """Baselines recorded before --intervention existed measured the clamp: a cbp-reset run against one is noted."""
    assert config_differences({"intervention": "cbp-reset", "q": 0.05}, {"q": 0.05}) == [
        "config differs from the baseline's run: intervention: run 'cbp-reset', baseline 'clamp'"]
    assert config_differences({"intervention": "clamp", "q": 0.05}, {"q": 0.05}) == []


@pytest.mark.parametrize(("value", "reference", "shown"), [(6.2, 1.0, "+5.2 (+520%)"), (1.052, 1.0, "+0.052 (+5.2%)"),
                                                           (0.99969, 1.0, "-0.00031 (-0.031%)")])
def test_changes_print_as_people_write_percentages(value, reference, shown):
    """Not "+5.2e+02%" (issue 22)."""
    from resetassay.report.gate import Comparison, cells

    c = Comparison("F", "gxd", "l1", ALL, "shock_at_q", "baseline", reference, value, 1.1, "max", "rise ≤ 0.1")
    assert cells(c)["moved"] == shown


def test_a_regret_regression_on_a_unit_kind_fails_naming_the_kind(clean_run, baseline_file, tmp_path):
    """The verdict's statistics are gated (SPEC S5b): activation's units reordered so that it picks the costliest
    units of one checkpoint raise its regret far beyond the tolerance, while the pooled S5 rows are untouched
    (summary.csv is the clean run's)."""
    run = tmp_path / "run"
    shutil.copytree(clean_run, run)
    units = pd.read_csv(run / "units.csv")
    mine = units["checkpoint"] == "silu/a"
    units.loc[mine, "activation"] = -units.loc[mine, "shock_l1"]
    units.to_csv(run / "units.csv", index=False)
    result = runner.invoke(app, ["check", str(run), "--baseline", str(baseline_file)])
    assert result.exit_code == 1, result.output
    failing = [line.split()[1:5] for line in result.output.splitlines() if line.startswith("FAIL")]
    assert ["mlp-silu", "activation", "(units)", "l1"] in failing and all("(units)" in f for f in failing)


def _v4(rows: list[dict]) -> str:
    return json.dumps({"format": "resetassay.baseline/4", "q": 0.05, "rows": rows})


ROW = {"family": "F", "utility": "u", "metric": "l1", "scope": "ALL", "n": 1, "spearman": 0.9, "shock_at_q": 0.1,
       "gap": 0.0}


@pytest.mark.parametrize(("content", "needle"), [
    (_v4([{**ROW, "spearman": 2.5}]), "'spearman' is 2.5, outside [-1, 1]"),  # was judged as a regression
    (_v4([{**ROW, "gap": -0.1}]), "'gap' is -0.1, outside [0, inf]"),
    (_v4([{**ROW, "spaerman": 0.9}]), "unknown key 'spaerman'"),  # was accepted and ignored
    (_v4([ROW, {**ROW, "spearman": 0.5}]), "the same family, utility, metric and scope as rows[0]"),
    (_v4([{k: v for k, v in ROW.items() if k != "scope"}]), "no 'scope'"),
    (_v4([{**ROW, "scope": "neurons", "regret": 0.1}]), "unknown key 'gap', 'shock_at_q', 'spearman'"),
    (_v4([{**ROW, "n": 1.5}]), "'n' must be a whole number >= 1"),
    (_v4([{**ROW, "n": 2, "spearman_n": -1}]), "'spearman_n' must be a whole number from 0 to 'n'"),
    ("[" * 200_000 + "]" * 200_000, "nested too deep"),  # was a RecursionError traceback
])
def test_a_bad_baseline_is_bad_input_naming_the_entry(clean_run, tmp_path, content, needle):
    path = tmp_path / "bad.json"
    path.write_text(content)
    result = runner.invoke(app, ["check", str(clean_run), "--baseline", str(path)])
    assert result.exit_code == 2, result.output
    (line,) = _error_lines(result.output)
    assert needle in line and str(path) in line.replace("\n", "")


def test_a_huge_baseline_is_refused_before_it_is_read(clean_run, tmp_path, monkeypatch):
    import resetassay.report.gate

    monkeypatch.setattr(resetassay.report.gate, "MAX_BASELINE_BYTES", 1000)
    path = tmp_path / "big.json"
    path.write_text(_v4([ROW] * 50))
    with pytest.raises(BadInputError, match="more than a baseline holds"):
        read_baseline(path)


def test_baseline_never_overwrites_a_file_that_is_not_a_baseline(clean_run, baseline_file, tmp_path):
    """Only what resetassay wrote is overwritten (issue 24): an unrelated JSON file at -o stays, exit 2; a baseline
    there is regenerated."""
    other = tmp_path / "package.json"
    other.write_text('{"name": "my-app"}')
    result = runner.invoke(app, ["baseline", str(clean_run), "-o", str(other)])
    assert result.exit_code == 2 and "not a resetassay baseline" in result.output
    assert other.read_text() == '{"name": "my-app"}'
    again = tmp_path / "again.json"
    shutil.copy(baseline_file, again)
    assert runner.invoke(app, ["baseline", str(clean_run), "-o", str(again)]).exit_code == 0


def test_a_floor_exactly_at_a_familys_value_is_cleared(clean_run):
    """`>=` means at or above: a floor equal to a family's mean (margin 0) is cleared, written, not an error."""
    means, _, _ = family_means(clean_run)
    rho = means[(means["utility"] == "activation") & (means["metric"] == "l1") & (means["scope"] == ALL)].set_index(
        "family")["spearman"]
    family = rho.idxmin()
    baseline, warned = make_baseline(clean_run, [f"{family}:activation:l1:spearman>={float(rho.min())!r}"], margin=0.0)
    assert [f["family"] for f in baseline["floors"]] == [family] and warned == []


def test_family_means_say_no_reason_as_an_empty_note(clean_run):
    """Where every checkpoint has a value there is no reason to give: the note is "" (not None, not the reason)."""
    means, _, _ = family_means(clean_run)
    for stat in ("spearman", "regret"):
        defined = means[means[f"{stat}_n"] == means["n"]]
        assert len(defined) and (defined[f"{stat}_note"] == "").all()


def test_a_baseline_of_floors_alone_compares_its_floors(clean_run):
    means, _, _ = family_means(clean_run)
    floor = {"family": "*", "utility": "gxd", "metric": "l1", "scope": ALL, "stat": "spearman", "min": -1.0}
    compared = compare(means, {"floors": [floor]})  # no "rows" at all
    assert compared and {c.kind for c in compared} == {"floor"} and all(c.passed for c in compared)


def test_a_floor_may_hold_every_scope(tmp_path):
    """A floor's scope may be "*" (every pooled scope and kind); a baseline row's may not."""
    floor = {"family": "*", "utility": "gxd", "metric": "l1", "scope": "*", "stat": "spearman", "min": 0.1}
    path = tmp_path / "floors.json"
    path.write_text(json.dumps({"format": "resetassay.baseline/4", "q": 0.05, "rows": [], "floors": [floor]}))
    assert read_baseline(path)["floors"][0]["scope"] == "*"


def test_a_max_floor_is_written_as_a_maximum(clean_run):
    means, _, _ = family_means(clean_run)
    gap = means[(means["utility"] == "gxd") & (means["metric"] == "l1") & (means["scope"] == ALL)]["gap"]
    baseline, warned = make_baseline(clean_run, [f"*:gxd:l1:gap<={float(gap.max()) + 1.0!r}"])
    assert warned == [] and baseline["floors"] and all(set(f) & {"min", "max"} == {"max"} for f in baseline["floors"])


def test_a_nan_the_method_defines_is_compared_as_a_minimum(flat_run):
    means, _, _ = family_means(flat_run)
    baseline, _ = make_baseline(flat_run)
    nan_rows = [c for c in compare(means, baseline) if c.rule.startswith("NaN allowed")]
    assert nan_rows and {c.bound for c in nan_rows} == {"min"}


def test_a_max_floor_exactly_at_a_familys_value_holds(clean_run, tmp_path):
    """`<=` means at or below: a floor `gap_ratio<=V` with V the family's own value passes."""
    means, _, _ = family_means(clean_run)
    row = means[(means["family"] == "mlp-silu") & (means["utility"] == "gxd") & (means["metric"] == "l1")
                & (means["scope"] == ALL)].iloc[0]
    baseline = tmp_path / "floors.json"
    baseline.write_text(json.dumps({"format": "resetassay.baseline/1", "q": 0.05, "rows": [], "floors": [
        {"family": "mlp-silu", "utility": "gxd", "metric": "l1", "stat": "gap_ratio", "max": float(row["gap_ratio"])},
    ]}))
    result = runner.invoke(app, ["check", str(clean_run), "--baseline", str(baseline)])
    assert result.exit_code == 0, result.output


def test_a_report_file_is_written_under_folders_that_do_not_exist_yet(tmp_path):
    from resetassay.report.gate import _write

    path = _write(tmp_path / "a" / "b" / "check.xml", "<x/>", "junit", "check.xml")
    assert path.read_text() == "<x/>"


@pytest.mark.parametrize("error, shown", [(OSError("the disk went away"), "the disk went away"),
                                          (OSError(errno.ENOSPC, "No space left on device"), "No space left")])
def test_a_write_that_fails_names_the_flag_and_the_reason(tmp_path, monkeypatch, error, shown):
    """The reason is the OS's own words where it gives some (strerror), else the error's text; never 'None'."""
    import resetassay.report.gate as gate

    def fail(path, text):
        raise error

    monkeypatch.setattr(gate, "atomic_write", fail)
    with pytest.raises(BadInputError, match=rf"`junit` .*check\.xml: cannot write \({shown}") as caught:
        gate._write(tmp_path / "check.xml", "<x/>", "junit", "check.xml")
    assert caught.value.field == "junit" and "None" not in str(caught.value)


@pytest.mark.parametrize("flag", ["junit", "markdown"])
def test_a_report_that_cannot_be_written_after_the_check_names_its_flag(clean_run, baseline_file, tmp_path,
                                                                        monkeypatch, flag):
    """A write that fails once the comparisons are made (the disk filled meanwhile) is bad input naming the flag."""
    import resetassay.report.gate as gate

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gate, "atomic_write", full)
    with pytest.raises(BadInputError, match="No space left") as caught:
        check_run(clean_run, baseline_file, **{flag: tmp_path / f"check.{'xml' if flag == 'junit' else 'md'}"})
    assert caught.value.field == flag


def test_a_summary_without_the_spearman_column_is_bad_input_naming_it(clean_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(clean_run, run)
    pd.read_csv(run / "summary.csv").drop(columns="spearman").to_csv(run / "summary.csv", index=False)
    with pytest.raises(BadInputError, match="no column spearman"):
        family_means(run)
