"""`data` mnist is the dataset as published, `permuted-mnist` the continual study's task (issue 25; the same for
fashion-mnist and digits, each also -image; docs/data.md). Records written before the plain datasets had names (the
bundled fixtures, old manifests: a source with a task and a permutation seed, no `permuted`) still mean the permuted
task and give bit-identical arrays."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.paths import FIXTURES
from typer.testing import CliRunner

from resetassay.cli import app
from resetassay.data import (
    DATA_CHOICES,
    DataChoice,
    DataSpec,
    data_name,
    data_spec,
    digits_arrays,
    permutation,
    task_arrays,
)
from resetassay.errors import BadInputError
from resetassay.io.checkpoint import find_checkpoints, load_checkpoint
from resetassay.train.loop import RECORD, TrainConfig, train, zoo_kwargs

runner = CliRunner()


def _idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


@pytest.fixture
def idx_folder(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """A small MNIST-like IDX folder and its raw arrays by prefix."""
    rng = np.random.default_rng(3)
    arrays = {}
    for prefix, n in (("train", 12), ("t10k", 9)):
        images, labels = rng.integers(0, 256, size=(n, 28, 28)), rng.integers(0, 10, size=n)
        _idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        _idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
        arrays[prefix] = (images.astype(np.uint8), labels.astype(np.int64))
    return tmp_path, arrays


def _digits_holdout(split_seed: int = 0, fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """The digits held-out part as the code has always drawn it (written out here, not called)."""
    x, y = digits_arrays()
    order = np.random.default_rng(split_seed).permutation(len(x))
    idx = np.sort(order[:int(round(fraction * len(x)))])
    return x[idx], y[idx]


def test_every_builtin_name_has_a_plain_and_a_permuted_form():
    for source in ("digits", "mnist", "fashion-mnist"):
        for layout in ("", "-image"):
            assert {f"{source}{layout}", f"permuted-{source}{layout}"} <= set(DATA_CHOICES)
    assert "grammar" in DATA_CHOICES and "permuted-grammar" not in DATA_CHOICES
    for name in DATA_CHOICES:
        spec = data_spec(name, data_dir="/d" if "mnist" in name else None)
        assert data_name(spec) == name
        assert spec.permuted == (name.startswith("permuted-") or name == "grammar")


@pytest.mark.parametrize("source", ["mnist", "fashion-mnist"])
def test_mnist_is_the_dataset_as_published_and_permuted_mnist_the_continual_task(idx_folder, source):
    folder, arrays = idx_folder
    images, labels = arrays["t10k"]
    flat = (images.reshape(len(images), -1) / 255.0).astype(np.float32)
    x, y = task_arrays(data_spec(source, data_dir=str(folder)), "holdout")
    assert np.array_equal(x.numpy(), flat) and np.array_equal(y.numpy(), labels)  # identity pixels
    xi, _ = task_arrays(data_spec(f"{source}-image", data_dir=str(folder)), "holdout")
    assert np.array_equal(xi.numpy(), flat.reshape(-1, 1, 28, 28))
    for task in (0, 2):
        xp, yp = task_arrays(data_spec(f"permuted-{source}", task, 4, str(folder)), "holdout")
        assert np.array_equal(xp.numpy(), flat[:, permutation(784, task, 4)]) and np.array_equal(yp.numpy(), labels)
    assert not np.array_equal(task_arrays(data_spec(f"permuted-{source}", data_dir=str(folder)), "holdout")[0], x)


def test_plain_digits_keep_their_pixels_and_split():
    want_x, want_y = _digits_holdout()
    x, y = task_arrays(data_spec("digits"), "holdout")
    assert np.array_equal(x.numpy(), want_x) and np.array_equal(y.numpy(), want_y)
    xi, _ = task_arrays(data_spec("digits-image"), "holdout")
    assert np.array_equal(xi.numpy(), want_x.reshape(-1, 1, 8, 8))
    xp, _ = task_arrays(data_spec("permuted-digits"), "holdout")
    assert np.array_equal(xp.numpy(), want_x[:, permutation(64, 0, 0)])


def test_a_plain_record_round_trips_and_says_it_is_plain():
    spec = data_spec("mnist-image", data_dir="/mnist")
    record = spec.to_dict()
    assert record == {"source": "mnist", "layout": "image", "permuted": False, "split_seed": 0,
                      "holdout_fraction": 0.5, "data_dir": "/mnist"}
    assert DataSpec.from_dict(record) == spec and spec.describe() == "mnist"
    with pytest.raises(BadInputError, match=r"^data.task applies only to a permuted task"):
        DataSpec.from_dict({**record, "task": 3})
    with pytest.raises(BadInputError, match=r"^data.permuted false applies only to source 'digits'"):
        DataSpec(source="grammar", permuted=False)
    with pytest.raises(BadInputError, match=r"^data.permuted must be true or false"):
        DataSpec.from_dict({**record, "permuted": "no"})


def test_old_style_records_still_mean_the_permuted_task_bit_for_bit(idx_folder, tmp_path):
    """A manifest of before (source, task, permutation seed; no `permuted`) is the permuted task, as it was."""
    folder, arrays = idx_folder
    old = {"source": "mnist", "layout": "flat", "task": 3, "permutation_seed": 1, "split_seed": 0,
           "holdout_fraction": 0.5, "data_dir": str(folder)}
    spec = DataSpec.from_dict(old)
    assert spec.permuted and spec.to_dict() == old and spec == data_spec("permuted-mnist", 3, 1, str(folder))
    assert DataSpec.from_dict({**old, "permuted": True}) == spec
    images, _ = arrays["train"]
    flat = (images.reshape(len(images), -1) / 255.0).astype(np.float32)
    assert np.array_equal(task_arrays(spec, "train")[0].numpy(), flat[:, permutation(784, 3, 1)])
    # through a checkpoint folder: a fixture's manifest with the old mnist record
    ckpt = Path(shutil.copytree(FIXTURES / "relu_mlp" / "task2", tmp_path / "ckpt"))
    manifest = json.loads((ckpt / "manifest.json").read_text())
    (ckpt / "manifest.json").write_text(json.dumps({**manifest, "data": old}))
    assert load_checkpoint(ckpt).info.data == spec


def test_the_bundled_fixtures_are_permuted_tasks_with_the_arrays_they_always_had():
    checked = 0
    for path, _ in find_checkpoints([FIXTURES]):
        data = load_checkpoint(path).info.data
        manifest = json.loads((path / "manifest.json").read_text())["data"]
        assert data.permuted and "permuted" not in manifest and data.to_dict() == manifest
        if data.source != "digits":
            continue
        want_x, want_y = _digits_holdout(data.split_seed, data.holdout_fraction)
        want_x = want_x[:, permutation(64, data.task, data.permutation_seed)]
        if data.layout == "image":
            want_x = want_x.reshape(-1, 1, 8, 8)
        x, y = task_arrays(data, "holdout")
        assert np.array_equal(x.numpy(), want_x) and np.array_equal(y.numpy(), want_y)
        checked += 1
    assert checked >= 8


def test_task_and_permutation_seed_do_not_apply_to_a_plain_dataset():
    with pytest.raises(BadInputError, match=r"^`task` applies to a permuted task, not the plain dataset `data` "
                                            r"mnist; use `data` permuted-mnist$") as err:
        data_spec("mnist", task=2)
    assert err.value.field == "task"
    plain = data_spec("digits")
    with pytest.raises(BadInputError, match=r"^`permutation_seed` applies to a permuted task") as err:
        DataChoice(None, permutation_seed=1).resolve(plain)
    assert err.value.field == "permutation_seed"
    result = runner.invoke(app, ["run", str(FIXTURES / "relu_mlp" / "task2"), "--data", "digits", "--task", "1",
                                 "--quiet"])
    assert result.exit_code == 2 and "--task applies to a permuted task" in result.stderr
    assert "use --data permuted-digits" in result.stderr


def test_asking_for_the_plain_dataset_replaces_a_permuted_record_with_a_warning(tmp_path):
    recorded = load_checkpoint(FIXTURES / "relu_mlp" / "task2").info.data
    resolved, line = DataChoice(data_spec("digits")).resolve(recorded)
    assert resolved == DataSpec(permuted=False, split_seed=2)  # the record's split, the plain pixels
    assert line == "`data` digits replaces its recorded permuted-digits"
    assert DataChoice(data_spec("permuted-digits")).resolve(recorded) == (None, "")  # the record as it is
    result = runner.invoke(app, ["run", str(FIXTURES / "relu_mlp" / "task2"), "--data", "digits", "--calib-size",
                                 "40", "--probe-size", "40", "--utilities", "gxd", "--metrics", "l1", "--no-joint",
                                 "--figures", "none", "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "--data digits replaces its recorded permuted-digits" in result.stderr
    table = pd.read_csv(tmp_path / "run" / "checkpoints.csv")
    assert table["data_permuted"].tolist() == [False] and table["split_source"].tolist() == ["digits"]
    assert "data_task" not in table


def test_train_on_a_plain_dataset_is_one_task_by_epoch_and_records_it(tmp_path):
    out = tmp_path / "plain"
    result = runner.invoke(app, ["train", "--data", "digits", "--widths", "8", "--epochs", "2", "--checkpoint-at",
                                 "2", "--batch-size", "64", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(out / "epoch2")
    assert ckpt.info.data == data_spec("digits") and ckpt.info.family == "mlp-relu@digits-unpermuted"
    refused = runner.invoke(app, ["train", "--data", "mnist", "--tasks", "3", "--out", str(tmp_path / "o"),
                                  "--quiet"])
    assert refused.exit_code == 2 and "--tasks applies to permuted tasks; --data mnist is the plain dataset" in (
        refused.stderr) and "--data permuted-mnist gives the continual study's permuted tasks" in refused.stderr


def test_train_of_the_continual_study_still_records_permuted_tasks_and_resumes_an_older_record(tmp_path):
    """The default `train` data is permuted-digits; its manifests record what they always did (no `permuted`), and
    a train.json written before `permuted` existed resumes as the same config."""
    data = data_spec("permuted-digits", permutation_seed=2)
    config = TrainConfig("mlp", zoo_kwargs("mlp", data, (8,)), data, tasks=2, batch_size=64, checkpoint_at=(2,))
    (path,) = train(config, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["data"] == {"source": "digits", "layout": "flat", "task": 1, "permutation_seed": 2,
                                "split_seed": 0, "holdout_fraction": 0.5, "data_dir": None}
    assert manifest["meta"]["family"] == "mlp-relu@digits"
    record = json.loads((tmp_path / RECORD).read_text())
    del record["config"]["data"]["permuted"]  # as an older train wrote it
    (tmp_path / RECORD).write_text(json.dumps(record))
    notes = []
    assert train(config, tmp_path, note=notes.append) == []
    assert notes and notes[0].startswith("nothing to do")
    default = runner.invoke(app, ["train", "--help"])
    assert "permuted-digits" in default.output
    x0 = task_arrays(DataSpec(**{**config.data.to_dict(), "task": 0}), "train")[0]
    assert not torch.equal(x0, task_arrays(data_spec("digits"), "train")[0])
