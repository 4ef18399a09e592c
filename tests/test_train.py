"""`resetassay train` (SPEC S6, S7): checkpoints with per-unit state that the assay reads back."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from resetassay.cbp import CBPConfig
from resetassay.checkpoint import load_checkpoint
from resetassay.cli import app
from resetassay.data import DataSpec
from resetassay.errors import BadInputError
from resetassay.train import TrainConfig, train, zoo_kwargs

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
runner = CliRunner()
MATURITY = 20
# digits: 1797 images, 898 held out, 899 for training; batch 32 -> ceil(899 / 32) = 29 steps per epoch
STEPS_PER_TASK = 2 * 29


pytestmark = pytest.mark.usefixtures("one_thread")


def _small(tasks: int = 2, **overrides: object) -> TrainConfig:
    data = DataSpec()
    settings = {"tasks": tasks, "epochs_per_task": 1, "batch_size": 32, "lr": 0.05, "checkpoint_at": (tasks - 1,),
                "cbp": CBPConfig(replacement_rate=0.05, maturity=5), **overrides}
    return TrainConfig("mlp", zoo_kwargs("mlp", data, (16, 16)), data, **settings)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cbp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-task CBP run on permuted digits through the CLI, checkpoints after tasks 0 and 2."""
    out = tmp_path_factory.mktemp("cbp")
    result = runner.invoke(app, [
        "train", "--widths", "32,32", "--tasks", "3", "--epochs-per-task", "2", "--batch-size", "32",
        "--lr", "0.05", "--replacement-rate", "0.01", "--maturity", str(MATURITY), "--checkpoint-at", "0,2",
        "--permutation-seed", "3", "--seed", "7", "--out", str(out), "--quiet",
    ])
    assert result.exit_code == 0, result.output
    return out


