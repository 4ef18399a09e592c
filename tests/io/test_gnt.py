"""CBP state of a model trained elsewhere (issue 25): a state file beside the weights is state, never a checkpoint;
`resetassay run --state FILE`; and the loss-of-plasticity `GnT` layout converted (`resetassay/io/gnt.py`), tested on
a network of its `DeepFFNN` shape (tests/helpers/lop_nets.py)."""

from __future__ import annotations

import doctest
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers.lop_nets import deep_ffnn
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import resetassay.io.gnt
from resetassay import assay_model
from resetassay.cli import app
from resetassay.data import data_spec, split_calibration_probe, task_arrays
from resetassay.errors import BadInputError
from resetassay.io.checkpoint import find_checkpoints, load_checkpoint
from resetassay.io.gnt import gnt_state, read_gnt

MODEL = "helpers.lop_nets:deep_ffnn"
LAYERS = ["layers.1", "layers.3"]  # the ReLUs after GnT's hidden layers 0 and 1 (layers[0], layers[2])
WIDTH = 12
SMALL = ["--data", "digits", "--calib-size", "60", "--probe-size", "60", "--metrics", "l1", "--no-joint",
         "--figures", "none", "--quiet"]
runner = CliRunner()


def _fake_gnt(seed: int = 0, layers: int = 2, width: int = WIDTH) -> dict[str, list]:
    """GnT's lists as its attributes hold them: float ages (some 0: just reset), running means, utilities."""
    g = torch.Generator().manual_seed(seed)
    ages = [torch.randint(0, 40, (width,), generator=g).float() for _ in range(layers)]
    for age in ages:
        age[0] = 0.0  # a unit reset at the last step: its mean and utility were zeroed
    mean = [torch.rand(width, generator=g) * (age > 0) for age in ages]
    util = [torch.rand(width, generator=g) * (age > 0) for age in ages]
    corrected = [torch.where(a > 0, u / (1 - 0.99 ** a.clamp(min=1)), torch.zeros_like(u)) for a, u in zip(
        ages, util, strict=True)]
    return {"ages": ages, "mean_feature_act": mean, "util": util, "bias_corrected_util": corrected,
            "accumulated_num_features_to_replace": [0.25] * layers}


