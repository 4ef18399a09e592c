"""The paper's ResNet recipe in `resetassay train` (SPEC S6, Table 3): the step schedule (lr x0.2 at 30/60/80 % of the
run), rotation by 0-15° beside crops and flips, the Kaiming normal init, class-balanced samples; and that runs
recorded before these options keep resuming and loading."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers.images import SIDE, image_folder
from typer.testing import CliRunner

from resetassay.cli import app
from resetassay.data import DataSpec, data_spec, training_images
from resetassay.errors import BadInputError
from resetassay.io.checkpoint import load_checkpoint
from resetassay.models import create_model
from resetassay.train.loop import (
    STEP_GAMMA,
    TrainConfig,
    _task_sample,
    _training_set,
    crop_and_flip,
    image_tensor,
    random_rotation,
    rotate,
    step_milestones,
    train,
    zoo_kwargs,
)

runner = CliRunner()

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes: 10 training and 4 held-out images each."""
    return image_folder(tmp_path_factory.mktemp("imgs"), {"train": 10, "test": 4}, seed=5)


def _image_run(folder: Path, **overrides: object) -> TrainConfig:
    spec = data_spec(str(folder), normalize="cifar10")
    settings = {"epochs_per_task": 2, "checkpoint_at": (0, 2), "checkpoint_in": "epochs", "batch_size": 10,
                "lr": 0.05, "momentum": 0.9, "augment": "crop-flip-rotate", "schedule": "step", **overrides}
    return TrainConfig("resnet", zoo_kwargs("resnet", spec, (4, 8), init="kaiming-normal"), spec, **settings)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- the step schedule ---------------------------------------------------------------------------------------------

def test_step_milestones_are_the_papers_epochs_60_120_160_of_200_in_steps() -> None:
    assert step_milestones(200 * 50) == [60 * 50, 120 * 50, 160 * 50]
    assert step_milestones(10 * 50) == [3 * 50, 6 * 50, 8 * 50]  # 10 epochs of 4500 images in batches of 90
    assert step_milestones(2 * 6) == [4, 7, 10]  # a short run decays inside epochs, still three times


