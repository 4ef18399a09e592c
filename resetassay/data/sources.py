"""Data: permuted digits (bundled with scikit-learn), MNIST IDX files, the user's own data (a tensor file, an
image folder or archive, a `module:factory`), and the seeded, disjoint calibration and probe sets of SPEC S1."""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import re
import tarfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from resetassay.data.grammar import grammar_sequences
from resetassay.discovery.sequences import NO_LABEL, next_token_targets, unlabelled, with_padding
from resetassay.errors import BadInputError, one_line
from resetassay.io.imports import import_named_module

DEFAULT_SIZE = 2048
IMAGE_SIDE = {"digits": 8, "mnist": 28, "fashion-mnist": 28}  # the permuted image sources (SPEC S1, S6)
PERMUTED = (*IMAGE_SIDE, "grammar")  # built-in continual tasks; grammar: token sequences (data/grammar.py, SPEC S9)
IDX_SOURCES = ("mnist", "fashion-mnist")  # read from IDX files in `data_dir` (the same file names for both)
USER_SOURCES = ("file", "images", "hf", "factory")  # the user's own data (SPEC S1): never permuted
TENSOR_SUFFIXES = (".safetensors", ".npz", ".pt", ".pth")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
INPUT_KEYS = ("x", "inputs", "images", "data", "features")
LABEL_KEYS = ("y", "labels", "targets", "label")
HELD_OUT_NAMES = ("test", "val", "valid", "validation", "holdout")  # preferred image roots and splits, in order
HF_INPUTS = ("pixel_values", "image", "img", "input_ids", "x", "inputs", "features")  # a datasets folder's columns
HF_LABELS = ("labels", "label", "y", "target", "targets")
HF_MARKERS = ("dataset_info.json", "dataset_dict.json")  # what `save_to_disk` writes
NORMALIZE = {  # per-channel (mean, std) of RGB images in [0, 1]
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


def _numbers(v: object) -> bool:
    return v is None or (isinstance(v, list | tuple) and len(v) > 0
                         and all(type(a) in (int, float) and a == a for a in v))


@dataclass(frozen=True)
class DataSpec:
    """Which data to assay on: a task a checkpoint was trained on last (stored in the manifest's "data" field), or
    the user's own data (SPEC S1).

    Every value is checked when a spec is made (from a manifest or the command line alike): a bad one is a
    one-line `BadInputError` naming the field, `data.<field>`. Sources: digits | mnist | fashion-mnist (permuted
    tasks, the first seven fields), grammar (permuted-grammar token sequences, `grammar.py`, SPEC S9; the same
    seven fields, its layout flat), file (a tensor file), images (an image folder or a .tar/.tar.gz of one), hf (a
    folder written by Hugging Face `datasets`' `save_to_disk`) and factory (a `module:factory`, from Python or the
    command line only: a manifest cannot record it, so loading a checkpoint never runs code). The user's own data
    is never permuted; task, permutation_seed, split_seed and holdout_fraction do not apply to it.
    """

    source: str = "digits"            # digits | mnist | fashion-mnist | grammar | file | images | hf | factory
    layout: str = "flat"              # flat (B, D) | image (B, 1, S, S); permuted sources only
    task: int = 0                     # index of the permutation trained last
    permutation_seed: int = 0
    split_seed: int = 0               # digits only: train / held-out split
    holdout_fraction: float = 0.5     # digits only
    data_dir: str | None = None       # mnist, fashion-mnist only: folder of *-ubyte(.gz) files
    path: str | None = None           # file, images: the tensor file, image folder or archive
    probe_path: str | None = None     # file, images: a second one holding the probe set (then `path` is calibration)
    image_size: int | None = None     # images: resize to image_size x image_size (default: the images' own size)
    mean: tuple[float, ...] | None = None  # images: per-channel normalisation (3 values: images are decoded as RGB)
    std: tuple[float, ...] | None = None
    sha256: str | None = None         # file, images: of `path` (a folder: of its listing, each image's path and size)
    probe_sha256: str | None = None   # the same of `probe_path`
    factory: str | None = None        # factory: "package.module:function"
    factory_kwargs: dict | None = None

    # field -> (what its value must be, the test); a class constant, not a field (it has no annotation).
    # Seeds are >= 0 because numpy's generators refuse negative ones.
    CHECKS = {
        "source": (" or ".join(map(repr, PERMUTED)),
                   lambda v: isinstance(v, str) and (v in PERMUTED or v in USER_SOURCES)),
        "layout": ("'flat' or 'image'", lambda v: v in ("flat", "image")),
        "task": ("an integer >= 0", lambda v: type(v) is int and v >= 0),
        "permutation_seed": ("an integer >= 0", lambda v: type(v) is int and v >= 0),
        "split_seed": ("an integer >= 0", lambda v: type(v) is int and v >= 0),
        "holdout_fraction": ("a number in (0, 1)", lambda v: type(v) in (int, float) and 0 < v < 1),
        "data_dir": ("a string or null", lambda v: v is None or isinstance(v, str)),
    }
    # the user's own data (sources file, images, factory): optional in a manifest, absent from digits/mnist records
    USER_CHECKS = {
        "path": ("a non-empty string or null", lambda v: v is None or (isinstance(v, str) and v != "")),
        "probe_path": ("a non-empty string or null", lambda v: v is None or (isinstance(v, str) and v != "")),
        "image_size": ("an integer >= 1 or null", lambda v: v is None or (type(v) is int and v >= 1)),
        "mean": ("a list of numbers or null", _numbers),
        "std": ("a list of positive numbers or null", lambda v: _numbers(v) and (v is None or min(v) > 0)),
        "sha256": ("64 hex digits or null", lambda v: v is None or (isinstance(v, str)
                                                                  and re.fullmatch("[0-9a-f]{64}", v) is not None)),
        "probe_sha256": ("64 hex digits or null", lambda v: v is None or (isinstance(v, str)
                                                                        and re.fullmatch("[0-9a-f]{64}", v)
                                                                        is not None)),
        "factory": ("'package.module:function' or null", lambda v: v is None or (isinstance(v, str)
                                                                                  and _FACTORY.fullmatch(v))),
        "factory_kwargs": ("an object or null", lambda v: v is None or isinstance(v, dict)),
    }
    NEEDS = {"path": ("file", "images", "hf"), "probe_path": ("file", "images", "hf"),
             "sha256": ("file", "images", "hf"), "probe_sha256": ("file", "images", "hf"),
             "image_size": ("images", "hf"), "mean": ("images", "hf"), "std": ("images", "hf"),
             "factory": ("factory",), "factory_kwargs": ("factory",)}

    def __post_init__(self) -> None:
        import reprlib  # short reprs of long or deeply nested values

        for key, (must, ok) in {**self.CHECKS, **self.USER_CHECKS}.items():
            value = getattr(self, key)
            if not ok(value):
                hint = " (your own data: 'file', 'images' or 'factory')" if key == "source" else ""
                raise BadInputError(f"data.{key} must be {must}, got {reprlib.repr(value)}{hint}")
        for key in ("mean", "std"):  # a manifest's lists become tuples of floats
            if getattr(self, key) is not None:
                object.__setattr__(self, key, tuple(float(a) for a in getattr(self, key)))
        for key, sources in self.NEEDS.items():
            if getattr(self, key) is not None and self.source not in sources:
                raise BadInputError(f"data.{key} applies only to source {' or '.join(map(repr, sources))}, "
                                    f"not {self.source!r}")
        if self.source == "grammar" and self.layout != "flat":
            raise BadInputError("data.layout must be 'flat' for source 'grammar' (token sequences)")
        if self.source in ("file", "images", "hf") and self.path is None:
            raise BadInputError(f"data.path is missing: source {self.source!r} needs the path of the data")
        if self.source == "factory" and self.factory is None:
            raise BadInputError("data.factory is missing: source 'factory' needs 'package.module:function'")
        if (self.mean is None) != (self.std is None):
            raise BadInputError("data.mean and data.std go together: give both or neither")
        if self.mean is not None and not len(self.mean) == len(self.std) == 3:
            raise BadInputError(f"data.mean and data.std must have 3 values each, one per channel (images are "
                                f"decoded as RGB), got {len(self.mean)} and {len(self.std)}")

    @classmethod
    def from_dict(cls, d: object) -> DataSpec:
        """The spec a manifest's "data" object records, each value checked: digits/mnist with every one of their
        fields and no others; file/images with at least source and path. A factory is refused: a manifest may
        name only built-in sources, paths and numbers, so that loading a checkpoint never runs code."""
        if not isinstance(d, dict):
            raise BadInputError(f"data must be an object or null, got {type(d).__name__}")
        for key in d:
            if key not in cls.CHECKS and key not in cls.USER_CHECKS:
                shown = key if key.isprintable() else repr(key)
                raise BadInputError(f"data.{shown} is not a data field ({', '.join([*cls.CHECKS, *cls.USER_CHECKS])})")
        if d.get("source") == "factory" or "factory" in d or "factory_kwargs" in d:
            raise BadInputError("data.source 'factory' cannot be recorded in a manifest (loading a checkpoint never "
                                "runs code); pass --data package.module:function instead")
        user = d.get("source") in USER_SOURCES
        for key in ("source", "path") if user else cls.CHECKS:
            if key not in d:
                raise BadInputError(f"data.{key} is missing")
        return cls(**d)

    def to_dict(self) -> dict:
        """The fields that apply to the source, JSON-ready (digits/mnist: exactly the seven of a manifest)."""
        if self.source in PERMUTED:
            return {key: getattr(self, key) for key in self.CHECKS}
        if self.source == "factory":
            return {"source": self.source, "factory": self.factory, "factory_kwargs": self.factory_kwargs}
        keys = ["path", "probe_path", "sha256", "probe_sha256"]
        keys += ["image_size", "mean", "std"] if self.source in ("images", "hf") else []
        out = {"source": self.source, **{key: getattr(self, key) for key in keys}}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def describe(self) -> str:
        """A short name for messages and provenance: "digits task 3", "data.npz", "pkg.mod:make"."""
        if self.source in PERMUTED:
            return f"{self.source} task {self.task}"
        return self.factory if self.source == "factory" else Path(self.path).name


DATA_CHOICES = (*(f"{source}{layout}" for source in IMAGE_SIDE for layout in ("", "-image")), "grammar")
_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def data_spec(
    name: str,
    task: int = 0,
    permutation_seed: int = 0,
    data_dir: str | None = None,
    *,
    probe: str | None = None,
    image_size: int | None = None,
    normalize: str | tuple | None = None,
    kwargs: dict | None = None,
) -> DataSpec:
    """The DataSpec a user names with `--data` (SPEC S1): a built-in name (`DATA_CHOICES`: digits, mnist,
    fashion-mnist, each also as `-image`), a tensor file (.safetensors, .npz, .pt), an image folder or a
    .tar/.tar.gz of one, or `package.module:function`. `probe` (--probe-data) is a second file or folder holding
    the probe set, `image_size` and `normalize` (a `NORMALIZE` name, 'none', 'M,M,M/S,S,S' or a (mean, std) pair)
    apply to images, `kwargs` (--data-kwargs) to a factory. The data is opened here, so that a bad file is an
    error about the flag; paths are made absolute and files hashed (sha256) for the run's provenance."""
    given = {"--probe-data": probe, "--image-size": image_size, "--normalize": normalize, "--data-kwargs": kwargs}
    if name in DATA_CHOICES:
        for flag, value in given.items():
            if value is not None:
                raise BadInputError(f"{flag} applies only to your own data, not --data {name}", flag=flag)
        image = name.endswith("-image")
        return DataSpec(source=name.removesuffix("-image"), layout="image" if image else "flat", task=task,
                        permutation_seed=permutation_seed, data_dir=data_dir)
    if data_dir is not None:
        raise BadInputError(f"--data-dir applies only to --data {' or '.join(IDX_SOURCES)}, not --data {name}",
                            flag="--data-dir")
    path = Path(name).expanduser()
    if not path.exists() and _FACTORY.fullmatch(name):
        for flag in ("--probe-data", "--image-size", "--normalize"):
            if given[flag] is not None:
                raise BadInputError(f"{flag} does not apply to --data {name} (a factory)", flag=flag)
        spec = DataSpec(source="factory", factory=name, factory_kwargs=kwargs)
        _flagged(lambda: _factory_examples(spec), "--data")
        return spec
    if kwargs is not None:
        raise BadInputError("--data-kwargs applies only to --data package.module:function", flag="--data-kwargs")
    source = _form(path, "--data")
    probe_path = None
    if probe is not None:
        probe_path = Path(probe).expanduser()
        if _form(probe_path, "--probe-data") != source:
            raise BadInputError(f"--probe-data {probe}: must be of the same kind as --data {name} "
                                f"({ {'file': 'a tensor file', 'hf': 'a datasets folder'}.get(source, 'images')})",
                                flag="--probe-data")
    if source == "file" and (image_size is not None or normalize is not None):
        flag = "--image-size" if image_size is not None else "--normalize"
        raise BadInputError(f"{flag} applies only to images, not the tensor file {name}", flag=flag)
    mean, std = parse_normalize(normalize)
    spec = DataSpec(source=source, path=str(path.resolve()), probe_path=str(probe_path.resolve()) if probe else None,
                    image_size=image_size, mean=mean, std=std,
                    sha256=_flagged(lambda: _digest(path), "--data"),
                    probe_sha256=_flagged(lambda: _digest(probe_path), "--probe-data") if probe else None)
    _flagged(lambda: _open(spec, spec.path), "--data")
    if probe:
        _flagged(lambda: _open(spec, spec.probe_path), "--probe-data")
    return spec


@dataclass(frozen=True)
class DataChoice:
    """What a command asks of each checkpoint's data (SPEC S1), resolved against its record by `resolve`.

    `spec` (--data) is the data of checkpoints that record none; `data_dir` (--data-dir) re-points a recorded
    MNIST/Fashion-MNIST record to where its files are now; `task` and `permutation_seed` are None unless given.
    A checkpoint's record wins for everything not asked for; what is asked for and differs from it (another
    source or layout, task or permutation seed, or your own data) replaces it, with a warning line.
    """

    spec: DataSpec | None = None
    data_dir: str | None = None
    task: int | None = None
    permutation_seed: int | None = None

    def __post_init__(self) -> None:
        if self.spec is not None:
            self._permuted_flags(self.spec)

    def _permuted_flags(self, spec: DataSpec) -> None:
        """Refuse `task` and `permutation_seed` for `spec` when it is your own data (never permuted)."""
        for flag, value in (("--task", self.task), ("--permutation-seed", self.permutation_seed)):
            if value is not None and spec.source not in PERMUTED:
                raise BadInputError(f"{flag} applies to permuted data ({', '.join(PERMUTED)}), not "
                                    f"{spec.describe()}; drop it", flag=flag)

    @classmethod
    def replacing(cls, spec: DataSpec) -> DataChoice:
        """A spec from Python: its source, layout, data_dir, task and permutation seed all asked for."""
        if spec.source not in PERMUTED:
            return cls(spec)
        return cls(spec, spec.data_dir, spec.task, spec.permutation_seed)

    def to_dict(self) -> dict | None:
        """What was asked, JSON-ready (a run's identity), or None when nothing was."""
        asked = {"spec": self.spec.to_dict() if self.spec else None, "data_dir": self.data_dir, "task": self.task,
                 "permutation_seed": self.permutation_seed}
        return asked if any(v is not None for v in asked.values()) else None

    def resolve(self, recorded: DataSpec | None) -> tuple[DataSpec | None, str]:
        """The data to assay a checkpoint that records `recorded` on (None: its record as it is), and one line
        saying what replaced part of the record ("" when nothing did)."""
        spec = self.spec
        if recorded is None or recorded.source not in PERMUTED or (spec is not None
                                                                   and spec.source not in PERMUTED):
            # nothing recorded, or your own data on either side: --data as given
            if recorded is not None and spec is None:
                self._permuted_flags(recorded)
            if recorded is None or spec is None or spec == recorded:
                return (spec if recorded is None else None), ""
            return spec, f"--data {spec.describe()} replaces its recorded data ({recorded.describe()})"
        changes: dict = {}
        replaced = []
        if spec is not None and (spec.source, spec.layout) != (recorded.source, recorded.layout):
            changes.update(source=spec.source, layout=spec.layout, data_dir=None)
            replaced.append(f"--data {_data_name(spec)} replaces its recorded {_data_name(recorded)}")
        if self.data_dir is not None and changes.get("source", recorded.source) in IDX_SOURCES:
            changes["data_dir"] = self.data_dir
        for flag, key in (("--task", "task"), ("--permutation-seed", "permutation_seed")):
            value, was = getattr(self, key), getattr(recorded, key)
            if value is not None and value != was:
                changes[key] = value
                replaced.append(f"{flag} {value} replaces its recorded {key.replace('_', ' ')} {was}")
        resolved = replace(recorded, **changes)
        return (None if resolved == recorded else resolved), "; ".join(replaced)


def _data_name(spec: DataSpec) -> str:
    """A permuted source as `--data` names it: mnist, mnist-image, ..."""
    return spec.source + ("-image" if spec.layout == "image" else "")


def parse_normalize(value: str | tuple | None) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """(mean, std) of `--normalize`: None or 'none' (no normalisation), a `NORMALIZE` name ('imagenet',
    'cifar10'), 'M,M,M/S,S,S' or a (mean, std) pair of sequences."""
    if value is None or value == "none":
        return None, None
    if isinstance(value, tuple | list):
        if len(value) != 2:
            raise BadInputError(f"--normalize {value!r}: expected (mean, std)", flag="--normalize")
        return tuple(value[0]), tuple(value[1])
    if value in NORMALIZE:
        return NORMALIZE[value]
    try:
        mean, std = (tuple(float(a) for a in part.split(",")) for part in value.split("/"))
    except ValueError:
        raise BadInputError(f"--normalize {value!r}: use {', '.join(NORMALIZE)}, none, or MEAN/STD such as "
                            "0.5,0.5,0.5/0.25,0.25,0.25", flag="--normalize") from None
    return mean, std


def _flagged(make: Callable, flag: str):
    """`make()`, with a BadInputError it raises turned into one about `flag` (the whole command is at fault)."""
    try:
        return make()
    except BadInputError as err:
        if err.flag:
            raise
        raise BadInputError(str(err), flag=flag) from err


def _form(path: Path, flag: str) -> str:
    """"file" (a tensor file), "hf" (a `datasets` folder) or "images" (a folder, or an archive of one) by what
    `path` is."""
    if _is_hf(path):
        return "hf"
    if path.is_dir() or (path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)):
        return "images"
    if path.is_file() and path.suffix.lower() in TENSOR_SUFFIXES:
        return "file"
    if path.exists():
        raise BadInputError(f"{flag} {path}: not a tensor file ({', '.join(TENSOR_SUFFIXES)}), an image folder or "
                            f"an archive of one ({', '.join(ARCHIVE_SUFFIXES)})", flag=flag)
    raise BadInputError(f"{flag} {path}: no such file or folder; use {', '.join(DATA_CHOICES)}, a tensor file, an "
                        "image folder or archive, or package.module:function", flag=flag)