def _weights_and_state(folder: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """model.safetensors of a DeepFFNN and its state.safetensors converted from a fake GnT; returns the state."""
    folder.mkdir(parents=True, exist_ok=True)
    net = deep_ffnn(seed=seed)
    save_file(net.state_dict(), folder / "model.safetensors")
    state = gnt_state(_fake_gnt(seed), net)
    save_file(state, folder / "state.safetensors")
    return state


def test_gnt_state_maps_hidden_layer_i_to_the_ith_unit_layer_with_bias_corrected_values():
    gnt = _fake_gnt()
    state = gnt_state(gnt, deep_ffnn())
    assert sorted(state) == sorted(f"{layer}.{kind}" for layer in LAYERS for kind in ("age", "reference", "utility"))
    for i, layer in enumerate(LAYERS):
        age = gnt["ages"][i]
        assert state[f"{layer}.age"].dtype == torch.int64 and torch.equal(state[f"{layer}.age"], age.long())
        want = torch.where(age > 0, gnt["mean_feature_act"][i].double() / (1 - 0.99 ** age.double().clamp(min=1)),
                           torch.zeros(WIDTH, dtype=torch.float64))
        torch.testing.assert_close(state[f"{layer}.reference"], want.float(), rtol=1e-6, atol=0)
        assert state[f"{layer}.reference"][0] == 0  # age 0: never observed since its reset
        torch.testing.assert_close(state[f"{layer}.utility"], gnt["bias_corrected_util"][i], rtol=1e-6, atol=0)
    without = {k: v for k, v in gnt.items() if k != "bias_corrected_util"}  # util alone: corrected here
    torch.testing.assert_close(gnt_state(without, deep_ffnn())["layers.3.utility"], state["layers.3.utility"],
                               rtol=1e-5, atol=1e-7)

    class GnTObject:  # the GnT object itself, as a notebook holds `learner.gnt`
        pass

    obj = GnTObject()
    for key, value in gnt.items():
        setattr(obj, key, value)
    assert all(torch.equal(v, gnt_state(obj, deep_ffnn())[k]) for k, v in state.items())
    assert doctest.testmod(resetassay.io.gnt).failed == 0


@pytest.mark.parametrize(("gnt", "needle"), [
    (_fake_gnt(layers=3), "the GnT state has 3 hidden layers of [12, 12, 12] units, the model 2 unit layers: "
                          "layers.1 (12), layers.3 (12)"),
    (_fake_gnt(width=7), "the GnT state has 2 hidden layers of [7, 7] units"),
    ({"mean_feature_act": [torch.zeros(WIDTH)] * 2}, "no `ages`"),
    ({"ages": [torch.full((WIDTH,), 1.5)] * 2}, "ages[0] must hold whole numbers >= 0"),
])
def test_gnt_state_that_does_not_fit_the_model_is_one_line_naming_both(gnt, needle):
    with pytest.raises(BadInputError) as err:
        gnt_state(gnt, deep_ffnn())
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_read_gnt_loads_lists_or_flat_tensors_and_never_runs_code(tmp_path):
    gnt = _fake_gnt()
    torch.save(gnt, tmp_path / "gnt.pt")
    lists = read_gnt(tmp_path / "gnt.pt")
    assert sorted(lists) == ["ages", "bias_corrected_util", "mean_feature_act", "util"]
    assert all(torch.equal(a.float(), b) for a, b in zip(lists["ages"], gnt["ages"], strict=True))
    flat = {f"{key}.{i}": value for key in ("ages", "mean_feature_act") for i, value in enumerate(gnt[key])}
    save_file(flat, tmp_path / "gnt.safetensors")
    assert torch.equal(read_gnt(tmp_path / "gnt.safetensors")["mean_feature_act"][1], gnt["mean_feature_act"][1]
                       .double())
    ran = tmp_path / "ran"
    torch.save({"ages": [torch.zeros(3)], "hook": _Sneaky(str(ran))}, tmp_path / "pickled.pt")
    with pytest.raises(BadInputError, match="not a file of GnT's lists that loads without running code"):
        read_gnt(tmp_path / "pickled.pt")
    assert not ran.exists()


class _Sneaky:
    """Unpickling it would create a file: a weights_only load refuses it first."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_gnt_state_command_writes_a_state_file_run_reads_beside_the_weights(tmp_path):
    torch.save(_fake_gnt(), tmp_path / "gnt.pt")
    folder = tmp_path / "ckpt"
    save_file(deep_ffnn().state_dict(), (folder.mkdir() or folder) / "model.safetensors")
    result = runner.invoke(app, ["gnt-state", str(tmp_path / "gnt.pt"), "--model", MODEL, "--out",
                                 str(folder / "state.safetensors")])
    assert result.exit_code == 0, result.output
    assert "GnT layer 0 -> layers.1 (12 units: age, reference, utility)" in result.stdout
    assert "GnT layer 1 -> layers.3 (12 units: age, reference, utility)" in result.stdout
    state = load_file(folder / "state.safetensors")
    assert all(torch.equal(v, gnt_state(_fake_gnt(), deep_ffnn())[k]) for k, v in state.items())
    wrong = runner.invoke(app, ["gnt-state", str(tmp_path / "gnt.pt"), "--model", MODEL, "--model-kwargs",
                                '{"num_hidden_layers": 3}', "--out", str(tmp_path / "x.safetensors")])
    assert wrong.exit_code == 2 and "--layers" in wrong.stderr and not (tmp_path / "x.safetensors").exists()


def test_a_state_file_beside_the_weights_is_their_state_never_a_checkpoint(tmp_path):
    """The user's case: `resetassay run FOLDER --model ... --reference stored` with the weights and a
    state.safetensors: one checkpoint, the stored references, `tracked` and the ages (maturity) used."""
    state = _weights_and_state(tmp_path / "ckpt")
    assert [name for _, name in find_checkpoints([tmp_path / "ckpt"], foreign_ok=True)] == ["ckpt/model.safetensors"]
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(tmp_path / "ckpt"), "--model", MODEL, "--reference", "stored",
                                 "--utilities", "tracked,gxd,activation", "--maturity", "5", *SMALL, "--out",
                                 str(out)])
    assert result.exit_code == 0, result.output
    units = pd.read_csv(out / "units.csv")
    assert units["checkpoint"].unique().tolist() == ["ckpt/model.safetensors"]
    for layer in LAYERS:
        rows = units[units["layer"] == layer].sort_values("unit")
        torch.testing.assert_close(torch.tensor(rows["reference"].to_numpy()), state[f"{layer}.reference"].double())
        assert rows["age"].tolist() == state[f"{layer}.age"].tolist()
        assert rows["mature"].tolist() == (state[f"{layer}.age"] > 5).tolist()
        mature = rows[rows["mature"]]
        torch.testing.assert_close(torch.tensor(mature["tracked"].to_numpy()),
                                   state[f"{layer}.utility"][torch.tensor(mature["unit"].to_numpy())].double())
    notes = pd.read_csv(out / "notes.csv")
    assert not notes["reason"].str.contains("not trained with CBP|stores no", na=False).any()


def test_python_and_the_command_line_give_the_same_units_with_a_state(tmp_path):
    state = _weights_and_state(tmp_path / "ckpt")
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(tmp_path / "ckpt" / "model.safetensors"), "--model", MODEL,
                                 "--reference", "stored", "--utilities", "tracked,gxd", *SMALL, "--out", str(out)])
    assert result.exit_code == 0, result.output
    x, y = task_arrays(data_spec("digits"), "holdout")
    split = split_calibration_probe(x, y, 60, 60, seed=0)
    mine = assay_model(deep_ffnn(), (split.calib_x, split.calib_y), (split.probe_x, split.probe_y), state=state,
                       name="model.safetensors", reference="stored", utilities=["tracked", "gxd"], metrics=["l1"],
                       joint=False)
    cli = pd.read_csv(out / "units.csv")
    for column in ("reference", "tracked", "gxd", "shock_l1"):
        torch.testing.assert_close(torch.tensor(cli[column].to_numpy()), torch.tensor(mine.units[column]
                                                                                      .to_numpy()), rtol=1e-6,
                                   atol=1e-9)


def test_state_flag_gives_a_single_checkpoint_its_state_and_is_refused_where_ambiguous(tmp_path):
    state = _weights_and_state(tmp_path / "a")
    (tmp_path / "a" / "state.safetensors").rename(tmp_path / "cbp.safetensors")
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(tmp_path / "a" / "model.safetensors"), "--model", MODEL, "--state",
                                 str(tmp_path / "cbp.safetensors"), "--reference", "stored", "--utilities",
                                 "tracked,gxd", *SMALL, "--out", str(out)])
    assert result.exit_code == 0, result.output
    units = pd.read_csv(out / "units.csv")
    torch.testing.assert_close(torch.tensor(units[units["layer"] == "layers.3"]["reference"].to_numpy()),
                               state["layers.3.reference"].double())
    ckpt = load_checkpoint(tmp_path / "a" / "model.safetensors", model=MODEL, state=tmp_path / "cbp.safetensors")
    assert sorted(ckpt.sha256) == ["cbp.safetensors", "model.safetensors"] and ckpt.state.keys() == state.keys()
    # several checkpoints: which one would it belong to?
    _weights_and_state(tmp_path / "b")
    several = runner.invoke(app, ["run", str(tmp_path / "a"), str(tmp_path / "b"), "--model", MODEL, "--state",
                                  str(tmp_path / "cbp.safetensors"), *SMALL, "--out", str(tmp_path / "r2")])
    assert several.exit_code == 2
    assert "error: --state" in several.stderr and "a state file for one checkpoint, but 2 were found" in several.stderr
    both = runner.invoke(app, ["run", str(tmp_path / "b"), "--model", MODEL, "--state",
                               str(tmp_path / "cbp.safetensors"), *SMALL, "--out", str(tmp_path / "r3")])
    assert both.exit_code == 2 and "has its own state file" in both.stderr


def test_several_weights_files_take_their_own_state_and_a_shared_one_is_refused(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for seed, stem in enumerate(("early", "late")):
        net = deep_ffnn(seed=seed)
        torch.save(net.state_dict(), folder / f"{stem}.pt")
        save_file(gnt_state(_fake_gnt(seed), net), folder / f"{stem}.state.safetensors")
    found = find_checkpoints([folder], foreign_ok=True)
    assert [name for _, name in found] == ["many/early.pt", "many/late.pt"]
    late = load_checkpoint(folder / "late.pt", model=MODEL)
    assert torch.equal(late.state["layers.1.age"], gnt_state(_fake_gnt(1), deep_ffnn(1))["layers.1.age"])
    (folder / "late.state.safetensors").rename(folder / "state.safetensors")
    result = runner.invoke(app, ["run", str(folder), "--model", MODEL, *SMALL, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "state.safetensors: beside several weights files" in result.stderr
    assert "name it late.state.safetensors for late.pt" in result.stderr


def test_a_state_file_named_as_weights_or_given_as_weights_says_what_it_is(tmp_path):
    _weights_and_state(tmp_path / "ckpt")
    alone = runner.invoke(app, ["run", str(tmp_path / "ckpt" / "state.safetensors"), "--model", MODEL, *SMALL,
                                "--out", str(tmp_path / "r1")])
    assert alone.exit_code == 2 and "a per-unit state file (<layer>.age, .reference, .utility), not a checkpoint" in (
        alone.stderr)
    (tmp_path / "ckpt" / "state.safetensors").rename(tmp_path / "cbp.safetensors")
    with pytest.raises(BadInputError, match=r"holds per-unit state \(layers\.1\.age, .*\), not the model's weights; "
                                            r"name it state\.safetensors"):
        load_checkpoint(tmp_path / "cbp.safetensors", model=MODEL)
