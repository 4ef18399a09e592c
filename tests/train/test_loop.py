"""`resetassay train` (SPEC S6, S7): checkpoints with per-unit state that the assay reads back."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers.paths import FIXTURES, MNIST, ROOT
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import resetassay.train.loop
from resetassay.cli import app
from resetassay.data import DataSpec
from resetassay.errors import BadInputError
from resetassay.io.checkpoint import load_checkpoint
from resetassay.io.rundir import RunInterrupted
from resetassay.names import MANIFEST, STATE, WEIGHTS
from resetassay.train.cbp import CBPConfig
from resetassay.train.loop import TrainConfig, TrainingFailed, train, zoo_kwargs

runner = CliRunner()
MATURITY = 20
# digits: 1797 images, 898 held out, 899 for training; batch 32 -> ceil(899 / 32) = 29 steps per epoch
STEPS_PER_TASK = 2 * 29


pytestmark = pytest.mark.usefixtures("one_thread")


def _small(tasks: int = 2, **overrides: object) -> TrainConfig:
    data = DataSpec()
    settings = {"tasks": tasks, "epochs_per_task": 1, "batch_size": 32, "lr": 0.05, "checkpoint_at": (tasks,),
                "cbp": CBPConfig(replacement_rate=0.05, maturity=5), **overrides}
    return TrainConfig("mlp", zoo_kwargs("mlp", data, (16, 16)), data, **settings)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cbp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-task CBP run on permuted digits through the CLI, checkpoints before training and after tasks 1 and 3."""
    out = tmp_path_factory.mktemp("cbp")
    result = runner.invoke(app, [
        "train", "--widths", "32,32", "--tasks", "3", "--epochs-per-task", "2", "--batch-size", "32", "--cbp",
        "--lr", "0.05", "--replacement-rate", "0.01", "--maturity", str(MATURITY), "--checkpoint-at", "0,1,3",
        "--permutation-seed", "3", "--seed", "7", "--out", str(out), "--quiet",
    ])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_three_task_cbp_run_writes_checkpoints_whose_state_loads_back(cbp_run: Path) -> None:
    """task<k> is the network after k tasks, probed on the task trained last (task 0 for the untrained one)."""
    with open(cbp_run / "accuracy.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["task"] for r in rows] == ["1", "2", "3"]  # completed tasks, as the checkpoints count them
    for done in (0, 1, 3):
        ckpt = load_checkpoint(cbp_run / f"task{done}")
        meta, data = ckpt.info.meta, ckpt.info.data
        assert ckpt.info.step == {"task": done}
        assert (data.source, data.task, data.permutation_seed) == ("digits", max(done - 1, 0), 3)
        assert meta["seed"] == 7 and meta["maturity"] == MATURITY and meta["cbp"]["utility"] == "contribution"
        assert meta["family"] == "mlp-relu+cbp-contribution@digits"
        assert meta["resets"] == sum(int(r["resets"]) for r in rows[:done])
        if done:
            assert meta["holdout_accuracy"] == pytest.approx(float(rows[done - 1]["holdout_accuracy"]), abs=1e-6)
        for layer, n in (("layers.0.act", 32), ("layers.1.act", 32)):
            age, ref, util = (ckpt.state[f"{layer}.{k}"] for k in ("age", "reference", "utility"))
            assert age.shape == ref.shape == util.shape == (n,)
            assert int(age.max()) <= STEPS_PER_TASK * done
            assert bool((ref[age == 0] == 0).all())  # newborn units have observed nothing yet
    assert int(load_checkpoint(cbp_run / "task0").state["layers.0.act.age"].max()) == 0  # before the first step
    assert load_checkpoint(cbp_run / "task3").info.meta["resets"] > 0


def test_assay_reads_the_stored_reference_and_leaves_immature_units_unranked(cbp_run: Path, tmp_path: Path) -> None:
    ckpt = cbp_run / "task3"
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
    assert "task2/state.safetensors" in first
    assert first == second


def test_cbp_with_zero_replacement_rate_trains_exactly_like_backprop(tmp_path: Path) -> None:
    train(_small(cbp=None), tmp_path / "plain")
    train(_small(cbp=CBPConfig(replacement_rate=0.0)), tmp_path / "tracked")
    plain, tracked = _files(tmp_path / "plain"), _files(tmp_path / "tracked")
    assert plain["task2/model.safetensors"] == tracked["task2/model.safetensors"]
    assert "task2/state.safetensors" not in plain and "task2/state.safetensors" in tracked


def test_checkpoints_by_epoch_count_completed_epochs_and_record_the_task_they_belong_to(tmp_path: Path) -> None:
    saved = train(_small(tasks=2, epochs_per_task=2, checkpoint_at=(0, 2, 3), checkpoint_in="epochs"), tmp_path)
    assert [p.name for p in saved] == ["epoch0", "epoch2", "epoch3"]
    manifests = [json.loads((p / "manifest.json").read_text()) for p in saved]
    assert [m["step"] for m in manifests] == [{"epoch": 0}, {"epoch": 2}, {"epoch": 3}]
    assert [m["data"]["task"] for m in manifests] == [0, 0, 1]  # epoch 3 is the first of the second task


def test_checkpoint_0_is_the_untrained_network_and_k_the_network_after_k_tasks(tmp_path: Path) -> None:
    """SPEC S6: checkpoints {0, 5, 10, 20, 30} of 30 tasks; 0 is written before the first SGD step."""
    config = _small(tasks=2, checkpoint_at=(0, 1, 2), cbp=None)
    assert list(TrainConfig(tasks=30, checkpoint_at=(30, 0, 5, 20, 10)).checkpoints()) == [
        "task0", "task5", "task10", "task20", "task30"]
    train(config, tmp_path / "all")
    torch.manual_seed(config.seed)
    untrained = resetassay.train.loop.create_model(config.model, **config.model_kwargs).state_dict()
    saved = load_checkpoint(tmp_path / "all" / "task0").model.state_dict()
    assert all(torch.equal(saved[k], v) for k, v in untrained.items())
    train(_small(tasks=1, cbp=None), tmp_path / "one")  # the same seed: its only checkpoint is task1 here
    assert _files(tmp_path / "all")["task1/model.safetensors"] == _files(tmp_path / "one")["task1/model.safetensors"]
    assert load_checkpoint(tmp_path / "all" / "task2").info.data.task == 1


def test_resnet_cbp_stores_references_for_every_unit_layer_and_utilities_where_it_resets(tmp_path: Path) -> None:
    data = DataSpec(layout="image")
    config = TrainConfig("resnet", zoo_kwargs("resnet", data, (4, 8)), data, tasks=1, batch_size=64,
                         checkpoint_at=(1,), cbp=CBPConfig(replacement_rate=0.05, maturity=2))
    (path,) = train(config, tmp_path)
    ckpt = load_checkpoint(path)
    layers = ["stem.act", "stages.0.0.act1", "stages.0.0.act2", "stages.1.0.act1", "stages.1.0.act2"]
    assert sorted(k for k in ckpt.state if k.endswith(".reference")) == sorted(f"{n}.reference" for n in layers)
    assert sorted(k for k in ckpt.state if k.endswith(".utility")) == ["stages.0.0.act1.utility",
                                                                        "stages.1.0.act1.utility"]
    assert set(ckpt.info.meta["cbp_skipped"]) == {"stem.act", "stages.0.0.act2", "stages.1.0.act2"}


def test_a_checkpoint_after_the_last_task_is_refused_naming_the_flag() -> None:
    with pytest.raises(BadInputError, match=r"^`checkpoint_at` 31: counts completed tasks, from 0 \(before training\) "
                                            r"to 30 \(after the last of this run\); raise `tasks` to reach it$"):
        TrainConfig(tasks=30, checkpoint_at=(0, 5, 31))


def test_train_defaults_to_plain_backprop_and_records_the_family_in_every_manifest(tmp_path: Path) -> None:
    assert _train_cli(tmp_path / "plain", "--checkpoint-at", "0,3").exit_code == 0
    assert _train_cli(tmp_path / "named", "--checkpoint-at", "3", "--family", "baseline.v2").exit_code == 0
    record = json.loads((tmp_path / "plain" / "train.json").read_text())["config"]
    assert record["cbp"] is None and record["family"] == "mlp-relu@digits"
    for name in ("task0", "task3"):
        ckpt = load_checkpoint(tmp_path / "plain" / name)
        assert ckpt.state == {} and "cbp" not in ckpt.info.meta
        assert ckpt.info.family == "mlp-relu@digits"
    assert load_checkpoint(tmp_path / "named" / "task3").info.family == "baseline.v2"
    assert json.loads((tmp_path / "named" / "train.json").read_text())["config"]["family"] == "baseline.v2"


def test_an_out_folder_of_the_older_numbering_is_refused_saying_why(tmp_path: Path) -> None:
    """resetassay.train/1 counted `checkpoint_at` from 0 after the first task: resuming it would shift every step."""
    train(_tiny(cbp=None), tmp_path)
    record = json.loads((tmp_path / "train.json").read_text())
    (tmp_path / "train.json").write_text(json.dumps({**record, "format": "resetassay.train/1"}))
    with pytest.raises(BadInputError, match=r"its train.json is of an older train, whose `checkpoint_at` counted "
                                            r"tasks from 0 after the first one \(0 is now the untrained network\); "
                                            r"use another `out`, or `overwrite`"):
        train(_tiny(cbp=None), tmp_path)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "cnn"], "--data permuted-digits-image"),
        (["--cbp", "--utility", "gxd_all"], "--utility 'gxd_all' cannot be tracked online"),
        (["--utility", "gxd"], "--utility applies only with --cbp (plain backprop is the default); add --cbp"),
        (["--maturity", "5"], "--maturity applies only with --cbp"),
        (["--family", "mlp relu"], "--family 'mlp relu': use letters, digits"),
        (["--family", "mlp:relu"], "--family 'mlp:relu'"),
        (["--activation", "gelu"], "--activation"),
        (["--data", "permuted-mnist"], "--data-dir"),
        (["--checkpoint-at", "1,x"], "--checkpoint-at"),
        (["--model", "mlp", "--widths", "0,4"], "--widths"),
        (["--model", "transformer"], "--model transformer trains on token sequences (--data grammar)"),
        (["--data", "grammar"], "--data grammar trains --model transformer"),
        (["--model", "transformer", "--data", "grammar", "--widths", "32,64"], "share one width"),
        (["--optimizer", "rmsprop"], "--optimizer 'rmsprop': choose sgd or adam"),
        (["--optimizer", "adam", "--momentum", "0.9"], "--momentum applies to --optimizer sgd"),
    ],
)
def test_bad_train_input_exits_2_naming_the_flag(args: list[str], needle: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--tasks", "1", *args, "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 2, result.output
    assert needle in result.output


@pytest.mark.slow
@pytest.mark.skipif(not MNIST.is_dir(), reason=f"MNIST IDX files not found at {MNIST}")
def test_permuted_mnist_from_idx_files_trains_the_784_input_mlp(tmp_path: Path) -> None:
    data = DataSpec(source="mnist", data_dir=str(MNIST))
    config = TrainConfig("mlp", zoo_kwargs("mlp", data, (32,)), data, tasks=1, batch_size=500, lr=0.1,
                         checkpoint_at=(1,), cbp=CBPConfig(replacement_rate=0.01, maturity=10))
    (path,) = train(config, tmp_path)
    ckpt = load_checkpoint(path)
    assert ckpt.info.kwargs["in_features"] == 784 and ckpt.info.data.source == "mnist"
    assert ckpt.state["layers.0.act.age"].shape == (32,)
    assert ckpt.info.meta["holdout_accuracy"] > 0.5  # 10 classes: chance is 0.1


# --- Nothing silently wrong: --out, resume, bad flags, divergence, Ctrl-C ---------------------------------------------

# One hidden layer of 16 units, batch 64: ceil(899 / 64) = 15 SGD steps per task, a few ms each.
TINY = ["--widths", "16", "--tasks", "3", "--batch-size", "64", "--lr", "0.05", "--quiet"]
CBP = ["--cbp", "--replacement-rate", "0.05", "--maturity", "5"]


def _tiny(**overrides: object) -> TrainConfig:
    data = DataSpec()
    settings = {"tasks": 3, "batch_size": 64, "lr": 0.05, "checkpoint_at": (1, 2, 3),
                "cbp": CBPConfig(replacement_rate=0.05, maturity=5), **overrides}
    return TrainConfig("mlp", zoo_kwargs("mlp", data, (16,)), data, **settings)


def _train_cli(out: Path, *args: str) -> object:
    return runner.invoke(app, ["train", *TINY, "--out", str(out), *args])


def test_no_cbp_into_the_folder_of_a_cbp_run_is_refused_naming_what_changed(tmp_path: Path) -> None:
    """The old state.safetensors would stay for `run --reference stored` to read (SPEC S2): refused instead."""
    assert _train_cli(tmp_path, "--checkpoint-at", "0,2", *CBP).exit_code == 0
    before = _files(tmp_path)
    result = _train_cli(tmp_path, "--checkpoint-at", "0,2")
    assert result.exit_code == 2
    assert result.stderr == (f"error: --out {tmp_path}: holds 2 checkpoints trained with another config (cbp on -> "
                             "off; family 'mlp-relu+cbp-contribution@digits' -> 'mlp-relu@digits'); use another "
                             "--out, or --overwrite to discard them\n")
    assert _files(tmp_path) == before


def test_overwrite_discards_what_train_wrote_and_keeps_other_files(tmp_path: Path) -> None:
    assert _train_cli(tmp_path, "--checkpoint-at", "0,2", *CBP).exit_code == 0
    (tmp_path / "notes.txt").write_text("keep me\n")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / MANIFEST).write_text("{}\n")
    result = _train_cli(tmp_path, "--checkpoint-at", "2", "--overwrite")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accuracy.csv", "mine", "notes.txt", "task2", "train.json"]
    assert sorted(p.name for p in (tmp_path / "task2").iterdir()) == [MANIFEST, WEIGHTS]  # no stale CBP state
    assert load_checkpoint(tmp_path / "task2").state == {}
    assert (tmp_path / "notes.txt").read_text() == "keep me\n" and (tmp_path / "mine" / MANIFEST).exists()
    assert json.loads((tmp_path / "train.json").read_text())["config"]["cbp"] is None


