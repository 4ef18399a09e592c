"""The data of one assay (SPEC S1): a source opened by its kind (`_open`), `data_spec` from the command line,
a task's arrays, and the seeded, disjoint calibration and probe sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from resetassay.data.examples import Examples, _cached, _digest, _is_hf, _stamp
from resetassay.data.factories import _factory_examples
from resetassay.data.grammar import grammar_sequences
from resetassay.data.hf_datasets import _hf_examples
from resetassay.data.images import _image_examples
from resetassay.data.permuted import digits_arrays, mnist_arrays, permutation
from resetassay.data.spec import (
    _FACTORY,
    ARCHIVE_SUFFIXES,
    DATA_CHOICES,
    DEFAULT_SIZE,
    IDX_SOURCES,
    IMAGE_SIDE,
    PERMUTED_PREFIX,
    TENSOR_SUFFIXES,
    USER_SOURCES,
    DataSpec,
    _flagged,
    parse_normalize,
)
from resetassay.data.tensor_files import _tensor_file
from resetassay.errors import BadInputError, warn_user


def data_spec(  # noqa: C901 — one branch per kind of data source
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
    """The DataSpec a user names with `data` (SPEC S1): a built-in name (`DATA_CHOICES`: digits, mnist, fashion-mnist,
    the datasets as published, and permuted-digits, permuted-mnist, permuted-fashion-mnist, the continual study's
    permuted tasks; each also as `-image`), a tensor file (.safetensors, .npz, .pt), an image folder or a .tar/.tar.gz
    of one, or `package.module:function`. `probe` (--probe-data) is a second file or folder holding the probe set,
    `image_size` and `normalize` (a `NORMALIZE` name, 'none', 'M,M,M/S,S,S' or a (mean, std) pair) apply to images,
    `kwargs` (--data-kwargs) to a factory. The data is opened here, so that a bad file is an error about the field;
    paths are made absolute and files hashed (sha256) for the run's provenance.

    Args:
        name: a built-in name, a path, or `package.module:function` (the `data` field).
        task, permutation_seed, data_dir: a built-in permuted task: which task and the seed of its permutations
            (a plain dataset has neither: they must stay 0); where mnist and fashion-mnist's files are (they are
            never downloaded).
        probe: a second file or folder holding the probe set (your own data).
        image_size, normalize: how images are resized and normalised.
        kwargs: a factory's keyword arguments.

    Returns:
        A `DataSpec`, to pass as `data=` to `run_assay`, `assay_checkpoint` or `save_checkpoint`.

    Raises:
        BadInputError: an unknown name, a file or folder that cannot be read as data, or an option that does not
            apply to this kind of data; the message names the field.

    Example::

        >>> import resetassay as ra
        >>> spec = ra.data_spec("permuted-digits", task=1, permutation_seed=1)
        >>> spec.source, spec.layout, spec.permuted, spec.task
        ('digits', 'flat', True, 1)
        >>> plain = ra.data_spec("digits-image")
        >>> plain.layout, plain.permuted, plain.describe()
        ('image', False, 'digits')
    """
    given = {"probe": probe, "image_size": image_size, "normalize": normalize, "data_kwargs": kwargs}
    if name in DATA_CHOICES:
        for field, value in given.items():
            if value is not None:
                raise BadInputError(f"`{field}` applies only to your own data, not `data` {name}", field=field)
        image, permuted = name.endswith("-image"), name.startswith(PERMUTED_PREFIX) or name == "grammar"
        source = name.removesuffix("-image").removeprefix(PERMUTED_PREFIX)
        if not permuted:
            for field, value in (("task", task), ("permutation_seed", permutation_seed)):
                if value != 0:
                    raise BadInputError(f"`{field}` applies to a permuted task, not the plain dataset `data` {name}; "
                                        f"use `data` {PERMUTED_PREFIX}{name}", field=field)
        return DataSpec(source=source, layout="image" if image else "flat", task=task,
                        permutation_seed=permutation_seed, data_dir=data_dir, permuted=permuted)
    if data_dir is not None:
        raise BadInputError(f"`data_dir` applies only to `data` {' or '.join(IDX_SOURCES)}, not `data` {name}",
                            field="data_dir")
    path = Path(name).expanduser()
    if not path.exists() and _FACTORY.fullmatch(name):
        for field in ("probe", "image_size", "normalize"):
            if given[field] is not None:
                raise BadInputError(f"`{field}` does not apply to `data` {name} (a factory)", field=field)
        spec = DataSpec(source="factory", factory=name, factory_kwargs=kwargs)
        _flagged(lambda: _factory_examples(spec), "data")
        return spec
    if kwargs is not None:
        raise BadInputError("`data_kwargs` applies only to `data` package.module:function", field="data_kwargs")
    source = _form(path, "data")
    probe_path = None
    if probe is not None:
        probe_path = Path(probe).expanduser()
        if _form(probe_path, "probe") != source:
            raise BadInputError(f"`probe` {probe}: must be of the same kind as `data` {name} "
                                f"({ {'file': 'a tensor file', 'hf': 'a datasets folder'}.get(source, 'images')})",
                                field="probe")
    if source == "file" and (image_size is not None or normalize is not None):
        field = "image_size" if image_size is not None else "normalize"
        raise BadInputError(f"`{field}` applies only to images, not the tensor file {name}", field=field)
    mean, std = parse_normalize(normalize)
    spec = DataSpec(source=source, path=str(path.resolve()), probe_path=str(probe_path.resolve()) if probe else None,
                    image_size=image_size, mean=mean, std=std,
                    sha256=_flagged(lambda: _digest(path), "data"),
                    probe_sha256=_flagged(lambda: _digest(probe_path), "probe") if probe else None)
    _flagged(lambda: _open(spec, spec.path), "data")
    if probe:
        _flagged(lambda: _open(spec, spec.probe_path), "probe")
    return spec


def _form(path: Path, field: str) -> str:
    """"file" (a tensor file), "hf" (a `datasets` folder) or "images" (a folder, or an archive of one) by what
    `path` is."""
    if _is_hf(path):
        return "hf"
    if path.is_dir() or (path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)):
        return "images"
    if path.is_file() and path.suffix.lower() in TENSOR_SUFFIXES:
        return "file"
    if path.exists():
        raise BadInputError(f"`{field}` {path}: not a tensor file ({', '.join(TENSOR_SUFFIXES)}), an image folder or "
                            f"an archive of one ({', '.join(ARCHIVE_SUFFIXES)})", field=field)
    raise BadInputError(f"`{field}` {path}: no such file or folder; use {', '.join(DATA_CHOICES)}, a tensor file, an "
                        "image folder or archive, or package.module:function", field=field)


@dataclass
class AssayData:
    """Calibration and probe tensors, disjoint, with where they came from (SPEC S1)."""

    calib_x: torch.Tensor
    calib_y: torch.Tensor
    probe_x: torch.Tensor
    probe_y: torch.Tensor
    provenance: dict


def task_arrays(spec: DataSpec, part: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The `part` ("train" or "holdout") of the task in `spec`, permuted (a permuted task; the plain dataset keeps
    its pixels in their own order) and laid out (SPEC S1). The user's own data has only a "holdout" part: all of it
    (of `path`, with a probe_path), never permuted."""
    if spec.source in USER_SOURCES:
        if part != "holdout":
            raise BadInputError(f"`data` {spec.describe()}: your own data is for the assay only (an image folder or "
                                f"archive trains on its train/ root: training_images); the built-in data are "
                                f"{', '.join(DATA_CHOICES)}", field="data")
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
            raise BadInputError(f"{spec.source} data needs `data_dir` pointing at its IDX files", field="data_dir")
        x, y = mnist_arrays(spec.data_dir, "test" if part == "holdout" else "train")
    # the plain dataset: a copy, as permuting makes one (mnist_arrays' arrays are shared and read-only)
    x = x[:, permutation(x.shape[1], spec.task, spec.permutation_seed)] if spec.permuted else x.copy()
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
        ci, pi = split_indices(calib.n, calib_size, probe_size, seed, source=calib.name)
        probe, available = calib, calib.n
    else:
        probe = _open(spec, spec.probe_path)
        n_calib = _own_size(calib.n, calib_size, "calib_size", calib.name)
        n_probe = _own_size(probe.n, probe_size, "probe_size", probe.name)
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


