"""Shock metrics (resetassay/lesion/shocks.py, SPEC S4): per-example shocks by their direct formulas, and the
metric names checked.
"""

from __future__ import annotations

import pytest
import torch

from resetassay.errors import BadInputError
from resetassay.lesion.shocks import check_metrics, example_shocks


def test_example_shocks_match_direct_formulas():
    g = torch.Generator().manual_seed(9)
    z, z2 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    torch.testing.assert_close(example_shocks(z, z2, "l1"), (z.double() - z2.double()).abs().sum(1))
    p, q = torch.softmax(z.double(), 1), torch.softmax(z2.double(), 1)
    torch.testing.assert_close(example_shocks(z, z2, "kl").double(),
                               (p * (p / q).log()).sum(1), atol=1e-10, rtol=1e-9)
    with pytest.raises(BadInputError, match="l1, kl"):
        example_shocks(z, z2, "l2")


def test_check_metrics_rejects_unknown_names():
    assert check_metrics(["kl", "l1"]) == ["kl", "l1"]
    with pytest.raises(BadInputError) as err:
        check_metrics(["l1", "js"])
    assert "js" in str(err.value) and "l1" in str(err.value) and "kl" in str(err.value)
