"""The built-in image datasets (SPEC S1, S6): digits (bundled with scikit-learn), MNIST and Fashion-MNIST IDX
files, and the seeded pixel permutation of each task of the continual study. `data` mnist is the dataset as
published, `permuted-mnist` its permuted tasks (`spec.py`, docs/data.md).
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np

from resetassay.data.examples import _stamp
from resetassay.errors import BadInputError


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
            raise BadInputError(f"`data_dir` {folder}: missing {candidates[0].name}; point it at MNIST IDX files",
                                field="data_dir")
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
