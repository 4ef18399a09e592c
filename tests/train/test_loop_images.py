"""`resetassay train` on an image folder or archive (SPEC S6's residual case): one task, checkpoints by epoch, the
data record that lets `run` probe the held-out root without --data."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from helpers.images import CLASSES, SIDE, image_folder
from helpers.paths import CIFAR
from typer.testing import CliRunner

from resetassay.cli import app
from resetassay.data import data_spec, image_classes, task_arrays, training_images
from resetassay.data.images import _image_index
from resetassay.errors import BadInputError
from resetassay.io.checkpoint import load_checkpoint
from resetassay.pipeline.run import run_assay
from resetassay.train.loop import TrainConfig, crop_and_flip, zoo_kwargs

runner = CliRunner()

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes: 8 training and 6 held-out images each."""
    return image_folder(tmp_path_factory.mktemp("imgs"), {"train": 8, "test": 6})


TRAIN = ["train", "--model", "resnet", "--widths", "4,8", "--epochs", "2", "--checkpoint-at", "0,1,2",
         "--batch-size", "8", "--lr", "0.05", "--momentum", "0.9", "--weight-decay", "5e-4", "--schedule", "cosine",
         "--augment", "crop-flip", "--normalize", "cifar10", "--quiet"]


def _train(data: Path, out: Path, *extra: str):
    return runner.invoke(app, [*TRAIN, "--data", str(data), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def trained(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "resnet"
    result = _train(folder, out)
    assert result.exit_code == 0, result.output
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_image_folder_trains_as_one_task_with_checkpoints_by_epoch_that_record_it(trained: Path,
                                                                                      folder: Path) -> None:
    assert sorted(p.name for p in trained.glob("epoch*")) == ["epoch0", "epoch1", "epoch2"]
    for k in (0, 1, 2):
        info = load_checkpoint(trained / f"epoch{k}").info
        assert info.step == {"epoch": k}
        assert info.kwargs == {"activation": "relu", "in_channels": 3, "n_classes": 3, "widths": [4, 8],
                               "blocks": [1, 1]}
        assert info.data == data_spec(str(folder), normalize="cifar10")  # path, sha256, normalisation
        assert info.meta["family"] == "resnet-relu-bn@images"
        assert {info.meta[k] for k in ("augment", "schedule", "weight_decay")} == {"crop-flip", "cosine", 5e-4}
        assert 0 <= info.meta["holdout_accuracy"] <= 1
    first, last = (load_checkpoint(trained / f"epoch{k}").model.state_dict() for k in (0, 2))
    assert not torch.equal(first["stem.conv.weight"], last["stem.conv.weight"])  # it trained


def test_run_probes_the_held_out_root_without_data_flags(trained: Path, tmp_path: Path) -> None:
    result = run_assay([trained / "epoch2"], utilities=["gxd", "gxd_all", "activation", "oracle"],
                       metrics=["l1", "kl"], calib_size=8, probe_size=10, progress=False)
    row = result.checkpoints.iloc[0]
    assert (row["split_image_root"], row["split_available"], row["split_probe_size"]) == ("test", 18, 10)  # 3 x 6
    assert 0 <= row["probe_accuracy"] <= 1
    summary = result.summary
    assert set(summary["utility"]) >= {"gxd", "gxd_all"} and summary["spearman"].notna().any()


def test_the_same_command_resumes_and_reproduces_the_augmented_run_bit_for_bit(trained: Path, folder: Path,
                                                                               tmp_path: Path) -> None:
    again = _train(folder, trained)
    assert again.exit_code == 0 and "nothing to do" in again.stderr
    out = tmp_path / "cut"
    shutil.copytree(trained, out)
    shutil.rmtree(out / "epoch1")
    (out / "accuracy.csv").unlink()
    result = _train(folder, out)
    assert result.exit_code == 0, result.output
    assert "resuming: 2 of 3 checkpoints" in result.stderr and "wrote" in result.stdout
    assert _files(out) == _files(trained)


def test_an_archive_trains_on_its_train_root_and_holds_out_its_test_root(folder: Path, tmp_path: Path) -> None:
    archive = tmp_path / "imgs.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="data")
    packed, plain = data_spec(str(archive)), data_spec(str(folder))
    x, y = training_images(packed)
    assert x.dtype == torch.uint8 and x.shape == (24, 3, SIDE, SIDE) and y.tolist() == [0] * 8 + [1] * 8 + [2] * 8
    for got, want in zip(training_images(plain), (x, y), strict=True):
        assert torch.equal(got, want)
    hx, hy = task_arrays(packed, "holdout")
    assert hx.shape == (18, 3, SIDE, SIDE) and hy.bincount().tolist() == [6, 6, 6]
    assert image_classes(packed) == list(CLASSES)


def test_crop_and_flip_draws_padded_crops_and_mirror_images_from_the_generator() -> None:
    x = torch.arange(2 * 5 * 6, dtype=torch.uint8).view(1, 2, 5, 6).repeat(64, 1, 1, 1)
    out = crop_and_flip(x, torch.Generator().manual_seed(0), padding=2)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x[0], (2,) * 4)
    windows = {(dy, dx, flip) for dy in range(5) for dx in range(5) for flip in (False, True)}
    seen = set()
    for image in out:
        found = [(dy, dx, flip) for dy, dx, flip in windows
                 if torch.equal(image, padded[:, dy:dy + 5, dx:dx + 6].flip(2) if flip else padded[:, dy:dy + 5,
                                                                                                    dx:dx + 6])]
        assert len(found) == 1, "every output is one window of the padded image, flipped or not"
        seen |= set(found)
    assert len(seen) > 20 and {flip for _, _, flip in seen} == {False, True}
    assert torch.equal(out, crop_and_flip(x, torch.Generator().manual_seed(0), padding=2))
    assert not torch.equal(out, crop_and_flip(x, torch.Generator().manual_seed(1), padding=2))


@pytest.mark.parametrize(("args", "flag", "needle"), [
    (["--tasks", "3"], "--tasks", "applies to permuted tasks"),
    (["--checkpoint-in", "tasks"], "--checkpoint-in", "count epochs"),
    (["--model", "mlp"], "--model", "trains on permuted data"),
    (["--blocks", "0"], "--blocks", "BasicBlocks per stage"),
    (["--schedule", "linear"], "--schedule", "constant, cosine or step"),
    (["--weight-decay", "-1"], "--weight-decay", ">= 0"),
])
def test_bad_image_training_flags_exit_2_naming_the_flag(folder: Path, tmp_path: Path, args: list[str], flag: str,
                                                          needle: str) -> None:
    result = _train(folder, tmp_path / "out", *args)
    assert result.exit_code == 2, result.output
    assert f"error: {flag}" in result.stderr and needle in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("args", "needle"), [
    (["--augment", "crop-flip"], "--augment crop-flip augments the images of an image folder"),
    (["--epochs", "3"], "--epochs applies to an image folder"),
])
def test_image_only_flags_are_refused_with_permuted_data(tmp_path: Path, args: list[str], needle: str) -> None:
    result = runner.invoke(app, ["train", "--data", "permuted-digits", "--out", str(tmp_path / "o"), "--quiet",
                                 *args])
    assert result.exit_code == 2 and needle in result.stderr


def test_a_folder_without_a_train_root_or_with_other_classes_is_refused(tmp_path: Path) -> None:
    only_test = image_folder(tmp_path / "a", {"test": 2})
    with pytest.raises(BadInputError, match="no folder named train"):
        training_images(data_spec(str(only_test)))
    other = image_folder(tmp_path / "b", {"train": 2})
    image_folder(tmp_path / "b", {"test": 2}, classes=("ant", "bee", "dog"))
    with pytest.raises(BadInputError, match="both need the same class folders"):
        training_images(data_spec(str(other)))
    with pytest.raises(BadInputError, match="`tasks` 2: an image folder is one task"):
        spec = data_spec(str(other))
        TrainConfig("resnet", zoo_kwargs("resnet", spec), spec, tasks=2, checkpoint_in="epochs")


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR.is_file(), reason="needs /work/shared/data/cifar10 (the shared data folder)")
def test_the_cifar10_archive_sizes_a_resnet_for_its_ten_classes_and_trains_on_its_train_root() -> None:
    """Its held-out root (test, 10000 images) is what the assay probes (test_data's CIFAR test)."""
    spec = data_spec(str(CIFAR), normalize="cifar10")
    kwargs = zoo_kwargs("resnet", spec, (16, 32, 64, 128), blocks=2)
    assert kwargs == {"activation": "relu", "in_channels": 3, "n_classes": 10, "widths": [16, 32, 64, 128],
                      "blocks": [2, 2, 2, 2]}
    assert image_classes(spec) == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                   "truck"]
    index, classes, root, _ = _image_index(CIFAR, "train")  # what training_images decodes
    assert (root, len(index), classes) == ("CIFAR-10-images/train", 50000, image_classes(spec))
    TrainConfig("resnet", kwargs, spec, epochs_per_task=12, checkpoint_at=(0, 12), checkpoint_in="epochs")
