"""examples/resnet18.py, the README's worked example model: torchvision's ResNet-18 layout, found by tracing.

Its parameter count for 1000 classes is torchvision's published 11,689,512; its state-dict keys equal
torchvision's where torchvision imports. The fast engine equals the plain one on it (float32, the
tolerance of tests/helpers/engines.py, plus a floor of 2e-5 for BatchNorm folding's rounding).
"""

from __future__ import annotations

import sys

import pytest
import torch
from helpers.engines import assert_fast_equals_plain
from helpers.paths import ROOT

from resetassay.discovery.taps import discovery_route, tap_unit_layers
from resetassay.discovery.units import unit_layers
from resetassay.pipeline.assay import sample_units
from resetassay.scoring.reference import unit_references

sys.path.insert(0, str(ROOT))
from examples.resnet18 import resnet18  # noqa: E402

SITES = ["relu", *[f"layer{s}.{b}.relu@{k}" for s in range(1, 5) for b in range(2) for k in range(2)]]


def test_parameter_count_is_torchvisions():
    assert sum(p.numel() for p in resnet18(num_classes=1000).parameters()) == 11_689_512


def test_state_dict_keys_and_shapes_are_torchvisions():
    models = pytest.importorskip("torchvision.models", reason="torchvision does not import here",
                                 exc_type=ImportError)
    theirs = models.resnet18(weights=None, num_classes=10).state_dict()
    ours = resnet18(num_classes=10).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


@pytest.mark.slow
def test_tracing_finds_every_call_of_the_shared_relu_and_fast_equals_plain():
    g = torch.Generator().manual_seed(0)
    calib_x, probe_x = torch.randn(16, 3, 32, 32, generator=g), torch.randn(12, 3, 32, 32, generator=g)
    model = resnet18(num_classes=10).eval()
    with torch.no_grad():
        model.train()(calib_x)  # BatchNorm statistics of the data, away from their identity defaults
    model.eval()
    tapped = tap_unit_layers(model, calib_x[:2])
    assert discovery_route(tapped) == "fx"
    layers = unit_layers(tapped, calib_x[:2])
    assert [layer.name for layer in layers] == SITES
    chosen = layers[:1] + layers[4:5] + layers[-1:]
    refs = unit_references(tapped, chosen, calib_x)
    units = sample_units(chosen, 5, seed=0)
    assert_fast_equals_plain(tapped, chosen, refs, probe_x, units=units, floor=2e-5)