def test_three_task_cbp_run_writes_checkpoints_whose_state_loads_back(cbp_run: Path) -> None:
    for task in (0, 2):
        ckpt = load_checkpoint(cbp_run / f"task{task}")
        meta, data = ckpt.info.meta, ckpt.info.data
        assert ckpt.info.step == {"task": task}
        assert (data.source, data.task, data.permutation_seed) == ("digits", task, 3)
        assert meta["seed"] == 7 and meta["maturity"] == MATURITY and meta["cbp"]["utility"] == "contribution"
        assert 0 <= meta["holdout_accuracy"] <= 1
        for layer, n in (("layers.0.act", 32), ("layers.1.act", 32)):
            age, ref, util = (ckpt.state[f"{layer}.{k}"] for k in ("age", "reference", "utility"))
            assert age.shape == ref.shape == util.shape == (n,)
            assert int(age.max()) <= STEPS_PER_TASK * (task + 1)
            assert bool((ref[age == 0] == 0).all())  # newborn units have observed nothing yet
    with open(cbp_run / "accuracy.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["task"] for r in rows] == ["0", "1", "2"]
    assert sum(int(r["resets"]) for r in rows) == load_checkpoint(cbp_run / "task2").info.meta["resets"] > 0


def test_assay_reads_the_stored_reference_and_leaves_immature_units_unranked(cbp_run: Path, tmp_path: Path) -> None:
    ckpt = cbp_run / "task2"
    result = runner.invoke(app, ["run", str(ckpt), "--reference", "stored", "--utilities", "gxd,activation",
                                 "--metrics", "l1", "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    units = pd.read_csv(tmp_path / "units.csv")
    state = load_checkpoint(ckpt).state
    for layer, g in units.groupby("layer"):
        ages = state[f"{layer}.age"].numpy()
        assert g["age"].tolist() == ages.tolist()
        assert g["mature"].tolist() == (ages > MATURITY).tolist()
        assert g["reference"].to_numpy() == pytest.approx(state[f"{layer}.reference"].numpy(), rel=1e-6)
    assert (~units["mature"]).any() and units["mature"].any()
    summary = pd.read_csv(tmp_path / "summary.csv")
    pooled = summary[(summary["scope"] == "ALL") & (summary["utility"] == "gxd")]
    assert pooled["n_units"].tolist() == [int(units["mature"].sum())]


def test_identical_runs_write_identical_checkpoint_bytes(tmp_path: Path) -> None:
    config = _small(cbp=CBPConfig("gxd", replacement_rate=0.05, maturity=5))
    train(config, tmp_path / "a")
    train(config, tmp_path / "b")
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert "task1/state.safetensors" in first
    assert first == second


def test_cbp_with_zero_replacement_rate_trains_exactly_like_backprop(tmp_path: Path) -> None:
    train(_small(cbp=None), tmp_path / "plain")
    train(_small(cbp=CBPConfig(replacement_rate=0.0)), tmp_path / "tracked")
    plain, tracked = _files(tmp_path / "plain"), _files(tmp_path / "tracked")
    assert plain["task1/model.safetensors"] == tracked["task1/model.safetensors"]
    assert "task1/state.safetensors" not in plain and "task1/state.safetensors" in tracked


def test_checkpoints_by_epoch_record_the_epoch_and_the_task_it_belongs_to(tmp_path: Path) -> None:
    saved = train(_small(tasks=2, epochs_per_task=2, checkpoint_at=(1, 2), checkpoint_in="epochs"), tmp_path)
    assert [p.name for p in saved] == ["epoch1", "epoch2"]
    manifests = [json.loads((p / "manifest.json").read_text()) for p in saved]
    assert [m["step"] for m in manifests] == [{"epoch": 1}, {"epoch": 2}]
    assert [m["data"]["task"] for m in manifests] == [0, 1]


def test_resnet_cbp_stores_references_for_every_unit_layer_and_utilities_where_it_resets(tmp_path: Path) -> None:
    data = DataSpec(layout="image")
    config = TrainConfig("resnet", zoo_kwargs("resnet", data, (4, 8)), data, tasks=1, batch_size=64,
                         checkpoint_at=(0,), cbp=CBPConfig(replacement_rate=0.05, maturity=2))
    (path,) = train(config, tmp_path)
    ckpt = load_checkpoint(path)
    layers = ["stem.act", "stages.0.0.act1", "stages.0.0.act2", "stages.1.0.act1", "stages.1.0.act2"]
    assert sorted(k for k in ckpt.state if k.endswith(".reference")) == sorted(f"{n}.reference" for n in layers)
    assert sorted(k for k in ckpt.state if k.endswith(".utility")) == ["stages.0.0.act1.utility",
                                                                        "stages.1.0.act1.utility"]
    assert set(ckpt.info.meta["cbp_skipped"]) == {"stem.act", "stages.0.0.act2", "stages.1.0.act2"}


def test_a_checkpoint_after_the_last_task_is_refused_naming_the_flag() -> None:
    with pytest.raises(BadInputError, match="--checkpoint-at 30"):
        TrainConfig(tasks=30, checkpoint_at=(0, 5, 10, 20, 30))


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "cnn"], "--data digits-image"),
        (["--utility", "gxd_all"], "--utility"),
        (["--activation", "gelu"], "--activation"),
        (["--data", "mnist"], "--data-dir"),
        (["--checkpoint-at", "1,x"], "--checkpoint-at"),
        (["--model", "mlp", "--widths", "0,4"], "--widths"),
    ],
)
def test_bad_train_input_exits_2_naming_the_flag(args: list[str], needle: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--tasks", "1", *args, "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 2, result.output
    assert needle in result.output


@pytest.mark.skipif(not MNIST.is_dir(), reason=f"MNIST IDX files not found at {MNIST}")
def test_permuted_mnist_from_idx_files_trains_the_784_input_mlp(tmp_path: Path) -> None:
    data = DataSpec(source="mnist", data_dir=str(MNIST))
    config = TrainConfig("mlp", zoo_kwargs("mlp", data, (32,)), data, tasks=1, batch_size=500, lr=0.1,
                         checkpoint_at=(0,), cbp=CBPConfig(replacement_rate=0.01, maturity=10))
    (path,) = train(config, tmp_path)
    ckpt = load_checkpoint(path)
    assert ckpt.info.kwargs["in_features"] == 784 and ckpt.info.data.source == "mnist"
    assert ckpt.state["layers.0.act.age"].shape == (32,)
    assert ckpt.info.meta["holdout_accuracy"] > 0.5  # 10 classes: chance is 0.1
