"""Data (SPEC S1): seeded disjoint calibration/probe sets, IDX files, permuted tasks."""

from __future__ import annotations

import gzip
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import resetassay.data.permuted
from resetassay.data import (
    NORMALIZE,
    DataChoice,
    DataSpec,
    assay_data,
    data_spec,
    digits_arrays,
    example_inputs,
    mnist_arrays,
    permutation,
    read_idx,
    split_calibration_probe,
    task_arrays,
)
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


MNIST_5 = DataSpec(source="mnist", task=5, permutation_seed=1, data_dir="/old")


@pytest.mark.parametrize(("choice", "resolved", "warning"), [
    (DataChoice(), None, ""),  # the record as it is
    (DataChoice(data_dir="/new"), DataSpec(source="mnist", task=5, permutation_seed=1, data_dir="/new"), ""),
    (DataChoice(DataSpec(source="mnist", data_dir="/new"), "/new"),  # --data mnist --data-dir /new: record wins
     DataSpec(source="mnist", task=5, permutation_seed=1, data_dir="/new"), ""),
    (DataChoice(DataSpec(source="mnist", data_dir="/old"), "/old", task=5), None, ""),  # asks what it records
    (DataChoice(DataSpec(source="mnist", data_dir="/new"), "/new", task=0),
     DataSpec(source="mnist", task=0, permutation_seed=1, data_dir="/new"), "`task` 0 replaces its recorded task 5"),
    (DataChoice(permutation_seed=3), DataSpec(source="mnist", task=5, permutation_seed=3, data_dir="/old"),
     "`permutation_seed` 3 replaces its recorded permutation seed 1"),
    (DataChoice(DataSpec(source="fashion-mnist", data_dir="/f"), "/f"),
     DataSpec(source="fashion-mnist", task=5, permutation_seed=1, data_dir="/f"),
     "`data` permuted-fashion-mnist replaces its recorded permuted-mnist"),
    (DataChoice(DataSpec(layout="image"), task=2), DataSpec(layout="image", task=2, permutation_seed=1),
     "`data` permuted-digits-image replaces its recorded permuted-mnist; `task` 2 replaces its recorded task 5"),
])
def test_a_checkpoints_data_record_wins_except_for_what_is_asked(choice, resolved, warning):
    assert choice.resolve(MNIST_5) == (resolved, warning)


def test_own_data_replaces_a_record_with_a_warning_and_refuses_task_flags(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros((4, 2), dtype=np.float32), y=np.arange(4))
    own = data_spec(str(path))
    assert DataChoice(own).resolve(None) == (own, "")
    assert DataChoice(DataSpec(task=3)).resolve(None) == (DataSpec(task=3), "")  # records none: --data as given
    assert DataChoice(own).resolve(own) == (None, "")
    assert DataChoice(own).resolve(MNIST_5) == (own, "`data` data.npz replaces its recorded data (mnist task 5)")
    assert DataChoice.replacing(own) == DataChoice(own)
    with pytest.raises(BadInputError, match=r"^`task` applies to permuted data \(digits, mnist, fashion-mnist, "
                                            r"grammar\), not data.npz; drop it$"):
        DataChoice(own, task=1)
    with pytest.raises(BadInputError, match="^`permutation_seed` applies to permuted data"):
        DataChoice(permutation_seed=1).resolve(own)


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