def _own_size(n: int, size: int | None, field: str, source: str) -> int:
    """How many of the `n` examples of a set of its own (a probe_path) to take: `size`, else 2048 or all."""
    if size is not None and size <= 0:
        raise BadInputError(f"`{field}` must be positive", field=field)
    if size is not None and size > n:
        raise BadInputError(f"`{field}` {size} exceeds the {n} examples of {source}; ask for at most {n}", field=field)
    if size is None and n < DEFAULT_SIZE:
        warn_user(f"{source} has {n} examples: its set shrinks to {n}")
    return size if size is not None else min(DEFAULT_SIZE, n)


def split_indices(
    n: int, calib_size: int | None = None, probe_size: int | None = None, seed: int = 0, source: str = "data",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sorted indices of a seeded, disjoint calibration and probe set among `n` examples (SPEC S1).

    Sizes left as None default to 2048 each and shrink, with a warning, to an equal share of
    what the data has (or to what an explicit size of the other set leaves); an explicit size
    the data cannot supply is an error. The warning names the caller's line outside resetassay.
    """
    for field, size in (("calib_size", calib_size), ("probe_size", probe_size)):
        if size is not None and size <= 0:
            raise BadInputError(f"`{field}` must be positive", field=field)
    if calib_size is not None and probe_size is not None and calib_size + probe_size > n:
        raise BadInputError(
            f"`calib_size` {calib_size} + `probe_size` {probe_size} exceed the {n} held-out examples "
            f"of {source}; ask for at most {n} in total",
            field="calib_size",
        )
    for field, size in (("calib_size", calib_size), ("probe_size", probe_size)):
        if size is not None and size >= n:
            raise BadInputError(f"`{field}` {size} leaves none of the {n} held-out examples of {source} "
                                "for the other set; ask for fewer", field=field)
    share = n // 2 if calib_size is None and probe_size is None else n - (calib_size or probe_size)
    n_calib = calib_size if calib_size is not None else min(DEFAULT_SIZE, share)
    n_probe = probe_size if probe_size is not None else min(DEFAULT_SIZE, share)
    if (calib_size is None and n_calib < DEFAULT_SIZE) or (probe_size is None and n_probe < DEFAULT_SIZE):
        warn_user(f"{source} has {n} held-out examples: calibration and probe sets shrink to {n_calib} and {n_probe}")
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
    calib, probe = split_indices(len(x), calib_size, probe_size, seed, source)
    return AssayData(
        x[calib], y[calib], x[probe], y[probe],
        provenance={"source": source, "available": len(x), "calib_size": len(calib),
                    "probe_size": len(probe), "split_seed": seed},
    )


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
                            "pass it again with `data`")
    if spec.source == "file":
        if not path.is_file():
            raise BadInputError(f"{path}: not a file; a tensor file is {', '.join(TENSOR_SUFFIXES)}")
        return _cached(("file", *_stamp(path)), lambda: _tensor_file(path))
    if spec.source == "hf":
        return _hf_examples(path, spec.image_size, spec.mean, spec.std)
    return _image_examples(path, spec.image_size, spec.mean, spec.std)
