"""What every source of the user's own data yields (SPEC S1): `Examples`, a source's inputs and labels checked
(`_checked`), items read as (input, label) pairs, and the cache of opened sources keyed by file stamps and
digests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from resetassay.data.spec import IMAGE_SUFFIXES
from resetassay.discovery.sequences import NO_LABEL, unlabelled, with_padding
from resetassay.errors import BadInputError, one_line

HF_INPUTS = ("pixel_values", "image", "img", "input_ids", "x", "inputs", "features")  # a datasets folder's columns
HF_LABELS = ("labels", "label", "y", "target", "targets")
HF_MARKERS = ("dataset_info.json", "dataset_dict.json")  # what `save_to_disk` writes


@dataclass
class Examples:
    """`n` examples of one source, fetched by index: `take(indices) -> (x, y)`; `name` names it in messages."""

    name: str
    n: int
    take: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    info: dict


_CACHE: dict[tuple, object] = {}  # the last few sources opened and hashed (a run opens them once per checkpoint)


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


def _is_hf(path: Path) -> bool:
    """A folder `datasets`' `save_to_disk` wrote: a Dataset (dataset_info.json, state.json) or a DatasetDict
    (dataset_dict.json)."""
    return path.is_dir() and any((path / marker).is_file() for marker in HF_MARKERS)


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
