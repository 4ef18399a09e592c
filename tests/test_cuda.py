"""The CUDA path (README "On GPUs"): the same assay on a GPU gives the CPU's shocks to float rounding, both engines
agree there, and bf16 autocast stays within the CPU's stated tolerance. Skipped without a CUDA device (CI has
none); run `python -m pytest -q tests/test_cuda.py` on a GPU machine."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

from resetassay import AssayConfig, assay_model
from resetassay.models import create_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
# cuDNN convolutions may use TF32 (10-bit mantissa): shocks agree to 1e-3 of the largest one, not to 1e-6.
TOLERANCE = 1e-3
MODELS = [("mlp", {"in_features": 16, "widths": (32, 32), "activation": "silu"}, (16,)),
          ("cnn", {"widths": (8, 16)}, (1, 8, 8)),
          ("resnet", {}, (1, 8, 8))]


def _units(name: str, kwargs: dict, shape: tuple[int, ...], **config: object):
    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    x, y = torch.randn(96, *shape), torch.randint(0, 10, (96,))
    return assay_model(model, (x[:48], y[:48]), (x[48:], y[48:]),
                       config=AssayConfig(utilities=["gxd", "activation"], metrics=["l1", "kl"], **config)).units


@pytest.mark.parametrize(("name", "kwargs", "shape"), MODELS, ids=[m[0] for m in MODELS])
def test_cuda_shocks_and_utilities_equal_the_cpu_ones_in_both_engines(name, kwargs, shape):
    cpu = _units(name, kwargs, shape, device="cpu")
    for engine in ("fast", "plain"):
        gpu = _units(name, kwargs, shape, device="cuda", engine=engine)
        for column in ("shock_l1", "shock_kl", "gxd", "activation"):
            assert (gpu[column] - cpu[column]).abs().max() <= TOLERANCE * cpu[column].abs().max(), (engine, column)


@pytest.mark.parametrize(("name", "kwargs", "shape"), MODELS, ids=[m[0] for m in MODELS])
def test_bf16_on_cuda_ranks_units_as_fp32(name, kwargs, shape):
    exact = _units(name, kwargs, shape, device="cuda")
    half = _units(name, kwargs, shape, device="cuda", dtype="bf16")
    for column in ("shock_l1", "shock_kl"):
        assert (half[column] - exact[column]).abs().max() <= 3e-2 * exact[column].abs().max()
        assert spearmanr(half[column], exact[column])[0] > 0.99