@dataclass
class AssayData:
    """Calibration and probe tensors, disjoint, with where they came from (SPEC S1)."""

    calib_x: torch.Tensor
    calib_y: torch.Tensor
    probe_x: torch.Tensor
    probe_y: torch.Tensor
    provenance: dict


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 8x8 digits: X `(N, 64)` float32 in [0, 1], y `(N,)` int64."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.data / 16.0).astype(np.float32), bunch.target.astype(np.int64)


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into an array of its stored shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise BadInputError(f"{path}: cannot read IDX file ({err}); re-download it") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise BadInputError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise BadInputError(f"{path}: truncated IDX header; re-download it")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise BadInputError(f"{path}: truncated IDX file ({body.size} of {np.prod(dims)} values)")
    return body.reshape(dims)


def mnist_arrays(data_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST (or Fashion-MNIST) from `data_dir` (`train-*` or `t10k-*` IDX files): X `(N, 784)` in [0, 1], y `(N,)`,
    read-only. Each pair of files is read and decompressed once per process while unchanged (`_idx_pair`): a
    training run asks for it on every task."""
    prefix = {"train": "train", "test": "t10k"}[split]
    folder = Path(data_dir)
    found = []
    for part in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        candidates = [folder / f"{prefix}-{part}.gz", folder / f"{prefix}-{part}"]
        path = next((p for p in candidates if p.exists()), None)
        if path is None:
            raise BadInputError(f"--data-dir {folder}: missing {candidates[0].name}; point it at MNIST IDX files",
                                flag="--data-dir")
        found.append(_stamp(path))
    return _idx_pair(*found)


@functools.lru_cache(maxsize=4)  # train and test of MNIST and of Fashion-MNIST
def _idx_pair(images: tuple, labels: tuple) -> tuple[np.ndarray, np.ndarray]:
    """The arrays of `mnist_arrays` from the files stamped (path, mtime, size) `images` and `labels`."""
    x, y = read_idx(Path(images[0])), read_idx(Path(labels[0]))
    x, y = (x.reshape(len(x), -1) / 255.0).astype(np.float32), y.astype(np.int64)
    for array in (x, y):
        array.setflags(write=False)  # shared by every caller
    return x, y


def permutation(n_features: int, task: int, seed: int) -> np.ndarray:
    """The pixel permutation of `task` (seeded by (seed, task))."""
    return np.random.default_rng([seed, task]).permutation(n_features)


def task_arrays(spec: DataSpec, part: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The `part` ("train" or "holdout") of the task in `spec`, permuted and laid out (SPEC S1). The user's own
    data has only a "holdout" part: all of it (of `path`, with a probe_path), never permuted."""
    if spec.source in USER_SOURCES:
        if part != "holdout":
            raise BadInputError(f"--data {spec.describe()}: your own data is for the assay only (an image folder or "
                                f"archive trains on its train/ root: training_images); permuted training uses "
                                f"{', '.join(DATA_CHOICES)}", flag="--data")
        examples = _open(spec, spec.path)
        return examples.take(torch.arange(examples.n))
    if spec.source == "grammar":
        return grammar_sequences(spec.task, spec.permutation_seed, part)
    if spec.source == "digits":
        x, y = digits_arrays()
        order = np.random.default_rng(spec.split_seed).permutation(len(x))
        n_hold = int(round(spec.holdout_fraction * len(x)))
        idx = order[:n_hold] if part == "holdout" else order[n_hold:]
        x, y = x[np.sort(idx)], y[np.sort(idx)]
    else:  # IDX_SOURCES; DataSpec refuses other sources
        if spec.data_dir is None:
            raise BadInputError(f"{spec.source} data needs --data-dir pointing at its IDX files", flag="--data-dir")
        x, y = mnist_arrays(spec.data_dir, "test" if part == "holdout" else "train")
    x = x[:, permutation(x.shape[1], spec.task, spec.permutation_seed)]
    xt = torch.from_numpy(np.ascontiguousarray(x))
    if spec.layout == "image":
        side = IMAGE_SIDE[spec.source]
        xt = xt.reshape(-1, 1, side, side)
    return xt, torch.from_numpy(y.copy())


def assay_data(
    spec: DataSpec, calib_size: int | None = None, probe_size: int | None = None, seed: int = 0,
) -> AssayData:
    """The calibration and probe sets of `spec` (SPEC S1): the seeded, disjoint split of its held-out part
    (`split_calibration_probe`); with a probe_path, a seeded sample of `path` for calibration and of `probe_path`
    for the probe. Only the chosen examples are decoded (an image folder) or fetched (a Dataset)."""
    if spec.source not in USER_SOURCES:
        x, y = task_arrays(spec, "holdout")
        return split_calibration_probe(x, y, calib_size, probe_size, seed, source=spec.describe())
    calib = _open(spec, spec.path)
    if spec.probe_path is None:
        ci, pi = split_indices(calib.n, calib_size, probe_size, seed, source=calib.name, stacklevel=3)
        probe, available = calib, calib.n
    else:
        probe = _open(spec, spec.probe_path)
        n_calib = _own_size(calib.n, calib_size, "--calib-size", calib.name)
        n_probe = _own_size(probe.n, probe_size, "--probe-size", probe.name)
        generator = torch.Generator().manual_seed(seed)
        ci = torch.randperm(calib.n, generator=generator)[:n_calib].sort().values
        pi = torch.randperm(probe.n, generator=generator)[:n_probe].sort().values
        available = calib.n + probe.n
    (cx, cy), (px, py) = calib.take(ci), probe.take(pi)
    provenance = {"source": spec.describe(), "available": available, "calib_size": len(ci), "probe_size": len(pi),
                  "split_seed": seed, **calib.info}
    if spec.probe_path is not None:
        provenance.update(calib_available=calib.n, probe_available=probe.n, probe_source=probe.name,
                          **{f"probe_{k}": v for k, v in probe.info.items()})
    return AssayData(cx, cy, px, py, provenance=provenance)


def example_inputs(spec: DataSpec, n: int = 2) -> torch.Tensor:
    """The first `n` held-out inputs of `spec` (to trace a model's unit layers), decoding no more than those."""
    if spec.source not in USER_SOURCES:
        return task_arrays(spec, "holdout")[0][:n]
    examples = _open(spec, spec.path)
    return examples.take(torch.arange(min(n, examples.n)))[0]


def _own_size(n: int, size: int | None, flag: str, source: str) -> int:
    """How many of the `n` examples of a set of its own (a probe_path) to take: `size`, else 2048 or all."""
    if size is not None and size <= 0:
        raise BadInputError(f"{flag} must be positive", flag=flag)
    if size is not None and size > n:
        raise BadInputError(f"{flag} {size} exceeds the {n} examples of {source}; ask for at most {n}", flag=flag)
    if size is None and n < DEFAULT_SIZE:
        warnings.warn(f"{source} has {n} examples: its set shrinks to {n}", stacklevel=3)
    return size if size is not None else min(DEFAULT_SIZE, n)


def split_indices(
    n: int, calib_size: int | None = None, probe_size: int | None = None, seed: int = 0, source: str = "data",
    stacklevel: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sorted indices of a seeded, disjoint calibration and probe set among `n` examples (SPEC S1).

    Sizes left as None default to 2048 each and shrink, with a warning, to an equal share of
    what the data has (or to what an explicit size of the other set leaves); an explicit size
    the data cannot supply is an error.
    """
    for flag, size in (("--calib-size", calib_size), ("--probe-size", probe_size)):
        if size is not None and size <= 0:
            raise BadInputError(f"{flag} must be positive", flag=flag)
    if calib_size is not None and probe_size is not None and calib_size + probe_size > n:
        raise BadInputError(
            f"--calib-size {calib_size} + --probe-size {probe_size} exceed the {n} held-out examples "
            f"of {source}; ask for at most {n} in total",
            flag="--calib-size",
        )
    for flag, size in (("--calib-size", calib_size), ("--probe-size", probe_size)):
        if size is not None and size >= n:
            raise BadInputError(f"{flag} {size} leaves none of the {n} held-out examples of {source} "
                                "for the other set; ask for fewer", flag=flag)
    share = n // 2 if calib_size is None and probe_size is None else n - (calib_size or probe_size)
    n_calib = calib_size if calib_size is not None else min(DEFAULT_SIZE, share)
    n_probe = probe_size if probe_size is not None else min(DEFAULT_SIZE, share)
    if (calib_size is None and n_calib < DEFAULT_SIZE) or (probe_size is None and n_probe < DEFAULT_SIZE):
        warnings.warn(
            f"{source} has {n} held-out examples: calibration and probe sets shrink to {n_calib} and {n_probe}",
            stacklevel=stacklevel + 1,
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[:n_calib].sort().values, order[n_calib:n_calib + n_probe].sort().values


def split_calibration_probe(
    x: torch.Tensor,
    y: torch.Tensor,
    calib_size: int | None = None,
    probe_size: int | None = None,
    seed: int = 0,
    source: str = "data",
) -> AssayData:
    """Seeded, disjoint calibration and probe sets (SPEC S1), as `split_indices` chooses them."""
    calib, probe = split_indices(len(x), calib_size, probe_size, seed, source, stacklevel=3)
    return AssayData(
        x[calib], y[calib], x[probe], y[probe],
        provenance={"source": source, "available": len(x), "calib_size": len(calib),
                    "probe_size": len(probe), "split_seed": seed},
    )


# --- the user's own data (SPEC S1) -----------------------------------------------------------------------------

@dataclass
class Examples:
    """`n` examples of one source, fetched by index: `take(indices) -> (x, y)`; `name` names it in messages."""

    name: str
    n: int
    take: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    info: dict


_CACHE: dict[tuple, object] = {}  # the last few sources opened and hashed (a run opens them once per checkpoint)
_FACTORY_RESULTS: dict[tuple, object] | None = None  # a factory's examples, kept only inside `factories_called_once`


@contextmanager
def factories_called_once() -> Iterator[None]:
    """Within the block (one run over many checkpoints), each data factory with the same kwargs is called once;
    outside, every use calls it again. Files are cached by their path, mtime and size, but a factory's result has no
    such stamp: kept across calls, a notebook that changed what the factory returns would get the old data back."""
    global _FACTORY_RESULTS
    outer, _FACTORY_RESULTS = _FACTORY_RESULTS, {} if _FACTORY_RESULTS is None else _FACTORY_RESULTS
    try:
        yield
    finally:
        _FACTORY_RESULTS = outer


def _cached(key: tuple, make: Callable):
    if key not in _CACHE:
        value = make()
        while len(_CACHE) >= 4:
            del _CACHE[next(iter(_CACHE))]
        _CACHE[key] = value
    return _CACHE[key]


def _stamp(path: Path) -> tuple:
    stat = path.stat()
    return str(path), stat.st_mtime_ns, stat.st_size


def _open(spec: DataSpec, where: str) -> Examples:
    """The examples at `where` (spec.path or spec.probe_path), or of spec's factory; a recorded sha256 is checked."""
    if spec.source == "factory":
        return _factory_examples(spec)
    path = Path(where)
    if not path.exists():
        raise BadInputError(f"{path}: no such file or folder")
    recorded = spec.sha256 if where == spec.path else spec.probe_sha256
    if recorded is not None and _digest(path) != recorded:
        raise BadInputError(f"{path}: its content changed since it was recorded (sha256 differs); restore it, or "
                            "pass it again with --data")
    if spec.source == "file":
        if not path.is_file():
            raise BadInputError(f"{path}: not a file; a tensor file is {', '.join(TENSOR_SUFFIXES)}")
        return _cached(("file", *_stamp(path)), lambda: _tensor_file(path))
    if spec.source == "hf":
        return _hf_examples(path, spec.image_size, spec.mean, spec.std)
    return _image_examples(path, spec.image_size, spec.mean, spec.std)


def _digest(path: Path) -> str:
    """sha256 of a file's bytes; of a folder, of its listing (each image's, or a `datasets` folder's .arrow and
    .json files', relative path and size)."""
    suffixes = (".arrow", ".json") if _is_hf(path) else IMAGE_SUFFIXES

    def make() -> str:
        h = hashlib.sha256()
        if path.is_dir():
            for p in sorted(q for q in path.rglob("*") if q.suffix.lower() in suffixes and q.is_file()):
                h.update(f"{p.relative_to(path).as_posix()}\0{p.stat().st_size}\n".encode())
        else:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        return h.hexdigest()
    if not path.exists():
        raise BadInputError(f"{path}: no such file or folder")
    return _cached(("sha256", *_stamp(path)), make) if path.is_file() else make()


def _tensor_file(path: Path) -> Examples:
    """A .safetensors / .npz / .pt file of inputs and integer labels (`INPUT_KEYS`, `LABEL_KEYS`; without labels:
    unlabelled data, `sequences.NO_LABEL`), or of token sequences (`input_ids`, `_token_examples`); .pt files are
    read with torch.load(weights_only=True), .npz without pickle: reading data never runs code."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            found: object = load_file(str(path))
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                found = {k: z[k] for k in z.files}
        elif suffix in (".pt", ".pth"):
            found = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise BadInputError(f"{path}: not a tensor file; use {', '.join(TENSOR_SUFFIXES)}")
    except BadInputError:
        raise
    except Exception as err:  # a damaged file, an object torch refuses to unpickle, ...
        raise BadInputError(f"{path}: cannot read it as {suffix} ({one_line(err)}); save plain tensors") from err
    if isinstance(found, tuple | list) and len(found) == 2:
        found = {"x": found[0], "y": found[1]}
    if not isinstance(found, dict):
        raise BadInputError(f"{path}: holds a {type(found).__name__}; save a dict of tensors such as "
                            "{'x': inputs, 'y': labels}")
    if "input_ids" in found:
        return _token_examples(found, path)
    keys = sorted(str(k) for k in found)
    x_key = next((k for k in INPUT_KEYS if k in found), None)
    if x_key is None:
        raise BadInputError(f"{path}: no inputs (a key named {', '.join(INPUT_KEYS)}); it has keys "
                            f"{', '.join(keys) or 'none'}")
    y_key = next((k for k in LABEL_KEYS if k in found), None)  # none: unlabelled data
    x, y = _checked(found[x_key], found[y_key] if y_key else None, str(path))
    return Examples(path.name, len(x), lambda idx: (x[idx], y[idx]), {})


def _token_examples(found: dict, path: Path) -> Examples:
    """Token sequences (SPEC S9): `input_ids` `(N, T)` whole numbers >= 0, kept as int64, with next-token targets
    (`sequences.next_token_targets`), or, beside labels `(N,)` under a `LABEL_KEYS` name, a sequence classifier's
    labels. Where an `attention_mask` is 0 the ids carry `sequences.PAD`: those positions are left out of the assay."""
    try:
        ids = torch.as_tensor(found["input_ids"])
        mask = torch.as_tensor(found["attention_mask"]) if "attention_mask" in found else None
    except Exception as err:
        raise BadInputError(f"{path}: input_ids must be a numeric array ({one_line(err)})") from err
    if ids.ndim != 2 or ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool or len(ids) == 0:
        raise BadInputError(f"{path}: input_ids must be whole numbers (N, T), got {str(ids.dtype).split('.')[-1]} "
                            f"of shape {tuple(ids.shape)}")
    if ids.min() < 0:
        raise BadInputError(f"{path}: input_ids must be >= 0 (token ids), got {int(ids.min())}")
    if mask is not None and mask.shape != ids.shape:
        raise BadInputError(f"{path}: attention_mask has shape {tuple(mask.shape)}, input_ids {tuple(ids.shape)}; "
                            "they must match")
    ids = ids.to(torch.int64)
    key = next((k for k in LABEL_KEYS if k in found), None)
    if key is not None and torch.as_tensor(found[key]).ndim == 1:
        _, y = _checked(torch.zeros(len(ids)), found[key], str(path))  # a sequence classifier's labels
    else:
        y = next_token_targets(ids, mask)
    ids = with_padding(ids, mask)  # padded positions carry PAD (discovery/sequences.py)
    return Examples(path.name, len(ids), lambda idx: (ids[idx], y[idx]), {})


def _checked(x: object, y: object | None, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs as float32 and labels as int64, checked: as many of each, some, labels whole numbers >= 0 with one
    per example, inputs finite. `y` None, or every label -1 (unlabelled data): every label is `NO_LABEL`."""
    try:
        x = torch.as_tensor(x)
        y = torch.full((len(x) if x.ndim else 0,), NO_LABEL) if y is None else torch.as_tensor(y)
    except Exception as err:
        raise BadInputError(f"{name}: inputs and labels must be numeric arrays ({one_line(err)})") from err
    if x.ndim == 0 or y.ndim != 1:
        raise BadInputError(f"{name}: expected inputs (N, ...) and labels (N,), got shapes {tuple(x.shape)} and "
                            f"{tuple(y.shape)}")
    if len(x) != len(y):
        raise BadInputError(f"{name}: {len(x)} inputs but {len(y)} labels; they must pair up")
    if len(x) == 0:
        raise BadInputError(f"{name}: no examples")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise BadInputError(f"{name}: labels must be integers (class indices), got {str(y.dtype).split('.')[-1]}")
    if y.min() < 0 and not unlabelled(y):
        raise BadInputError(f"{name}: labels must be >= 0 (class indices), or all -1 (unlabelled data, as Hugging "
                            f"Face's test splits hold), got {int(y.min())}")
    if x.dtype.is_complex or x.dtype == torch.bool:
        raise BadInputError(f"{name}: inputs must be real numbers, got {str(x.dtype).split('.')[-1]}")
    given = x
    x = x.to(torch.float32)
    bad = (~torch.isfinite(x)).flatten(1).any(1) if x.ndim > 1 else ~torch.isfinite(x)
    if bad.any():
        first = int(bad.nonzero()[0])
        if bool(torch.isfinite(given[first]).all()):  # finite as given: too large for float32, not NaN or Inf
            largest = float(given[first].abs().max())
            raise BadInputError(f"{name}: inputs overflow float32 (example {first} holds {largest:.3g}, beyond "
                                f"{torch.finfo(torch.float32).max:.3g}), the precision the assay runs in; scale "
                                "the data")
        raise BadInputError(f"{name}: inputs hold NaN or Inf (example {first}); clean the data")
    return x, y.to(torch.int64)


# images


@dataclass(frozen=True)
class ImageListing:
    """What a folder or a .tar/.tar.gz archive holds: every .jpg/.jpeg/.png as (relative parts, member), every
    folder's relative parts (class folders without an image among them), and how many archive members were skipped
    because their path leaves the archive's folder (absolute, or through '..')."""

    files: list
    folders: list
    kind: str
    escaping: int = 0


def _visible(parts: tuple) -> bool:
    return not any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _image_listing(path: Path) -> ImageListing:
    """The images and folders of a folder or a .tar/.tar.gz archive (hidden ones left out)."""
    if path.is_dir():
        entries = [(p.relative_to(path).parts, p) for p in path.rglob("*")]
        files = [(parts, p) for parts, p in entries if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        folders = [parts for parts, p in entries if p.is_dir()]
        return ImageListing([f for f in files if _visible(f[0])], [d for d in folders if _visible(d)], "folder")
    try:
        with tarfile.open(path, "r:*") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise BadInputError(f"{path}: cannot read the archive ({one_line(err)})") from err
    inside = [m for m in members if not (m.name.startswith("/") or ".." in PurePosixPath(m.name).parts)]
    files = [(PurePosixPath(m.name).parts, m) for m in inside if m.isfile() and m.name.lower().endswith(IMAGE_SUFFIXES)]
    folders = [PurePosixPath(m.name).parts for m in inside if m.isdir()]
    return ImageListing([f for f in files if _visible(f[0])], [d for d in folders if _visible(d)], "archive",
                        len(members) - len(inside))


def _image_index(path: Path, split: str | None = None) -> tuple[list, list[str], str, str]:
    """(the (label, member) of each image, class names, the root holding the class folders, kind): the root is
    the grandparent of the images; of several, the one named test (then val, ...), or the one named `split`. An
    archive's listing is kept (a run opens it once per checkpoint, training for both roots); a folder's is cheap to
    list again, and its own timestamp does not change when a class folder does."""
    listing = _image_listing(path) if path.is_dir() else \
        _cached(("listing", *_stamp(path)), lambda: _image_listing(path))
    files, kind = listing.files, listing.kind
    if not files:
        skipped = (f" ({listing.escaping} archive members were skipped: their paths leave the archive's folder, "
                   "absolute or through '..')") if listing.escaping else ""
        raise BadInputError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}){skipped}; expected "
                            "ROOT/<class>/<image>")
    roots = sorted({parts[:-2] for parts, _ in files if len(parts) >= 2})
    if not roots:
        raise BadInputError(f"{path}: images but no class folders; expected ROOT/<class>/<image>")
    if split is not None:
        named = [r for r in roots if r and r[-1].lower() == split]
        if len(named) != 1:
            raise BadInputError(f"{path}: {'no' if not named else 'more than one'} folder named {split} holding "
                                f"class folders; training on your own images needs ROOT/{split}/<class>/<image> "
                                f"beside a held-out ROOT/test/<class>/<image> (or {', '.join(HELD_OUT_NAMES[1:])})")
        roots = named
    elif len(roots) > 1:
        named = [r for name in HELD_OUT_NAMES for r in roots if r and r[-1].lower() == name]
        if not named:
            shown = ", ".join("/".join(r) or "." for r in roots[:4])
            raise BadInputError(f"{path}: class folders of images under several roots ({shown}); point --data at "
                                "one folder holding only class folders")
        roots = named[:1]
    root = roots[0]
    chosen = sorted(((parts, m) for parts, m in files if len(parts) >= 2 and parts[:-2] == root), key=lambda f: f[0])
    classes = sorted({parts[-2] for parts, _ in chosen})
    empty = sorted({d[-1] for d in listing.folders if d[:-1] == root} - set(classes))
    if empty:  # left out, the classes after it would take its label (torchvision's ImageFolder refuses too)
        raise BadInputError(f"{path}: class folder {'/'.join((*root, empty[0]))} holds no image "
                            f"({', '.join(IMAGE_SUFFIXES)}), so the labels of the classes after it would shift; add "
                            "its images or remove the folder")
    label = {c: i for i, c in enumerate(classes)}
    return [(label[parts[-2]], m) for parts, m in chosen], classes, "/".join(root) or ".", kind


