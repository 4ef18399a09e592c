"""CBP's reset as the intervention (SPEC S4, S7) against resets written out by hand on copies of the model.

The hand-written reset of unit i: add w_out[:, i] * r_i (a Conv's summed over its kernel) to the consumer's
bias, or subtract it from the running mean of the BatchNorm after a bias-free consumer; zero w_out[:, i];
draw the producer's row i Kaiming-uniform from the unit's generator, zero its bias entry; reset the producer
norm's unit i. Through a Linear consumer the reset equals the clamp h_i <- r_i (SPEC S4); through a padded
Conv it does not. Float64 models: tolerances rtol 1e-6 (the issue's) or tighter.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.paths import FIXTURES
from torch import nn

import resetassay as ra
from resetassay.discovery.units import unit_layers
from resetassay.errors import BadInputError
from resetassay.lesion import joint_shocks, unit_shocks
from resetassay.lesion.reset import reset_sites, unit_generator
from resetassay.lesion.shocks import example_shocks
from resetassay.models import create_model

TOL = {"rtol": 1e-6, "atol": 1e-12}
pytestmark = pytest.mark.usefixtures("one_thread")


def _setup(model: nn.Module, shape: tuple[int, ...], n_probe: int = 12):
    model = model.double().eval()
    g = torch.Generator().manual_seed(5)
    probe = torch.randn(n_probe, *shape, generator=g, dtype=torch.float64)
    layers = unit_layers(model, probe[:2])
    refs = {layer.name: torch.rand(layer.n_units, generator=g, dtype=torch.float64) + 0.1 for layer in layers}
    return model, layers, refs, probe


def _hand_reset(model: nn.Module, names: dict[str, tuple[str, str | None, str, str | None]],
                lesion: dict[str, list[int]], refs: dict[str, torch.Tensor], seed: int = 0) -> nn.Module:
    """A copy of `model` with every unit of `lesion` reset; `names[layer]` = (producer, producer norm, consumer,
    consumer BatchNorm or None)."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for layer, units in lesion.items():
            producer, norm, consumer, consumer_bn = (out.get_submodule(n) if n else None for n in names[layer])
            for i in units:
                r = float(refs[layer][i])
                shift = torch.stack([consumer.weight[k, i].sum() for k in range(consumer.weight.shape[0])]) * r
                if consumer_bn is None:
                    consumer.bias += shift
                else:
                    consumer_bn.running_mean -= shift
                consumer.weight[:, i] = 0
                fresh = torch.empty((1, *producer.weight.shape[1:]), dtype=torch.float64)
                nn.init.kaiming_uniform_(fresh, nonlinearity="relu", generator=unit_generator(seed, layer, i))
                producer.weight[i] = fresh[0]
                if producer.bias is not None:
                    producer.bias[i] = 0
                if norm is not None:
                    norm.weight[i], norm.bias[i] = 1, 0
                    if isinstance(norm, nn.BatchNorm2d):
                        norm.running_mean[i], norm.running_var[i] = 0, 1
    return out


def _shocks(base: torch.Tensor, lesioned: torch.Tensor) -> dict[str, float]:
    return {m: example_shocks(base, lesioned, m).mean().item() for m in ("l1", "kl")}


