"""`--data FOLDER|ARCHIVE` of images (resetassay/data/images.py, SPEC S1): class folders or a tar archive, decoded
on demand, resized and normalised; bad folders and archives are one-line errors.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.data import one_line_error as _one_line_error
from helpers.paths import CIFAR

from resetassay.data import NORMALIZE, assay_data, data_spec, example_inputs, task_arrays

CLASSES = ("cat", "dog", "emu")


def _image_folder(root: Path, per_class: int = 4, side: int = 6) -> Path:
    """`per_class` tiny PNGs in each of 3 class folders, pixel value 40 * class + image number; a stray file."""
    from PIL import Image

    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            mode = "L" if i == 0 else "RGB"  # grayscale images become RGB too
            Image.new(mode, (side, side), 40 * c + i if mode == "L" else (40 * c + i,) * 3).save(
                root / name / f"{i}.png")
    (root / "README.png.txt").write_text("not an image")
    (root / "loose.png").write_bytes(b"ignored: outside the class folders")
    return root


def _tar(folder: Path, archive: Path, prefix: str) -> Path:
    import tarfile
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=prefix)
        tar.add(folder, arcname=prefix.replace("test", "train"))  # a train split too: test is preferred
    return archive


def _values(x: torch.Tensor) -> list[int]:
    return (x[:, 0, 0, 0] * 255).round().long().tolist()


@pytest.mark.parametrize("packed", [False, True])
def test_image_folder_and_archive(tmp_path, packed):
    folder = _image_folder(tmp_path / "imgs")
    where = _tar(folder, tmp_path / "c.tar.gz", "cifar/test") if packed else folder
    spec = data_spec(str(where))
    assert spec.source == "images"
    got = assay_data(spec, 5, 6, seed=0)
    assert got.calib_x.shape == (5, 3, 6, 6) and got.probe_x.shape == (6, 3, 6, 6)
    for x, y in ((got.calib_x, got.calib_y), (got.probe_x, got.probe_y)):
        assert [v // 40 for v in _values(x)] == y.tolist()  # labels follow sorted class names
    assert not set(_values(got.calib_x)) & set(_values(got.probe_x))
    assert got.provenance["image_root"] == ("cifar/test" if packed else ".") and got.provenance["classes"] == 3
    x, y = task_arrays(spec, "holdout")
    assert len(x) == 12 and y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.equal(x[:, 0], x[:, 1])  # RGB always, grayscale images included


def test_images_are_resized_and_normalised(tmp_path):
    folder = _image_folder(tmp_path / "imgs")
    spec = data_spec(str(folder), image_size=3, normalize="0.5,0.25,0/0.5,0.25,2")
    x, _ = task_arrays(spec, "holdout")
    assert x.shape == (12, 3, 3, 3)
    raw = torch.tensor([40 * c + i for c in range(3) for i in range(4)]) / 255.0
    torch.testing.assert_close(x[:, 0, 1, 1], (raw - 0.5) / 0.5)
    torch.testing.assert_close(x[:, 2, 1, 1], raw / 2)
    imagenet = data_spec(str(folder), normalize="imagenet")
    assert imagenet.mean == NORMALIZE["imagenet"][0] and imagenet.to_dict()["std"] == list(NORMALIZE["imagenet"][1])


def test_only_the_chosen_images_are_decoded(tmp_path, monkeypatch):
    import resetassay.data.images as data

    folder = _image_folder(tmp_path / "imgs", per_class=10)
    spec = data_spec(str(folder))
    decoded = []
    real = data._decode_image
    monkeypatch.setattr(data, "_decode_image", lambda raw, name, size: decoded.append(name) or real(raw, name, size))
    got = assay_data(spec, 3, 4, seed=0)
    assert len(decoded) == 7 and len(got.calib_y) + len(got.probe_y) == 7
    decoded.clear()
    assert example_inputs(spec).shape == (2, 3, 6, 6) and len(decoded) == 2


def test_bad_image_folders_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    _one_line_error(lambda: data_spec(str(tmp_path / "empty")), "no images")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"x")
    _one_line_error(lambda: data_spec(str(tmp_path / "flat")), "no class folders")
    folder = _image_folder(tmp_path / "imgs", per_class=1)
    (folder / "dog" / "broken.png").write_bytes(b"not a png")
    spec = data_spec(str(folder))
    _one_line_error(lambda: task_arrays(spec, "holdout"), "broken.png", "not a readable image")
    _one_line_error(lambda: data_spec(str(folder), normalize="0.5/0.5"), "3 values")
    _one_line_error(lambda: data_spec(str(folder), normalize="imagenet-ish"), "`normalize`")
    from PIL import Image
    Image.new("RGB", (9, 9)).save(folder / "cat" / "big.png")
    (folder / "dog" / "broken.png").unlink()
    _one_line_error(lambda: task_arrays(data_spec(str(folder)), "holdout"), "differ in size", "`image_size`")
    assert task_arrays(data_spec(str(folder), image_size=4), "holdout")[0].shape == (4, 3, 4, 4)


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR.is_file(), reason=f"{CIFAR} is absent")
def test_cifar10_archive_of_jpegs():
    spec = data_spec(str(CIFAR), image_size=32, normalize="cifar10")
    got = assay_data(spec, 64, 64, seed=0)
    assert got.calib_x.shape == got.probe_x.shape == (64, 3, 32, 32)
    assert int(got.calib_y.min()) >= 0 and int(got.probe_y.max()) <= 9 and len(set(got.calib_y.tolist())) > 3
    assert got.provenance["image_root"] == "CIFAR-10-images/test" and got.provenance["available"] == 10000
    assert abs(float(got.calib_x.mean())) < 0.5


@pytest.mark.parametrize("packed", [False, True])
def test_an_empty_class_folder_is_refused_not_dropped(tmp_path, packed):
    """An empty class folder was dropped and the labels of the classes after it shifted by one (issue 24): every
    label-targeted utility and the probe accuracy were then wrong, silently. torchvision's ImageFolder refuses
    too."""
    folder = _image_folder(tmp_path / "imgs")
    (folder / "bee").mkdir()  # sorts first: every label would move
    where = _tar(folder, tmp_path / "c.tar.gz", "cifar/test") if packed else folder
    _one_line_error(lambda: data_spec(str(where)), "bee holds no image", "labels of the classes after it would shift")


def test_an_archive_whose_members_leave_it_says_why_it_has_no_images(tmp_path):
    import io
    import tarfile

    from PIL import Image

    archive = tmp_path / "evil.tar"
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    with tarfile.open(archive, "w") as tar:
        for name in ("../escape/cat/0.png", "/abs/cat/1.png"):
            info = tarfile.TarInfo(name)
            info.size = len(buffer.getvalue())
            tar.addfile(info, io.BytesIO(buffer.getvalue()))
    _one_line_error(lambda: data_spec(str(archive)), "no images", "2 archive members were skipped",
                    "leave the archive's folder")


def test_a_probe_folder_of_its_own_is_in_the_provenance_with_what_it_holds(tmp_path):
    calib, probe = _image_folder(tmp_path / "train"), _image_folder(tmp_path / "test", per_class=2)
    got = assay_data(data_spec(str(calib), probe=str(probe)), 5, 6, seed=3).provenance
    assert got == {"source": data_spec(str(calib), probe=str(probe)).describe(), "available": 12 + 6,
                   "calib_size": 5, "probe_size": 6, "split_seed": 3, "image_root": ".", "classes": 3,
                   "calib_available": 12, "probe_available": 6, "probe_source": "test",
                   "probe_image_root": ".", "probe_classes": 3}