def test_the_step_schedule_multiplies_the_lr_by_0_2_from_the_first_step_of_epochs_3_6_and_8_of_10(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """10 tasks of one epoch, 3 SGD steps each: the lr of every step, read by the optimizer as it steps."""
    seen: list[float] = []
    sgd_step = torch.optim.SGD.step

    def step(self: torch.optim.SGD, *args: object, **kwargs: object) -> object:
        seen.append(self.param_groups[0]["lr"])
        return sgd_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    data = DataSpec()
    config = TrainConfig("mlp", zoo_kwargs("mlp", data, (8,)), data, tasks=10, examples_per_task=90, batch_size=30,
                         lr=0.1, schedule="step", checkpoint_at=(10,))
    train(config, tmp_path)
    assert len(seen) == 10 * 3
    by_epoch = [seen[3 * e:3 * e + 3] for e in range(10)]
    for epoch, lrs in enumerate(by_epoch):
        decays = sum(epoch >= m for m in (3, 6, 8))
        assert lrs == pytest.approx([0.1 * STEP_GAMMA ** decays] * 3, rel=1e-12), epoch
    assert json.loads((tmp_path / "task10" / "manifest.json").read_text())["meta"]["schedule"] == "step"


# --- rotation ------------------------------------------------------------------------------------------------------

def test_rotate_turns_images_counterclockwise_about_their_centre_as_torchvision_does() -> None:
    x = torch.zeros(2, 1, 9, 9)
    x[:, 0, 4, 8] = 1.0  # right of the centre
    out = rotate(x, torch.tensor([90.0, 0.0]))
    assert out[0, 0, 0, 4] == pytest.approx(1.0, abs=1e-5)  # now above it
    assert out[0].sum() == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(out[1], x[1], atol=1e-6)  # 0°: unchanged
    wide = torch.zeros(1, 1, 6, 10)
    wide[0, 0, 2:4, 6] = 1.0  # 1.5 pixels right of the centre (2.5, 4.5), rows 2-3
    turned = rotate(wide, torch.tensor([90.0]))[0, 0]
    assert (turned > 0.5).nonzero().tolist() == [[1, 4], [1, 5]]  # a non-square image turns as a picture does


def test_random_rotation_draws_an_angle_in_0_to_15_degrees_per_image_from_the_generator() -> None:
    x = torch.randn(64, 3, 8, 8)
    out = random_rotation(x, torch.Generator().manual_seed(0))
    angles = 15 * torch.rand(64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, rotate(x, angles)) and angles.min() >= 0 and angles.max() <= 15
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not torch.allclose(out, x, atol=1e-3)
    assert torch.equal(out, random_rotation(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, random_rotation(x, torch.Generator().manual_seed(1)))


def test_crop_flip_rotate_rotates_the_cropped_and_flipped_batch_and_keeps_shape_and_labels(folder: Path) -> None:
    rotated = _image_run(folder)
    x, y, batch = _training_set(rotated, rotated.data)
    plain_x, plain_y, plain = _training_set(_image_run(folder, augment="crop-flip"), rotated.data)
    assert torch.equal(x, plain_x) and torch.equal(y, plain_y)  # the same images and labels; only batches change
    assert torch.equal(y, training_images(rotated.data)[1])
    out = batch(x, torch.Generator().manual_seed(3))
    assert out.shape == (30, 3, SIDE, SIDE) and out.dtype == torch.float32
    flipped = plain(x, torch.Generator().manual_seed(3))
    assert not torch.allclose(out, flipped, atol=1e-3)
    generator = torch.Generator().manual_seed(3)  # crop and flip first, then the angles, from one generator
    cropped = image_tensor(crop_and_flip(x, generator), rotated.data.mean, rotated.data.std)
    assert torch.equal(cropped, flipped)
    assert torch.equal(out, random_rotation(cropped, generator))


def test_a_rotated_run_is_seeded_same_seed_same_checkpoint_bytes(folder: Path, tmp_path: Path) -> None:
    written = train(_image_run(folder), tmp_path / "a")
    assert [p.name for p in written] == ["epoch0", "epoch2"]
    train(_image_run(folder), tmp_path / "b")
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    train(_image_run(folder, augment="crop-flip"), tmp_path / "c")
    crop_only = _files(tmp_path / "c")
    assert crop_only["epoch2/model.safetensors"] != _files(tmp_path / "a")["epoch2/model.safetensors"]
    assert crop_only["epoch0/model.safetensors"] == _files(tmp_path / "a")["epoch0/model.safetensors"]
    meta = load_checkpoint(tmp_path / "a" / "epoch2").info.meta
    assert (meta["augment"], meta["schedule"]) == ("crop-flip-rotate", "step")


# --- Kaiming normal ------------------------------------------------------------------------------------------------

def test_kaiming_normal_draws_normal_weights_of_std_sqrt_2_over_fan_in_and_zero_biases() -> None:
    torch.manual_seed(0)
    wide = create_model("mlp", in_features=2048, widths=[1024], init="kaiming-normal")
    w = wide.layers[0].linear.weight.detach().double()
    assert w.std().item() == pytest.approx(math.sqrt(2 / 2048), rel=0.01)
    assert abs(w.mean().item()) < 0.01 * math.sqrt(2 / 2048)
    kurtosis = (((w - w.mean()) / w.std()) ** 4).mean().item()
    assert kurtosis == pytest.approx(3.0, abs=0.05)  # normal; a uniform draw has 1.8
    assert wide.head.weight.std().item() == pytest.approx(math.sqrt(2 / 1024), rel=0.05)  # the head alike
    assert all(m.bias.abs().max() == 0 for m in (wide.layers[0].linear, wide.head))
    torch.manual_seed(0)
    uniform = create_model("mlp", in_features=2048, widths=[1024]).layers[0].linear.weight.detach().double()
    assert uniform.std().item() == pytest.approx(math.sqrt(2 / 2048), rel=0.01)  # the same scale, uniform
    assert (((uniform - uniform.mean()) / uniform.std()) ** 4).mean().item() == pytest.approx(1.8, abs=0.05)
    conv = create_model("resnet", in_channels=3, widths=[64], blocks=[1], init="kaiming-normal").stages[0][0].conv2
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.03)


def test_kaiming_normal_is_recorded_in_the_checkpoint_and_its_family(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--model", "resnet", "--widths", "4,8", "--data", str(folder), "--epochs",
                                 "1", "--checkpoint-at", "0", "--init", "kaiming-normal", "--quiet", "--out",
                                 str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "epoch0" / "manifest.json").read_text())
    assert manifest["model"]["kwargs"]["init"] == "kaiming-normal"
    ckpt = load_checkpoint(out / "epoch0")
    assert ckpt.info.family == f"resnet-relu-bn-kaiming-normal@{ckpt.info.family.split('@')[1]}"
    torch.manual_seed(0)
    again = create_model("resnet", **ckpt.info.kwargs)
    for name, value in again.state_dict().items():  # the seeded init, rebuilt from the manifest
        assert torch.equal(value, ckpt.model.state_dict()[name]), name