def _check_against_hand(model, layers, refs, probe, names, sample: bool = False):
    """Every unit's cbp-reset shock (with `sample`: of the first, a middle and the last unit of each layer) equals
    the shock of the hand-reset copy; returns the shocks of every unit."""
    shocks = unit_shocks(model, layers, refs, probe, ["l1", "kl"], intervention="cbp-reset", batch_size=5)
    base = model(probe).detach()
    for layer in layers:
        n = layer.n_units
        for i in sorted({0, n // 2, n - 1}) if sample else range(n):
            want = _shocks(base, _hand_reset(model, names, {layer.name: [i]}, refs)(probe).detach())
            for m, value in want.items():
                assert math.isclose(shocks[m][layer.name][i].item(), value, rel_tol=1e-9, abs_tol=1e-12), (layer, i)
    return shocks


def test_reset_equals_the_clamp_where_a_linear_reads_the_unit_and_the_hand_written_reset():
    model, layers, refs, probe = _setup(create_model("mlp", in_features=6, widths=(5, 4), n_classes=3), (6,))
    reset = _check_against_hand(model, layers, refs, probe, {
        "layers.0.act": ("layers.0.linear", None, "layers.1.linear", None),
        "layers.1.act": ("layers.1.linear", None, "head", None)})
    clamp = unit_shocks(model, layers, refs, probe, ["l1", "kl"], engine="plain")
    for m in ("l1", "kl"):
        for layer in layers:
            torch.testing.assert_close(reset[m][layer.name], clamp[m][layer.name], **TOL)
            assert (reset[m][layer.name] > 0).all()


def test_cnn_with_batchnorm_matches_the_hand_written_reset_and_parts_from_the_clamp_only_at_the_conv():
    model, layers, refs, probe = _setup(ra.load_checkpoint(FIXTURES / "cnn" / "task2").model, (1, 8, 8))
    reset = _check_against_hand(model, layers, refs, probe, {
        "blocks.0.act": ("blocks.0.conv", "blocks.0.bn", "blocks.1.conv", "blocks.1.bn"),
        "blocks.1.act": ("blocks.1.conv", "blocks.1.bn", "head", None)}, sample=True)
    clamp = unit_shocks(model, layers, refs, probe, ["l1"], engine="plain")
    # the head reads the pooled map: reset = clamp; blocks.1.conv pads its 8x8 input: the border differs
    torch.testing.assert_close(reset["l1"]["blocks.1.act"], clamp["l1"]["blocks.1.act"], **TOL)
    assert not torch.allclose(reset["l1"]["blocks.0.act"], clamp["l1"]["blocks.0.act"], rtol=1e-3)


def test_reset_of_a_conv_unit_without_padding_equals_the_clamp():
    """Away from a padded border the running-mean compensation is exact: an unpadded consumer makes reset = clamp."""
    model, layers, refs, probe = _setup(ra.load_checkpoint(FIXTURES / "cnn" / "task2").model, (1, 8, 8))
    model.blocks[1].conv.padding = (0, 0)
    reset = unit_shocks(model, layers[:1], refs, probe, ["l1"], intervention="cbp-reset")
    clamp = unit_shocks(model, layers[:1], refs, probe, ["l1"], engine="plain")
    torch.testing.assert_close(reset["l1"]["blocks.0.act"], clamp["l1"]["blocks.0.act"], **TOL)


def test_resnet_resets_the_act1_layers_by_hand_and_says_why_not_for_the_residual_ones():
    model, layers, refs, probe = _setup(ra.load_checkpoint(FIXTURES / "resnet" / "task2").model, (1, 8, 8), 6)
    sites, why_not = reset_sites(model, layers)
    assert sorted(sites) == [f"stages.{s}.0.act1" for s in range(3)]
    assert why_not["stem.act"] == "read by stages.0.0.conv1 and by a residual skip"
    assert why_not["stages.2.0.act2"] == "residual add: stages.2.0.bn2 output plus the skip"
    resettable = [layer for layer in layers if layer.name in sites]
    _check_against_hand(model, resettable, refs, probe, {
        f"stages.{s}.0.act1": (f"stages.{s}.0.conv1", f"stages.{s}.0.bn1", f"stages.{s}.0.conv2",
                               f"stages.{s}.0.bn2") for s in range(3)}, sample=True)
    with pytest.raises(ValueError, match="cannot reset stem.act"):
        unit_shocks(model, layers, refs, probe, ["l1"], intervention="cbp-reset")


def test_layernorm_new_incoming_weights_move_the_other_units_as_the_hand_written_reset_does():
    model, layers, refs, probe = _setup(create_model("mlp", in_features=6, widths=(5, 4), n_classes=3,
                                                     layer_norm=True), (6,))
    reset = _check_against_hand(model, layers, refs, probe, {
        "layers.0.act": ("layers.0.linear", "layers.0.norm", "layers.1.linear", None),
        "layers.1.act": ("layers.1.linear", "layers.1.norm", "head", None)})
    clamp = unit_shocks(model, layers, refs, probe, ["l1"], engine="plain")
    assert not torch.allclose(reset["l1"]["layers.0.act"], clamp["l1"]["layers.0.act"], rtol=1e-3)


def test_joint_reset_equals_the_hand_reset_of_the_whole_set_and_weights_are_restored():
    model, layers, refs, probe = _setup(ra.load_checkpoint(FIXTURES / "cnn" / "task2").model, (1, 8, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lesions = [{"blocks.0.act": torch.tensor([1, 4]), "blocks.1.act": torch.tensor([0, 7, 30])},
               {"blocks.1.act": torch.tensor([2])}]
    got = joint_shocks(model, layers, refs, lesions, probe, ["l1", "kl"], intervention="cbp-reset", seed=3)
    names = {"blocks.0.act": ("blocks.0.conv", "blocks.0.bn", "blocks.1.conv", "blocks.1.bn"),
             "blocks.1.act": ("blocks.1.conv", "blocks.1.bn", "head", None)}
    base = model(probe).detach()
    for k, lesion in enumerate(lesions):
        hand = _hand_reset(model, names, {n: i.tolist() for n, i in lesion.items()}, refs, seed=3)
        for m, value in _shocks(base, hand(probe).detach()).items():
            assert math.isclose(got[m][k].item(), value, rel_tol=1e-9)
    single = unit_shocks(model, layers, refs, probe, ["l1"], intervention="cbp-reset", seed=3)
    assert math.isclose(got["l1"][1].item(), single["l1"]["blocks.1.act"][2].item(), rel_tol=1e-12)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_fresh_weights_are_seeded_by_seed_layer_and_unit():
    draw = [torch.rand(3, generator=unit_generator(*args)) for args in
            [(0, "a", 1), (0, "a", 1), (1, "a", 1), (0, "b", 1), (0, "a", 2)]]
    assert torch.equal(draw[0], draw[1])
    assert all(not torch.equal(draw[0], other) for other in draw[2:])


def test_assay_keeps_the_clamp_beside_the_reset_and_notes_the_layers_it_cannot_reset():
    model = create_model("resnet", widths=(4, 6), blocks=(1, 1))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(24, 1, 8, 8, generator=g), torch.randint(0, 10, (24,), generator=g)
    config = ra.AssayConfig(utilities=["activation", "oracle"], metrics=["l1"], intervention="cbp-reset")
    result = ra.assay_model(model, (x[:12], y[:12]), (x[12:], y[12:]), config=config, name="r")
    clamp_run = ra.assay_model(model, (x[:12], y[:12]), (x[12:], y[12:]), config=ra.AssayConfig(
        utilities=["activation", "oracle"], metrics=["l1"]), name="r")
    units = result.units
    assert sorted(units["layer"].unique()) == ["stages.0.0.act1", "stages.1.0.act1"]
    kept = clamp_run.units.set_index(["layer", "unit"]).loc[list(zip(units["layer"], units["unit"], strict=True))]
    np.testing.assert_allclose(units["clamp_l1"], kept["shock_l1"], rtol=1e-12)
    assert not np.allclose(units["shock_l1"], units["clamp_l1"], rtol=1e-3)
    notes = result.notes[result.notes["utility"] == "cbp-reset"]
    assert sorted(notes["layer"]) == ["stages.0.0.act2", "stages.1.0.act2", "stem.act"]
    assert "clamp_l1" not in clamp_run.units


def test_no_resettable_layer_and_an_unknown_intervention_are_bad_input_naming_the_flag():
    with pytest.raises(BadInputError, match="`intervention` 'reset': choose from clamp, cbp-reset"):
        ra.AssayConfig(intervention="reset")
    model = create_model("resnet", widths=(4,), blocks=(1,))
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    config = ra.AssayConfig(utilities=["activation"], metrics=["l1"], intervention="cbp-reset", layers=["stem.act"])
    with pytest.raises(BadInputError, match=r"`intervention` cbp-reset: no unit layer of m can be reset \(stem.act: "
                                            "read by stages.0.0.conv1 and by a residual skip\\)") as err:
        ra.assay_model(model, (x[:4], y[:4]), (x[4:], y[4:]), config=config, name="m")
    assert err.value.field == "intervention"


def test_command_line_records_the_intervention_and_the_report_compares_clamp_and_reset(tmp_path):
    from typer.testing import CliRunner

    from resetassay.cli import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(FIXTURES / "resnet" / "task2"), "--out", str(out), "--intervention",
                                      "cbp-reset", "--utilities", "activation,oracle", "--metrics", "l1",
                                      "--calib-size", "64", "--probe-size", "64", "--no-joint", "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "run.json").read_text())["config"]["intervention"] == "cbp-reset"
    units = pd.read_csv(out / "units.csv")
    assert {"shock_l1", "clamp_l1"} <= set(units.columns)
    report = (out / "report.md").read_text()
    assert "## Clamp against CBP reset" in report
    assert "| task2 | stages.2.0.act1 |" in report  # the 2x2 maps of the last stage: all border
    assert "cbp-reset | stem.act | read by stages.0.0.conv1 and by a residual skip" in report