def test_a_non_empty_folder_without_a_train_record_is_refused_then_overwrite_keeps_other_files(tmp_path: Path) -> None:
    """A folder of an older train (no train.json), with a user's file: refused; --overwrite removes only task0."""
    train(_tiny(checkpoint_at=(0,), cbp=None), tmp_path)
    (tmp_path / "train.json").unlink()
    (tmp_path / "results.csv").write_text("x\n")
    result = _train_cli(tmp_path, "--checkpoint-at", "2")
    assert result.exit_code == 2
    assert result.stderr == (f"error: --out {tmp_path}: not empty (accuracy.csv, results.csv, task0) and holds no "
                             "train.json of a training run; use another --out, or --overwrite to discard the "
                             "checkpoints and accuracy.csv an earlier train wrote there (other files are kept)\n")
    assert _train_cli(tmp_path, "--checkpoint-at", "2", "--overwrite").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accuracy.csv", "results.csv", "task2", "train.json"]


def test_the_same_command_again_has_nothing_to_do_and_rewrites_nothing(tmp_path: Path) -> None:
    assert _train_cli(tmp_path, "--checkpoint-at", "0,2", "--no-cbp").exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    result = _train_cli(tmp_path, "--checkpoint-at", "0,2", "--no-cbp")
    assert result.exit_code == 0, result.output
    assert f"nothing to do: all 2 checkpoints of this command are in {tmp_path}" in result.stderr
    assert "wrote" not in result.stdout
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_an_interrupted_run_resumes_to_the_bytes_of_an_uninterrupted_one(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """No optimizer or CBP state is saved: the rerun trains from the start (deterministic, SPEC S6, S7) and writes
    only the missing checkpoints."""
    config = _tiny()
    train(config, tmp_path / "whole")
    out = tmp_path / "cut"
    real, calls = resetassay.train.loop.save_checkpoint, []

    def interrupted_at_the_second(*args: object, **kwargs: object) -> Path:
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(resetassay.train.loop, "save_checkpoint", interrupted_at_the_second)
        with pytest.raises(RunInterrupted) as stopped:
            train(config, out)
    assert str(stopped.value) == f"interrupted: 1 of 3 checkpoints saved in {out}; rerun the same command to resume"
    notes: list[str] = []
    written = train(config, out, note=notes.append)
    assert [p.name for p in written] == ["task2", "task3"]
    assert notes == [f"resuming: 1 of 3 checkpoints are already in {out}; training again from the start (no "
                     "optimizer state is saved; same seed and 1 thread as the first run, so bit-identical) to write "
                     "the 2 missing"]
    assert _files(out) == _files(tmp_path / "whole")


def test_a_kept_checkpoint_the_rerun_does_not_reproduce_stops_it(tmp_path: Path) -> None:
    config = _tiny(cbp=None)
    train(config, tmp_path)
    weights = load_file(tmp_path / "task1" / WEIGHTS)
    weights["layers.0.linear.bias"][0] += 1e-3
    save_file(weights, tmp_path / "task1" / WEIGHTS)
    shutil.rmtree(tmp_path / "task3")
    with pytest.raises(TrainingFailed, match=rf"^`out` {tmp_path}: task1 on disk is not what this rerun of the same "
                                             r"command trains \(its weights differ"):
        train(config, tmp_path)
    assert not (tmp_path / "task3").exists()


@pytest.mark.parametrize(("flag", "value"), [
    ("--lr", "nan"), ("--lr", "inf"), ("--lr", "0"), ("--lr", "-0.1"), ("--lr", "1e39"),
    ("--momentum", "nan"), ("--momentum", "1"), ("--momentum", "-0.5"),
    ("--decay", "nan"), ("--decay", "1"), ("--replacement-rate", "inf"), ("--replacement-rate", "-0.1"),
    ("--maturity", "-1"), ("--tasks", "0"), ("--epochs-per-task", "0"), ("--batch-size", "0"),
    ("--seed", "-1"), ("--permutation-seed", "-1"),
])
def test_every_training_flag_is_checked_finite_and_in_range(flag: str, value: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cbp = ["--cbp"] if flag in ("--decay", "--replacement-rate", "--maturity") else []
    result = runner.invoke(app, ["train", *cbp, flag, value, "--out", str(out), "--quiet"])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {flag} ") and "applies only with --cbp" not in line
    assert not out.exists()  # refused before anything is written


@pytest.mark.parametrize(("make", "flag"), [
    (lambda: TrainConfig(lr=float("nan")), "lr"),
    (lambda: TrainConfig(momentum=float("inf")), "momentum"),
    (lambda: TrainConfig(checkpoint_at=(0.5,)), "checkpoint_at"),
    (lambda: CBPConfig(maturity=2.5), "maturity"),
    (lambda: CBPConfig(decay=float("nan")), "decay"),
])
def test_bad_values_from_python_name_their_flag(make: object, flag: str) -> None:
    with pytest.raises(BadInputError) as bad:
        make()
    assert bad.value.field == flag


def test_a_loss_that_becomes_nan_stops_training_with_exit_1_and_writes_nothing(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--no-cbp", "--widths", "16,16", "--tasks", "3", "--checkpoint-at", "1,2,3",
                                 "--lr", "1e8", "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 1, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: training diverged: the loss became nan at task 0, epoch 0, step ")
    assert line.endswith(f"of 15; no checkpoint is in {tmp_path}, none written from the diverged model; "
                         "try a lower --lr")
    assert not list(tmp_path.glob("task*"))


def test_divergence_keeps_the_earlier_checkpoints_and_says_where_it_happened(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    real = resetassay.train.loop.task_arrays

    def nan_in_task_1(spec: DataSpec, part: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = real(spec, part)
        return (torch.full_like(x, float("nan")) if spec.task == 1 and part == "train" else x), y

    monkeypatch.setattr(resetassay.train.loop, "task_arrays", nan_in_task_1)
    with pytest.raises(TrainingFailed) as failed:
        train(_tiny(), tmp_path)
    assert str(failed.value) == (f"training diverged: the loss became nan at task 1, epoch 0, step 1 of 15; kept 1 of "
                                 f"3 checkpoints in {tmp_path} (task1), none written from the diverged model; try a "
                                 "lower `lr`")
    assert sorted(p.name for p in tmp_path.glob("task*")) == ["task1"]
    assert (tmp_path / "task1" / STATE).exists()


def _interruptible() -> None:
    """Ctrl-C as at a terminal: a shell running CI in the background starts children with SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_says_what_was_saved_exits_130_and_leaves_no_half_checkpoint(tmp_path: Path) -> None:
    """A real `resetassay train` interrupted after its first checkpoint; the same command then resumes it here,
    with this process's one thread: only with the first run's thread count does it reproduce the kept ones."""
    out, tasks = tmp_path / "run", 40
    args = ["train", "--no-cbp", "--widths", "16", "--tasks", str(tasks), "--checkpoint-at",
            ",".join(map(str, range(tasks))), "--out", str(out), "--quiet"]
    process = subprocess.Popen([sys.executable, "-m", "resetassay.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=_interruptible)
    deadline = time.monotonic() + 120
    while not (out / "task0" / MANIFEST).exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint written in time"
        time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    saved = sorted(p.name for p in out.glob("task*"))
    assert 1 <= len(saved) < tasks, "the interrupt must land between the first and the last checkpoint"
    assert stderr.splitlines()[-1] == (f"interrupted: {len(saved)} of {tasks} checkpoints saved in {out}; rerun the "
                                       "same command to resume")
    assert "Traceback" not in stderr
    assert {p.name for p in out.iterdir()} - set(saved) <= {"accuracy.csv", "train.json"}  # no temporaries
    for name in saved:
        assert load_checkpoint(out / name).info.step == {"task": int(name[4:])}
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"resuming: {len(saved)} of {tasks} checkpoints are already in {out}" in result.stderr
    assert len(list(out.glob("task*"))) == tasks


@pytest.mark.slow
def test_transformer_trains_on_grammar_tasks_with_cbp_on_its_mlp_neurons(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--model", "transformer", "--data", "grammar", "--widths", "32,32",
                                 "--tasks", "2", "--optimizer", "adam", "--lr", "0.003", "--cbp",
                                 "--replacement-rate", "0.01", "--maturity", "10", "--checkpoint-at", "0,2",
                                 "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    log = pd.read_csv(tmp_path / "accuracy.csv")
    assert log["task"].tolist() == [1, 2] and log["resets"].sum() > 0
    assert log["holdout_accuracy"].iloc[-1] > 0.2  # chance is 1/32 per next token
    untrained, trained = load_checkpoint(tmp_path / "task0"), load_checkpoint(tmp_path / "task2")
    assert trained.info.family == "transformer-d32-l2+cbp-contribution@grammar"
    assert trained.info.data.source == "grammar" and trained.info.data.task == 1
    assert trained.info.meta["optimizer"] == "adam" and trained.info.meta["cbp_layers"] == [
        "blocks.0.mlp.act", "blocks.1.mlp.act"]
    assert set(trained.state) == {f"blocks.{i}.mlp.act.{k}" for i in (0, 1) for k in ("age", "reference", "utility")}
    assert untrained.info.meta["holdout_accuracy"] < 0.1


def test_short_tasks_train_on_a_seeded_sample_of_each_task() -> None:
    from resetassay.train.loop import _task_sample

    x, y = torch.arange(50.0).view(25, 2), torch.arange(25)
    config = _small(examples_per_task=8)
    xs, ys = _task_sample((x, y), config, task=3)
    assert len(xs) == 8 and torch.equal(xs[:, 0] / 2, ys.double().float()) and ys.unique().numel() == 8
    assert torch.equal(_task_sample((x, y), config, task=3)[1], ys)
    assert not torch.equal(_task_sample((x, y), config, task=4)[1], ys)
    assert _task_sample((x, y), _small(), task=3)[1] is y
    with pytest.raises(BadInputError, match="`examples_per_task` 0"):
        _small(examples_per_task=0)


@pytest.mark.slow
def test_tracked_is_the_utility_cbp_stored_where_it_resets_and_not_applicable_elsewhere() -> None:
    from safetensors.torch import load_file

    from resetassay import run_assay

    fixture = FIXTURES / "transformer" / "task4"
    result = run_assay([fixture], utilities=["tracked", "gxd", "oracle"], metrics=["l1"], progress=False)
    state = load_file(fixture / STATE)
    for layer in ("blocks.0.mlp.act", "blocks.1.mlp.act"):
        got = result.units.query("layer == @layer")["tracked"].to_numpy()
        torch.testing.assert_close(torch.from_numpy(got).float(), state[f"{layer}.utility"], rtol=0, atol=0)
    heads = result.notes.query("utility == 'tracked'")
    assert sorted(heads["layer"]) == ["blocks.0.attn.heads", "blocks.1.attn.heads"]
    assert heads["reason"].str.contains("stores no tracked utility").all()
    plain = run_assay([fixture.parents[1] / "relu_mlp" / "task2"], utilities=["tracked", "gxd", "oracle"],
                      metrics=["l1"], progress=False)
    assert plain.units["tracked"].isna().all() and len(plain.notes.query("utility == 'tracked'")) == 3  # 3 layers


def test_a_run_recorded_before_an_option_was_added_still_resumes(tmp_path: Path) -> None:
    config = _small()
    train(config, tmp_path)
    record = json.loads((tmp_path / "train.json").read_text())
    del record["config"]["examples_per_task"]  # as written before --examples-per-task existed
    (tmp_path / "train.json").write_text(json.dumps(record))
    assert train(_small(), tmp_path) == []  # same command: nothing to do
    with pytest.raises(BadInputError, match="examples_per_task None -> 5"):
        train(_small(examples_per_task=5), tmp_path)


def test_online_accuracy_is_the_accuracy_on_the_training_stream_before_each_step(tmp_path: Path) -> None:
    """With a step too small to move float32 weights, the online accuracy of a task is the untrained network's
    accuracy on that task's training sample; with a real step it rises above it."""
    from resetassay.data import task_arrays
    from resetassay.train.loop import _task_sample

    still = _small(tasks=1, lr=1e-30, examples_per_task=300, checkpoint_at=(0,), cbp=None)
    train(still, tmp_path / "still")
    x, y = _task_sample(task_arrays(still.data, "train"), still, 0)
    before = resetassay.train.loop.accuracy(load_checkpoint(tmp_path / "still" / "task0").model, x, y)
    log = pd.read_csv(tmp_path / "still" / "accuracy.csv")
    assert log["online_accuracy"].iloc[0] == pytest.approx(before, abs=1e-9)
    train(_small(tasks=1, lr=0.1, epochs_per_task=3, examples_per_task=300, cbp=None), tmp_path / "moves")
    assert pd.read_csv(tmp_path / "moves" / "accuracy.csv")["online_accuracy"].iloc[0] > before + 0.05


def test_init_torch_default_is_recorded_in_the_checkpoint_and_its_family(tmp_path):
    """`train --init torch-default` (SPEC S6: the other reading of "Kaiming uniform"): PyTorch's own Linear init,
    weights sqrt(6) = 2.45x smaller than the ReLU-gain Kaiming init and uniform (not zero) biases; the manifest's
    model kwargs and the family record it; the default leaves manifests as they were."""
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--out", str(out), "--widths", "32,32", "--tasks", "1",
                                      "--checkpoint-at", "0", "--init", "torch-default", "--quiet"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "task0" / "manifest.json").read_text())
    assert manifest["model"]["kwargs"]["init"] == "torch-default"
    ckpt = load_checkpoint(out / "task0")
    assert ckpt.info.family == "mlp-relu-torch-default@digits"
    linear = ckpt.model.layers[0].linear
    assert linear.bias.abs().max() > 0
    default = resetassay.train.loop.create_model("mlp", in_features=64, widths=[32, 32])
    ratio = default.layers[0].linear.weight.std() / linear.weight.std()
    assert 2.2 < ratio < 2.7
    plain = resetassay.train.loop.zoo_kwargs("mlp", DataSpec(), (32,), "relu", False)
    assert "init" not in plain
    with pytest.raises(BadInputError, match="`init` 'xavier': choose from kaiming-relu, torch-default"):
        resetassay.train.loop.zoo_kwargs("mlp", DataSpec(), (32,), "relu", False, init="xavier")