def _ids(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.arange(n)
    return ids.float().unsqueeze(1), ids


def test_calibration_and_probe_are_disjoint_and_seeded():
    x, y = _ids(300)
    a = split_calibration_probe(x, y, calib_size=100, probe_size=120, seed=7)
    calib, probe = set(a.calib_y.tolist()), set(a.probe_y.tolist())
    assert len(calib) == 100 and len(probe) == 120 and not calib & probe
    assert torch.equal(a.calib_x.squeeze(1).long(), a.calib_y)  # x and y stay paired
    b = split_calibration_probe(x, y, calib_size=100, probe_size=120, seed=7)
    assert torch.equal(a.calib_y, b.calib_y) and torch.equal(a.probe_y, b.probe_y)
    c = split_calibration_probe(x, y, calib_size=100, probe_size=120, seed=8)
    assert not torch.equal(a.calib_y, c.calib_y)
    assert a.provenance["split_seed"] == 7
    assert (a.provenance["calib_size"], a.provenance["probe_size"]) == (100, 120)


def test_default_sizes_shrink_with_a_warning_when_data_is_small():
    x, y = _ids(101)
    with pytest.warns(UserWarning, match="101"):
        a = split_calibration_probe(x, y, seed=0)
    assert len(a.calib_y) == len(a.probe_y) == 50
    assert not set(a.calib_y.tolist()) & set(a.probe_y.tolist())


def test_default_sizes_on_digits_holdout_shrink_to_equal_shares():
    x, y = task_arrays(DataSpec(), "holdout")
    with pytest.warns(UserWarning, match="shrink"):
        a = split_calibration_probe(x, y)
    assert len(a.calib_x) == len(a.probe_x) == len(x) // 2
    assert a.provenance["available"] == len(x)


def test_default_sizes_are_2048_when_data_allows():
    x, y = _ids(4100)
    a = split_calibration_probe(x, y)
    assert len(a.calib_y) == len(a.probe_y) == 2048


@pytest.mark.parametrize("calib, probe", [(60, 50), (200, 1), (101, 1)])
def test_explicit_size_the_data_cannot_supply_is_an_error(calib, probe):
    x, y = _ids(101)
    with pytest.raises(BadInputError, match="101"):
        split_calibration_probe(x, y, calib_size=calib, probe_size=probe)


@pytest.mark.parametrize("calib, probe", [(0, 5), (5, -1)])
def test_non_positive_sizes_are_an_error(calib, probe):
    x, y = _ids(50)
    with pytest.raises(BadInputError, match="positive"):
        split_calibration_probe(x, y, calib_size=calib, probe_size=probe)


# --- the user's own data (SPEC S1): tensor files, image folders and archives, factories ---------------------------

def _xy(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs whose first feature is the example's index, so that pairs and disjointness can be read back."""
    x = torch.rand(n, 5, generator=torch.Generator().manual_seed(0))
    x[:, 0] = torch.arange(n)
    return x, torch.arange(n) % 3


def _save(path: Path, x, y, xkey: str = "x", ykey: str = "y") -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file({xkey: x.contiguous(), ykey: y.contiguous()}, str(path))
    elif path.suffix == ".npz":
        np.savez(path, **{xkey: np.asarray(x), ykey: np.asarray(y)})
    else:
        torch.save({xkey: x, ykey: y}, path)
    return path


@pytest.mark.parametrize("name, xkey, ykey", [("d.safetensors", "x", "y"), ("d.npz", "inputs", "labels"),
                                              ("d.pt", "features", "targets")])
def test_a_tensor_file_gives_a_seeded_disjoint_split(tmp_path, name, xkey, ykey):
    x, y = _xy()
    spec = data_spec(str(_save(tmp_path / name, x, y, xkey, ykey)))
    assert spec.source == "file" and Path(spec.path).is_absolute() and len(spec.sha256) == 64
    got = assay_data(spec, 10, 12, seed=3)
    ids_c, ids_p = got.calib_x[:, 0].long(), got.probe_x[:, 0].long()
    assert len(ids_c) == 10 and len(ids_p) == 12 and not set(ids_c.tolist()) & set(ids_p.tolist())
    assert torch.equal(got.calib_y, ids_c % 3) and torch.equal(got.probe_y, ids_p % 3)
    assert got.calib_x.dtype == torch.float32 and got.calib_y.dtype == torch.int64
    same = split_calibration_probe(x, y, 10, 12, seed=3)  # the same split as the built-in data
    assert torch.equal(same.calib_x, got.calib_x) and torch.equal(same.probe_y, got.probe_y)
    assert got.provenance["split_seed"] == 3 and got.provenance["available"] == 40
    hx, hy = task_arrays(spec, "holdout")  # all of it, never permuted
    assert torch.equal(hx, x) and torch.equal(hy, y)
    assert torch.equal(example_inputs(spec, 2), x[:2])
    assert DataSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec  # a manifest can record it


def test_a_probe_file_holds_the_probe_set(tmp_path):
    x, y = _xy()
    spec = data_spec(str(_save(tmp_path / "c.npz", x[:20], y[:20])), probe=str(_save(tmp_path / "p.pt", x[20:],
                                                                                       y[20:])))
    got = assay_data(spec, 8, 5, seed=1)
    assert set(got.calib_x[:, 0].long().tolist()) <= set(range(20))
    assert set(got.probe_x[:, 0].long().tolist()) <= set(range(20, 40))
    assert (len(got.calib_y), len(got.probe_y)) == (8, 5)
    assert torch.equal(assay_data(spec, 8, 5, seed=1).probe_x, got.probe_x)
    with pytest.warns(UserWarning, match="shrinks to 20"):
        assert len(assay_data(spec).calib_y) == 20
    with pytest.raises(BadInputError, match="`probe_size` 21 exceeds the 20"):
        assay_data(spec, 5, 21)


def test_builtin_names_still_give_the_same_spec_and_dict():
    spec = data_spec("permuted-digits-image", 2, 5)
    assert spec == DataSpec(layout="image", task=2, permutation_seed=5)
    assert list(spec.to_dict()) == ["source", "layout", "task", "permutation_seed", "split_seed",
                                    "holdout_fraction", "data_dir"]
    x, y = task_arrays(DataSpec(), "holdout")
    a, b = assay_data(DataSpec(), 30, 40, seed=2), split_calibration_probe(x, y, 30, 40, seed=2)
    assert torch.equal(a.calib_x, b.calib_x) and a.provenance == {**b.provenance, "source": "digits task 0"}


def _one_line_error(make, *needles: str) -> BadInputError:
    with pytest.raises(BadInputError) as err:
        make()
    text = str(err.value)
    assert "\n" not in text, text
    for needle in needles:
        assert needle in text, text
    return err.value


@pytest.mark.parametrize("x, y, needle", [
    (torch.zeros(4, 2), torch.zeros(3, dtype=torch.int64), "4 inputs but 3 labels"),
    (torch.zeros(4, 2), torch.zeros(4), "labels must be integers"),
    (torch.zeros(4, 2), torch.tensor([0, 1, -1, 2]), "labels must be >= 0"),
    (torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64), "no examples"),
    (torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), torch.tensor([0, 1]), "NaN or Inf (example 0)"),
    # finite float64 beyond float32: was called "NaN or Inf" (issue 24)
    (torch.tensor([[0.0, 1.0], [1e300, 2.0]], dtype=torch.float64), torch.tensor([0, 1]),
     "inputs overflow float32 (example 1 holds 1e+300"),
])
def test_bad_tensor_files_are_one_line_errors_naming_the_file(tmp_path, x, y, needle):
    path = _save(tmp_path / "bad.npz", x, y)
    err = _one_line_error(lambda: data_spec(str(path)), str(path), needle)
    assert err.field == "data"


