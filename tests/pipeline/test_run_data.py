"""`resetassay run` on trained MNIST checkpoints (SPEC S1, S6): each checkpoint's data record wins, `--data-dir`
re-points it to where the files are now, and what a flag replaces is said in a warning line; checkpoints.csv lists
the checkpoints in natural order."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from resetassay.cli import app
from resetassay.data import DataSpec
from resetassay.train.loop import TrainConfig, train, zoo_kwargs

runner = CliRunner()
SMALL = ["--utilities", "gxd", "--metrics", "l1", "--no-joint", "--calib-size", "32", "--probe-size", "32", "--quiet"]
pytestmark = pytest.mark.usefixtures("one_thread")


def _idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Checkpoints task0, task5 and task10 of a 10-task run on a small MNIST-like IDX folder, which is then moved
    away (the checkpoints record where it was); returns (checkpoints, the folder's new place)."""
    root = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(0)
    (root / "old").mkdir()
    for prefix, n in (("train", 128), ("t10k", 96)):
        _idx(root / "old" / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, size=(n, 28, 28)))
        _idx(root / "old" / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, size=n))
    data = DataSpec(source="mnist", data_dir=str(root / "old"))
    config = TrainConfig("mlp", zoo_kwargs("mlp", data, (8,)), data, tasks=10, batch_size=64,
                         checkpoint_at=(10, 0, 5))
    train(config, root / "ckpts")
    shutil.move(root / "old", root / "new")
    return root / "ckpts", root / "new"


def _run(checkpoints: Path, out: Path, *args: str) -> tuple[pd.DataFrame, list[str]]:
    result = runner.invoke(app, ["run", str(checkpoints), "--out", str(out), *SMALL, *args])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:") and "replaces" in line]
    return pd.read_csv(out / "checkpoints.csv"), warnings


@pytest.mark.slow
@pytest.mark.parametrize("data", [[], ["--data", "permuted-mnist"]])
def test_data_dir_re_points_each_record_and_the_recorded_tasks_win(trained, tmp_path, data):
    """`--data-dir D` alone, or with `--data permuted-mnist` (no --task): every checkpoint on its own task, read
    from D; the table lists them in natural order (task5 before task10)."""
    checkpoints, moved = trained
    table, warnings = _run(checkpoints, tmp_path, *data, "--data-dir", str(moved))
    assert table["checkpoint"].tolist() == ["ckpts/task0", "ckpts/task5", "ckpts/task10"]
    assert table["step"].tolist() == [0, 5, 10]
    assert table["data_task"].tolist() == [0, 4, 9]  # the task each was trained on last
    assert set(table["data_data_dir"]) == {str(moved)}
    assert table["family"].tolist() == ["mlp-relu"] * 3
    assert warnings == []


@pytest.mark.slow
def test_an_explicit_task_replaces_the_recorded_ones_with_a_warning_each(trained, tmp_path):
    checkpoints, moved = trained
    table, warnings = _run(checkpoints, tmp_path, "--data", "permuted-mnist", "--data-dir", str(moved), "--task",
                           "0")
    assert table["data_task"].tolist() == [0, 0, 0]
    assert warnings == ["warning: ckpts/task5: --task 0 replaces its recorded task 4",
                        "warning: ckpts/task10: --task 0 replaces its recorded task 9"]


@pytest.mark.slow
def test_another_data_source_replaces_the_record_but_keeps_its_task(trained, tmp_path):
    checkpoints, moved = trained
    table, warnings = _run(checkpoints, tmp_path, "--data", "permuted-fashion-mnist", "--data-dir", str(moved))
    assert set(table["data_source"]) == {"fashion-mnist"} and table["data_task"].tolist() == [0, 4, 9]
    assert warnings == [f"warning: ckpts/{name}: --data permuted-fashion-mnist replaces its recorded permuted-mnist"
                        for name in ("task0", "task5", "task10")]


def test_without_data_dir_a_moved_record_fails_naming_the_fix(trained, tmp_path):
    checkpoints, _ = trained
    result = runner.invoke(app, ["run", str(checkpoints / "task5"), "--out", str(tmp_path), *SMALL])
    assert result.exit_code == 2
    assert "its data record cannot be loaded" in result.stderr and "pass --data/--data-dir" in result.stderr
