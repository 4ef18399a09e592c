"""A model probed at chance says so when it runs (issue 25): the verdict's "probe at chance" flag (SPEC S5b) is
also a warning line naming the checkpoint, its probe accuracy, chance and the likely causes."""

from __future__ import annotations

import re
import warnings

import pandas as pd
import pytest
import torch
from helpers.paths import FIXTURES
from typer.testing import CliRunner

from resetassay import assay_model
from resetassay.cli import app
from resetassay.models import mlp
from resetassay.pipeline.assay import ProbeAtChance

SMALL = {"utilities": ["gxd", "activation"], "metrics": ["l1"], "joint": False}
runner = CliRunner()


def _assay(labels_from_prediction) -> list[warnings.WarningMessage]:
    torch.manual_seed(0)
    model = mlp(in_features=16, widths=(8,), n_classes=4).eval()
    x = torch.randn(96, 16)
    with torch.no_grad():
        predicted = model(x).argmax(1)
    y = labels_from_prediction(predicted)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assay_model(model, (x[:48], y[:48]), (x[48:], y[48:]), name="net", **SMALL)
    return [w for w in caught if issubclass(w.category, ProbeAtChance)]


def test_a_model_probed_on_labels_it_does_not_predict_is_warned_about_once():
    (warning,) = _assay(lambda p: (p + 1) % 4)  # accuracy 0: below 1.5 x chance
    text = str(warning.message)
    assert text.startswith("net: probe accuracy 0.0% is near chance (25.0% for 4 classes; flagged below 1.5× "
                           "chance)")
    assert "`data` mnist is plain MNIST, permuted-mnist the continual study's tasks" in text
    assert "(`task`, `permutation_seed`)" in text and "\n" not in text


@pytest.mark.parametrize("labels", [lambda p: p, lambda p: torch.full_like(p, -1)], ids=["own", "unlabelled"])
def test_no_warning_on_its_own_data_or_without_labels(labels):
    assert _assay(labels) == []


def test_the_cli_warns_when_a_checkpoint_is_probed_on_data_it_was_not_trained_on(tmp_path):
    """relu_mlp/task2 learnt permuted digits task 1; plain digits put it near chance (6.5% on all held-out)."""
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(FIXTURES / "relu_mlp" / "task2"), "--data", "digits", "--calib-size",
                                 "60", "--probe-size", "200", "--utilities", "gxd", "--metrics", "l1", "--no-joint",
                                 "--figures", "none", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if "near chance" in line]
    assert len(lines) == 1, result.stderr
    accuracy = pd.read_csv(out / "checkpoints.csv")["probe_accuracy"].iloc[0]
    assert re.match(rf"warning: (\S*/)?task2: probe accuracy {accuracy:.1%} is near chance \(10\.0% for 10 "
                    r"classes; flagged below 1\.5× chance\)", lines[0]), lines[0]
    assert "--data mnist is plain MNIST" in lines[0] and "(--task, --permutation-seed)" in lines[0]
    notes = pd.read_csv(out / "notes.csv")
    assert notes["reason"].str.contains("probe accuracy").any()  # the verdict's flag, as before
    own = runner.invoke(app, ["run", str(FIXTURES / "relu_mlp" / "task2"), "--calib-size", "60", "--probe-size",
                              "200", "--utilities", "gxd", "--metrics", "l1", "--no-joint", "--figures", "none",
                              "--out", str(tmp_path / "own"), "--quiet"])
    assert own.exit_code == 0 and "near chance" not in own.stderr


@pytest.mark.parametrize(("step", "warned"), [({"task": 0}, False), ({"task": 3}, True), ({}, True)])
def test_a_checkpoint_saved_before_training_is_at_chance_by_design_and_not_warned_about(tmp_path, step, warned):
    from resetassay import assay_checkpoint, data_spec, load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    net = mlp(in_features=64, widths=(8,))
    path = save_checkpoint(tmp_path / "ck", net, "resetassay.models:mlp", {"in_features": 64, "widths": [8]},
                           step=step, data=data_spec("permuted-digits"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = assay_checkpoint(load_checkpoint(path), calib_size=40, probe_size=40, **SMALL)
    assert result.checkpoints["probe_accuracy"].iloc[0] < 0.15  # an untrained network: at chance, whatever the step
    assert any(issubclass(w.category, ProbeAtChance) for w in caught) == warned
