"""For the data tests: examples numbered in their first feature (`numbered_examples`), saved as a tensor file
(`save_examples`), and the check that a bad input is a one-line error naming what it must (`one_line_error`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from resetassay.errors import BadInputError


def numbered_examples(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs whose first feature is the example's index, so that pairs and disjointness can be read back."""
    x = torch.rand(n, 5, generator=torch.Generator().manual_seed(0))
    x[:, 0] = torch.arange(n)
    return x, torch.arange(n) % 3


def save_examples(path: Path, x, y, xkey: str = "x", ykey: str = "y") -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file({xkey: x.contiguous(), ykey: y.contiguous()}, str(path))
    elif path.suffix == ".npz":
        np.savez(path, **{xkey: np.asarray(x), ykey: np.asarray(y)})
    else:
        torch.save({xkey: x, ykey: y}, path)
    return path


def one_line_error(make, *needles: str) -> BadInputError:
    with pytest.raises(BadInputError) as err:
        make()
    text = str(err.value)
    assert "\n" not in text, text
    for needle in needles:
        assert needle in text, text
    return err.value
