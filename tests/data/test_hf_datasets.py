"""`--data FOLDER` written by Hugging Face `datasets`' `save_to_disk` (resetassay/data/, SPEC S1).

The same examples through a `datasets` folder and through the tensor-file or image-folder sources must give the
same calibration and probe tensors (the same seeded split): exactly for arrays, and for images decoded the same way.
Skipped without the `datasets` package (the install hint is tested in test_sources.py).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from typer.testing import CliRunner

from resetassay.cli import app
from resetassay.data import assay_data, data_spec
from resetassay.data.sources import _open
from resetassay.discovery.sequences import NO_LABEL
from resetassay.errors import BadInputError

datasets = pytest.importorskip("datasets")
runner = CliRunner()


def _digits(n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x[:n] / 16).reshape(n, 8, 8).astype(np.float32), y[:n].astype(np.int64)


def test_an_array_column_gives_the_tensor_files_split(tmp_path):
    x, y = _digits()
    datasets.Dataset.from_dict({"pixel_values": x, "label": y}).save_to_disk(str(tmp_path / "hf"))
    np.savez(tmp_path / "same.npz", x=x, y=y)
    hf, npz = data_spec(str(tmp_path / "hf")), data_spec(str(tmp_path / "same.npz"))
    assert hf.source == "hf" and len(hf.sha256) == 64
    got, want = assay_data(hf, 20, 25, seed=4), assay_data(npz, 20, 25, seed=4)
    for name in ("calib_x", "calib_y", "probe_x", "probe_y"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((array * 255).astype(np.uint8)).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_image_column_is_decoded_as_the_image_folder_source_does(tmp_path):
    from PIL import Image

    x, y = _digits(40)
    pngs = [_png(a) for a in x]
    features = datasets.Features({"image": datasets.Image(), "labels": datasets.ClassLabel(num_classes=10)})
    rows = {"image": [Image.open(io.BytesIO(p)) for p in pngs], "labels": y.tolist()}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=features),
                          "test": datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(
        str(tmp_path / "hf"))
    for i, (p, label) in enumerate(zip(pngs, y, strict=True)):  # the same images as an ImageFolder tree
        folder = tmp_path / "tree" / f"{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:03d}.png").write_bytes(p)
    options = {"image_size": 12, "normalize": "0.5,0.5,0.5/0.25,0.25,0.25"}
    hf, tree = data_spec(str(tmp_path / "hf"), **options), data_spec(str(tmp_path / "tree"), **options)
    got = assay_data(hf, 10, 10, seed=0)
    assert got.calib_x.shape == (10, 3, 12, 12)
    # the tree lists images by class folder, then name: compare example by example through the labels' order
    order = np.lexsort((np.arange(40), y))  # the tree's order: by class, then index
    index_of = {int(j): k for k, j in enumerate(order)}
    pick = torch.tensor([index_of[int(i)] for i in range(40)])
    every_hf = _open(hf, hf.path).take(torch.arange(40))
    every_tree = _open(tree, tree.path).take(pick)
    torch.testing.assert_close(every_hf[0], every_tree[0], rtol=0, atol=0)
    assert torch.equal(every_hf[1], every_tree[1])


@pytest.mark.parametrize(("make", "message"), [
    (lambda x, y: datasets.Dataset.from_dict({"embedding": x, "label": y}), "no input column (pixel_values, image"),
    (lambda x, y: datasets.Dataset.from_dict({"pixel_values": x[:0], "label": y[:0]}), "cannot load it"),
    (lambda x, y: datasets.DatasetDict({"a": datasets.Dataset.from_dict({"x": x, "y": y}),
                                        "b": datasets.Dataset.from_dict({"x": x, "y": y})}), "splits a, b, none named"),
])
def test_bad_folders_are_one_line_errors(tmp_path, make, message):
    x, y = _digits(10)
    make(x, y).save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(BadInputError) as caught:
        data_spec(str(tmp_path / "hf"))
    assert message in str(caught.value) and "\n" not in str(caught.value) and caught.value.field == "data"


@pytest.mark.slow
def test_cli_run_on_a_datasets_folder(tmp_path):
    x, y = _digits()
    datasets.Dataset.from_dict({"pixel_values": x, "label": y}).save_to_disk(str(tmp_path / "hf"))
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "fixtures/relu_mlp/task2", "--data", str(tmp_path / "hf"), "--calib-size",
                                 "25", "--probe-size", "25", "--utilities", "gxd,oracle", "--out", str(out),
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    checkpoints = (out / "checkpoints.csv").read_text()
    assert ",hf," in checkpoints and "pixel_values, label" in checkpoints


def test_a_datasets_folder_without_labels_is_unlabelled_data(tmp_path):
    """No label column (or a test split's labels, all -1): the labels are NO_LABEL, the targets the predicted class."""
    x, y = _digits(10)
    datasets.Dataset.from_dict({"pixel_values": x}).save_to_disk(str(tmp_path / "bare"))
    datasets.Dataset.from_dict({"pixel_values": x, "label": [-1] * len(y)}).save_to_disk(str(tmp_path / "test"))
    for name in ("bare", "test"):
        got = assay_data(data_spec(str(tmp_path / name)), 5, 5, seed=0)
        assert got.calib_y.tolist() == [NO_LABEL] * 5 and got.calib_x.shape == (5, *np.shape(x)[1:])
