"""`--dtype bf16|fp16`: the probe forwards under torch.autocast (README "Precision"). Shocks stay within a stated
tolerance of fp32 and rank the units the same way; the fast engine still equals the plain one at that precision;
calibration (references, utilities) is untouched."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

from resetassay import AssayConfig, BadInputError, assay_model
from resetassay.models import create_model

# bf16 keeps 8 bits of mantissa: a logit difference is good to about 1% of the largest shock.
TOLERANCE = 3e-2


def _assay(name: str, kwargs: dict, x_shape: tuple[int, ...], **config: object):
    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    x = torch.randn(96, *x_shape)
    y = torch.randint(0, 10, (96,))
    return assay_model(model, (x[:48], y[:48]), (x[48:], y[48:]),
                       config=AssayConfig(utilities=["gxd", "activation"], metrics=["l1", "kl"], **config)).units


MODELS = [("mlp", {"in_features": 16, "widths": (32, 32), "activation": "silu"}, (16,)),
          ("cnn", {"widths": (8, 16)}, (1, 8, 8)),
          ("resnet", {}, (1, 8, 8))]


@pytest.mark.parametrize(("name", "kwargs", "shape"), MODELS, ids=[m[0] for m in MODELS])
def test_bf16_shocks_are_fp32_shocks_to_a_stated_tolerance_in_both_engines(name, kwargs, shape, one_thread):
    exact = _assay(name, kwargs, shape)
    fast = _assay(name, kwargs, shape, dtype="bf16")
    plain = _assay(name, kwargs, shape, dtype="bf16", engine="plain")
    for metric in ("l1", "kl"):
        column = f"shock_{metric}"
        scale = exact[column].abs().max()
        assert (fast[column] - exact[column]).abs().max() <= TOLERANCE * scale
        assert (fast[column] - plain[column]).abs().max() <= TOLERANCE * scale
        assert spearmanr(fast[column], exact[column])[0] > 0.99
        assert not fast[column].equals(exact[column])  # the forwards did run in bf16
    assert fast[["reference", "gxd", "activation"]].equals(exact[["reference", "gxd", "activation"]])


def test_an_unknown_dtype_is_refused_naming_the_flag():
    with pytest.raises(BadInputError, match="`dtype` 'fp64'") as caught:
        AssayConfig(dtype="fp64")
    assert caught.value.field == "dtype"
