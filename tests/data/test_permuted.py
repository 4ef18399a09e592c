"""The built-in permuted tasks (resetassay/data/permuted.py, SPEC S1, S6): IDX files read and checked, MNIST and
Fashion-MNIST from them, the seeded pixel permutation of each task, digits' held-out and training split.
"""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import resetassay.data.permuted
from resetassay.data import DataSpec, data_spec, digits_arrays, mnist_arrays, permutation, read_idx, task_arrays
from resetassay.errors import BadInputError


def _idx_bytes(array: np.ndarray) -> bytes:
    """IDX: 0x00 0x00, type 0x08 (unsigned byte), ndim, big-endian uint32 dims, then data."""
    header = bytes([0, 0, 0x08, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx(path: Path, array: np.ndarray) -> Path:
    raw = _idx_bytes(array)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def test_idx_magic_numbers_are_the_documented_ones():
    assert _idx_bytes(np.zeros((2, 3, 3)))[:4] == (0x00000803).to_bytes(4, "big")
    assert _idx_bytes(np.zeros(2))[:4] == (0x00000801).to_bytes(4, "big")


@pytest.mark.parametrize("name", ["images.idx", "images.idx.gz"])
def test_read_idx_plain_and_gzipped(tmp_path, name):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 4, 5)).astype(np.uint8)
    labels = np.array([7, 0, 9], dtype=np.uint8)
    got = read_idx(_write_idx(tmp_path / name, images))
    assert got.shape == (3, 4, 5) and np.array_equal(got, images)
    got = read_idx(_write_idx(tmp_path / ("labels" + name[6:]), labels))
    assert got.shape == (3,) and np.array_equal(got, labels)


def test_read_idx_truncated_body_is_refused(tmp_path):
    raw = _idx_bytes(np.ones((3, 4, 4)))
    (tmp_path / "cut.idx").write_bytes(raw[:-5])
    with pytest.raises(BadInputError, match="truncated"):
        read_idx(tmp_path / "cut.idx")


def test_read_idx_truncated_gzip_stream_is_refused(tmp_path):
    packed = gzip.compress(_idx_bytes(np.arange(600, dtype=np.uint8).reshape(6, 10, 10)))
    (tmp_path / "cut.idx.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(BadInputError):
        read_idx(tmp_path / "cut.idx.gz")


def test_read_idx_truncated_inside_header_is_refused(tmp_path):
    raw = _idx_bytes(np.ones((3, 4, 4)))
    (tmp_path / "cut.idx").write_bytes(raw[:10])  # magic + 1.5 of the 3 dims
    with pytest.raises(BadInputError):
        read_idx(tmp_path / "cut.idx")


def test_read_idx_bad_magic_is_refused(tmp_path):
    raw = bytearray(_idx_bytes(np.ones((2, 2))))
    raw[2] = 0x0D  # float data, not unsigned bytes
    (tmp_path / "float.idx").write_bytes(bytes(raw))
    with pytest.raises(BadInputError, match="magic"):
        read_idx(tmp_path / "float.idx")


def _mnist_dir(tmp_path: Path) -> tuple[Path, dict]:
    rng = np.random.default_rng(1)
    arrays = {}
    for prefix, n, ext in (("train", 5, ".gz"), ("t10k", 3, "")):
        images = rng.integers(0, 256, size=(n, 28, 28)).astype(np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{ext}", images)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{ext}", labels)
        arrays[prefix] = (images, labels)
    return tmp_path, arrays


@pytest.mark.parametrize("split, prefix", [("train", "train"), ("test", "t10k")])
def test_mnist_arrays_read_train_and_t10k_files(tmp_path, split, prefix):
    folder, arrays = _mnist_dir(tmp_path)
    x, y = mnist_arrays(folder, split)
    images, labels = arrays[prefix]
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert x.shape == (len(images), 784)
    np.testing.assert_allclose(x, images.reshape(len(images), -1) / 255.0, atol=1e-7, rtol=0)
    assert np.array_equal(y, labels.astype(np.int64))


def test_mnist_arrays_missing_files_are_named(tmp_path):
    with pytest.raises(BadInputError, match="train-images-idx3-ubyte.gz"):
        mnist_arrays(tmp_path, "train")


def test_mnist_task_uses_t10k_for_holdout_and_permutes_pixels(tmp_path):
    folder, arrays = _mnist_dir(tmp_path)
    spec = DataSpec(source="mnist", task=2, permutation_seed=4, data_dir=str(folder))
    x, y = task_arrays(spec, "holdout")
    images, labels = arrays["t10k"]
    flat = images.reshape(len(images), -1) / 255.0
    np.testing.assert_allclose(x.numpy(), flat[:, permutation(784, 2, 4)], atol=1e-7, rtol=0)
    assert torch.equal(y, torch.from_numpy(labels.astype(np.int64)))
    xi, _ = task_arrays(DataSpec(source="mnist", layout="image", task=2, permutation_seed=4,
                                 data_dir=str(folder)), "train")
    assert xi.shape == (5, 1, 28, 28)


def test_idx_files_are_read_and_decompressed_once_per_process_while_unchanged(tmp_path, monkeypatch):
    """A training run asks for the train and held-out arrays on every task: each file is read once."""
    folder, arrays = _mnist_dir(tmp_path)
    reads = Counter()
    real = resetassay.data.permuted.read_idx

    def counted(path: Path) -> np.ndarray:
        reads[path.name] += 1
        return real(path)

    monkeypatch.setattr(resetassay.data.permuted, "read_idx", counted)
    for task in range(3):
        for part in ("train", "holdout"):
            task_arrays(DataSpec(source="mnist", task=task, data_dir=str(folder)), part)
    assert reads == {"train-images-idx3-ubyte.gz": 1, "train-labels-idx1-ubyte.gz": 1, "t10k-images-idx3-ubyte": 1,
                     "t10k-labels-idx1-ubyte": 1}
    x, y = task_arrays(DataSpec(source="mnist", data_dir=str(folder)), "holdout")
    x[0], y[0] = -1, -1  # a caller's edit does not reach the kept arrays
    again, labels = task_arrays(DataSpec(source="mnist", data_dir=str(folder)), "holdout")
    assert again[0].min() >= 0 and labels[0] == int(arrays["t10k"][1][0])
    _write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros(4, dtype=np.uint8))  # replaced (another size): read again
    assert mnist_arrays(folder, "test")[1].tolist() == [0] * 4 and reads["t10k-labels-idx1-ubyte"] == 2