def _decode_image(raw: bytes, name: str, size: int | None) -> np.ndarray:
    """One image as an (H, W, 3) uint8 RGB array, resized (bilinear) to size x size when size is given."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as image:
            rgb = image.convert("RGB")
            if size is not None and rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except Exception as err:  # PIL raises UnidentifiedImageError, OSError, ValueError, ... on damaged files
        raise BadInputError(f"{name}: not a readable image ({one_line(err)}); remove it or fix it") from err


def image_tensor(x: torch.Tensor, mean: tuple | None, std: tuple | None) -> torch.Tensor:
    """uint8 RGB images (N, 3, H, W) as float32 in [0, 1], then (x - mean) / std per channel."""
    x = x.to(torch.float32).div_(255.0)
    if mean is not None:
        x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    return x.contiguous()


def _image_stack(arrays: list[np.ndarray], where: object) -> torch.Tensor:
    """Decoded (H, W, 3) uint8 images as one uint8 (N, 3, H, W) tensor; images of different sizes are an error."""
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        seen = sorted(f"{h}x{w}" for h, w, _ in shapes)
        raise BadInputError(f"{where}: images differ in size ({', '.join(seen[:3])}); set image_size "
                            "(--image-size N) to resize them")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _decoded(path: Path, kind: str, picked: list, size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The `picked` (label, member) images of `path` as uint8 (N, 3, H, W) and their labels; an archive is read in
    member order, one pass through its compressed stream."""
    arrays: dict[int, np.ndarray] = {}
    if kind == "folder":
        for i, (_, file) in enumerate(picked):
            arrays[i] = _decode_image(file.read_bytes(), str(file), size)
    else:
        with tarfile.open(path, "r:*") as tar:
            for i in sorted(range(len(picked)), key=lambda j: picked[j][1].offset_data):
                member = picked[i][1]
                arrays[i] = _decode_image(tar.extractfile(member).read(), f"{path}:{member.name}", size)
    x = _image_stack([arrays[i] for i in range(len(picked))], path)
    return x, torch.tensor([label for label, _ in picked], dtype=torch.int64)


