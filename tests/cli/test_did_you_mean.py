"""Did you mean: an unknown layer glob (`layers`) or model family (a `--floor FAMILY:...`, a baseline's family)
is answered with the close names, as unknown utilities, metrics and `--model` names are."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.paths import FIXTURES
from typer.testing import CliRunner

import resetassay as ra
from resetassay.cli import app
from resetassay.io.rundir import write_run
from resetassay.models.zoo import create_model
from resetassay.report.gate import check_run, make_baseline
from resetassay.stats.summary import checkpoint_summary

runner = CliRunner()
FAMILIES = {"a": "mlp-relu@digits", "b": "mlp-relu@digits", "c": "mlp-silu@digits"}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic run of two families (the gate reads only the tables)."""
    rng = np.random.default_rng(0)
    units = []
    for name in FAMILIES:
        shock = np.exp(rng.normal(size=40))
        units.append(pd.DataFrame({"checkpoint": name, "layer": "L0", "unit": np.arange(40), "mature": True,
                                   "gxd": shock * np.exp(0.05 * rng.normal(size=40)),
                                   "activation": shock * np.exp(rng.normal(size=40)), "shock_l1": shock}))
    summary = pd.concat([checkpoint_summary(u, ["gxd", "activation", "oracle"], ["l1"], 0.05) for u in units],
                        ignore_index=True)
    checkpoints = pd.DataFrame([{"checkpoint": k, "family": f, "step": 1.0} for k, f in FAMILIES.items()])
    out = tmp_path_factory.mktemp("run")
    write_run(out, {"units": pd.concat(units), "summary": summary, "checkpoints": checkpoints,
                    "notes": pd.DataFrame(columns=["checkpoint", "utility", "layer", "reason"])},
              {"config": {"q": 0.05, "reference": "calibration-mean", "device": "cpu"}, "versions": {}})
    return out


def test_a_layer_glob_matching_nothing_names_the_close_globs():
    model = create_model("mlp", in_features=8, widths=[6, 6])
    with pytest.raises(ra.BadInputError, match=r"matched no unit layer \(did you mean layers\.\*\.act\?\); "
                                               r"available: layers\.0\.act, layers\.1\.act") as caught:
        ra.find_unit_layers(model, torch.randn(4, 8), layers=["layers.*.actt"])
    assert caught.value.field == "layers"


def test_a_layer_name_matching_nothing_names_the_close_names():
    model = create_model("mlp", in_features=8, widths=[6, 6])
    with pytest.raises(ra.BadInputError, match=r"\(did you mean layers\.1\.act or layers\.0\.act\?\)"):
        ra.find_unit_layers(model, torch.randn(4, 8), layers=["layers.1.actt"])
    with pytest.raises(ra.BadInputError, match=r"matched no unit layer; available"):  # nothing close: no guess
        ra.find_unit_layers(model, torch.randn(4, 8), layers=["blocks.*"])


def test_the_command_line_suggests_a_layer_as_a_flag(tmp_path):
    fixture = FIXTURES / "relu_mlp" / "task2"
    result = runner.invoke(app, ["inspect", str(fixture), "--layers", "layer.*.act"])
    assert result.exit_code == 2
    assert "error: --layers layer.*.act matched no unit layer (did you mean layers.*.act?)" in result.output


def test_a_floor_family_matching_nothing_names_the_close_families(run):
    with pytest.raises(ra.BadInputError, match=r"the run has no family mlp-relu@digit \(did you mean "
                                               r"mlp-relu@digits or mlp-silu@digits\?\)") as caught:
        make_baseline(run, ["mlp-relu@digit:gxd:l1:spearman>=0.5"])
    assert caught.value.field == "floor"
    with pytest.raises(ra.BadInputError, match=r"the run has no utility gdx \(did you mean gxd\?\)"):
        make_baseline(run, ["*:gdx:l1:spearman>=0.5"])
    with pytest.raises(ra.BadInputError, match=r"the run has no family mlp-relu-ln\*(?! \(did)"):  # a glob, no guess
        make_baseline(run, ["mlp-relu-ln*:gxd:l1:spearman>=0.5"])


def test_the_command_line_suggests_a_floor_family(run, tmp_path):
    result = runner.invoke(app, ["baseline", str(run), "-o", str(tmp_path / "b.json"), "--floor",
                                 "mlp-silu@digit:gxd:l1:spearman>=0.5"])
    assert result.exit_code == 2
    assert "the run has no family mlp-silu@digit (did you mean mlp-silu@digits or mlp-relu@digits?)" in result.output


def test_baseline_utilities_not_in_the_run_name_the_close_ones(run):
    with pytest.raises(ra.BadInputError, match=r"`utilities`: gdx not in the run \(did you mean gxd\?\); it has"):
        make_baseline(run, utilities=["gdx"])


def test_the_gate_names_the_close_family_of_a_baseline_entry_the_run_lacks(run, tmp_path):
    baseline, _ = make_baseline(run, ["mlp-relu@digits:gxd:l1:spearman>=0.5"])
    for row in [*baseline["rows"], *baseline["floors"]]:
        if row["family"] == "mlp-relu@digits":
            row["family"] = "mlp-relu@digit"  # a family renamed by hand, or a typo
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(baseline))
    comparisons, _ = check_run(run, path)
    missing = [c for c in comparisons if c.family == "mlp-relu@digit"]
    assert missing and all(not c.passed for c in missing)
    assert {c.reason for c in missing} == {"not in the run: the run has no family mlp-relu@digit (did you mean "
                                           "mlp-relu@digits or mlp-silu@digits?)"}  # the closest first
    assert all(c.passed for c in comparisons if c.family == "mlp-silu@digits")