@pytest.mark.parametrize(("name", "layout"), [("permuted-fashion-mnist", "flat"),
                                              ("permuted-fashion-mnist-image", "image")])
def test_fashion_mnist_is_its_own_source_read_from_the_same_idx_files(tmp_path, name, layout):
    folder, arrays = _mnist_dir(tmp_path)
    spec = data_spec(name, 1, 2, str(folder))
    assert (spec.source, spec.layout, spec.task, spec.permutation_seed) == ("fashion-mnist", layout, 1, 2)
    x, _ = task_arrays(spec, "holdout")
    mnist, _ = task_arrays(DataSpec(source="mnist", layout=layout, task=1, permutation_seed=2,
                                    data_dir=str(folder)), "holdout")
    assert torch.equal(x, mnist) and DataSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(BadInputError, match="fashion-mnist data needs `data_dir`"):
        task_arrays(DataSpec(source="fashion-mnist"), "train")


def test_mnist_without_data_dir_and_unknown_source_are_refused():
    with pytest.raises(BadInputError, match="`data_dir`"):
        task_arrays(DataSpec(source="mnist"), "holdout")
    with pytest.raises(BadInputError, match="cifar"):
        task_arrays(DataSpec(source="cifar"), "holdout")


def test_permutations_are_seeded_and_differ_per_task():
    p = permutation(64, 0, 0)
    assert np.array_equal(np.sort(p), np.arange(64))
    assert np.array_equal(p, permutation(64, 0, 0))
    assert not np.array_equal(p, permutation(64, 1, 0))
    assert not np.array_equal(p, permutation(64, 0, 1))
    tasks = {tuple(permutation(64, t, 3)) for t in range(10)}
    assert len(tasks) == 10


def _rows(x: torch.Tensor, y: torch.Tensor) -> Counter:
    return Counter((row.tobytes(), int(label)) for row, label in zip(x.numpy(), y.numpy(),
                                                                      strict=True))


def test_digits_holdout_and_train_partition_the_data_and_are_permuted():
    spec = DataSpec(task=1, permutation_seed=5, split_seed=2)
    xh, yh = task_arrays(spec, "holdout")
    xt, yt = task_arrays(spec, "train")
    x, y = digits_arrays()
    assert len(xh) + len(xt) == len(x) == 1797
    assert abs(len(xh) - 0.5 * len(x)) <= 1
    # As multisets of (permuted row, label), holdout + train is exactly the whole data set.
    full = _rows(torch.from_numpy(x[:, permutation(64, 1, 5)]), torch.from_numpy(y))
    assert _rows(xh, yh) + _rows(xt, yt) == full
    # Rows that occur once in the data cannot be on both sides.
    unique = {k for k, c in full.items() if c == 1}
    assert not (set(_rows(xh, yh)) & set(_rows(xt, yt)) & unique)
    # The split is seeded.
    again, _ = task_arrays(spec, "holdout")
    assert torch.equal(again, xh)
    other, _ = task_arrays(DataSpec(task=1, permutation_seed=5, split_seed=3), "holdout")
    assert not torch.equal(other, xh)
    image, _ = task_arrays(DataSpec(task=1, permutation_seed=5, split_seed=2, layout="image"),
                           "holdout")
    assert image.shape == (len(xh), 1, 8, 8) and torch.equal(image.flatten(1), xh)
