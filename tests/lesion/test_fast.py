"""The fast lesion engine equals the plain reference engine (SPEC S4; DESIGN "The lesion engine").

Tolerance: max |fast - plain| <= 1e-5 * max shock, per metric, in float32 models.
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers.engines import assert_fast_equals_plain
from helpers.models import BranchyMLP, SizeReader
from helpers.paths import FIXTURES
from torch import nn

from resetassay.data import split_calibration_probe, task_arrays
from resetassay.discovery.units import UnitLayerSpec, unit_layers
from resetassay.io.checkpoint import load_checkpoint
from resetassay.lesion import fast as fast_engine
from resetassay.lesion import joint_shocks, unit_shocks
from resetassay.lesion.graph_split import split_at, trace
from resetassay.lesion.shocks import probe_logits
from resetassay.scoring.reference import unit_references

METRICS = ["l1", "kl"]
TOL = 1e-5


def _setup(fixture: str, probe: int = 48):
    ckpt = load_checkpoint(FIXTURES / fixture / "task4")
    x, y = task_arrays(ckpt.info.data, "holdout")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = split_calibration_probe(x, y, calib_size=128, probe_size=probe, seed=1)
    layers = unit_layers(ckpt.model, data.calib_x[:2])
    refs = unit_references(ckpt.model, layers, data.calib_x)
    return ckpt.model, layers, refs, data.probe_x


@pytest.fixture(scope="module", params=["relu_mlp", "silu_mlp", "layernorm_mlp", "cnn", "resnet"])
def case(request):
    model, layers, refs, probe_x = _setup(request.param)
    return model, layers, refs, probe_x, unit_shocks(model, layers, refs, probe_x, METRICS, engine="plain")


@pytest.mark.slow
@pytest.mark.parametrize("max_k", [1, 3, None])
@pytest.mark.parametrize("shortcut", [True, False])
def test_fast_engine_equals_plain_engine(case, max_k, shortcut) -> None:
    model, layers, refs, probe_x, plain = case
    assert_fast_equals_plain(model, layers, refs, probe_x, plain=plain, max_k=max_k, shortcut=shortcut)


@pytest.mark.slow
def test_fast_engine_equals_plain_with_probe_chunks_smaller_than_the_probe_set(case) -> None:
    """A budget of a few rows forces several probe chunks: no clamp may leak across them."""
    model, layers, refs, probe_x, plain = case
    small = layers[:2]
    want = {m: {k.name: plain[m][k.name] for k in small} for m in METRICS}
    assert_fast_equals_plain(model, small, refs, probe_x, plain=want, max_memory=40_000)


def test_engine_leaves_the_model_unchanged(case) -> None:
    model, layers, refs, probe_x, _ = case
    before = probe_logits(model, probe_x)
    unit_shocks(model, layers, refs, probe_x, METRICS, max_k=5, engine="fast")
    assert torch.equal(probe_logits(model, probe_x), before)


def test_every_unit_gets_its_own_shock_not_a_neighbours() -> None:
    """Distinct shocks per unit, so a clamp of unit i+1 or of the wrong block would show."""
    model, layers, refs, probe_x = _setup("silu_mlp")
    plain = unit_shocks(model, layers[:1], refs, probe_x, ["l1"], engine="plain")["l1"][layers[0].name]
    fast = unit_shocks(model, layers[:1], refs, probe_x, ["l1"], max_k=4)["l1"][layers[0].name].double()
    assert len(set(plain.tolist())) == len(plain)
    assert torch.allclose(fast, plain, rtol=TOL, atol=0)
    assert not torch.allclose(fast.roll(1), plain, rtol=1e-2, atol=0)


def test_joint_lesions_in_one_batch_equal_the_plain_joint_shock() -> None:
    model, layers, refs, probe_x = _setup("resnet")
    a, b = layers[0].name, layers[3].name
    lesions = [{a: torch.tensor([0, 3])}, {b: torch.tensor([1])}, {a: torch.tensor([2]), b: torch.tensor([0, 5])}]
    got = joint_shocks(model, layers, refs, lesions, probe_x, METRICS, max_memory=200_000, engine="fast")
    want = joint_shocks(model, layers, refs, lesions, probe_x, METRICS, engine="plain")
    for m in METRICS:
        torch.testing.assert_close(got[m], want[m], rtol=TOL, atol=0)


@pytest.mark.parametrize("model_cls", [BranchyMLP, SizeReader])
def test_unsplittable_models_fall_back_with_a_logged_reason(model_cls, caplog) -> None:
    torch.manual_seed(0)
    model = model_cls().eval()
    x = torch.rand(40, 64)
    layers = unit_layers(model, x[:2])
    refs = unit_references(model, layers, x)
    with caplog.at_level(logging.WARNING, logger="resetassay.lesion.fast"):
        assert_fast_equals_plain(model, layers, refs, x, max_k=3)
    assert "expanded-input path" in caplog.text


def test_out_of_memory_halves_the_chunk_and_still_equals_plain(monkeypatch, caplog) -> None:
    model, layers, refs, probe_x = _setup("silu_mlp", probe=64)
    real = fast_engine._downstream_inputs
    calls = {"oom": 0}

    def tight(split, layer, h, values, idx, r):
        if len(idx) * len(h) > 64:
            calls["oom"] += 1
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(split, layer, h, values, idx, r)

    monkeypatch.setattr(fast_engine, "_downstream_inputs", tight)
    with caplog.at_level(logging.WARNING, logger="resetassay.lesion.fast"):
        assert_fast_equals_plain(model, layers, refs, probe_x)
    assert calls["oom"] > 0 and "out of memory" in caplog.text


def test_every_linear_or_conv_reader_is_cut_off_and_a_residual_reader_gets_the_clamp() -> None:
    """ResNet: stem.act feeds conv1 and an identity skip; stages.0.0.act2 feeds conv1 and a projection."""
    model, *_ = _setup("resnet")
    gm = trace(model)
    stem = split_at(gm, "stem.act")
    assert sorted(type(m).__name__ for m in stem.starts) == ["Conv2d", "NoneType"]
    block = split_at(gm, "stages.0.0.act2")
    assert [type(m).__name__ for m in block.starts] == ["Conv2d", "Conv2d"]
    called = {n.target for n in block.downstream.graph.nodes if n.op == "call_module"}
    assert not called & {"stages.1.0.conv1", "stages.1.0.shortcut.0"}
    assert "stages.1.0.conv2" in called
    assert split_at(gm, "stem.act", shortcut=()).starts == [None]


def test_functional_consumer_shortcut_is_exact_for_a_conv_with_stride_and_padding() -> None:
    """Conv consumer with stride 2 and padding 1: one-input-channel convolution of the delta."""
    torch.manual_seed(3)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.act = nn.Conv2d(1, 6, 3, padding=1), nn.Tanh()
            self.conv2 = nn.Conv2d(6, 5, 3, stride=2, padding=1)
            self.head = nn.Linear(5 * 4 * 4, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.relu(self.conv2(self.act(self.conv1(x)))).flatten(1))

        def unit_layer_specs(self) -> list[UnitLayerSpec]:
            return [UnitLayerSpec("act", "conv1", "conv2")]

    model = Net().eval()
    x = torch.rand(30, 1, 8, 8)
    layers = unit_layers(model, x[:2])
    refs = unit_references(model, layers, x)
    assert_fast_equals_plain(model, layers, refs, x, max_k=4)