def _image_examples(path: Path, size: int | None, mean: tuple | None, std: tuple | None) -> Examples:
    """The images of a folder or archive in ImageFolder layout, labelled by sorted class name; `take` decodes
    only the images asked for, to RGB float32 (N, 3, H, W) in [0, 1], then (x - mean) / std per channel."""
    index, classes, root, kind = _image_index(path)

    def take(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = _decoded(path, kind, [index[i] for i in idx.tolist()], size)
        return image_tensor(x, mean, std), y

    return Examples(path.name, len(index), take, {"image_root": root, "classes": len(classes)})


def image_classes(spec: DataSpec) -> list[str]:
    """The class names of an image folder or archive's held-out root (sorted: label k is the k-th)."""
    return _image_index(Path(spec.path))[1]


def training_images(spec: DataSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images of an image folder or archive (`source` images): every image of its root named
    `train`, as uint8 RGB (N, 3, H, W) (resized to `image_size`) and labels by sorted class name; the held-out
    root (test, val, ...) stays the assay's (SPEC S1). Its classes must be the held-out root's, so that labels
    agree. Decoded once per process while the file is unchanged (`image_tensor` makes a batch float)."""
    path = Path(spec.path)
    if spec.sha256 is not None and _digest(path) != spec.sha256:
        raise BadInputError(f"{path}: its content changed since it was recorded (sha256 differs); restore it")
    index, classes, root, kind = _image_index(path, "train")
    _, held_classes, held_root, _ = _image_index(path)
    if held_root == root:
        raise BadInputError(f"{path}: no held-out folder (test, val, ...) beside {root}; training on your own images "
                            "needs ROOT/train/<class>/<image> and ROOT/test/<class>/<image>")
    if classes != held_classes:
        import reprlib

        raise BadInputError(f"{path}: {root} has classes {reprlib.repr(classes)} but {held_root} has "
                            f"{reprlib.repr(held_classes)}; both need the same class folders")
    key = ("training-images", *(_stamp(path) if path.is_file() else (_digest(path),)), spec.image_size)
    return _cached(key, lambda: _decoded(path, kind, index, spec.image_size))


# Hugging Face datasets folders


def _is_hf(path: Path) -> bool:
    """A folder `datasets`' `save_to_disk` wrote: a Dataset (dataset_info.json, state.json) or a DatasetDict
    (dataset_dict.json)."""
    return path.is_dir() and any((path / marker).is_file() for marker in HF_MARKERS)


def _hf_examples(path: Path, size: int | None, mean: tuple | None, std: tuple | None) -> Examples:
    """The rows of a `save_to_disk` folder (of a DatasetDict: its split named test, val, ..., or its only one):
    inputs from the first column named as in HF_INPUTS (an image column is decoded as the image source does,
    resized and normalised alike), labels from the first named as in HF_LABELS (none: unlabelled data)."""
    try:
        import datasets
    except ImportError as err:
        raise BadInputError(f"{path}: a Hugging Face datasets folder needs the datasets package; pip install "
                            f"'resetassay[datasets]' ({one_line(err)})", flag="--data") from err
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:
        raise BadInputError(f"{path}: datasets cannot load it ({one_line(err)})", flag="--data") from err
    where = str(path)
    if isinstance(loaded, datasets.DatasetDict):
        names = list(loaded)
        split = next((n for held in HELD_OUT_NAMES for n in names if n.lower() == held), None)
        split = split or (names[0] if len(names) == 1 else None)
        if split is None:
            raise BadInputError(f"{path}: splits {', '.join(names)}, none named {', '.join(HELD_OUT_NAMES)}; save "
                                "the split to assay on by itself", flag="--data")
        loaded, where = loaded[split], f"{path} (split {split})"
    columns = loaded.column_names
    x_col = next((c for c in HF_INPUTS if c in columns), None)
    y_col = next((c for c in HF_LABELS if c in columns), None)
    if x_col is None:
        raise BadInputError(f"{where}: no input column ({', '.join(HF_INPUTS)}); its columns are "
                            f"{', '.join(columns)}", flag="--data")
    if len(loaded) == 0:
        raise BadInputError(f"{where}: no examples", flag="--data")
    image = isinstance(loaded.features[x_col], datasets.Image)
    if image:
        loaded = loaded.cast_column(x_col, datasets.Image(decode=False))  # raw bytes, decoded as the image source does
    elif size is not None or mean is not None:
        raise BadInputError(f"{where}: --image-size and --normalize apply to an image column; {x_col} is not one",
                            flag="--image-size" if size is not None else "--normalize")

    def take(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = loaded.select(idx.tolist())
        if image:
            x = image_tensor(_image_stack([_decode_image(item["bytes"] or Path(item["path"]).read_bytes(),
                                                         f"{where} row {i}", size)
                                           for i, item in zip(idx.tolist(), rows[x_col], strict=True)], where),
                             mean, std)
        else:
            x = rows.with_format("numpy")[x_col]
        return _checked(x, rows.with_format("numpy")[y_col] if y_col else None, where)

    return Examples(path.name, len(loaded), take, {"columns": ", ".join(c for c in (x_col, y_col) if c)})


# factories


def _factory_examples(spec: DataSpec) -> Examples:
    """The examples `spec.factory(**spec.factory_kwargs)` returns (imported from the working folder too):
    (x, y) tensors, an indexable Dataset of (x, y) items (fetched by index) or an iterable of (x, y) batches."""
    key = (spec.factory, json.dumps(spec.factory_kwargs, sort_keys=True, default=repr))
    if _FACTORY_RESULTS is None:
        return _call_factory(spec.factory, spec.factory_kwargs or {})
    if key not in _FACTORY_RESULTS:
        _FACTORY_RESULTS[key] = _call_factory(spec.factory, spec.factory_kwargs or {})
    return _FACTORY_RESULTS[key]


def _call_factory(name: str, kwargs: dict) -> Examples:
    module_name, _, attr = name.partition(":")
    target: object = import_named_module(module_name, f"--data {name}", "--data")
    for part in attr.split("."):
        if not hasattr(target, part):
            raise BadInputError(f"--data {name}: {module_name} has no attribute {attr!r}", flag="--data")
        target = getattr(target, part)
    if not callable(target):
        raise BadInputError(f"--data {name}: {attr} is not callable", flag="--data")
    try:
        made = target(**kwargs)
    except Exception as err:
        raise BadInputError(f"--data {name}: the factory failed ({one_line(err)})", flag="--data") from err
    return _factory_result(made, name)


def pair(item: object, where: str) -> tuple[object, object | None]:
    """(inputs, labels) of one item or batch: an `(x, y)` tuple or list, a dict holding them under the names a
    Hugging Face batch uses (`pixel_values`/`input_ids`/..., `labels`/...: HF_INPUTS, HF_LABELS), or inputs alone
    (a tensor, `[x]`, a dict without labels: labels None, unlabelled data)."""
    if isinstance(item, tuple | list) and len(item) >= 2:
        return item[0], item[1]
    if isinstance(item, tuple | list) and len(item) == 1:  # a TensorDataset of inputs alone yields [x]
        return item[0], None
    if isinstance(item, torch.Tensor | np.ndarray):
        return item, None
    if isinstance(item, dict):
        x = next((item[k] for k in HF_INPUTS if k in item), None)
        y = next((item[k] for k in HF_LABELS if k in item), None)
        if x is not None:
            mask = item.get("attention_mask")
            return (with_padding(torch.as_tensor(x), torch.as_tensor(mask)) if mask is not None else x), y
        keys = ", ".join(map(str, item))
        raise BadInputError(f"{where}: a batch dict needs inputs ({', '.join(HF_INPUTS)}) and may hold labels "
                            f"({', '.join(HF_LABELS)}); it has {keys}")
    raise BadInputError(f"{where}: items must be (x, y) pairs, inputs alone or dicts of inputs and labels, got "
                        f"{type(item).__name__}")


def joined_labels(ys: list[object | None], where: str) -> torch.Tensor | None:
    """The labels of several items (each a number) or batches (each a tensor) as one tensor, None when none has
    labels; some labelled and some not is an error."""
    missing = sum(y is None for y in ys)
    if missing == len(ys):
        return None
    if missing:
        raise BadInputError(f"{where}: {missing} of {len(ys)} items or batches have no labels; give every example "
                            "a label, or none (unlabelled data)")
    labels = [torch.as_tensor(y) for y in ys]
    return torch.cat([t.reshape(1) if t.dim() == 0 else t for t in labels])


def dataset_items(dataset: object, indices: list[int], where: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Items `indices` of a map-style Dataset (`pair` reads each) stacked: inputs `(n, ...)` as stored, and their
    labels, None when no item has one (`joined_labels`)."""
    items = [pair(dataset[i], where) for i in indices]  # type: ignore[index]
    x = torch.stack([torch.as_tensor(x) for x, _ in items]) if items else torch.zeros(0)
    return x, joined_labels([y for _, y in items], where)


MAX_ITERATED_EXAMPLES = 500_000  # what a factory's iterable may yield: an endless generator stops here, refused


def _finite_batches(made: object, what: str) -> list[tuple[object, object]]:
    """The (x, y) batches of an iterable, refused once they pass MAX_ITERATED_EXAMPLES (an endless generator would
    never end); a batch of unknown size counts as one example."""
    batches, count = [], 0
    for batch in iter(made):  # type: ignore[call-overload]
        batches.append(pair(batch, what))
        count += len(batches[-1][0]) if hasattr(batches[-1][0], "__len__") else 1
        if count > MAX_ITERATED_EXAMPLES:
            raise BadInputError(f"{what}: yielded more than {MAX_ITERATED_EXAMPLES:,} examples without ending; "
                                "return a finite iterable, a Dataset with a length, or (x, y) tensors",
                                flag="--data")
    return batches


def _factory_result(made: object, name: str) -> Examples:
    from torch.utils.data import DataLoader, Dataset, IterableDataset, SequentialSampler

    what = f"--data {name}"
    if isinstance(made, dict | torch.Tensor | np.ndarray) or (
            isinstance(made, tuple | list) and len(made) == 2 and not isinstance(made[0], tuple | list)):
        x, y = _checked(*pair(made, what), what)  # a dict: one batch (iterating it would walk its keys)
        return Examples(name, len(x), lambda idx: (x[idx], y[idx]), {})
    if isinstance(made, Dataset) and not isinstance(made, IterableDataset) and hasattr(made, "__len__"):
        dataset = made

        def take(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            try:
                xs, ys = dataset_items(dataset, idx.tolist(), what)
            except BadInputError:
                raise
            except Exception as err:
                raise BadInputError(f"{what}: its Dataset items must be (x, y) pairs of a tensor and an integer "
                                    f"label ({one_line(err)})", flag="--data") from err
            return _checked(xs, ys, what)

        if len(dataset) == 0:
            raise BadInputError(f"{what}: no examples", flag="--data")
        return Examples(name, len(dataset), take, {})
    if isinstance(made, DataLoader) and not isinstance(made.sampler, SequentialSampler) and \
            not isinstance(made.dataset, IterableDataset):
        raise BadInputError(f"{what}: its DataLoader shuffles; make it with shuffle=False (resetassay draws the "
                            "seeded split itself)", flag="--data")
    try:
        batches = _finite_batches(made, what)
        if not batches:
            raise ValueError("no batches")
        xs = [torch.as_tensor(x) for x, _ in batches]
        x, y = torch.cat(xs), joined_labels([y for _, y in batches], what)
    except BadInputError:
        raise
    except Exception as err:
        raise BadInputError(f"{what}: must return (x, y) tensors, a Dataset of (x, y) items or an iterable of "
                            f"(x, y) batches, got {type(made).__name__} ({one_line(err)})", flag="--data") from err
    x, y = _checked(x, y, what)
    return Examples(name, len(x), lambda idx: (x[idx], y[idx]), {})
