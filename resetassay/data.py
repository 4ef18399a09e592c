"""Data: permuted digits (bundled with scikit-learn), MNIST IDX files, and the seeded,
disjoint calibration and probe sets of SPEC S1."""

from __future__ import annotations

import gzip
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from resetassay.errors import BadInputError

DEFAULT_SIZE = 2048
IMAGE_SIDE = {"digits": 8, "mnist": 28}


@dataclass(frozen=True)
class DataSpec:
    """Which task a checkpoint was trained on last; stored in the manifest's "data" field.

    Every value is checked when a spec is made (from a manifest or the command line alike): a bad one is a
    one-line `BadInputError` naming the field, `data.<field>`.
    """

    source: str = "digits"            # digits | mnist
    layout: str = "flat"              # flat (B, D) | image (B, 1, S, S)
    task: int = 0                     # index of the permutation trained last
    permutation_seed: int = 0
    split_seed: int = 0               # digits only: train / held-out split
    holdout_fraction: float = 0.5     # digits only
    data_dir: str | None = None       # mnist only: folder of *-ubyte.gz files

    # field -> (what its value must be, the test); a class constant, not a field (it has no annotation).
    # Seeds are >= 0 because numpy's generators refuse negative ones.
    CHECKS = {
        "source": (" or ".join(map(repr, IMAGE_SIDE)), lambda v: isinstance(v, str) and v in IMAGE_SIDE),
        "layout": ("'flat' or 'image'", lambda v: v in ("flat", "image")),
        "task": ("an integer >= 0", lambda v: type(v) is int and v >= 0),
        "permutation_seed": ("an integer >= 0", lambda v: type(v) is int and v >= 0),
        "split_seed": ("an integer >= 0", lambda v: type(v) is int and v >= 0),
        "holdout_fraction": ("a number in (0, 1)", lambda v: type(v) in (int, float) and 0 < v < 1),
        "data_dir": ("a string or null", lambda v: v is None or isinstance(v, str)),
    }

    def __post_init__(self) -> None:
        import reprlib  # short reprs of long or deeply nested values

        for key, (must, ok) in self.CHECKS.items():
            value = getattr(self, key)
            if not ok(value):
                raise BadInputError(f"data.{key} must be {must}, got {reprlib.repr(value)}")

    @classmethod
    def from_dict(cls, d: object) -> DataSpec:
        """The spec a manifest's "data" object records: every field present, no others, each value checked."""
        if not isinstance(d, dict):
            raise BadInputError(f"data must be an object or null, got {type(d).__name__}")
        for key in d:
            if key not in cls.CHECKS:
                shown = key if key.isprintable() else repr(key)
                raise BadInputError(f"data.{shown} is not a data field ({', '.join(cls.CHECKS)})")
        for key in cls.CHECKS:
            if key not in d:
                raise BadInputError(f"data.{key} is missing")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


DATA_CHOICES = ("digits", "digits-image", "mnist", "mnist-image")


def data_spec(name: str, task: int = 0, permutation_seed: int = 0, data_dir: str | None = None) -> DataSpec:
    """The DataSpec a user names with `--data` (for checkpoints that record none)."""
    if name not in DATA_CHOICES:
        raise BadInputError(f"--data {name!r}: choose from {', '.join(DATA_CHOICES)}", flag="--data")
    source, _, layout = name.partition("-")
    return DataSpec(source=source, layout=layout or "flat", task=task,
                    permutation_seed=permutation_seed, data_dir=data_dir)


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
    """MNIST from `data_dir` (`train-*` or `t10k-*` IDX files): X `(N, 784)` in [0, 1], y `(N,)`."""
    prefix = {"train": "train", "test": "t10k"}[split]
    folder = Path(data_dir)
    found = {}
    for part in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        candidates = [folder / f"{prefix}-{part}.gz", folder / f"{prefix}-{part}"]
        path = next((p for p in candidates if p.exists()), None)
        if path is None:
            raise BadInputError(f"--data-dir {folder}: missing {candidates[0].name}; point it at MNIST IDX files",
                                flag="--data-dir")
        found[part] = read_idx(path)
    images, labels = found["images-idx3-ubyte"], found["labels-idx1-ubyte"]
    return (images.reshape(len(images), -1) / 255.0).astype(np.float32), labels.astype(np.int64)


def permutation(n_features: int, task: int, seed: int) -> np.ndarray:
    """The pixel permutation of `task` (seeded by (seed, task))."""
    return np.random.default_rng([seed, task]).permutation(n_features)


def task_arrays(spec: DataSpec, part: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The `part` ("train" or "holdout") of the task in `spec`, permuted and laid out."""
    if spec.source == "digits":
        x, y = digits_arrays()
        order = np.random.default_rng(spec.split_seed).permutation(len(x))
        n_hold = int(round(spec.holdout_fraction * len(x)))
        idx = order[:n_hold] if part == "holdout" else order[n_hold:]
        x, y = x[np.sort(idx)], y[np.sort(idx)]
    else:  # "mnist"; DataSpec refuses other sources
        if spec.data_dir is None:
            raise BadInputError("MNIST data needs --data-dir pointing at the IDX files")
        x, y = mnist_arrays(spec.data_dir, "test" if part == "holdout" else "train")
    x = x[:, permutation(x.shape[1], spec.task, spec.permutation_seed)]
    xt = torch.from_numpy(np.ascontiguousarray(x))
    if spec.layout == "image":
        side = IMAGE_SIDE[spec.source]
        xt = xt.reshape(-1, 1, side, side)
    return xt, torch.from_numpy(y)


def split_calibration_probe(
    x: torch.Tensor,
    y: torch.Tensor,
    calib_size: int | None = None,
    probe_size: int | None = None,
    seed: int = 0,
    source: str = "data",
) -> AssayData:
    """Seeded, disjoint calibration and probe sets (SPEC S1).

    Sizes left as None default to 2048 each and shrink, with a warning, to an equal share of
    what the data has (or to what an explicit size of the other set leaves); an explicit size
    the data cannot supply is an error.
    """
    n = len(x)
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
            stacklevel=2,
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    calib, probe = order[:n_calib].sort().values, order[n_calib:n_calib + n_probe].sort().values
    return AssayData(
        x[calib], y[calib], x[probe], y[probe],
        provenance={"source": source, "available": n, "calib_size": n_calib,
                    "probe_size": n_probe, "split_seed": seed},
    )
