"""`--data FILE`: a tensor file (.safetensors, .npz, .pt/.pth) of inputs and labels, or of token ids (SPEC S1, S9)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from resetassay.data.examples import Examples, _checked
from resetassay.data.spec import TENSOR_SUFFIXES
from resetassay.discovery.sequences import next_token_targets, with_padding
from resetassay.errors import BadInputError, one_line

INPUT_KEYS = ("x", "inputs", "images", "data", "features")
LABEL_KEYS = ("y", "labels", "targets", "label")


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
