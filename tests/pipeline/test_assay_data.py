"""Data that does not fit the model, and data without labels (SPEC S1, S3).

Data the model cannot read (another channel count or feature width), labels beyond its logits and calibration and
probe sets of different shapes fail that checkpoint with one line naming the shape or the labels, exit 2, the
other checkpoints kept. Unlabelled data (no label key or column, inputs alone, every label -1) is assayed with the
model's predicted class as the target of gxd, gxi and loss_gradient: exactly what `--target predicted` gives on the
same inputs with labels (the labels then only count for the probe accuracy, n/a here); checkpoints.csv and the
report's headline say so.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers.paths import FIXTURES
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

from resetassay import AssayConfig, BadInputError, assay_model
from resetassay.cli import app
from resetassay.models import mlp

SMALL = ["--utilities", "gxd,gxi,loss_gradient,activation,oracle", "--metrics", "l1", "--no-joint", "--quiet"]
runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


def _file(path: Path, x: torch.Tensor, y: torch.Tensor | None = None) -> Path:
    save_file({"x": x.contiguous(), **({"y": y.contiguous()} if y is not None else {})}, str(path))
    return path


def _run(tmp_path: Path, checkpoint: str, *args: str):
    return runner.invoke(app, ["run", str(FIXTURES / checkpoint), "--out", str(tmp_path / "out"), *SMALL, *args])


@pytest.mark.parametrize("checkpoint, x, y, needles", [
    ("cnn", torch.rand(40, 3, 8, 8), torch.randint(0, 10, (40,)),
     ["cannot read inputs of shape (3, 8, 8) per example", "to have 1 channels", "--image-size"]),
    ("relu_mlp", torch.rand(40, 32), torch.randint(0, 10, (40,)), ["cannot read inputs of shape (32,)"]),
    ("relu_mlp", torch.rand(40, 64), torch.tensor([3] * 39 + [12]),
     ["labels go up to 12 but the model gives 10 logits", "0..9"]),
])
def test_data_the_model_cannot_take_fails_each_checkpoint_in_one_line(tmp_path, checkpoint, x, y, needles):
    result = _run(tmp_path, checkpoint, "--data", str(_file(tmp_path / "d.safetensors", x, y)))
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "Traceback" not in result.output  # both checkpoints, one line each
    for needle in needles:
        assert needle in errors[0], errors[0]
    failures = pd.read_csv(tmp_path / "out" / "failures.csv")
    assert list(failures["kind"]) == ["bad input"] * 2


def test_calibration_and_probe_files_of_different_shapes_are_one_line(tmp_path):
    calib = _file(tmp_path / "c.safetensors", torch.rand(40, 64), torch.randint(0, 10, (40,)))
    probe = _file(tmp_path / "p.safetensors", torch.rand(40, 32), torch.randint(0, 10, (40,)))
    result = _run(tmp_path, "relu_mlp/task2", "--data", str(calib), "--probe-data", str(probe))
    assert result.exit_code == 2
    assert "calibration inputs are (64,) per example but probe inputs (32,)" in result.stderr


def test_labels_mixed_with_minus_one_are_refused(tmp_path):
    path = _file(tmp_path / "d.safetensors", torch.rand(40, 64), torch.tensor([-1] * 20 + [1] * 20))
    result = _run(tmp_path, "relu_mlp/task2", "--data", str(path))
    assert result.exit_code == 2 and "labels must be >= 0" in result.stderr and "all -1" in result.stderr


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x[:160] / 16, dtype=torch.float32), torch.tensor(y[:160])


@pytest.mark.slow
@pytest.mark.parametrize("unlabelled", ["no label key", "labels all -1"])
def test_unlabelled_file_equals_predicted_targets_on_the_labelled_one(tmp_path, digits, unlabelled):
    x, y = digits
    labelled = _file(tmp_path / "labelled.safetensors", x, y)
    bare = _file(tmp_path / "bare.safetensors", x, None if unlabelled == "no label key" else torch.full_like(y, -1))
    result = _run(tmp_path, "relu_mlp/task2", "--data", str(bare), "--out", str(tmp_path / "bare"))
    assert result.exit_code == 0, result.output
    if unlabelled == "no label key":  # the same warning twice in one process is shown once (Python's default)
        assert "the calibration data has no labels" in result.stderr and "predicted class" in result.stderr
    result = _run(tmp_path, "relu_mlp/task2", "--data", str(labelled), "--target", "predicted", "--out",
                  str(tmp_path / "labelled"))
    assert result.exit_code == 0, result.output
    units = {k: pd.read_csv(tmp_path / k / "units.csv") for k in ("bare", "labelled")}
    pd.testing.assert_frame_equal(units["bare"], units["labelled"], check_exact=True)
    rows = {k: pd.read_csv(tmp_path / k / "checkpoints.csv").iloc[0] for k in ("bare", "labelled")}
    assert rows["bare"]["target"] == "predicted (no labels)" and pd.isna(rows["bare"]["probe_accuracy"])
    assert rows["labelled"]["target"] == "predicted" and 0 < rows["labelled"]["probe_accuracy"] <= 1
    assert "n/a (no labels: targets are the predicted class)" in (tmp_path / "bare" / "report.md").read_text()


def test_assay_model_takes_inputs_alone_and_loaders_without_labels(digits):
    """Python: a tensor of inputs, or a DataLoader of one-tensor batches, is unlabelled data; so is a dict batch
    without a label key. Each equals the labelled data under target "predicted"."""
    x, y = digits
    model = mlp(widths=(16, 16))
    config = AssayConfig(utilities=["gxd", "loss_gradient", "oracle"], metrics=["l1"], joint=False)
    want = assay_model(model, (x[:80], y[:80]), (x[80:], y[80:]), config=AssayConfig(**{
        **config.__dict__, "target": "predicted"}))
    forms = {
        "tensors": (x[:80], x[80:]),
        "loaders": (DataLoader(TensorDataset(x[:80]), batch_size=32), DataLoader(TensorDataset(x[80:]), batch_size=32)),
        "dicts": ([{"x": x[:40]}, {"x": x[40:80]}], [{"x": x[80:]}]),
    }
    for name, (calib, probe) in forms.items():
        with pytest.warns(UserWarning, match="no labels"):
            got = assay_model(model, calib, probe, config=config)
        pd.testing.assert_frame_equal(got.units, want.units, check_exact=True, obj=name)
        assert got.checkpoints["target"].iloc[0] == "predicted (no labels)", name


def test_some_batches_with_labels_and_some_without_are_refused(digits):
    x, y = digits
    with pytest.raises(BadInputError, match="1 of 2 items or batches have no labels"):
        assay_model(mlp(widths=(16,)), [(x[:40], y[:40]), x[40:80]], (x[80:], y[80:]))


def test_a_map_style_dataset_is_read_as_its_tensors(digits):
    from torch.utils.data import TensorDataset

    x, y = digits
    model, config = mlp(widths=(16,)), AssayConfig(utilities=["gxd", "oracle"], metrics=["l1"], joint=False)
    want = assay_model(model, (x[:80], y[:80]), (x[80:], y[80:]), config=config)
    got = assay_model(model, TensorDataset(x[:80], y[:80]), TensorDataset(x[80:], y[80:]), config=config)
    pd.testing.assert_frame_equal(got.units, want.units, check_exact=True)


def test_calib_and_probe_sizes_sample_in_python_as_probe_data_does_on_the_command_line(tmp_path, digits):
    """`AssayConfig(calib_size, probe_size)` with in-memory sets draws the same seeded samples as `--data C
    --probe-data P --calib-size --probe-size`: the units equal the command line's (tolerance: the CSV round trip,
    1e-12 relative); a size beyond the set is a one-line error naming the flag."""
    from resetassay.io.checkpoint import load_checkpoint

    x, y = digits
    calib, probe = _file(tmp_path / "c.safetensors", x[:90], y[:90]), _file(tmp_path / "p.safetensors", x[90:], y[90:])
    result = _run(tmp_path, "relu_mlp/task2", "--data", str(calib), "--probe-data", str(probe), "--calib-size", "20",
                  "--probe-size", "30", "--seed", "3")
    assert result.exit_code == 0, result.output
    cli = pd.read_csv(tmp_path / "out" / "units.csv")
    config = AssayConfig(utilities=["gxd", "gxi", "loss_gradient", "activation", "oracle"], metrics=["l1"],
                         joint=False, calib_size=20, probe_size=30, seed=3)
    model = load_checkpoint(FIXTURES / "relu_mlp" / "task2").model
    got = assay_model(model, (x[:90], y[:90]), (x[90:], y[90:]), config=config).units
    for column in ("reference", "gxd", "gxi", "loss_gradient", "activation", "shock_l1"):
        assert got[column].to_numpy() == pytest.approx(cli[column].to_numpy(), rel=1e-12, abs=1e-15), column
    with pytest.raises(BadInputError, match="`probe_size` 100 exceeds the 70 examples of the probe data") as err:
        assay_model(model, (x[:90], y[:90]), (x[90:], y[90:]), config=AssayConfig(probe_size=100))
    assert err.value.field == "probe_size"


def test_assay_model_reads_dict_batches_as_tuples():
    """A DataLoader of {"pixel_values", "labels"} dicts and one of (x, y) tuples give the same UnitTable."""
    from torch.utils.data import DataLoader, TensorDataset

    from resetassay.models import create_model
    from resetassay.pipeline.assay import AssayConfig, assay_model

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 16, generator=g), torch.randint(0, 3, (40,), generator=g)
    model = create_model("mlp", in_features=16, widths=(6,), n_classes=3)
    config = AssayConfig(utilities=["gxd", "oracle"], metrics=["l1"], joint=False)
    tuples = [DataLoader(TensorDataset(x[a:b], y[a:b]), batch_size=8) for a, b in ((0, 20), (20, 40))]
    dicts = [[{"pixel_values": xb, "labels": yb} for xb, yb in loader] for loader in tuples]
    want = assay_model(model, *tuples, config=config).units
    got = assay_model(model, *dicts, config=config).units
    import pandas as pd

    pd.testing.assert_frame_equal(got, want)


def test_a_model_without_forward_is_named_as_such_not_as_a_shape(tmp_path):
    """A net that defines `predict` and no `forward` (the loss-of-plasticity nets): one line naming the class, the
    missing forward and the wrapper that fixes it, never a blame on the input shape, and no checkpoint counted done."""
    from helpers.foreign_models import predict_only_ffnn

    save_file(predict_only_ffnn().state_dict(), str(tmp_path / "m.safetensors"))
    data = _file(tmp_path / "d.safetensors", torch.rand(64, 64), torch.randint(0, 10, (64,)))
    result = runner.invoke(app, ["run", str(tmp_path / "m.safetensors"), "--model",
                                 "helpers.foreign_models:predict_only_ffnn", "--data", str(data), "--out",
                                 str(tmp_path / "out"), "--utilities", "gxd,oracle", "--metrics", "l1", "--no-joint"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert "PredictOnlyFFNN has no forward(); resetassay calls model(x): wrap it" in errors[0], errors[0]
    assert "forward calls predict" in errors[0] and "--model" in errors[0] and "shape" not in errors[0]
    assert "checkpoints: 1/1 (100%)" not in result.output


def test_a_failed_checkpoint_is_not_counted_done_in_the_progress(tmp_path):
    """Checkpoints that fail leave the overall count short of 100%: progress never reports success for them."""
    from resetassay import data_spec, run_assay

    calls: list[tuple[str, int, int]] = []
    data = _file(tmp_path / "d.safetensors", torch.rand(40, 32), torch.randint(0, 10, (40,)))
    result = run_assay([FIXTURES / "relu_mlp"], data=data_spec(str(data)), utilities=["gxd", "oracle"], metrics=["l1"],
                       joint=False, progress=lambda task, done, total: calls.append((task, done, total)))
    assert len(result.failures) == 2
    counts = [(done, total) for task, done, total in calls if task == "checkpoints"]
    assert counts and all(done == 0 for done, _ in counts), counts


def test_a_nanogpt_shaped_model_with_last_position_logits_is_one_line_naming_the_fix(tmp_path):
    """nanoGPT's forward(idx) without targets returns `(B, 1, V)`: one line saying so and what gives every
    position's logits (a wrapper calling it with targets, or `output`), not `Size does not match` in a traceback.
    Its tied `lm_head.weight`, stored once, is not missing; the wrapper then assays it."""
    from helpers.foreign_models import nano_gpt, nano_gpt_full

    save_file({k: v for k, v in nano_gpt().state_dict().items() if k != "lm_head.weight"},
              str(tmp_path / "g.safetensors"))
    save_file({"input_ids": torch.randint(0, 16, (48, 12), generator=torch.Generator().manual_seed(0))},
              str(tmp_path / "t.safetensors"))
    args = ["--data", str(tmp_path / "t.safetensors"), "--utilities", "gxd,oracle", "--metrics", "l1", "--no-joint",
            "--quiet", "--calib-size", "16", "--probe-size", "16"]
    result = runner.invoke(app, ["run", str(tmp_path / "g.safetensors"), "--model", "helpers.foreign_models:nano_gpt",
                                 "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert "returns logits for the last position only ((16, 1, 16) for token ids (16, 12)" in errors[0], errors[0]
    assert "targets" in errors[0] and "--output" in errors[0]
    save_file({k: v for k, v in nano_gpt_full().state_dict().items() if k != "model.lm_head.weight"},
              str(tmp_path / "gf.safetensors"))
    result = runner.invoke(app, ["run", str(tmp_path / "gf.safetensors"), "--model",
                                 "helpers.foreign_models:nano_gpt_full", "--out", str(tmp_path / "out2"), *args])
    assert result.exit_code == 0, result.output
    layers = set(pd.read_csv(tmp_path / "out2" / "units.csv")["layer"])
    assert {"model.transformer.h.0.attn.heads", "model.transformer.h.1.attn.heads"} <= layers, layers