# --- class-balanced samples ----------------------------------------------------------------------------------------

def test_examples_per_class_takes_a_seeded_sample_of_each_class(folder: Path) -> None:
    run = _image_run(folder, examples_per_class=4)
    x, y = _task_sample(training_images(run.data), run, 0)
    assert y.bincount().tolist() == [4, 4, 4] and x.shape == (12, 3, SIDE, SIDE)
    again = _task_sample(training_images(run.data), run, 0)
    assert torch.equal(again[0], x)
    other = _task_sample(training_images(run.data), _image_run(folder, examples_per_class=4, seed=1), 0)
    assert not torch.equal(other[0], x)
    all_x, all_y = _task_sample(training_images(run.data), _image_run(folder, examples_per_class=50), 0)
    assert all_y.bincount().tolist() == [10, 10, 10]  # a class with fewer gives all it has


# --- bad values and old records ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "flag", "needle"), [
    ({"schedule": "linear"}, "schedule", "choose constant, cosine or step"),
    ({"augment": "rotate"}, "augment", "choose none, crop-flip or crop-flip-rotate"),
    ({"augment": "--normalize"}, "augment", "crop-flip is what `augment` alone did"),
    ({"examples_per_class": 0}, "examples_per_class", "whole number >= 1"),
    ({"examples_per_class": 4, "examples_per_task": 9}, "examples_per_class", "not both"),
])
def test_bad_recipe_values_are_bad_input_naming_their_flag(folder: Path, overrides: dict, flag: str,
                                                           needle: str) -> None:
    with pytest.raises(BadInputError, match=needle) as caught:
        _image_run(folder, **overrides)
    assert caught.value.field == flag and str(caught.value).startswith(f"`{flag}`")


def test_bad_recipe_flags_exit_2_naming_the_flag(folder: Path, tmp_path: Path) -> None:
    for args, needle in ((["--augment", "rotate"], "--augment 'rotate'"), (["--init", "xavier"],
                         "choose from kaiming-relu, torch-default, kaiming-normal")):
        result = runner.invoke(app, ["train", "--model", "resnet", "--data", str(folder), "--epochs", "1", "--quiet",
                                     "--out", str(tmp_path / "o"), *args])
        assert result.exit_code == 2 and needle in result.stderr, result.output
    result = runner.invoke(app, ["train", "--data", "digits", "--augment", "crop-flip-rotate", "--quiet", "--out",
                                 str(tmp_path / "p")])
    assert result.exit_code == 2 and "--augment crop-flip-rotate augments the images of an image folder" in (
        result.stderr)
    assert not (tmp_path / "o").exists() and not (tmp_path / "p").exists()


def test_augment_true_of_an_older_run_is_crop_flip_and_its_train_json_and_manifests_still_resume(
        folder: Path, tmp_path: Path) -> None:
    """Before `augment` was a choice, train.json and the manifests recorded `"augment": true` (false: not in the
    manifest); such a run is the same command's run with crop-flip, and its checkpoints load."""
    assert TrainConfig(**{**_image_run(folder).__dict__, "augment": True}).augment == "crop-flip"
    assert TrainConfig(**{**_image_run(folder).__dict__, "augment": False}).augment == "none"
    config = _image_run(folder, augment="crop-flip", schedule="cosine", examples_per_class=None)
    assert train(config, tmp_path)
    record = json.loads((tmp_path / "train.json").read_text())
    record["config"]["augment"] = True  # as written then, and without the fields added since
    del record["config"]["examples_per_class"]
    (tmp_path / "train.json").write_text(json.dumps(record))
    for name in ("epoch0", "epoch2"):
        path = tmp_path / name / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["meta"]["augment"] = True
        path.write_text(json.dumps(manifest))
        assert load_checkpoint(tmp_path / name).info.meta["augment"] is True
    assert train(config, tmp_path) == []  # the same command: nothing to do
    assert train(TrainConfig(**{**config.__dict__, "augment": True}), tmp_path) == []
    with pytest.raises(BadInputError, match="augment 'crop-flip' -> 'crop-flip-rotate'"):
        train(_image_run(folder, schedule="cosine"), tmp_path)