def test_tensor_file_keys_not_found_are_listed(tmp_path):
    path = _save(tmp_path / "k.safetensors", torch.zeros(3, 2), torch.zeros(3, dtype=torch.int64), "pixels", "y")
    _one_line_error(lambda: data_spec(str(path)), "no inputs", "x, inputs, images, data, features",
                    "it has keys pixels, y")


def test_unreadable_and_unsafe_tensor_files_are_refused(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    _one_line_error(lambda: data_spec(str(tmp_path / "junk.pt")), "junk.pt", "cannot read")
    torch.save({"x": torch.zeros(2, 2), "y": torch.zeros(2, dtype=torch.int64), "f": Path("x")},
               tmp_path / "obj.pt")  # an object: weights_only refuses to unpickle it
    _one_line_error(lambda: data_spec(str(tmp_path / "obj.pt")), "obj.pt", "cannot read")
    (tmp_path / "notes.txt").write_text("x")
    _one_line_error(lambda: data_spec(str(tmp_path / "notes.txt")), "not a tensor file")
    _one_line_error(lambda: data_spec(str(tmp_path / "missing.npz")), "no such file")
    spec = DataSpec(source="file", path=str(tmp_path))
    _one_line_error(lambda: task_arrays(spec, "holdout"), str(tmp_path), "not a file")


def test_a_changed_file_is_caught_by_its_recorded_sha256(tmp_path):
    x, y = _xy()
    path = _save(tmp_path / "d.npz", x, y)
    spec = data_spec(str(path))
    _save(path, x + 1, y)
    _one_line_error(lambda: task_arrays(spec, "holdout"), "content changed")


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


FACTORY = '''
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

X = torch.arange(30.0).reshape(30, 1).repeat(1, 4)
Y = torch.arange(30) % 5
CALLS = []

def tensors(scale=1.0):
    return X * scale, Y

class Items(Dataset):
    def __len__(self):
        return 30
    def __getitem__(self, i):
        CALLS.append(i)
        return X[i], int(Y[i])

def dataset():
    return Items()

def loader(shuffle=False):
    return DataLoader(TensorDataset(X, Y), batch_size=7, shuffle=shuffle)

def nothing():
    return 3

class DictItems(Dataset):
    def __len__(self):
        return 30
    def __getitem__(self, i):
        return {"pixel_values": X[i], "labels": int(Y[i])}

def dict_dataset():
    return DictItems()

def dict_loader():
    return DataLoader(DictItems(), batch_size=7)

def bad_dicts():
    return DataLoader([{"img_embed": X[i], "cls": Y[i]} for i in range(30)], batch_size=7)

def endless():
    while True:
        yield X[:5], Y[:5]

def as_dict():
    return {"pixel_values": X, "labels": Y}

def dict_of_other_names():
    return {"a": X, "b": Y}
'''


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    import importlib
    import sys

    name = f"user_data_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module(name)
    sys.modules.pop(name, None)


@pytest.mark.parametrize("kind", ["tensors", "dataset", "loader", "dict_dataset", "dict_loader"])
def test_a_factory_returning_tensors_a_dataset_or_a_loader(factory_module, kind):
    name = f"{factory_module.__name__}:{kind}"
    spec = data_spec(name)
    got = assay_data(spec, 6, 7, seed=5)
    ids_c, ids_p = got.calib_x[:, 0].long(), got.probe_x[:, 0].long()
    assert not set(ids_c.tolist()) & set(ids_p.tolist()) and torch.equal(got.probe_y, ids_p % 5)
    ref = split_calibration_probe(factory_module.X, factory_module.Y, 6, 7, seed=5)
    assert torch.equal(ref.calib_x, got.calib_x) and torch.equal(ref.probe_y, got.probe_y)
    if kind == "dataset":  # fetched by index: only the chosen items
        assert len(factory_module.CALLS) == 13
    assert spec.to_dict() == {"source": "factory", "factory": name, "factory_kwargs": None}


def test_factory_kwargs_and_bad_factories(factory_module):
    mod = factory_module.__name__
    x, _ = task_arrays(data_spec(f"{mod}:tensors", kwargs={"scale": 2.0}), "holdout")
    assert torch.equal(x, factory_module.X * 2)
    _one_line_error(lambda: data_spec(f"{mod}:loader", kwargs={"shuffle": True}), "shuffles")
    _one_line_error(lambda: data_spec(f"{mod}:nothing"), "got int")
    _one_line_error(lambda: data_spec(f"{mod}:missing"), "no attribute")
    _one_line_error(lambda: data_spec("no_such_module_xyz:make"), "cannot import")
    _one_line_error(lambda: data_spec(f"{mod}:tensors", kwargs={"bad": 1}), "the factory failed")
    _one_line_error(lambda: data_spec(f"{mod}:tensors", image_size=3), "`image_size`")


def test_a_manifest_cannot_record_a_factory():
    _one_line_error(lambda: DataSpec.from_dict({"source": "factory", "factory": "os:getcwd"}), "never runs code")
    _one_line_error(lambda: DataSpec.from_dict({**DataSpec().to_dict(), "factory": "os:getcwd"}), "never runs code")


@pytest.mark.parametrize("kwargs, needle", [
    ({"source": "file"}, "data.path is missing"),
    ({"path": "x.npz"}, "data.path applies only to source 'file' or 'images'"),
    ({"source": "file", "path": "x.npz", "image_size": 3}, "data.image_size applies only to source 'images'"),
    ({"source": "images", "path": "d", "mean": (0.5, 0.5, 0.5)}, "give both or neither"),
    ({"source": "images", "path": "d", "mean": (0.5,), "std": (1.0,)}, "3 values"),
    ({"source": "images", "path": "d", "image_size": 0}, "data.image_size must be an integer >= 1"),
    ({"source": "images", "path": "d", "mean": (0, 0, 0), "std": (1, 0, 1)}, "data.std must be"),
    ({"source": "factory"}, "data.factory is missing"),
    ({"source": "cifar"}, "your own data: 'file', 'images' or 'factory'"),
])
def test_user_data_fields_are_checked(kwargs, needle):
    _one_line_error(lambda: DataSpec(**kwargs), needle)


def test_flags_that_do_not_apply_are_refused(tmp_path):
    x, y = _xy()
    path = str(_save(tmp_path / "d.npz", x, y))
    for call, field in ((lambda: data_spec("digits", probe=path), "probe"),
                        (lambda: data_spec(path, image_size=4), "image_size"),
                        (lambda: data_spec(path, kwargs={}), "data_kwargs"),
                        (lambda: data_spec(path, probe=str(tmp_path)), "probe"),
                        (lambda: data_spec("nonsense"), "data")):
        assert _one_line_error(call, f"`{field}`").field == field
    _one_line_error(lambda: task_arrays(data_spec(path), "train"), "for the assay only")


CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "cifar10-images-jpg.tar.gz"


@pytest.mark.skipif(not CIFAR.is_file(), reason=f"{CIFAR} is absent")
def test_cifar10_archive_of_jpegs():
    spec = data_spec(str(CIFAR), image_size=32, normalize="cifar10")
    got = assay_data(spec, 64, 64, seed=0)
    assert got.calib_x.shape == got.probe_x.shape == (64, 3, 32, 32)
    assert int(got.calib_y.min()) >= 0 and int(got.probe_y.max()) <= 9 and len(set(got.calib_y.tolist())) > 3
    assert got.provenance["image_root"] == "CIFAR-10-images/test" and got.provenance["available"] == 10000
    assert abs(float(got.calib_x.mean())) < 0.5


def test_a_datasets_folder_without_the_datasets_package_says_how_to_install_it(tmp_path, monkeypatch):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "dataset_info.json").write_text("{}")
    (folder / "state.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(BadInputError, match=r"pip install 'resetassay\[datasets\]'") as caught:
        data_spec(str(folder))
    assert caught.value.field == "data" and "\n" not in str(caught.value)


def test_dict_batches_without_known_keys_are_a_one_line_error(factory_module):
    with pytest.raises(BadInputError, match=r"a batch dict needs inputs \(pixel_values.*it has img_embed, cls$"):
        data_spec(f"{factory_module.__name__}:bad_dicts")


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


def test_a_factory_is_called_again_on_every_use_outside_one_run(factory_module):
    """A notebook that changes what its factory returns gets the new data (the factory's result was cached by name
    and kwargs across calls); within one run (`factories_called_once`) it is called once for all checkpoints."""
    spec = data_spec(f"{factory_module.__name__}:tensors")
    before, _ = task_arrays(spec, "holdout")
    factory_module.X = factory_module.X + 100
    after, _ = task_arrays(spec, "holdout")
    assert torch.equal(after, before + 100)
    from resetassay.data import factories_called_once

    with factories_called_once():
        first, _ = task_arrays(spec, "holdout")
        factory_module.X = factory_module.X + 100
        again, _ = task_arrays(spec, "holdout")
    assert torch.equal(first, again) and torch.equal(first, after)


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


def test_a_factory_returning_a_dict_or_an_endless_generator_is_read_or_refused(factory_module, monkeypatch):
    """A dict was iterated by its keys and an endless generator hung forever (issue 24): a dict of inputs and labels
    is one batch, another dict a one-line error, an endless generator refused once past the cap."""
    import resetassay.data.factories as data

    mod = factory_module.__name__
    x, y = task_arrays(data_spec(f"{mod}:as_dict"), "holdout")
    assert torch.equal(x, factory_module.X) and torch.equal(y, factory_module.Y)
    _one_line_error(lambda: data_spec(f"{mod}:dict_of_other_names"), "a batch dict needs inputs")
    monkeypatch.setattr(data, "MAX_ITERATED_EXAMPLES", 1000)
    _one_line_error(lambda: data_spec(f"{mod}:endless"), "yielded more than 1,000 examples without ending")
